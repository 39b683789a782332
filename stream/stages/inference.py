"""The GPU worker's socket loop: frames in, one ``results`` (or ``skip``) message per frame out.

Frames from every decoder arrive on one PULL socket. The worker collects a group of up to
``group_frames`` frames or ``max_wait_ms`` (whichever comes first) and hands it to the inference engine
(``stream.engine``), which detects, crops, forwards and decodes the poses of the whole group at once. The
engine's scheduler overlaps groups (one is prepared while the one before computes; on CPU a group is
finished after the next one is computed, or at once when no frame is waiting). Each outgoing message goes
to its source's track stage, in the order the group's messages came.
"""

from __future__ import annotations

import time

import zmq

from stream.config import PipelineConfig
from stream.engine import Group, InferenceEngine
from stream.engine.runtime import resolve_device, use_all_cores
from stream.runtime.messages import EOS, FRAME, SKIP, Message
from stream.runtime.ring import resolve
from stream.runtime.stage import StageLink, WorkerSpec
from stream.runtime.transport import Stopped, close_sender, make_socket, recv_message, send_until


def run_inference(context: zmq.Context, spec: WorkerSpec, link: StageLink) -> None:
    cfg = spec.config
    if cfg.workers != "inproc" and resolve_device(cfg.device).type == "cpu":
        use_all_cores()  # in-process runs keep the process's settings
    names = [plan.name for plan in spec.sources]
    live = any(plan.live for plan in spec.sources)
    inbox = make_socket(
        context, zmq.PULL, spec.endpoints["infer"], bind=True, hwm=cfg.queue_frames * max(1, len(names))
    )
    outboxes = {
        name: make_socket(
            context, zmq.PUSH, spec.endpoints[f"track.{name}"], bind=False, hwm=cfg.queue_frames * 4
        )
        for name in names
    }
    engine = None
    try:
        engine = InferenceEngine(cfg, live=live)
        engine.warm_up()
        dtype = str(engine.dtype).replace("torch.", "")
        link.emit("ready", device=str(engine.device), dtype=dtype, flip=engine.flip)
        scheduler = engine.scheduler()
        open_sources = set(names)
        while open_sources:
            group = _collect(inbox, cfg, link, wait=not scheduler.has_pending)
            if group is None:
                if link.aborted:
                    return
                outputs = scheduler.flush()
            else:
                outputs = scheduler.submit(group)
            for messages in outputs:
                for message in messages:
                    if message.kind == EOS:
                        engine.end_segment(message.source, message.segment)
                        if message.meta.get("final"):
                            open_sources.discard(message.source)
                    elif message.kind == SKIP and message.meta.get("cause") == "stale":
                        link.emit("drop", source=message.source, cause="stale", frame=message.frame)
                    send_until(outboxes[message.source], message, link.should_abort)
        link.emit("done", boxes_dropped=engine.dropped_boxes)
        link.wait_for_finish()
    except Stopped:
        pass
    finally:
        if engine is not None:
            engine.close()
        inbox.close(linger=0)
        for sock in outboxes.values():
            close_sender(sock, link.finished)


def _collect(inbox: zmq.Socket, cfg: PipelineConfig, link: StageLink, wait: bool) -> Group | None:
    """Up to ``group_frames`` frames, waiting at most ``max_wait_ms`` after the first; None if none came."""
    group = Group()
    if wait:
        while not inbox.poll(100, zmq.POLLIN):
            if link.should_abort():
                return None
    elif not inbox.poll(0, zmq.POLLIN):
        return None
    deadline = time.monotonic() + cfg.max_wait_ms / 1000.0
    _add(group, recv_message(inbox))
    while len(group.frames) < cfg.group_frames:
        remaining_ms = int((deadline - time.monotonic()) * 1000.0)
        if remaining_ms <= 0 or not inbox.poll(remaining_ms, zmq.POLLIN):
            break
        _add(group, recv_message(inbox))
    return group


def _add(group: Group, message: Message) -> None:
    group.messages.append(message)
    if message.kind == FRAME:
        resolve(message)
        group.frames.append(message)
