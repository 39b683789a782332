"""One-Euro filtering of keypoints and boxes, vectorised over tracks x points.

The One-Euro filter (Casiez, Roussel and Vogel, CHI 2012) is a first-order low-pass whose cutoff rises
with the filtered speed: at rest it smooths hard (low cutoff, no jitter), in motion it opens up (high
cutoff, little lag). Here it runs on every point of every track in one numpy expression, with:

- real timestamps: each track carries its own last time, so skipped frames and variable frame rates
  give the right smoothing factor;
- person-scale normalisation: speed is measured in person-scales per second (the square root of the
  area of the person's box), so the same ``beta`` works for a child near the camera and a pedestrian
  far away;
- confidence awareness: a point whose score is below ``score_threshold`` neither moves the filter
  state nor vanishes; the last filtered position is held and reported instead;
- track lifecycle: a new id starts from its first observation, an id not seen for ``forget_after``
  seconds is dropped, and a point held for longer than ``stale_after`` seconds restarts from its next
  confident observation instead of sliding over from a stale position.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _smoothing_factor(dt: np.ndarray, cutoff: np.ndarray) -> np.ndarray:
    """Exponential smoothing factor of a first-order low-pass with ``cutoff`` Hz over ``dt`` seconds."""
    tau = 1.0 / (2.0 * np.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


@dataclass
class _PointState:
    """Filter state of one track: P points in pixels."""

    position: np.ndarray  # (P, 2) filtered position, pixels
    velocity: np.ndarray  # (P, 2) filtered velocity, person-scales per second
    valid: np.ndarray  # (P,) bool: position comes from a confident observation
    last_good: np.ndarray  # (P,) float64 time of the last confident observation
    time: float  # time of the last call that included this track


class OneEuroBank:
    """One-Euro filters for P points of many tracks, keyed by track id.

    ``__call__(ids (N,), points (N,P,2), scores (N,P), timestamp, scale (N,))`` returns the filtered
    points (N,P,2). Rows with a negative id pass through unfiltered and leave no state.
    """

    def __init__(
        self,
        min_cutoff: float,
        beta: float,
        d_cutoff: float = 1.0,
        score_threshold: float = 0.3,
        forget_after: float = 1.0,
        stale_after: float = 0.5,
    ) -> None:
        if min_cutoff <= 0 or d_cutoff <= 0:
            raise ValueError(f"cutoffs must be positive, got min_cutoff={min_cutoff}, d_cutoff={d_cutoff}")
        if beta < 0:
            raise ValueError(f"beta must be >= 0, got {beta}")
        self.min_cutoff = float(min_cutoff)
        self.beta = float(beta)
        self.d_cutoff = float(d_cutoff)
        self.score_threshold = float(score_threshold)
        self.forget_after = float(forget_after)
        self.stale_after = float(stale_after)
        self._states: dict[int, _PointState] = {}
        self._last_time: float | None = None

    def reset(self) -> None:
        self._states.clear()
        self._last_time = None

    @property
    def track_ids(self) -> list[int]:
        return sorted(self._states)

    def __call__(
        self,
        ids: np.ndarray,
        points: np.ndarray,
        scores: np.ndarray,
        timestamp: float,
        scale: np.ndarray,
    ) -> np.ndarray:
        ids, points, scores, scale = _check_inputs(ids, points, scores, scale)
        timestamp = float(timestamp)
        if self._last_time is not None and timestamp < self._last_time:
            raise ValueError(
                f"timestamp went backwards ({timestamp} < {self._last_time}); call reset() at a new segment"
            )
        self._last_time = timestamp
        self._forget(timestamp)

        out = points.copy()
        good = (scores >= self.score_threshold) & np.isfinite(points).all(axis=-1)
        known = np.array([int(i) in self._states for i in ids], dtype=bool)
        for row in np.flatnonzero((ids >= 0) & ~known):
            self._start(int(ids[row]), points[row], good[row], timestamp)
        rows = np.flatnonzero(known)
        if len(rows):
            out[rows] = self._step(ids[rows], points[rows], good[rows], timestamp, scale[rows])
        return out

    def _forget(self, timestamp: float) -> None:
        stale = [i for i, s in self._states.items() if timestamp - s.time > self.forget_after]
        for track_id in stale:
            del self._states[track_id]

    def _start(self, track_id: int, points: np.ndarray, good: np.ndarray, timestamp: float) -> None:
        self._states[track_id] = _PointState(
            position=points.astype(np.float64),
            velocity=np.zeros(points.shape, np.float64),
            valid=good.copy(),
            last_good=np.where(good, timestamp, -np.inf),
            time=timestamp,
        )

    def _step(
        self, ids: np.ndarray, points: np.ndarray, good: np.ndarray, timestamp: float, scale: np.ndarray
    ) -> np.ndarray:
        """Filter n known tracks at once: (n,P,2) in, (n,P,2) out."""
        states = [self._states[int(i)] for i in ids]
        prev = np.stack([s.position for s in states])  # (n,P,2)
        prev_velocity = np.stack([s.velocity for s in states])  # (n,P,2)
        valid = np.stack([s.valid for s in states])  # (n,P)
        last_good = np.stack([s.last_good for s in states])  # (n,P)
        # A repeated timestamp gives a tiny step: the output stays at the previous estimate.
        dt = np.maximum(timestamp - np.array([s.time for s in states]), 1e-4)[:, None, None]  # (n,1,1)

        velocity = (points - prev) / dt / scale[:, None, None]
        a_d = _smoothing_factor(dt, self.d_cutoff)
        velocity = a_d * velocity + (1.0 - a_d) * prev_velocity
        speed = np.linalg.norm(velocity, axis=-1, keepdims=True)  # (n,P,1)
        a = _smoothing_factor(dt, self.min_cutoff + self.beta * speed)
        filtered = a * points + (1.0 - a) * prev

        fresh = good & (~valid | (timestamp - last_good > self.stale_after))  # restart from observation
        smooth = good & ~fresh
        position = np.where(smooth[..., None], filtered, np.where(fresh[..., None], points, prev))
        velocity = np.where(smooth[..., None], velocity, np.where(fresh[..., None], 0.0, prev_velocity))
        # Points never seen confidently follow the raw input but stay marked invalid.
        position = np.where((~good & ~valid)[..., None], points, position)
        valid = valid | good
        last_good = np.where(good, timestamp, last_good)

        for k, state in enumerate(states):
            state.position = position[k]
            state.velocity = velocity[k]
            state.valid = valid[k]
            state.last_good = last_good[k]
            state.time = timestamp
        return position.astype(points.dtype, copy=False)


def _check_inputs(
    ids: np.ndarray, points: np.ndarray, scores: np.ndarray, scale: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    points = np.asarray(points)
    if points.dtype.kind != "f":
        points = points.astype(np.float32)
    if points.ndim != 3 or points.shape[-1] != 2 or points.shape[0] != len(ids):
        raise ValueError(f"points must be (N, P, 2) with N={len(ids)} ids, got shape {points.shape}")
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != points.shape[:2]:
        raise ValueError(f"scores must be (N, P) = {points.shape[:2]}, got {scores.shape}")
    scores = np.nan_to_num(scores, nan=0.0)
    scale = np.asarray(scale, dtype=np.float64).reshape(-1)
    if scale.shape != ids.shape:
        raise ValueError(f"scale must be (N,) = ({len(ids)},), got {scale.shape}")
    scale = np.where(np.isfinite(scale) & (scale > 1e-6), scale, 1.0)
    tracked = ids[ids >= 0]
    if len(np.unique(tracked)) != len(tracked):
        raise ValueError(f"track ids must be unique within a frame, got {ids.tolist()}")
    return ids, points, scores, scale


def keypoint_scale(keypoints: np.ndarray, good: np.ndarray) -> np.ndarray:
    """Person scale (N,): sqrt of the area of the box around the confident keypoints (all if < 2)."""
    finite = np.isfinite(keypoints).all(axis=-1)  # (N,K)
    use = good & finite
    use = np.where((use.sum(axis=1) < 2)[:, None], finite, use)
    lo = np.where(use[..., None], keypoints, np.inf).min(axis=1)  # (N,2)
    hi = np.where(use[..., None], keypoints, -np.inf).max(axis=1)
    wh = np.clip(hi - lo, 1.0, None)
    scale = np.sqrt(wh[:, 0] * wh[:, 1])
    return np.where(use.sum(axis=1) >= 2, scale, 1.0)


class KeypointSmoother:
    """Confidence-aware One-Euro smoothing of keypoints per track.

    ``smoother(ids (N,), keypoints (N,K,2), keypoint_scores (N,K), timestamp) -> (N,K,2)``, numpy in
    and out, pixel coordinates. ``min_cutoff`` is in Hz, ``beta`` in 1 / (person-scales per second).
    ``scale`` (N,), optional, overrides the person scale taken from the keypoints' extent (for example
    the square root of the tracker's box area).
    """

    def __init__(
        self,
        min_cutoff: float = 0.15,
        beta: float = 10.0,
        d_cutoff: float = 1.0,
        score_threshold: float = 0.3,
        forget_after: float = 1.0,
        stale_after: float = 0.5,
    ) -> None:
        self._bank = OneEuroBank(min_cutoff, beta, d_cutoff, score_threshold, forget_after, stale_after)

    def reset(self) -> None:
        self._bank.reset()

    def __call__(
        self,
        ids: np.ndarray,
        keypoints: np.ndarray,
        keypoint_scores: np.ndarray,
        timestamp: float,
        scale: np.ndarray | None = None,
    ) -> np.ndarray:
        keypoints = np.asarray(keypoints)
        if keypoints.ndim != 3:
            raise ValueError(f"keypoints must be (N, K, 2), got shape {keypoints.shape}")
        keypoint_scores = np.asarray(keypoint_scores, np.float64)
        if keypoint_scores.shape != keypoints.shape[:2]:
            raise ValueError(
                f"keypoint_scores must be (N, K) = {keypoints.shape[:2]}, got {keypoint_scores.shape}"
            )
        if scale is None:
            good = np.nan_to_num(keypoint_scores, nan=0.0)
            scale = keypoint_scale(keypoints, good >= self._bank.score_threshold)
        return self._bank(ids, keypoints, keypoint_scores, timestamp, scale)


class BoxSmoother:
    """One-Euro smoothing of person boxes per id (tracked output boxes; ``CropBoxSmoother``'s filter).

    ``box_smoother(ids (N,), boxes (N,4) xyxy, timestamp) -> (N,4)``. The two corners are filtered
    as two points with speed in box-scales per second, so the box follows a walking person without
    lag yet does not breathe with the detector's jitter.
    """

    def __init__(
        self,
        min_cutoff: float = 0.5,
        beta: float = 4.0,
        d_cutoff: float = 1.0,
        forget_after: float = 1.0,
    ) -> None:
        self._bank = OneEuroBank(min_cutoff, beta, d_cutoff, 0.5, forget_after, stale_after=np.inf)

    def reset(self) -> None:
        self._bank.reset()

    def __call__(self, ids: np.ndarray, boxes: np.ndarray, timestamp: float) -> np.ndarray:
        boxes = np.asarray(boxes)
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise ValueError(f"boxes must be (N, 4) xyxy, got shape {boxes.shape}")
        corners = boxes.reshape(-1, 2, 2)
        wh = np.clip(corners[:, 1] - corners[:, 0], 1.0, None)
        scale = np.sqrt(wh[:, 0] * wh[:, 1])
        finite = np.isfinite(corners).all(axis=-1).astype(np.float64)  # non-finite boxes hold the state
        smoothed = self._bank(ids, corners, finite, timestamp, scale)
        return smoothed.reshape(-1, 4)
