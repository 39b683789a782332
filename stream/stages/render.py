"""Render+sink stage (one per source): join frames with their results, draw, encode and write.

Frames come straight from the decoder (pixels never pass through the GPU worker's output), results
from the track stage; both are ordered by ``seq`` and joined. Every frame gets one JSONL line; the
annotated image goes to the video (source frame rate, time base and timestamps kept); segmentation
label maps are written losslessly. A ``skip`` on either side writes a ``"skipped": true`` line. The
final ``eos`` closes every sink, so the outputs are complete and playable; on abort the sinks are
closed too, with whatever was written.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np
import zmq

from stream.media.frames import I420, FrameResult
from stream.runtime import topology
from stream.runtime.events import Done, Progress, SinkClosed
from stream.runtime.messages import (
    EOS,
    FRAME,
    RESULTS,
    SKIP,
    Message,
    follow_up,
    to_decoded_frame,
    to_frame_result,
)
from stream.runtime.reorder import ReorderBuffer
from stream.runtime.ring import RENDER_READER, release, resolve
from stream.runtime.stage import SourcePlan, Stage, StageLink, WorkerSpec
from stream.runtime.transport import send_message

# Live recordings' time base: RTSP's 90 kHz video clock, fine enough for any camera's timestamps.
LIVE_TIME_BASE = Fraction(1, 90_000)


class SourceOutputs:
    """A source's sinks: annotated video, JSONL and (for segmentation) label maps.

    Live runs with ``segment_time`` rotate them: every ``segment_time`` seconds of capture time the files
    are closed and new ones opened, named ``<name>_<UTC start time>`` (``cam_20261202T153000Z.mp4``), so
    a run of days keeps bounded files that can be archived or deleted one by one.
    """

    def __init__(self, spec: WorkerSpec, plan: SourcePlan) -> None:
        from stream.drawing.overlay import Renderer
        from stream.edges.sinks import JsonlSink

        cfg = spec.config
        self.cfg = cfg
        self.plan = plan
        self.out = Path(cfg.out)
        self.renderer = Renderer(
            keypoint_threshold=cfg.keypoint_threshold, draw_boxes=cfg.draw_boxes, seg_alpha=cfg.seg_alpha
        )
        self.rotate_after = cfg.segment_time if plan.live else None
        self.label_maps = cfg.label_maps if cfg.label_maps is not None else not plan.live
        self.stem = plan.name
        self.part_start: float | None = None
        self.jsonl = None if self.rotate_after else JsonlSink(self.out / f"{self.stem}.jsonl")
        self.video = None
        self.video_size: tuple[int, int] | None = None
        self.video_start: float | None = None  # live: the first frame's time, the recording's zero
        self.segment = 0
        self.labels = None
        self.publisher = self._publisher() if cfg.publish else None
        self.frames_written = 0
        self.lines = 0
        self.skipped = 0

    def write(self, frame_msg: Message, result_msg: Message) -> np.ndarray | None:
        """Write one position of the source; returns the rendered image (None for a skipped frame).

        The image may be the frame message's own pixels (when nothing was drawn): valid only until the
        message's frame slot is released.
        """
        from stream.edges.sinks import jsonl_record

        self._start_part_if_due(frame_msg.capture)
        frame = to_decoded_frame(frame_msg) if frame_msg.kind == FRAME else None
        if frame_msg.kind == SKIP or result_msg.kind == SKIP or frame is None:
            skipped = (
                frame
                if frame is not None
                else to_decoded_frame(result_msg if result_msg.kind != SKIP else frame_msg)
            )
            self.jsonl.write(jsonl_record(self.plan.name, skipped, None, skipped=True))
            self.lines += 1
            self.skipped += 1
            return None
        result = to_frame_result(result_msg) if result_msg.kind == RESULTS else FrameResult.empty()
        self.jsonl.write(jsonl_record(self.plan.name, frame, result))
        self.lines += 1
        if result.seg_labels is not None and self.label_maps:
            self._label_sink().write(frame.index, result.seg_labels)
        if self.renderer.draws_on(result, banner=self.cfg.banner):
            image = self.renderer(frame.image, result, banner=self.cfg.banner)
            self._write_video(image, frame_msg)
        else:
            # Nothing to draw: encode the received frame as it is, without a copy, and from the
            # source's own yuv420p planes when the decoder passed them on (no conversion either).
            image = frame.image
            self._write_video(image, frame_msg, frame_msg.arrays.get(I420))
        return image

    def _write_video(self, image: np.ndarray, frame_msg: Message, i420: np.ndarray | None = None) -> None:
        if self.video is None:
            self.video = self._open_video(image, frame_msg)
            self.video_size = (self.video.width, self.video.height)
        elif frame_msg.segment != self.segment:
            self.video.start_segment()  # a jump or reconnect leaves no gap and no backwards step
            if self.publisher is not None:
                self.publisher.new_segment()
        self.segment = frame_msg.segment
        pts = self._video_pts(frame_msg)
        size = (image.shape[1], image.shape[0])
        if i420 is not None and size == self.video_size == self.video.encoded_size:
            self.video.write_i420(i420, pts)
        else:
            if size != self.video_size:
                # A resolution change mid-source: one playable file at the first size.
                image = cv2.resize(image, self.video_size, interpolation=cv2.INTER_AREA)
            self.video.write(image, pts)
        if self.publisher is not None:
            self.publisher.write(image, frame_msg.timestamp)
        self.frames_written += 1

    def _open_video(self, image: np.ndarray, frame_msg: Message):
        from stream.edges.sinks import VideoSink

        height, width = image.shape[:2]
        rate = frame_msg.meta.get("rate")
        if rate:
            frame_rate = Fraction(rate[0], rate[1])
        else:
            frame_rate = Fraction(self.cfg.folder_fps).limit_denominator(1001)
        # Offline: the source's own time base and pts, kept exactly. Live: the camera's timing, so the
        # recording plays at real speed (variable frame rate where the camera's is), written as fragments
        # so that a killed process leaves a playable file.
        time_base = LIVE_TIME_BASE if self.plan.live else frame_msg.time_base
        return VideoSink(
            self.out / f"{self.stem}.mp4",
            width,
            height,
            frame_rate,
            time_base=time_base,
            codec=self.cfg.codec,
            crf=self.cfg.crf,
            preset=self.cfg.preset,
            fragmented=self.plan.live,
        )

    def _publisher(self):
        from stream.edges.metrics import redact_url
        from stream.edges.publish import Publisher

        rate = self.plan.info.frame_rate or Fraction(self.cfg.folder_fps).limit_denominator(1001)
        return Publisher(self.cfg.publish, self.plan.name, rate, redact_url(self.cfg.publish))

    def _video_pts(self, frame_msg: Message) -> int | None:
        """The frame's pts in the video's time base (None: one frame after the previous one)."""
        if not self.plan.live:
            return frame_msg.pts_raw if frame_msg.time_base is not None else None
        # The camera's clock; the capture clock only for a camera that sends no timestamps.
        seconds = frame_msg.pts if frame_msg.pts is not None else frame_msg.capture
        if self.video_start is None:
            self.video_start = seconds
        return round((seconds - self.video_start) / LIVE_TIME_BASE)

    def _label_sink(self):
        if self.labels is None:
            from stream.edges.sinks import LabelMapSink

            self.labels = LabelMapSink(self.out / f"{self.stem}_seg")
        return self.labels

    def _start_part_if_due(self, capture: float) -> None:
        """When rotating: open the first part's files, or close the current part's and open the next."""
        from stream.edges.sinks import JsonlSink

        if self.rotate_after is None:
            return
        due = self.part_start is not None and capture - self.part_start >= self.rotate_after
        if self.jsonl is not None and not due:
            return
        if self.jsonl is not None:
            self._close_files()
            self.video = self.labels = None
            self.video_start = None
        self.part_start = capture
        stamp = datetime.fromtimestamp(capture, timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        self.stem = f"{self.plan.name}_{stamp}"
        self.jsonl = JsonlSink(self.out / f"{self.stem}.jsonl")

    def _close_files(self) -> None:
        for sink in (self.video, self.jsonl, self.labels):
            if sink is not None:
                sink.close()

    def close(self) -> None:
        self._close_files()
        if self.publisher is not None:
            self.publisher.close()

    def outputs(self) -> dict[str, str]:
        """The current (last) part's files."""
        paths = {"jsonl": str(self.out / f"{self.stem}.jsonl")}
        if self.video is not None:
            paths["video"] = str(self.out / f"{self.stem}.mp4")
        if self.labels is not None:
            paths["seg"] = str(self.out / f"{self.stem}_seg")
        return paths


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
        self.outputs = SourceOutputs(spec, plan)
        self.joiner = Joiner()
        self.closed = False
        # The frame queue holds what the GPU path has in flight; it never blocks the decoder for long
        # because the runtime drains both inputs.
        self.frames_in = topology.open(context, spec, "render_frames", source=plan.name)
        self.results_in = topology.open(context, spec, "tracked", source=plan.name)
        self.inputs = [self.frames_in, self.results_in]
        cfg = spec.config
        self.preview = topology.open(context, spec, "preview") if cfg.show or cfg.serve else None

    def receive(self, sock: zmq.Socket, message: Message) -> None:
        if sock is self.frames_in:
            resolve(message)
            self.joiner.add_frame(message)
        else:
            self.joiner.add_result(message)
        for frame_msg, result_msg in self.joiner.pairs():
            if frame_msg.kind == EOS or result_msg.kind == EOS:
                self.finished = self.finished or bool(frame_msg.meta.get("final"))
                continue
            self._write(frame_msg, result_msg)

    def _write(self, frame_msg: Message, result_msg: Message) -> None:
        image = self.outputs.write(frame_msg, result_msg)
        latency = time.time() - frame_msg.capture
        self.link.emit(
            Progress(
                source=self.source,
                frame=frame_msg.frame,
                skipped=image is None,
                latency=latency,
                stamps=result_msg.stamps,
            )
        )
        if self.preview is not None and image is not None:
            if frame_msg.slot is not None and image is frame_msg.arrays.get("image"):
                # The slot is released below and reused by the decoder, while a zero-copy
                # send may still be reading it: the preview gets its own copy.
                image = image.copy()
            _publish_preview(self.preview, self.source, image, frame_msg)
        release(frame_msg, RENDER_READER)  # written and shown: the slot may be reused

    def finish(self) -> Done:
        self._close_sinks(complete=True)
        return Done(source=self.source, frames=self.outputs.frames_written)

    def _close_sinks(self, complete: bool) -> None:
        """Close the sinks once (playable from here on) and tell the coordinator what they hold."""
        if self.closed:
            return
        self.closed = True
        self.outputs.close()
        outputs = self.outputs
        self.link.emit(
            SinkClosed(
                source=self.source,
                frames=outputs.frames_written,
                lines=outputs.lines,
                skipped=outputs.skipped,
                outputs=outputs.outputs(),
                complete=complete,
            )
        )

    def close(self, finished: bool) -> None:
        try:
            self._close_sinks(complete=False)
        finally:
            self.frames_in.close(linger=0)
            self.results_in.close(linger=0)
            if self.preview is not None:
                self.preview.close(linger=0)


def _publish_preview(sock: zmq.Socket, name: str, image: np.ndarray, frame_msg: Message) -> None:
    message = follow_up(frame_msg, FRAME, {"image": image})
    message.source = name
    try:
        send_message(sock, message, flags=zmq.NOBLOCK)
    except zmq.Again:
        pass  # the preview is behind: this frame is simply not shown
