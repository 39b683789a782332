"""The life cycle of one person track: born tentative, confirmed at its second hit, lost when unmatched,
found again or dropped when its buffer runs out. Kalman steps are batched over tracks."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from trackers import kalman
from trackers.association import box_iou


class TrackState(Enum):
    TENTATIVE = 0
    TRACKED = 1
    LOST = 2


@dataclass(eq=False)
class Track:
    mean: np.ndarray  # (8,) Kalman state at ``time``
    cov: np.ndarray  # (8, 8)
    time: float
    box: np.ndarray  # (4,) xyxy of the last observation
    score: float
    start_time: float
    obs_time: float  # time of the last observation
    predicted_box: np.ndarray  # (4,) xyxy of ``mean``, kept in step with it
    state: TrackState = TrackState.TENTATIVE
    track_id: int = -1
    keypoints: np.ndarray | None = None  # (K, 2) of the last observation
    keypoint_visible: np.ndarray | None = None  # (K,) bool

    def set_state(self, mean: np.ndarray, cov: np.ndarray, box: np.ndarray | None = None) -> None:
        """New Kalman state; ``box`` is its xyxy box when the caller computed it in a batch."""
        self.mean, self.cov = mean, cov
        self.predicted_box = kalman.xyah_to_xyxy(mean[None, :4])[0] if box is None else box

    def moved_keypoints(self) -> np.ndarray:
        """The last keypoints, shifted along with the predicted box since they were observed."""
        shift = (self.predicted_box[:2] + self.predicted_box[2:]) / 2 - (self.box[:2] + self.box[2:]) / 2
        return self.keypoints + shift


def new_tracks(
    boxes: np.ndarray, scores: np.ndarray, timestamp: float, keypoints: np.ndarray | None,
    visible: np.ndarray | None,
) -> list[Track]:
    """Tentative tracks from (N,4) boxes (keypoints (N,K,2) and visible (N,K) optional)."""
    mean, cov = kalman.initiate(kalman.xyxy_to_xyah(boxes))
    tracks = []
    for i, (m, c) in enumerate(zip(mean, cov, strict=True)):
        track = Track(
            mean=m, cov=c, time=timestamp, predicted_box=boxes[i].copy(), box=boxes[i].copy(),
            score=float(scores[i]), start_time=timestamp, obs_time=timestamp,
        )
        if keypoints is not None:
            track.keypoints, track.keypoint_visible = keypoints[i].copy(), visible[i].copy()
        tracks.append(track)
    return tracks


def advance(tracks: list[Track], timestamp: float, frame_rate: float) -> None:
    """Move every track's Kalman state to ``timestamp`` (skipped frames simply make a longer step). A lost
    track keeps its speed but stops growing or shrinking (ByteTrack)."""
    if not tracks:
        return
    mean = np.stack([t.mean for t in tracks])
    mean[[t.state is TrackState.LOST for t in tracks], 7] = 0.0
    cov = np.stack([t.cov for t in tracks])
    # A tentative track is taken as it was seen until its second hit (ByteTrack).
    dt = np.array([(timestamp - t.time) * frame_rate * (t.state is not TrackState.TENTATIVE) for t in tracks])
    mean, cov = kalman.predict(mean, cov, dt)
    # A height driven below zero by extrapolation would break the box geometry.
    mean[:, 3] = np.maximum(mean[:, 3], 1.0)
    boxes = kalman.xyah_to_xyxy(mean[:, :4])
    for track, m, c, b in zip(tracks, mean, cov, boxes, strict=True):
        track.set_state(m, c, b)
        track.time = timestamp


def observe(
    pairs: list[tuple[Track, int]], boxes: np.ndarray, scores: np.ndarray, timestamp: float,
    keypoints: np.ndarray | None, visible: np.ndarray | None,
) -> None:
    """Correct every matched track with its detection (one batched Kalman update). Every matched track
    becomes TRACKED (the caller gives ids to tentative ones first)."""
    if not pairs:
        return
    tracks = [t for t, _ in pairs]
    dets = np.array([d for _, d in pairs], np.int64)
    measured = kalman.xyxy_to_xyah(boxes[dets])
    mean, cov = kalman.update(np.stack([t.mean for t in tracks]), np.stack([t.cov for t in tracks]), measured)
    for track, det, m, c, b in zip(tracks, dets, mean, cov, kalman.xyah_to_xyxy(mean[:, :4]), strict=True):
        track.set_state(m, c, b)
        track.box, track.score, track.obs_time = boxes[det].copy(), float(scores[det]), timestamp
        if keypoints is not None:
            track.keypoints, track.keypoint_visible = keypoints[det].copy(), visible[det].copy()
        track.state = TrackState.TRACKED


def warp(tracks: list[Track], matrix: np.ndarray) -> None:
    """Apply a camera motion (2,3) similarity/affine, previous frame -> this frame, to every track: its
    state (centre moved, height scaled, velocities rotated and scaled), the last observed box and
    keypoints, as BoT-SORT's camera motion compensation does."""
    linear, offset = matrix[:, :2], matrix[:, 2]
    scale = float(np.sqrt(abs(np.linalg.det(linear))))
    transform = np.eye(8)
    for block in (0, 4):  # position and velocity blocks: x, y rotate; the aspect stays; h scales
        transform[block : block + 2, block : block + 2] = linear
        transform[block + 3, block + 3] = scale
    for track in tracks:
        mean = transform @ track.mean
        mean[:2] += offset
        track.mean, track.cov = mean, transform @ track.cov @ transform.T
        corners = track.box.reshape(2, 2) @ linear.T + offset
        track.box = np.concatenate([corners.min(axis=0), corners.max(axis=0)])
        if track.keypoints is not None:
            track.keypoints = track.keypoints @ linear.T + offset
        track.set_state(track.mean, track.cov)


def drop_expired_and_duplicates(tracks: list[Track], timestamp: float, max_lost_seconds: float,
                                duplicate_iou: float) -> list[Track]:
    """Tracks lost for longer than the buffer go; of a lost track and a track born after it vanished that
    overlap more than ``duplicate_iou``, the younger goes (ByteTrack's duplicate removal, but never for
    two tracks that coexisted: that is one person hiding behind another)."""
    tracks = [
        t for t in tracks if not (t.state is TrackState.LOST and timestamp - t.obs_time > max_lost_seconds)
    ]
    tracked = [t for t in tracks if t.state is TrackState.TRACKED]
    lost = [t for t in tracks if t.state is TrackState.LOST]
    if not tracked or not lost:
        return tracks
    iou = box_iou(np.stack([t.predicted_box for t in tracked]), np.stack([t.predicted_box for t in lost]))
    duplicates = set()
    for i, j in zip(*np.nonzero(iou > duplicate_iou), strict=True):
        if tracked[i].start_time < lost[j].obs_time:
            continue
        # Keep the older of the two: it carries the id people have already seen.
        older_lost = lost[j].start_time < tracked[i].start_time
        duplicates.add(id(tracked[i]) if older_lost else id(lost[j]))
    return [t for t in tracks if id(t) not in duplicates]
