"""Decode stage (one per source): read frames and hand each to the GPU worker and the render stage.

Offline, every send blocks while the receiver's queue is full, and a decoder on one host also waits for
a free frame-ring slot (see ``FrameSender._claim``), so backpressure reaches the decoder and nothing is
lost. Frames are decoded straight into their ring slot, so their pixels are written once.

Live, a reader thread keeps pulling frames from the camera into a short queue; when
the downstream stages are behind, the oldest queued frame is replaced by a ``skip`` marker (counted as
a drop), so latency stays bounded and reorder buffers downstream never wait for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from contextlib import ExitStack
from fractions import Fraction

import numpy as np
import zmq

from stream.edges.live_open import live_options
from stream.edges.metrics import SourceStats
from stream.edges.sources import open_source
from stream.media.frames import I420, DecodedFrame
from stream.runtime import topology
from stream.runtime.events import Done, Drop, FrameIn, Ready, Reconnect
from stream.runtime.messages import CAMERA_MOTION, EOS, SKIP, Message, control_message, frame_message
from stream.runtime.ring import READERS, FrameRing, RingError, i420_shape
from stream.runtime.stage import SourcePlan, Stage, StageLink, WorkerSpec
from stream.runtime.transport import Stopped, close_sender, send_until

log = logging.getLogger(__name__)

LIVE_QUEUE_FRAMES = 2  # frames a live source may hold while downstream is busy
SLOT_WAIT_S = 0.005  # offline, how often a decoder waiting for a free ring slot looks again (the ring
# holds dozens of frames, so downstream never runs dry in that time)


class FrameSender:
    """Numbers one source's messages and sends each to both the GPU worker and the render stage."""

    def __init__(self, context: zmq.Context, spec: WorkerSpec, plan: SourcePlan, link: StageLink) -> None:
        self.gpu = topology.open(context, spec, "frames")
        self.render = topology.open(context, spec, "render_frames", source=plan.name)
        self.plan = plan
        self.link = link
        self.session = spec.session
        self.run_pid = spec.coordinator_pid  # rings are named for the run, so it can remove them
        self.seq = 0
        self.segment = 0
        info = plan.info
        rate = info.frame_rate
        if rate is None and info.kind in ("folder", "image"):
            rate = Fraction(spec.config.folder_fps).limit_denominator(1001)  # frames are timed by index
        self.meta = {"rate": [rate.numerator, rate.denominator] if rate else None, "live": plan.live}
        # Processes on one host share the pixels through a frame ring instead of copying them per hop.
        self.use_ring = spec.config.workers == "ipc"
        self.ring_slots = 4 * spec.config.queue_frames + 2 * spec.config.group_frames + 8
        self.ring: FrameRing | None = None
        self.claim: tuple[int, np.ndarray] | None = None  # the slot the source is decoding into
        self.camera = None
        if spec.config.camera_motion:
            # Estimated here, where the frames are, in one process per source, for the tracker (imported
            # only then: the tracker's modules cost a decoder start-up time).
            from trackers import CameraMotion

            self.camera = CameraMotion()

    def frame(self, frame: DecodedFrame) -> None:
        if frame.segment != self.segment:
            # The previous segment ends first, so per-source state (trackers, smoothers) starts afresh.
            self.control(EOS, segment=self.segment, final=False)
            self.segment = frame.segment
            if self.camera is not None:
                self.camera.reset()
        message = frame_message(self.plan.name, self.seq, frame, self.session, self.meta).stamp("decode")
        if self.camera is not None:
            # From the previous frame sent to this one: frames a live source dropped are folded in.
            message.meta[CAMERA_MOTION] = self.camera.estimate(frame.image).ravel().tolist()
        self._into_ring(message, frame.image, frame.extra.get(I420))
        self._send_both(message)

    def frame_buffer(self, height: int, width: int, with_i420: bool = False) -> np.ndarray | None:
        """A free ring slot to decode the next frame into (None: the source allocates its own array).

        Only the latest claim is kept: a frame decoded into it is sent without copying its pixels.
        """
        self._drop_claim()
        # Slots are sized by the first frame: its RGB pixels and, when it has them, its yuv420p planes
        # after them (a source whose frames have none does not pay for the room).
        planes = int(np.prod(i420_shape(height, width))) if with_i420 else 0
        if not self._ensure_ring(height * width * 3 + planes):
            return None
        self.claim = self._claim((height, width, 3))
        return None if self.claim is None else self.claim[1]

    def _claim(self, shape: tuple[int, ...]) -> tuple[int, np.ndarray] | None:
        """A free slot for ``shape``. Offline, wait until one is free: the ring is what holds the
        decoder back. Slot references are small messages, and the sockets' kernel buffers take
        hundreds of them beyond the high-water marks, so without waiting the decoder runs ahead until
        the ring is full and then sends every further frame inline, a full copy through each socket."""
        while True:
            claim = self.ring.claim(shape, np.uint8)
            if claim is not None or self.plan.live or not self.ring.fits(shape):
                return claim
            if self.link.should_abort():
                raise Stopped()
            time.sleep(SLOT_WAIT_S)

    def _drop_claim(self) -> None:
        if self.claim is not None:
            self.ring.unclaim(self.claim[0])
            self.claim = None

    def _ensure_ring(self, slot_bytes: int) -> bool:
        if not self.use_ring:
            return False
        if self.ring is None:
            try:
                self.ring = FrameRing.create(slot_bytes, self.ring_slots, READERS, self.run_pid)
            except RingError as exc:
                self.use_ring = False  # no shared memory to spare: inline pixels still work
                log.warning("%s: %s; frames travel inline (a copy per hop) instead", self.plan.name, exc)
                return False
        return True

    def _into_ring(self, message: Message, image: np.ndarray, i420: np.ndarray | None = None) -> None:
        """Pixels decoded into the claimed slot stay there; others are copied into a free slot, or
        travel inline when the ring cannot take them (live and the ring is full, or too large). The
        source's yuv420p planes, when it has them, go into the slot after the RGB pixels."""
        if self.claim is not None and image is self.claim[1]:
            slot = self.claim[0]
            self.claim = None
        else:
            self._drop_claim()
            if image.dtype != np.uint8 or not self._ensure_ring(image.nbytes):
                return
            claim = self._claim(image.shape)
            if claim is None:
                return
            slot, pixels = claim
            pixels[...] = image
        if i420 is not None and self.ring.fits((image.nbytes + i420.nbytes,)):
            self.ring.view(slot, i420.shape, writable=True, offset=image.nbytes)[...] = i420
            message.meta[I420] = True
        self.ring.commit(slot)
        message.arrays = {}
        message.slot = [self.ring.name, slot, list(image.shape)]

    def control(self, kind: str, **meta) -> None:
        message = control_message(kind, self.plan.name, self.seq, self.session, **meta)
        message.segment = self.segment
        if kind == SKIP:
            message.frame = meta.get("frame")
        self._send_both(message)

    def writable(self, timeout_ms: int) -> bool:
        """True when both receivers can take a message now (live mode sends only then)."""
        return bool(self.gpu.poll(timeout_ms, zmq.POLLOUT)) and bool(self.render.poll(0, zmq.POLLOUT))

    def _send_both(self, message: Message) -> None:
        send_until(self.gpu, message, self.link.should_abort)
        send_until(self.render, message, self.link.should_abort)
        self.seq += 1

    def close(self, finished: bool) -> None:
        close_sender(self.gpu, finished)
        close_sender(self.render, finished)
        if self.ring is not None:
            # Readers that mapped the ring keep their mapping; the name goes away with the run.
            self.ring.close()


