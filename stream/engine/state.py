"""What the engine carries from one frame of a source to the next, per source and segment.

- the boxes to crop persons from between detector runs (``--detect-every`` k > 1): the last detector
  boxes, replaced by boxes around the latest keypoints once those are decoded;
- the crop-box smoother (``trackers.CropBoxSmoother``) that steadies the boxes persons are cropped from;
- the segmentation smoother (``trackers.SegmentationSmoother``) of the label maps' probabilities;
- one smoother per dense task (normals, pointmap, matte): the same smoother, blending the maps
  themselves (EMA) along the optical flow of the frames.

Each entry is led by the number of the segment it belongs to, so a new segment (reconnect, resolution
change) never starts from the state of the one before, and ``end_segment`` forgets a segment's state
once its ``eos`` has left the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

import numpy as np

from stream.runtime.messages import Message

if TYPE_CHECKING:
    from trackers import CropBoxSmoother, SegmentationSmoother

T = TypeVar("T")

SEG_SMOOTH_MAX_SIDE = 384  # longest side of the probability maps that temporal smoothing works on


class SourceStates:
    """Every source's carried boxes and smoothers, each entry for one segment of the source."""

    def __init__(self) -> None:
        # (segment, frame the boxes belong to, boxes, scores), carried between detector runs;
        self.last_boxes: dict[str, tuple[int, int, np.ndarray, np.ndarray]] = {}
        # (segment, smoother) of the label maps and, when smoothing is on, of the crop boxes.
        self.seg_smoothers: dict[str, tuple[int, SegmentationSmoother]] = {}
        self.crop_smoothers: dict[str, tuple[int, CropBoxSmoother]] = {}
        self.dense_smoothers: dict[str, tuple[int, dict[str, SegmentationSmoother]]] = {}

    # --- boxes between detector runs -----------------------------------------------------------------

    def segments_with_boxes(self) -> set[tuple[str, int]]:
        """The (source, segment) pairs that have boxes to carry to their next frames."""
        return {(source, entry[0]) for source, entry in self.last_boxes.items()}

    def detected(self, message: Message, boxes: np.ndarray, scores: np.ndarray) -> None:
        """The detector's boxes of ``message``'s frame, carried until the next detector run."""
        self.last_boxes[message.source] = (message.segment, int(message.frame), boxes, scores)

    def carried(self, message: Message) -> tuple[np.ndarray, np.ndarray]:
        """The boxes and scores to crop ``message``'s frame from when the detector skips it."""
        _, _, boxes, scores = self.last_boxes[message.source]
        return boxes, scores

    def carry(self, message: Message, boxes: np.ndarray, scores: np.ndarray) -> None:
        """Boxes derived from ``message``'s keypoints, for the frames after it.

        Batches overlap: a later frame's detection may already be there; it is never replaced with
        boxes from an older frame (or segment).
        """
        position = (message.segment, int(message.frame))
        if position > self.last_boxes.get(message.source, (-1, -1))[:2]:
            self.last_boxes[message.source] = (*position, boxes, scores)

    # --- smoothers -----------------------------------------------------------------------------------

    def crop_smoother(self, message: Message) -> CropBoxSmoother:
        from trackers import CropBoxSmoother

        return _segment_state(self.crop_smoothers, message, CropBoxSmoother)

    def seg_smoother(self, message: Message) -> SegmentationSmoother:
        from trackers import SegmentationSmoother

        return _segment_state(self.seg_smoothers, message, SegmentationSmoother)

    def dense_smoother(self, message: Message, task: str) -> SegmentationSmoother:
        """The smoother of ``task``'s maps of the message's source: an EMA (``uncertainty`` weighs class
        probabilities, which these maps are not) guided by the frames' optical flow."""
        from trackers import SegmentationSmoother

        per_task = _segment_state(self.dense_smoothers, message, dict)
        if task not in per_task:
            per_task[task] = SegmentationSmoother(mode="ema")
        return per_task[task]

    # --- segment ends --------------------------------------------------------------------------------

    def end_segment(self, source: str, segment: int) -> None:
        """Forget a source's state of ``segment`` and earlier ones, once that segment's ``eos`` has left.

        Frames of the next segment may have been computed before (they can share a group with the
        ``eos``, and on CPU a group is finished after the next one is computed): their state is kept.
        """
        for states in (self.last_boxes, self.seg_smoothers, self.crop_smoothers, self.dense_smoothers):
            entry = states.get(source)
            if entry is not None and entry[0] <= segment:
                del states[source]


def _segment_state(states: dict[str, tuple[int, T]], message: Message, make: Callable[[], T]) -> T:
    """The message's source's entry in ``states`` (segment, state); a new segment starts a fresh one."""
    segment, state = states.get(message.source, (None, None))
    if state is None or segment != message.segment:
        state = make()
        states[message.source] = (message.segment, state)
    return state


def smoothing_size(frame_hw: tuple[int, int]) -> tuple[int, int]:
    """The frame's size scaled down so its longest side is at most ``SEG_SMOOTH_MAX_SIDE``."""
    height, width = frame_hw
    scale = min(1.0, SEG_SMOOTH_MAX_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))
