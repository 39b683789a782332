"""The GPU worker's socket loop: frames in, one ``results`` (or ``skip``) message per frame out.

Frames from every decoder arrive on one PULL socket. The worker collects a group of up to
``group_frames`` frames or ``max_wait_ms`` (whichever comes first) and hands it to the inference engine
(``stream.engine``), which detects, crops, forwards and decodes the poses of the whole group at once. The
engine's scheduler overlaps groups (one is prepared while the one before computes; on CPU a group is
finished after the next one is computed, or at once when no frame is waiting). Each outgoing message goes
to its source's track stage, in the order the group's messages came.

In a run with a control API (``--control``) sources are added and removed while the worker runs: it
opens a new source's results socket on the source's first message (the endpoint derived from the run's
endpoint space), keeps a removed source's socket (one per name ever used: a source added again under
that name reuses it), and ends on the coordinator's ``Finish`` instead of when its sources have ended.
"""

from __future__ import annotations

import sys
import time

import zmq

from stream.config import PipelineConfig
from stream.engine import Group, InferenceEngine
from stream.engine.runtime import resolve_device, use_all_cores
from stream.runtime import topology
from stream.runtime.events import Done, Drop, Ready
from stream.runtime.messages import EOS, FRAME, SKIP, Message
from stream.runtime.ring import RingError, forget_removed_rings, resolve
from stream.runtime.stage import POLL_MS, Stage, StageLink, WorkerSpec
from stream.runtime.transport import close_sender, recv_message, send_until

RING_CHECK_S = 5.0  # live: how often rings of dead or removed decoders are looked for and unmapped


class InferenceStage(Stage):
    """The GPU worker's loop: groups of frames from every decoder in, one results message per frame out."""

    def __init__(self, context: zmq.Context, spec: WorkerSpec, link: StageLink) -> None:
        cfg = spec.config
        if cfg.workers != "inproc" and resolve_device(cfg.device).type == "cpu":
            use_all_cores()  # in-process runs keep the process's settings
        self.cfg = cfg
        self.link = link
        self.live = any(plan.live for plan in spec.sources)
        self.context = context
        self.spec = spec
        self.inbox = topology.open(context, spec, "frames")
        self.outboxes = {
            plan.name: topology.open(context, spec, "results", source=plan.name) for plan in spec.sources
        }
        self.inputs = [self.inbox]
        self.open_sources = set(self.outboxes)
        # With a control API sources come and go: the worker ends when the coordinator says every sink
        # is finished (``Finish``), not when the sources it knows have ended.
        self.controlled = cfg.control is not None
        self.next_ring_check = 0.0
        self.engine: InferenceEngine | None = None
        self.sessions: dict[str, str] = {}  # each source's current session (new when restarted)

    def start(self) -> Ready:
        self.engine = InferenceEngine(self.cfg, live=self.live)
        self.engine.warm_up()
        self.scheduler = self.engine.scheduler()
        dtype = str(self.engine.dtype).replace("torch.", "")
        return Ready(device=str(self.engine.device), dtype=dtype, flip=self.engine.flip)

    def poll_ms(self) -> int:
        return 0 if self.scheduler.has_pending else POLL_MS  # work held back: finish it when idle

    def receive(self, sock: zmq.Socket, message: Message) -> None:
        group = _collect(self.inbox, self.cfg, message)
        for message in group.messages:
            if self.sessions.setdefault(message.source, message.session) != message.session:
                self._restarted(message.source, message.session)
        if group.messages:
            self._send(self.scheduler.submit(group))

    def _restarted(self, source: str, session: str) -> None:
        """``source``'s workers were restarted (a live run): its state starts afresh."""
        self.sessions[source] = session
        self.engine.end_segment(source, sys.maxsize)

    def step(self) -> None:
        if self.scheduler.has_pending:
            self._send(self.scheduler.flush())
        if self.controlled:
            self.finished = self.link.finished
        if self.live and time.monotonic() >= self.next_ring_check:
            # A decoder that died (restarted) or was removed is gone and the coordinator removed its
            # rings: unmap them, so their memory is freed.
            self.next_ring_check = time.monotonic() + RING_CHECK_S
            forget_removed_rings()

    def _outbox(self, source: str) -> zmq.Socket:
        """``source``'s results socket, opened on its first message for a source added at run time."""
        sock = self.outboxes.get(source)
        if sock is None:
            sock = self.outboxes[source] = topology.open(self.context, self.spec, "results", source=source)
        return sock

    def _send(self, outputs) -> None:
        for messages in outputs:
            for message in messages:
                if message.kind == EOS:
                    self.engine.end_segment(message.source, message.segment)
                    if message.meta.get("final"):
                        self.open_sources.discard(message.source)
                elif message.kind == SKIP and message.meta.get("cause") == "stale":
                    self.link.emit(Drop(source=message.source, cause="stale", frame=message.frame))
                send_until(self._outbox(message.source), message, self.link.should_abort)
        self.finished = self.link.finished if self.controlled else not self.open_sources

    def finish(self) -> Done:
        return Done(boxes_dropped=self.engine.dropped_boxes)

    def close(self, finished: bool) -> None:
        if self.engine is not None:
            self.engine.close()
        self.inbox.close(linger=0)
        for sock in self.outboxes.values():
            close_sender(sock, finished)


def _collect(inbox: zmq.Socket, cfg: PipelineConfig, first: Message) -> Group:
    """``first`` and what follows it, up to ``group_frames`` frames or ``max_wait_ms`` after the first."""
    group = Group()
    deadline = time.monotonic() + cfg.max_wait_ms / 1000.0
    _add(group, first)
    while len(group.frames) < cfg.group_frames:
        remaining_ms = int((deadline - time.monotonic()) * 1000.0)
        if remaining_ms <= 0 or not inbox.poll(remaining_ms, zmq.POLLIN):
            break
        _add(group, recv_message(inbox))
    return group


def _add(group: Group, message: Message) -> None:
    if message.kind == FRAME:
        try:
            resolve(message)
        except RingError:
            # Its decoder died and was restarted (a live run): nobody waits for this frame any more.
            return
        group.frames.append(message)
    group.messages.append(message)
