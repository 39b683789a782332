"""Every threshold of the person tracker, in one place.

Scores follow the distribution of ultralytics YOLO person detections: a clearly visible person scores
0.6-0.95, a partly occluded one 0.3-0.6, false positives mostly 0.1-0.45 (some of them persist on static
person-like objects). Match thresholds are distances (1 - similarity), as in ByteTrack's configuration
files, so the same numbers can be handed to ultralytics' trackers. Durations are in frames at 30 fps
(ByteTrack's convention) or in seconds, and are compared against timestamps, so they mean the same at any
frame rate. The defaults are ByteTrack's (ultralytics' ``bytetrack.yaml``, a stricter track birth);
``benchmarks/tracking.py --tune`` chose ``track_high_thresh``, ``new_track_thresh`` and ``tie_weight`` on
its tuning sequences only (the grid and every trial are in ``benchmarks/results/tracking_tuning.json``);
the held-out sequences were never used to choose anything.
"""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class TrackerConfig:
    # --- detection scores (ByteTrack's two stages and track birth)
    track_high_thresh: float = 0.25
    """First stage: detections at or above it can be claimed by every confirmed track, lost ones too."""
    track_low_thresh: float = 0.1
    """Second stage: weaker detections (down to this) only extend tracks tracked until this frame."""
    new_track_thresh: float = 0.5
    """A track is born only from a detection this confident (keeps posters and mannequins out)."""

    # --- match gates, as distances 1 - similarity
    match_thresh: float = 0.8
    """First stage: box similarity (IoU times detection score) must exceed 1 - match_thresh."""
    low_match_thresh: float = 0.5
    """Second stage (low-score detections, plain IoU; ByteTrack's fixed 0.5)."""
    tentative_match_thresh: float = 0.7
    """A track seen once, against the remaining confident detections (ByteTrack's fixed 0.7)."""

    # --- track life cycle
    track_buffer: int = 30
    """How long a lost track waits to be found again, in frames at 30 fps."""
    duplicate_iou: float = 0.85
    """A track born after a lost one vanished, overlapping it this much, is the same person: one goes
    (ByteTrack's duplicate removal, but never for two tracks seen at the same time: that is one person
    hiding behind another)."""
    fuse_score: bool = True
    """First-stage similarity is IoU times the detection score (ByteTrack's fuse_score)."""

    # --- keypoints: they may only help (see trackers/association.py)
    keypoint_threshold: float = 0.3
    """Keypoint score above which a keypoint counts as confident."""
    min_common_keypoints: float = 0.5
    """Fraction of the track's (or detection's, whichever has more) confident keypoints that must be
    confident in both for the pair's keypoints to count."""
    tie_weight: float = 0.05
    """Largest score OKS may add to a pair in the assignment: it decides only between near-equal boxes."""

    # --- camera motion compensation
    camera_motion: bool = True
    """Warp the tracks by the frame-to-frame camera motion when ``update`` is given the frame."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.track_low_thresh <= self.track_high_thresh <= 1.0:
            raise ValueError(
                f"need 0 <= track_low_thresh ({self.track_low_thresh}) <= track_high_thresh "
                f"({self.track_high_thresh}) <= 1"
            )
        if self.track_buffer < 1:
            raise ValueError(f"track_buffer must be >= 1 frame, got {self.track_buffer}")
        for name in ("min_common_keypoints", "tie_weight"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {getattr(self, name)}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))

    @property
    def max_lost_seconds(self) -> float:
        return self.track_buffer / 30.0
