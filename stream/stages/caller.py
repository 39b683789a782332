"""The render stage's outlet to the Python API's caller (link ``api`` of the topology table).

Every position of the source (a frame with its results, or a skipped frame) goes to the caller as one
message: ``results`` with the model outputs as arrays (and the annotated ``image`` when the caller asked
for it), or ``skip``; the source's final ``eos`` follows its last position. The message's ``frame``,
``pts`` and ``meta`` ``width``/``height`` are the ones its JSONL line has.

Offline the outlet blocks while the caller's queue is full: a slow caller slows the run and loses
nothing (backpressure reaches the decoder through the stage's full inputs). Live it never blocks: at
most ``queue_frames`` results wait in the stage beyond the socket's own queue, and when more come the
oldest waiting ones become ``skip`` messages (their arrays dropped), each counted as a ``caller`` drop.
"""

from __future__ import annotations

import dataclasses
from collections import deque

import numpy as np
import zmq

from stream.media.frames import DecodedFrame, ModelOutputs
from stream.runtime import topology
from stream.runtime.events import Drop
from stream.runtime.messages import EOS, RESULTS, SKIP, Message, control_message, result_arrays
from stream.runtime.stage import SourcePlan, StageLink, WorkerSpec
from stream.runtime.transport import send_message, send_until

CALLER_DROP = "caller"  # the drop cause of results a live caller did not take in time
# Live: skip messages waiting for a caller that reads nothing; beyond this the oldest are let go (the
# caller then sees a gap in frame numbers; every one is still counted as a drop).
MAX_WAITING_SKIPS = 10_000


class CallerOutlet:
    """Sends one source's positions to the caller: blocking offline, dropping the oldest live."""

    def __init__(self, context: zmq.Context, spec: WorkerSpec, plan: SourcePlan, link: StageLink) -> None:
        self.sock = topology.open(context, spec, "api")
        self.link = link
        self.source = plan.name
        self.live = plan.live
        self.images = spec.caller_images
        self.capacity = spec.config.queue_frames
        self.waiting: deque[Message] = deque()

    def put(
        self,
        frame_msg: Message,
        frame: DecodedFrame,
        result: ModelOutputs | None,
        image: np.ndarray | None,
    ) -> None:
        """Send one position: ``result`` None for a skipped frame; ``image`` the annotated picture."""
        arrays = {} if result is None else result_arrays(result)
        if self.images and image is not None and result is not None:
            # A copy: the image may be the frame's own pixels, in a ring slot the decoder reuses once
            # this stage releases it, while a zero-copy send or a waiting message still reads it.
            arrays["image"] = np.array(image)
        message = Message(
            kind=SKIP if result is None else RESULTS,
            source=self.source,
            seq=frame_msg.seq,
            frame=frame.index,
            segment=frame_msg.segment,
            pts=frame.pts,
            pts_raw=frame.pts_raw,
            time_base=frame.time_base,
            capture=frame_msg.capture,
            session=frame_msg.session,
            meta={"width": frame.width, "height": frame.height},
            arrays=arrays,
        )
        if not self.live:
            send_until(self.sock, message, self.link.should_abort)
            return
        self.waiting.append(message)
        self._make_room()
        self.flush()

    def _make_room(self) -> None:
        """Live: the oldest waiting results beyond ``capacity`` become skips (counted drops)."""
        results = sum(1 for message in self.waiting if message.kind == RESULTS)
        excess = results - self.capacity
        if excess <= 0:
            return
        for i, message in enumerate(self.waiting):
            if excess == 0:
                break
            if message.kind == RESULTS:
                self.waiting[i] = dataclasses.replace(message, kind=SKIP, arrays={})
                self.link.emit(Drop(source=self.source, cause=CALLER_DROP, frame=message.frame))
                excess -= 1
        while len(self.waiting) > self.capacity + MAX_WAITING_SKIPS and self.waiting[0].kind == SKIP:
            self.waiting.popleft()

    def flush(self) -> None:
        """Live: send what the caller's queue takes now, oldest first, without blocking."""
        while self.waiting:
            try:
                send_message(self.sock, self.waiting[0], flags=zmq.NOBLOCK)
            except zmq.Again:
                return
            self.waiting.popleft()

    def end(self, eos: Message) -> None:
        """The source's final ``eos`` arrived: everything waiting, then the ``eos``, reaches the caller
        (blocking: the run waits for the caller to take it, or aborts)."""
        self.waiting.append(control_message(EOS, self.source, eos.seq, eos.session, final=True))
        while self.waiting:
            send_until(self.sock, self.waiting.popleft(), self.link.should_abort)

    def close(self) -> None:
        self.sock.close(linger=0)
