"""The unit every source produces: one decoded frame with its timing."""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np


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
