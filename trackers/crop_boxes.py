"""Smoothed crop boxes: the boxes persons are cropped from, steadied before the crop.

A pose model sees a person through the crop cut around its box, so a detector box that jitters from
frame to frame moves the crop, and the keypoints decoded from it jitter with it, even for a person
standing still. The person tracker and the keypoint smoother run downstream of the model, too late to
steady the crop; this filter runs where the crops are cut (the GPU worker), one instance per source,
fed each frame's boxes in frame order:

- association: each box is matched to the crop box an earlier frame used (predicted to this frame
  with the box's recent velocity), by IoU and the Hungarian assignment (``box_iou`` and the gated
  assignment of the person tracker); a box with no match above ``min_iou`` starts a new crop id;
- smoothing: the boxes of matched ids are One-Euro filtered (``BoxSmoother``, real timestamps), so a
  still person's crop stops breathing while a moving one is followed with little lag (the filter's
  cutoff rises with speed). A new id starts at its raw box (the filter's "track birth"), and an id
  not seen for ``forget_after`` seconds is forgotten.

Only the crop uses the smoothed box; the detector's boxes stay what the tracker associates on.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trackers.association import assign, box_iou
from trackers.one_euro import BoxSmoother


@dataclass
class _CropTrack:
    """The last crop box of one crop id and how fast it was moving."""

    box: np.ndarray  # (4,) float64 xyxy, the smoothed box last used for a crop
    velocity: np.ndarray  # (4,) float64 pixels per second of each coordinate
    time: float  # timestamp of that crop


class CropBoxSmoother:
    """Per-source association and One-Euro smoothing of crop boxes.

    ``smoother(boxes (N,4) xyxy, timestamp) -> (N,4)`` smoothed boxes, same dtype, rows in the input
    order; ``update`` also returns the crop ids (N,) int64. A row that is not a usable box (non-finite,
    or without positive size) comes back as given with id -1 and leaves the state alone. Timestamps
    are seconds and must not go backwards within a segment; a timestamp earlier than the last one is
    taken as a new segment that came without ``reset()``, and the state starts afresh.
    """

    def __init__(
        self,
        min_iou: float = 0.3,
        min_cutoff: float = 0.5,
        beta: float = 4.0,
        forget_after: float = 1.0,
    ) -> None:
        if not 0.0 < min_iou <= 1.0:
            raise ValueError(f"min_iou must be in (0, 1], got {min_iou}")
        if forget_after <= 0:
            raise ValueError(f"forget_after must be positive, got {forget_after}")
        self.min_iou = float(min_iou)
        self.forget_after = float(forget_after)
        self._filter = BoxSmoother(min_cutoff=min_cutoff, beta=beta, forget_after=forget_after)
        self._tracks: dict[int, _CropTrack] = {}
        self._next_id = 0
        self._last_time: float | None = None

    def reset(self) -> None:
        """Forget every crop box (a new segment: reconnect, new resolution or the end of the source)."""
        self._filter.reset()
        self._tracks.clear()
        self._last_time = None

    @property
    def crop_ids(self) -> list[int]:
        """The crop ids currently remembered."""
        return sorted(self._tracks)

    def __call__(self, boxes: np.ndarray, timestamp: float) -> np.ndarray:
        return self.update(boxes, timestamp)[1]

    def update(self, boxes: np.ndarray, timestamp: float) -> tuple[np.ndarray, np.ndarray]:
        """Crop ids (N,) and smoothed boxes (N,4) for one frame's boxes."""
        boxes = _check_boxes(boxes)
        timestamp = float(timestamp)
        if not np.isfinite(timestamp):
            raise ValueError(f"timestamp must be a finite number of seconds, got {timestamp}")
        if self._last_time is not None and timestamp < self._last_time:
            self.reset()
        self._last_time = timestamp
        self._forget(timestamp)

        usable = _usable(boxes)
        ids = self._associate(boxes.astype(np.float64), usable, timestamp)
        smoothed = self._filter(ids, boxes.astype(np.float64), timestamp)
        # A filtered box is a blend of overlapping boxes, so it keeps a positive size; should a box
        # jump farther than its own size between frames, the crop takes the raw box rather than a
        # folded one.
        smoothed = np.where(_usable(smoothed)[:, None], smoothed, boxes)
        self._remember(ids, smoothed, timestamp)
        return ids, smoothed.astype(boxes.dtype, copy=False)

    def _forget(self, timestamp: float) -> None:
        # The same rule as the filter's own, so both forget an id together.
        stale = [i for i, track in self._tracks.items() if timestamp - track.time > self.forget_after]
        for crop_id in stale:
            del self._tracks[crop_id]

    def _associate(self, boxes: np.ndarray, usable: np.ndarray, timestamp: float) -> np.ndarray:
        """Crop ids (N,): matched to a remembered crop box, a new id, or -1 for unusable rows."""
        ids = np.full(len(boxes), -1, np.int64)
        rows = np.flatnonzero(usable)
        known = list(self._tracks)
        if known and len(rows):
            predicted = np.stack([self._predict(self._tracks[i], timestamp) for i in known])
            matched_tracks, matched_rows = assign(box_iou(predicted, boxes[rows]), self.min_iou)
            ids[rows[matched_rows]] = np.asarray(known, np.int64)[matched_tracks]
        for row in rows:
            if ids[row] < 0:
                ids[row] = self._next_id
                self._next_id += 1
        return ids

    @staticmethod
    def _predict(track: _CropTrack, timestamp: float) -> np.ndarray:
        """Where the crop box would be now if it kept moving: two persons who cross keep their own."""
        return track.box + track.velocity * (timestamp - track.time)

    def _remember(self, ids: np.ndarray, boxes: np.ndarray, timestamp: float) -> None:
        for crop_id, box in zip(ids.tolist(), boxes, strict=True):
            if crop_id < 0:
                continue
            box = box.astype(np.float64)
            track = self._tracks.get(crop_id)
            velocity = np.zeros(4)
            if track is not None:
                dt = timestamp - track.time
                # A repeated timestamp says nothing about speed: keep the last estimate.
                velocity = (box - track.box) / dt if dt > 1e-3 else track.velocity
            self._tracks[crop_id] = _CropTrack(box=box, velocity=velocity, time=timestamp)


def _check_boxes(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes)
    if boxes.dtype.kind != "f":
        boxes = boxes.astype(np.float32)
    if boxes.size == 0:
        return boxes.reshape(0, 4)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must be (N, 4) xyxy, got shape {boxes.shape}")
    return boxes


def _usable(boxes: np.ndarray) -> np.ndarray:
    """(N,) bool: finite boxes with positive width and height."""
    finite = np.isfinite(boxes).all(axis=1)
    with np.errstate(invalid="ignore"):
        return finite & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
