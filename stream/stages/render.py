"""Render+sink stage (one per source): join frames with their results, draw, encode and write.

Frames come straight from the decoder (pixels never pass through the GPU worker's output), results
from the track stage; both are ordered by ``seq`` and joined. Every position goes to the source's
outputs (``stream.stages.outputs``: one JSONL line per frame, the annotated video with the source's
timestamps, label and dense maps, a published stream); a ``skip`` on either side writes a
``"skipped": true`` line. The final ``eos`` closes every sink, so the outputs are complete and
playable; on abort the sinks are closed too, with whatever was written. With a ``stream.Pipeline``
reading, every position also goes to it (``stream.stages.caller``).
"""

from __future__ import annotations

import sys
import time

import numpy as np
import zmq

from stream.edges.redact import redact
from stream.runtime import topology
from stream.runtime.errors import OutputError, first_line
from stream.runtime.events import Done, Progress, SinkClosed
from stream.runtime.messages import EOS, FRAME, Message, follow_up
from stream.runtime.reorder import ReorderBuffer
from stream.runtime.ring import RENDER_READER, release, resolve
from stream.runtime.stage import Stage, StageLink, WorkerSpec
from stream.runtime.transport import send_message
from stream.stages.caller import CallerOutlet
from stream.stages.outputs import SourceOutputs

CALLER_POLL_MS = 10  # live: how often results waiting for the caller are offered again


class Joiner:
    """Pairs the frame stream and the result stream of one source position by position."""

    def __init__(self) -> None:
        self.frames = ReorderBuffer()
        self.results = ReorderBuffer()
        self.ready_frames: list[Message] = []
        self.ready_results: list[Message] = []

    def add_frame(self, message: Message) -> None:
        self.ready_frames.extend(self.frames.push(message))

    def add_result(self, message: Message) -> None:
        self.ready_results.extend(self.results.push(message))

    def pairs(self):
        count = min(len(self.ready_frames), len(self.ready_results))
        frames, self.ready_frames = self.ready_frames[:count], self.ready_frames[count:]
        results, self.ready_results = self.ready_results[:count], self.ready_results[count:]
        for frame, result in zip(frames, results, strict=True):
            if frame.seq != result.seq:
                raise RuntimeError(f"frame seq {frame.seq} joined with result seq {result.seq}")
            yield frame, result


