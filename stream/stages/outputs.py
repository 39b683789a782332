"""A source's outputs, as the render stage writes them: JSONL, annotated video (a file, and a published
stream), segmentation label maps and dense maps, rotated into parts on long live runs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from stream.media.frames import I420, DecodedFrame, ModelOutputs
from stream.runtime.messages import FRAME, RESULTS, SKIP, Message, to_decoded_frame, to_frame_result
from stream.runtime.stage import SourcePlan, WorkerSpec

# Live recordings' time base: RTSP's 90 kHz video clock, fine enough for any camera's timestamps.
LIVE_TIME_BASE = Fraction(1, 90_000)


@dataclass
class Written:
    """One position of a source as written: its frame, what was found (None: a skipped frame) and the
    annotated image (None when skipped, or when no video, stream, preview or caller needs one)."""

    frame: DecodedFrame
    result: ModelOutputs | None
    image: np.ndarray | None


class SourceOutputs:
    """A source's sinks: annotated video, JSONL, label maps (segmentation) and dense maps.

    Live runs with ``segment_time`` rotate them: every ``segment_time`` seconds of capture time the files
    are closed and new ones opened, named ``<name>_<UTC start time>`` (``cam_20261202T153000Z.mp4``), so
    a run of days keeps bounded files that can be archived or deleted one by one. A live source's
    outputs reopened after a crash of its workers are named the same way by their start time, so they
    never overwrite the files written before. Without an output directory (``out=None``, the Python
    API's default) no file is written.
    """

    def __init__(self, spec: WorkerSpec, plan: SourcePlan) -> None:
        from stream.drawing.overlay import OverlayDrawer
        from stream.edges.sinks import JsonlSink

        cfg = spec.config
        self.cfg = cfg
        self.plan = plan
        self.files = cfg.out is not None
        self.out = Path(cfg.out) if self.files else None
        self.overlay = OverlayDrawer(
            keypoint_threshold=cfg.keypoint_threshold, draw_boxes=cfg.draw_boxes, seg_alpha=cfg.seg_alpha
        )
        self.rotate_after = cfg.segment_time if plan.live and self.files else None
        self.label_maps = self.files and (cfg.label_maps if cfg.label_maps is not None else not plan.live)
        self.stem = plan.name if spec.generation == 0 else _timed_stem(plan.name, time.time())
        self.part_start: float | None = None
        opened_now = self.files and not self.rotate_after
        self.jsonl = JsonlSink(self.out / f"{self.stem}.jsonl") if opened_now else None
        self.video = None
        self.video_size: tuple[int, int] | None = None
        self.video_start: float | None = None  # live: the first frame's time, the recording's zero
        self.segment = 0
        self.labels = None
        self.publisher = self._publisher() if cfg.publish else None
        self.dense: dict[str, object] = {}  # task -> DenseMapSink, opened with the first map
        self.views = None
        if cfg.view is not None or set(cfg.viewed) & {"normal", "pointmap", "matting"}:
            from stream.drawing.dense import DenseViews

            self.views = DenseViews(cfg.viewed, cfg.background)
        # Drawing costs: only when the video, a stream, the preview or the Python API's caller shows it.
        self.draw = self.files or bool(cfg.show or cfg.serve or cfg.publish) or spec.caller_images
        self.frames_written = 0
        self.lines = 0
        self.skipped = 0

    def write(self, frame_msg: Message, result_msg: Message) -> np.ndarray | None:
        """Write one position of the source; returns the rendered image (None for a skipped frame, or
        when nothing needs an image). See ``write_position``."""
        return self.write_position(frame_msg, result_msg).image

    def write_position(self, frame_msg: Message, result_msg: Message) -> Written:
        """Write one position of the source.

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
            if self.jsonl is not None:
                self.jsonl.write(jsonl_record(self.plan.name, skipped, None, skipped=True))
            self.lines += 1
            self.skipped += 1
            return Written(skipped, None, None)
        result = to_frame_result(result_msg) if result_msg.kind == RESULTS else ModelOutputs.empty()
        if self.jsonl is not None:
            self.jsonl.write(jsonl_record(self.plan.name, frame, result))
        self.lines += 1
        if result.seg_labels is not None and self.label_maps:
            self._label_sink().write(frame.index, result.seg_labels)
        if self.files:
            self._write_dense(frame.index, result)
        if not self.draw:
            return Written(frame, result, None)
        if self.views is not None:
            image = self.views(self.overlay, frame.image, result, banner=self.cfg.banner)
            self._show(image, frame_msg)
        elif self.overlay.draws_on(result, banner=self.cfg.banner):
            image = self.overlay(frame.image, result, banner=self.cfg.banner)
            self._show(image, frame_msg)
        else:
            # Nothing to draw: encode the received frame as it is, without a copy, and from the
            # source's own yuv420p planes when the decoder passed them on (no conversion either).
            image = frame.image
            self._show(image, frame_msg, frame_msg.arrays.get(I420))
        return Written(frame, result, image)

    def _show(self, image: np.ndarray, frame_msg: Message, i420: np.ndarray | None = None) -> None:
        """The image goes to the video file and to the published stream."""
        if self.files:
            self._write_video(image, frame_msg, i420)
        if self.publisher is not None:
            if frame_msg.segment != self.segment:
                self.publisher.new_segment()
            self.publisher.write(image, frame_msg.timestamp)
        self.segment = frame_msg.segment

    def _write_video(self, image: np.ndarray, frame_msg: Message, i420: np.ndarray | None = None) -> None:
        if self.video is None:
            self.video = self._open_video(image, frame_msg)
            self.video_size = (self.video.width, self.video.height)
        elif frame_msg.segment != self.segment:
            self.video.start_segment()  # a jump or reconnect leaves no gap and no backwards step
        pts = self._video_pts(frame_msg)
        size = (image.shape[1], image.shape[0])
        if i420 is not None and size == self.video_size == self.video.encoded_size:
            self.video.write_i420(i420, pts)
        else:
            if size != self.video_size:
                # A resolution change mid-source: one playable file at the first size.
                image = cv2.resize(image, self.video_size, interpolation=cv2.INTER_AREA)
            self.video.write(image, pts)
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
        from stream.edges.publish import Publisher
        from stream.edges.redact import redact

        rate = self.plan.info.frame_rate or Fraction(self.cfg.folder_fps).limit_denominator(1001)
        display = redact(self.cfg.publish)
        return Publisher(self.cfg.publish, self.plan.name, rate, display, pace=not self.plan.live)

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
            from stream.edges.map_sinks import LabelMapSink

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
            self.dense = {}
            self.video_start = None
        self.part_start = capture
        self.stem = _timed_stem(self.plan.name, capture)
        self.jsonl = JsonlSink(self.out / f"{self.stem}.jsonl")

    def _write_dense(self, frame_index: int, result: ModelOutputs) -> None:
        """Each dense map as a 16-bit PNG (and the pointmap as .npy when asked): see ``edges.map_sinks``."""
        from stream.edges.map_sinks import encode_alpha, encode_depth, encode_normals

        if result.normals is not None:
            self._dense_sink("normal").write_png(frame_index, encode_normals(result.normals))
        if result.pointmap is not None:
            sink = self._dense_sink("pointmap")
            sink.write_png(frame_index, encode_depth(result.pointmap))
            if self.cfg.save_pointmap:
                sink.write_npy(frame_index, result.pointmap)
        if result.alpha is not None:
            self._dense_sink("matting").write_png(frame_index, encode_alpha(result.alpha))

    def _dense_sink(self, task: str):
        if task not in self.dense:
            from stream.edges.map_sinks import DenseMapSink

            self.dense[task] = DenseMapSink(self.out / f"{self.stem}_{task}")
        return self.dense[task]

    def _close_files(self) -> None:
        """Close every file, even when one cannot be finished (a full disk); that failure is raised
        once the others are closed."""
        failure: OSError | None = None
        for sink in (self.video, self.jsonl, self.labels, *self.dense.values()):
            if sink is not None:
                try:
                    sink.close()
                except OSError as exc:
                    failure = failure or exc
        if failure is not None:
            raise failure

    def close(self) -> None:
        try:
            self._close_files()
        finally:
            if self.views is not None:
                self.views.close()
            if self.publisher is not None:
                self.publisher.close()

    def outputs(self) -> dict[str, str]:
        """The current (last) part's files."""
        if not self.files:
            return {}
        paths = {"jsonl": str(self.out / f"{self.stem}.jsonl")}
        if self.video is not None:
            paths["video"] = str(self.out / f"{self.stem}.mp4")
        if self.labels is not None:
            paths["seg"] = str(self.out / f"{self.stem}_seg")
        for task, sink in self.dense.items():
            paths[task] = str(sink.directory)
        return paths


def _timed_stem(name: str, start: float) -> str:
    """``<name>_<UTC start time>``: the name of a live part's files."""
    return f"{name}_{datetime.fromtimestamp(start, timezone.utc).strftime('%Y%m%dT%H%M%SZ')}"
