"""What sources are and produce: a source's description (``SourceInfo``), its error (``SourceError``),
one decoded frame with its timing (``DecodedFrame``) and what the models found in it (``FrameResult``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

# The key under which a video frame's own yuv420p planes travel with it: in ``DecodedFrame.extra``, and in
# a frame message's meta (a flag: its ring slot holds them after the RGB pixels) and arrays.
I420 = "i420"


class SourceError(ValueError):
    """A source that does not exist or cannot be decoded (the message is one line for the user)."""


@dataclass(frozen=True)
class SourceInfo:
    """What the pipeline needs to know about a source before reading it."""

    spec: str
    name: str
    kind: str  # "file", "folder", "image" or "live"
    frame_rate: Fraction | None
    time_base: Fraction | None
    num_frames: int | None
    width: int | None = None
    height: int | None = None
    frames_estimated: bool = False  # num_frames comes from the container's duration, not a frame count

    @property
    def is_live(self) -> bool:
        return self.kind == "live"


@dataclass
class DecodedFrame:
    """One decoded video frame, as a source hands it to the pipeline.

    ``index`` counts decoded frames of the source from 0 (the JSONL ``frame`` field); ``segment``
    increments whenever the source reconnects or changes resolution, so downstream state (trackers,
    encoders) knows to start afresh.
    """

    image: np.ndarray  # (H, W, 3) uint8 RGB, C-contiguous
    index: int
    pts: float | None  # presentation time in seconds, None when the container has none
    time_base: Fraction | None
    capture_time: float  # time.time() when the frame left the decoder
    segment: int = 0
    pts_raw: int | None = None  # the frame's pts in time_base units, for exact re-encoding
    extra: dict = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])


@dataclass
class FrameResult:
    """What the models found in one frame, in that frame's pixel coordinates.

    Arrays are numpy on the host; ``N`` persons, ``K`` keypoints. Fields of tasks that did not run
    are None.
    """

    boxes: np.ndarray  # (N, 4) float32 xyxy
    scores: np.ndarray  # (N,) float32 detector scores
    track_ids: np.ndarray  # (N,) int64, -1 where no track is assigned
    keypoints: np.ndarray | None = None  # (N, K, 2) float32 x, y
    keypoint_scores: np.ndarray | None = None  # (N, K) float32
    seg_labels: np.ndarray | None = None  # (H, W) uint8 class per pixel
    seg_probs: np.ndarray | None = None  # (C, H, W) float16/32, kept only when smoothing needs it

    @classmethod
    def empty(cls) -> FrameResult:
        return cls(
            boxes=np.zeros((0, 4), np.float32),
            scores=np.zeros((0,), np.float32),
            track_ids=np.zeros((0,), np.int64),
        )

    @property
    def num_persons(self) -> int:
        return int(self.boxes.shape[0])