class DecodeStage(Stage):
    """Reads one source and sends every frame on; the source's end (or a stop) sends the final EOS."""

    def __init__(self, context: zmq.Context, spec: WorkerSpec, link: StageLink) -> None:
        (plan,) = spec.sources
        self.plan = plan
        self.link = link
        self.sender = FrameSender(context, spec, plan, link)
        self.sources = ExitStack()  # the open source, closed in every state
        self.decoded = 0
        self.live = _LiveReader(spec, plan, self.sender, link) if plan.live else None

    def start(self) -> Ready:
        # Opened here, inside the runtime's care: a source that fails to open is closed with the rest.
        if self.live is not None:
            self.live.start(self.sources)
        else:
            source = open_source(self.plan.info, frame_buffer=self.sender.frame_buffer)
            self.frames = self.sources.enter_context(source)
        return Ready()

    def poll_ms(self) -> int:
        return 0  # no inputs: a turn is one frame read (or, live, one wait on the reader's queue)

    def step(self) -> None:
        if self.live is not None:
            self.finished = self.live.step()
            return
        frame = next(self.frames, None)
        if frame is None:
            self.finished = True
            return
        self.sender.frame(frame)
        self.decoded += 1

    def stop(self) -> None:
        self.finished = True

    def finish(self) -> Done:
        self._close_source()
        self.sender.control(EOS, segment=self.sender.segment, final=True)
        decoded = self.live.counts["decoded"] if self.live is not None else self.decoded
        return Done(source=self.plan.name, frames=decoded)

    def _close_source(self) -> None:
        if self.live is not None:
            self.live.stop()
        self.sources.close()
        if self.live is not None and self.live.reader.is_alive():
            self.live.reader.join(timeout=5.0)

    def close(self, finished: bool) -> None:
        try:
            self._close_source()
        finally:
            self.sender.close(finished=finished)


# Queue entries for frames the live source dropped itself, before this stage took them.
SOURCE_BACKLOG = "source_backlog"


