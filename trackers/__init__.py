"""Person tracking and temporal smoothing of keypoints, boxes and segmentation maps (numpy only)."""

from trackers.one_euro import BoxSmoother, KeypointSmoother
from trackers.person_tracker import PersonTracker
from trackers.seg_smoothing import SegmentationSmoother

__all__ = ["BoxSmoother", "KeypointSmoother", "PersonTracker", "SegmentationSmoother"]