class RenderStage(Stage):
    """Joins one source's frames with its results, writes every position to the sinks and shows it."""

    def __init__(self, context: zmq.Context, spec: WorkerSpec, link: StageLink) -> None:
        (plan,) = spec.sources
        self.link = link
        self.source = plan.name
        # The frame queue holds what the GPU path has in flight; it never blocks the decoder for long
        # because the runtime drains both inputs.
        self.frames_in = topology.open(context, spec, "render_frames", source=plan.name)
        self.results_in = topology.open(context, spec, "tracked", source=plan.name)
        self.inputs = [self.frames_in, self.results_in]
        cfg = spec.config
        self.preview = topology.open(context, spec, "preview") if cfg.show or cfg.serve else None
        self.outputs = SourceOutputs(spec, plan)
        self.caller = CallerOutlet(context, spec, plan, link) if spec.has_caller else None
        self.live = plan.live
        self.final_eos: Message | None = None
        self.joiner = Joiner()
        self.closed = False
        self.session = spec.session
        self.top_id = 0  # the highest track id written
        self.failed = False  # live: the sinks could not write (a full disk) and are closed

    def poll_ms(self) -> int:
        # Live results waiting for the caller go out as soon as its queue has room.
        return CALLER_POLL_MS if self.caller is not None and self.caller.waiting else super().poll_ms()

    def step(self) -> None:
        if self.caller is not None:
            self.caller.flush()

    def receive(self, sock: zmq.Socket, message: Message) -> None:
        if message.session != self.session:
            return  # sent for this source's workers before they were restarted (its ring is gone)
        if sock is self.frames_in:
            resolve(message)
            self.joiner.add_frame(message)
        else:
            self.joiner.add_result(message)
        for frame_msg, result_msg in self.joiner.pairs():
            if frame_msg.kind == EOS or result_msg.kind == EOS:
                if frame_msg.meta.get("final"):
                    self.finished = True
                    self.final_eos = frame_msg
                continue
            self._write(frame_msg, result_msg)

    def _write(self, frame_msg: Message, result_msg: Message) -> None:
        try:
            if not self.failed:
                self._write_outputs(frame_msg, result_msg)
        except OSError as exc:
            self._sinks_failed(exc)
        finally:
            release(frame_msg, RENDER_READER)  # written and shown: the slot may be reused

    def _sinks_failed(self, exc: OSError) -> None:
        """A file of this source could not be written (a full disk, an I/O error): close the sinks with
        what they hold, then see ``_report_failure``."""
        message = f"{redact(self.source)}: {first_line(exc)}"
        self._close_sinks(complete=False, error=message)
        self.failed = True
        self._report_failure(message)

    def _report_failure(self, message: str) -> None:
        """Offline every frame must be written, so the run ends (exit status 2). Live, the run goes on:
        the other cameras keep recording, and this one's frames pass by unwritten until the run stops
        (then exit status 2); the line is printed now, not hours later at the end of the run."""
        if not self.live:
            raise OutputError(message)
        line = f"{message}; its outputs are closed with what was written, the run goes on without them"
        print(f"sapiens-stream: error: {line}", file=sys.stderr, flush=True)

    def _write_outputs(self, frame_msg: Message, result_msg: Message) -> None:
        written = self.outputs.write_position(frame_msg, result_msg)
        image = written.image
        latency = time.time() - frame_msg.capture
        if written.result is not None and written.result.track_ids is not None and written.result.num_persons:
            self.top_id = max(self.top_id, int(written.result.track_ids.max()))
        self.link.emit(
            Progress(
                source=self.source,
                frame=frame_msg.frame,
                skipped=written.result is None,
                latency=latency,
                stamps=result_msg.stamps,
                top_id=self.top_id,
            )
        )
        if self.caller is not None:
            self.caller.put(frame_msg, written.frame, written.result, image)
        if self.preview is not None and image is not None:
            if frame_msg.slot is not None and image is frame_msg.arrays.get("image"):
                # The slot is released below and reused by the decoder, while a zero-copy
                # send may still be reading it: the preview gets its own copy.
                image = image.copy()
            _publish_preview(self.preview, self.source, image, frame_msg)

    def finish(self) -> Done:
        error = self._close_sinks(complete=True)
        if error:
            self._report_failure(error)  # the encoder's last frames or the trailer did not fit
        if self.caller is not None and self.final_eos is not None:
            self.caller.end(self.final_eos)
        return Done(source=self.source, frames=self.outputs.frames_written)

    def _close_sinks(self, complete: bool, error: str = "") -> str:
        """Close the sinks once (playable from here on) and tell the coordinator what they hold and,
        when they stopped early, why (``error``). Returns that error, or why a file could not be
        finished; "" when none."""
        if self.closed:
            return ""
        self.closed = True
        try:
            self.outputs.close()
        except OSError as exc:
            error = error or f"{redact(self.source)}: {first_line(exc)}"
            complete = False
        outputs = self.outputs
        self.link.emit(
            SinkClosed(
                source=self.source,
                frames=outputs.frames_written,
                lines=outputs.lines,
                skipped=outputs.skipped,
                outputs=outputs.outputs(),
                complete=complete,
                error=error,
            )
        )
        return error

    def close(self, finished: bool) -> None:
        try:
            self._close_sinks(complete=False)
        finally:
            self.frames_in.close(linger=0)
            self.results_in.close(linger=0)
            if self.preview is not None:
                self.preview.close(linger=0)
            if self.caller is not None:
                self.caller.close()


def _publish_preview(sock: zmq.Socket, name: str, image: np.ndarray, frame_msg: Message) -> None:
    message = follow_up(frame_msg, FRAME, {"image": image})
    message.source = name
    try:
        send_message(sock, message, flags=zmq.NOBLOCK)
    except zmq.Again:
        pass  # the preview is behind: this frame is simply not shown