class _LiveQueue:
    """Frames waiting to be sent; when full, the oldest frame becomes a ``skip`` (dropped, counted)."""

    def __init__(self, capacity: int) -> None:
        self.items: deque = deque()
        self.capacity = capacity
        self.frames = 0
        self.lock = threading.Condition()
        self.finished = False

    def put(self, frame: DecodedFrame) -> int | None:
        """Queue ``frame``; returns the index of a frame it displaced, if any."""
        with self.lock:
            dropped = None
            if self.frames >= self.capacity:
                for i, item in enumerate(self.items):
                    if isinstance(item, DecodedFrame):
                        self.items[i] = ("skip", item.index, item.width, item.height)
                        self.frames -= 1
                        dropped = item.index
                        break
            self.items.append(frame)
            self.frames += 1
            self.lock.notify()
            return dropped

    def skipped(self, index: int, width: int, height: int) -> None:
        """A frame the source itself dropped before this stage saw it: its ``skip`` keeps its place."""
        with self.lock:
            self.items.append((SOURCE_BACKLOG, index, width, height))
            self.lock.notify()

    def finish(self) -> None:
        with self.lock:
            self.finished = True
            self.lock.notify()

    def peek(self, timeout: float):
        with self.lock:
            if not self.items and not self.finished:
                self.lock.wait(timeout)
            return self.items[0] if self.items else None

    def pop(self, expected) -> bool:
        """Remove the head if it is still ``expected`` (the reader may have turned it into a skip)."""
        with self.lock:
            if self.items and self.items[0] is expected:
                self.items.popleft()
                if isinstance(expected, DecodedFrame):
                    self.frames -= 1
                return True
            return False


class _LiveReader:
    """A live source: a reader thread pulls frames into a short queue; each step sends what it holds."""

    def __init__(self, spec: WorkerSpec, plan: SourcePlan, sender: FrameSender, link: StageLink) -> None:
        self.plan = plan
        self.sender = sender
        self.link = link
        self.options = live_options(spec.config)
        self.stats = SourceStats(plan.name)  # the source's own drops and reconnects, forwarded on
        self.forwarded = _StatsForwarder(self.stats, link, plan.name)
        self.queue = _LiveQueue(LIVE_QUEUE_FRAMES)
        self.counts = {"decoded": 0}
        self.dropped: deque = deque()
        self.error: list[BaseException] = []
        self.stopping = threading.Event()
        self.reader = threading.Thread(target=self._read, name=f"live-reader-{plan.name}", daemon=True)

    def start(self, sources: ExitStack) -> None:
        self.frames = sources.enter_context(open_source(self.plan.info, self.options, self.stats))
        self.reader.start()

    def stop(self) -> None:
        """Make the reader thread leave before its source is closed. A file read live must not be closed
        under the reader: closing a PyAV container while another thread decodes from it frees memory the
        decode is using (the process crashes), so the reader is joined first; it leaves after the frame it
        is decoding. A camera's ``LiveSource`` may be closed from any thread, and closing it is what
        unblocks a reader that waits for the camera (connecting, reconnecting, reading)."""
        self.stopping.set()
        if self.plan.info.kind != "live" and self.reader.is_alive():
            self.reader.join()

    def _read(self) -> None:
        try:
            for frame in self.frames:
                self.counts["decoded"] += 1
                # Frames the live source dropped while this stage was behind (already counted as
                # drops by the source): each still gets its "skipped" line, in order.
                for gone in frame.extra.pop("dropped_before", ()):
                    self.queue.skipped(gone["frame"], frame.width, frame.height)
                dropped = self.queue.put(frame)
                if dropped is not None:
                    self.dropped.append(dropped)
                if self.stopping.is_set():
                    break
        except Exception as exc:  # handed to the sending side, which raises it
            self.error.append(exc)
        finally:
            self.queue.finish()

    def step(self) -> bool:
        """Send what the queue holds now; True once the source has ended."""
        name = self.plan.name
        while self.dropped:
            self.link.emit(Drop(source=name, cause="behind", frame=self.dropped.popleft()))
        self.forwarded.update()
        head = self.queue.peek(timeout=0.1)
        if head is None:
            if self.queue.finished:
                if self.error:
                    raise self.error[0]
                return True
            return False
        if isinstance(head, DecodedFrame):
            if not self.sender.writable(timeout_ms=20):
                return False  # meanwhile the reader may turn this frame into a skip
            if self.queue.pop(head):
                self.sender.frame(head)
                self.link.emit(FrameIn(source=name))
        elif self.queue.pop(head):
            kind, index, width, height = head
            cause = SOURCE_BACKLOG if kind == SOURCE_BACKLOG else "behind"
            self.sender.control(SKIP, frame=index, width=width, height=height, cause=cause)
            self.link.emit(FrameIn(source=name))
        return False


class _StatsForwarder:
    """Sends the coordinator what the live source counted itself (its own drops, reconnects, frames in)."""

    def __init__(self, stats, link: StageLink, name: str) -> None:
        self.stats = stats
        self.link = link
        self.name = name
        self.drops: dict[str, int] = {}
        self.reconnects = 0
        self.last = 0.0

    def update(self) -> None:
        now = time.monotonic()
        if now - self.last < 0.5:
            return
        self.last = now
        summary = self.stats.summary()
        for cause, count in summary.get("drops_by_cause", {}).items():
            delta = int(count) - self.drops.get(cause, 0)
            if delta > 0:
                self.link.emit(Drop(source=self.name, cause=cause, count=delta))
                self.drops[cause] = int(count)
        reconnects = int(summary.get("reconnects", 0))
        for _ in range(reconnects - self.reconnects):
            self.link.emit(Reconnect(source=self.name))
        self.reconnects = reconnects
