"""Person tracker of the ByteTrack family, on numpy and ``scipy.optimize.linear_sum_assignment``.

One ``PersonTracker`` per source. Each ``update`` takes the detections of one frame with its timestamp
and returns, per detection, the id of the track it belongs to (-1 while a track is still tentative or
for detections left out). The steps of one update:

1. every track's Kalman state is advanced to the frame's timestamp (skipped or dropped frames simply
   make a longer step);
2. high-score detections are matched against all confirmed tracks, tracked and lost (IoU, fused with
   the detection score, blended with OKS when keypoints are given);
3. low-score detections are matched against the tracks still unmatched that were tracked on the
   previous frame (ByteTrack: an occluded person's weak detection keeps the track alive);
4. observation-centric recovery (OC-SORT): tracks still unmatched and seen within the last
   ``recovery_max_gap`` seconds are matched by the box of their last observation, which catches a
   person who stopped while the Kalman prediction kept walking (kept short and strict: on long gaps
   the old box mostly catches someone else). Any track found again after a gap has its state
   re-estimated along a virtual straight path over the gap (OC-SORT's re-update), so the velocity
   drifted during the gap does not throw the next prediction off;
5. tentative tracks (seen once) are matched against the rest of the high-score detections; a track
   is confirmed, and gets its id, at its second hit;
6. leftover confident detections start tentative tracks, unless they sit on a track already matched
   (a duplicate box of the same person); lost tracks older than the buffer are dropped; a lost track
   that duplicates a track born after it vanished is dropped (ByteTrack's duplicate removal, but
   never for two tracks that coexisted: that is one person hiding behind another).

Default thresholds follow the score distribution of ultralytics YOLO person detections: a clearly
visible person scores 0.6-0.95, a partly occluded one 0.3-0.6, false positives mostly 0.1-0.45 (and
some of them persist on static person-like objects). Hence ``new_track_thresh=0.5``: a track is born
only from a fairly clear view, which keeps posters and mannequins out; ``track_high_thresh=0.3``: a
partly occluded person still takes part in the first stage, where every track, lost ones included,
can claim it; ``track_low_thresh=0.1``: weaker boxes only extend tracks that were tracked until this
frame (run the detector with ``conf<=0.1`` to feed this stage; with ``conf=0.25`` it covers
0.25-0.3). ``benchmarks/tracking.py`` measures these choices against ultralytics' trackers.
``track_buffer`` is in frames at 30 fps (ByteTrack's convention) and is kept as a duration in
seconds, compared against timestamps, so it means the same at any frame rate. Lost tracks are matched
with boxes enlarged by up to ``lost_buffer`` of their size (C-BIoU), since a prediction grows less
certain the longer a person is unseen.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np
from scipy.optimize import linear_sum_assignment

from trackers import kalman

_INFEASIBLE = 1e4  # assignment cost of a pair below its similarity gate
_MAX_VIRTUAL_STEPS = 120  # cap on the re-update path over a gap (4 s at 30 fps)


class TrackState(Enum):
    TENTATIVE = 0
    TRACKED = 1
    LOST = 2


@dataclass(eq=False)
class _Track:
    mean: np.ndarray  # (8,) Kalman state at ``time``
    cov: np.ndarray  # (8, 8)
    time: float
    box: np.ndarray  # (4,) xyxy of the last observation
    score: float
    start_time: float
    obs_time: float  # time of the last observation
    obs_mean: np.ndarray  # Kalman state right after the last observation (for re-update over a gap)
    obs_cov: np.ndarray
    state: TrackState = TrackState.TENTATIVE
    track_id: int = -1
    hits: int = 1
    keypoints: np.ndarray | None = None  # (K, 2) of the last observation
    keypoint_visible: np.ndarray | None = None  # (K,) bool

    predicted_box: np.ndarray | None = None  # (4,) xyxy of ``mean``, kept in step with it

    def set_state(self, mean: np.ndarray, cov: np.ndarray, box: np.ndarray | None = None) -> None:
        """New Kalman state; ``box`` is its xyxy box when the caller computed it in a batch."""
        self.mean, self.cov = mean, cov
        self.predicted_box = kalman.xyah_to_xyxy(mean[None, :4])[0] if box is None else box


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (M,4) and (N,4) xyxy boxes -> (M,N)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def _enlarge(boxes: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Grow (N,4) xyxy boxes by ``factor`` (N,) of their size on every side."""
    wh = boxes[:, 2:] - boxes[:, :2]
    pad = wh * factor[:, None]
    return np.concatenate([boxes[:, :2] - pad, boxes[:, 2:] + pad], axis=1)


def keypoint_oks(
    track_points: np.ndarray,
    track_visible: np.ndarray,
    det_points: np.ndarray,
    det_visible: np.ndarray,
    det_areas: np.ndarray,
    sigmas: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """COCO object keypoint similarity of (M,K,2) against (N,K,2) -> oks (M,N), has_common (M,N) bool."""
    d2 = ((track_points[:, None] - det_points[None]) ** 2).sum(axis=-1)  # (M,N,K)
    variances = (2.0 * sigmas) ** 2
    e = d2 / (2.0 * variances[None, None] * np.maximum(det_areas, 1.0)[None, :, None])
    both = track_visible[:, None] & det_visible[None]  # (M,N,K)
    count = both.sum(axis=-1)
    oks = np.where(both, np.exp(-e), 0.0).sum(axis=-1) / np.maximum(count, 1)
    return oks, count > 0


def keypoint_boxes(
    keypoints: np.ndarray, keypoint_scores: np.ndarray, score_threshold: float = 0.3, margin: float = 0.08
) -> tuple[np.ndarray, np.ndarray]:
    """Person boxes from keypoints, for frames between detector runs.

    keypoints (N,K,2), keypoint_scores (N,K) -> boxes (N,4) xyxy around the confident keypoints,
    widened by ``margin`` of their size on each side and twice that above (the crown of the head lies
    above the highest keypoint), and scores (N,): the mean confident keypoint score. A person with
    fewer than two confident keypoints gets a NaN box and score 0, which ``update`` ignores.
    """
    keypoints = np.asarray(keypoints, np.float64)
    keypoint_scores = np.nan_to_num(np.asarray(keypoint_scores, np.float64), nan=0.0)
    if keypoints.ndim != 3 or keypoints.shape[2] != 2 or keypoint_scores.shape != keypoints.shape[:2]:
        raise ValueError(
            "need keypoints (N, K, 2) and keypoint_scores (N, K), "
            f"got {keypoints.shape} and {keypoint_scores.shape}"
        )
    good = (keypoint_scores >= score_threshold) & np.isfinite(keypoints).all(axis=-1)
    enough = good.sum(axis=1) >= 2
    lo = np.where(good[..., None], keypoints, np.inf).min(axis=1)
    hi = np.where(good[..., None], keypoints, -np.inf).max(axis=1)
    size = np.where(enough[:, None], hi - lo, 0.0)
    pad = margin * size
    boxes = np.concatenate([lo - pad * np.array([1.0, 2.0]), hi + pad], axis=1)
    boxes[~enough] = np.nan
    count = np.maximum(good.sum(axis=1), 1)
    scores = np.where(enough, (keypoint_scores * good).sum(axis=1) / count, 0.0)
    return boxes, scores


def _assign(similarity: np.ndarray, min_similarity: float) -> tuple[np.ndarray, np.ndarray]:
    """Optimal one-to-one matching maximising similarity; pairs below the gate are never matched."""
    if similarity.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    feasible = similarity >= min_similarity
    cost = np.where(feasible, 1.0 - similarity, _INFEASIBLE)
    rows, cols = linear_sum_assignment(cost)
    keep = feasible[rows, cols]
    return rows[keep], cols[keep]


def default_keypoint_sigmas(num_keypoints: int) -> np.ndarray:
    """OKS sigmas: the 308 Sapiens2 keypoints, or their COCO-17 subset."""
    from models.meta import pose_meta  # imported here: only pose-aware association needs it

    meta = pose_meta()
    if num_keypoints == len(meta.oks_sigmas):
        return meta.oks_sigmas
    if num_keypoints == len(meta.coco17_index):
        return meta.oks_sigmas[meta.coco17_index]
    raise ValueError(
        f"no default OKS sigmas for {num_keypoints} keypoints (have 308 and 17); pass keypoint_sigmas="
    )


class PersonTracker:
    """ByteTrack-style person tracker with OC-SORT recovery and optional pose-aware association.

    ``update(boxes (N,4) xyxy, scores (N,), timestamp seconds, keypoints (N,K,2)=None,
    keypoint_scores (N,K)=None) -> ids (N,) int64`` (-1: not tracked yet). See the module docstring
    for the steps and for how the default thresholds were chosen.
    """

    def __init__(
        self,
        frame_rate: float = 30.0,
        track_high_thresh: float = 0.3,
        track_low_thresh: float = 0.1,
        new_track_thresh: float = 0.5,
        track_buffer: int = 30,
        match_thresh: float = 0.8,
        low_match_thresh: float = 0.5,
        tentative_match_thresh: float = 0.7,
        recovery_iou: float = 0.5,
        duplicate_iou: float = 0.85,
        birth_suppress_iou: float = 0.7,
        recovery_max_gap: float = 0.3,
        reupdate_gaps: bool = True,
        lost_buffer: float = 0.5,
        lost_buffer_weight: float = 0.7,
        fuse_score: bool = True,
        pose_weight: float = 0.5,
        keypoint_threshold: float = 0.3,
        keypoint_sigmas: np.ndarray | None = None,
    ) -> None:
        if frame_rate <= 0:
            raise ValueError(f"frame_rate must be positive, got {frame_rate}")
        if not 0.0 <= track_low_thresh <= track_high_thresh <= 1.0:
            raise ValueError(
                f"need 0 <= track_low_thresh ({track_low_thresh}) <= track_high_thresh "
                f"({track_high_thresh}) <= 1"
            )
        if track_buffer < 1:
            raise ValueError(f"track_buffer must be >= 1 frame, got {track_buffer}")
        self.frame_rate = float(frame_rate)
        self.track_high_thresh = track_high_thresh
        self.track_low_thresh = track_low_thresh
        self.new_track_thresh = new_track_thresh
        # Buffer given in frames at 30 fps (ByteTrack's convention); kept as seconds.
        self.max_lost_seconds = track_buffer / 30.0
        # Match thresholds are distances (1 - similarity), as in ByteTrack's configuration files.
        self.min_similarity = 1.0 - match_thresh
        self.min_low_similarity = 1.0 - low_match_thresh
        self.min_tentative_similarity = 1.0 - tentative_match_thresh
        self.recovery_iou = recovery_iou
        self.duplicate_iou = duplicate_iou
        self.birth_suppress_iou = birth_suppress_iou
        self.recovery_max_gap = recovery_max_gap
        self.reupdate_gaps = reupdate_gaps
        self.lost_buffer = lost_buffer
        self.lost_buffer_weight = lost_buffer_weight
        self.fuse_score = fuse_score
        self.pose_weight = pose_weight
        self.keypoint_threshold = keypoint_threshold
        self.keypoint_sigmas = None if keypoint_sigmas is None else np.asarray(keypoint_sigmas, np.float64)
        self._next_id = 1
        self.reset()

    # ------------------------------------------------------------------ public API

    def reset(self, restart_ids: bool = False) -> None:
        """Forget every track (end of stream or of a segment). Ids keep counting unless ``restart_ids``,
        so a person in a new segment never inherits an id already written for someone else."""
        self._tracks: list[_Track] = []
        self._time: float | None = None
        if restart_ids:
            self._next_id = 1

    @property
    def time(self) -> float | None:
        """Timestamp of the last update, None before the first."""
        return self._time

    def update(
        self,
        boxes: np.ndarray,
        scores: np.ndarray,
        timestamp: float,
        keypoints: np.ndarray | None = None,
        keypoint_scores: np.ndarray | None = None,
    ) -> np.ndarray:
        boxes, scores, keypoints, visible = self._check_inputs(boxes, scores, keypoints, keypoint_scores)
        timestamp = self._advance(timestamp)
        first_frame = not self._tracks and self._time is None
        self._time = timestamp

        usable = np.isfinite(boxes).all(axis=1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        usable &= np.isfinite(scores)
        high = np.flatnonzero(usable & (scores >= self.track_high_thresh))
        low = np.flatnonzero(usable & (scores >= self.track_low_thresh) & (scores < self.track_high_thresh))

        det_track: dict[int, _Track] = {}
        confirmed = [t for t in self._tracks if t.state is not TrackState.TENTATIVE]
        was_tracked = {id(t) for t in confirmed if t.state is TrackState.TRACKED}

        # 1. high-score detections against every confirmed track (tracked and lost).
        pool, high_left = self._match_stage(
            confirmed, high, boxes, scores, keypoints, visible, self.min_similarity, det_track, fuse=True
        )
        # 2. low-score detections against the tracks that were tracked until now.
        recent = [t for t in pool if id(t) in was_tracked]
        recent_left, _ = self._match_stage(
            recent, low, boxes, scores, None, None, self.min_low_similarity, det_track, fuse=False
        )
        still_unmatched = {id(t) for t in recent_left}
        pool = [t for t in pool if id(t) not in was_tracked or id(t) in still_unmatched]
        # 3. observation-centric recovery: last observed box against the high-score leftovers.
        pool, high_left = self._recover(pool, high_left, boxes, det_track)
        # 4. tentative tracks against the remaining high-score detections.
        tentative = [t for t in self._tracks if t.state is TrackState.TENTATIVE]
        tentative_left, high_left = self._match_stage(
            tentative, high_left, boxes, scores, keypoints, visible, self.min_tentative_similarity, det_track,
            fuse=True,
        )

        self._observe(det_track, boxes, scores, timestamp, keypoints, visible)
        for track in pool:
            if track.state is TrackState.TRACKED:
                track.state = TrackState.LOST
        dropped = {id(t) for t in tentative_left}
        self._tracks = [t for t in self._tracks if id(t) not in dropped]
        self._start_tracks(high_left, boxes, scores, timestamp, keypoints, visible, first_frame, det_track)
        self._drop_old_and_duplicates(timestamp)

        alive = {id(t) for t in self._tracks}
        ids = np.full(len(boxes), -1, dtype=np.int64)
        for det, track in det_track.items():
            if id(track) in alive:
                ids[det] = track.track_id
        return ids

    def predict(self, timestamp: float) -> tuple[np.ndarray, np.ndarray]:
        """Predicted boxes at ``timestamp`` of the tracks being followed; the state is unchanged.

        Between detector runs (detect every k frames) these boxes stand in for detections: crop them,
        run pose, and pass the boxes around the keypoints to ``update`` as that frame's detections.
        Tentative tracks (a person detected once, not confirmed yet) are included with id -1, so
        that a newcomer is confirmed by the pose-derived box of the next frame.
        Returns ids (M,) int64 and boxes (M,4) float64 xyxy.
        """
        tracks = [t for t in self._tracks if t.state is not TrackState.LOST]
        if not tracks:
            return np.zeros(0, np.int64), np.zeros((0, 4))
        timestamp = float(timestamp)
        if self._time is not None and timestamp < self._time:
            raise ValueError(f"timestamp {timestamp} is before the last update ({self._time})")
        mean = np.stack([t.mean for t in tracks])
        cov = np.stack([t.cov for t in tracks])
        dt = np.array([(timestamp - t.time) * self.frame_rate for t in tracks])
        mean, _ = kalman.predict(mean, cov, dt)
        return np.array([t.track_id for t in tracks], np.int64), kalman.xyah_to_xyxy(mean[:, :4])

    # ------------------------------------------------------------------ steps

    def _check_inputs(
        self,
        boxes: np.ndarray,
        scores: np.ndarray,
        keypoints: np.ndarray | None,
        keypoint_scores: np.ndarray | None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None]:
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4) if np.size(boxes) else np.zeros((0, 4))
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f"got {len(boxes)} boxes but {len(scores)} scores")
        if keypoints is None:
            return boxes, scores, None, None
        keypoints = np.asarray(keypoints, dtype=np.float64)
        if keypoints.ndim != 3 or keypoints.shape[0] != len(boxes) or keypoints.shape[2] != 2:
            raise ValueError(f"keypoints must be (N, K, 2) with N={len(boxes)}, got shape {keypoints.shape}")
        if keypoint_scores is None:
            keypoint_scores = np.ones(keypoints.shape[:2])
        keypoint_scores = np.asarray(keypoint_scores, dtype=np.float64)
        if keypoint_scores.shape != keypoints.shape[:2]:
            raise ValueError(f"keypoint_scores must be {keypoints.shape[:2]}, got {keypoint_scores.shape}")
        if self.keypoint_sigmas is None:
            self.keypoint_sigmas = default_keypoint_sigmas(keypoints.shape[1])
        if len(self.keypoint_sigmas) != keypoints.shape[1]:
            raise ValueError(
                f"{keypoints.shape[1]} keypoints but {len(self.keypoint_sigmas)} keypoint sigmas"
            )
        visible = (keypoint_scores >= self.keypoint_threshold) & np.isfinite(keypoints).all(axis=-1)
        return boxes, scores, keypoints, visible

    def _advance(self, timestamp: float) -> float:
        """Move every track's Kalman state to ``timestamp``."""
        timestamp = float(timestamp)
        if not np.isfinite(timestamp):
            raise ValueError(f"timestamp must be a finite number of seconds, got {timestamp}")
        if self._time is not None and timestamp < self._time:
            raise ValueError(
                f"timestamp went backwards ({timestamp} < {self._time}); call reset() at a new segment"
            )
        if self._tracks:
            mean = np.stack([t.mean for t in self._tracks])
            cov = np.stack([t.cov for t in self._tracks])
            dt = np.array([(timestamp - t.time) * self.frame_rate for t in self._tracks])
            mean, cov = kalman.predict(mean, cov, dt)
            # A height driven below zero by extrapolation would break the box geometry.
            mean[:, 3] = np.maximum(mean[:, 3], 1.0)
            boxes = kalman.xyah_to_xyxy(mean[:, :4])
            for track, m, c, b in zip(self._tracks, mean, cov, boxes, strict=True):
                track.set_state(m, c, b)
                track.time = timestamp
        return timestamp

    def _similarity(
        self,
        tracks: list[_Track],
        dets: np.ndarray,
        boxes: np.ndarray,
        scores: np.ndarray,
        keypoints: np.ndarray | None,
        visible: np.ndarray | None,
        fuse: bool,
    ) -> np.ndarray:
        predicted = np.stack([t.predicted_box for t in tracks])
        similarity = box_iou(predicted, boxes[dets])
        if self.lost_buffer > 0:
            similarity = self._buffered_for_lost(similarity, tracks, predicted, boxes[dets])
        if keypoints is not None and self.pose_weight > 0:
            similarity = self._blend_oks(similarity, tracks, predicted, dets, boxes, keypoints, visible)
        if fuse and self.fuse_score:
            similarity = similarity * scores[dets][None, :]
        return similarity

    def _buffered_for_lost(
        self, similarity: np.ndarray, tracks: list[_Track], predicted: np.ndarray, det_boxes: np.ndarray
    ) -> np.ndarray:
        """IoU of enlarged boxes for lost tracks (C-BIoU): the longer a track is unseen, the less its
        predicted box can be trusted to overlap the person's new box."""
        lost = np.array([t.state is TrackState.LOST for t in tracks])
        if not lost.any():
            return similarity
        gap = np.array([(self._time - t.obs_time) * self.frame_rate for t in tracks])[lost]
        grow = self.lost_buffer * np.minimum(gap / 10.0, 1.0)
        buffered = box_iou(_enlarge(predicted[lost], grow), _enlarge(det_boxes, np.full(len(det_boxes), 0.0)))
        similarity = similarity.copy()
        similarity[lost] = np.maximum(similarity[lost], buffered * self.lost_buffer_weight)
        return similarity

    def _blend_oks(
        self,
        iou: np.ndarray,
        tracks: list[_Track],
        predicted: np.ndarray,
        dets: np.ndarray,
        boxes: np.ndarray,
        keypoints: np.ndarray,
        visible: np.ndarray,
    ) -> np.ndarray:
        with_points = [i for i, t in enumerate(tracks) if t.keypoints is not None]
        if not with_points:
            return iou
        # The track's last keypoints, moved along with its predicted box.
        shift = np.stack([
            (predicted[i, :2] + predicted[i, 2:]) / 2 - (tracks[i].box[:2] + tracks[i].box[2:]) / 2
            for i in with_points
        ])
        track_points = np.stack([tracks[i].keypoints for i in with_points]) + shift[:, None, :]
        track_visible = np.stack([tracks[i].keypoint_visible for i in with_points])
        det_boxes = boxes[dets]
        areas = (det_boxes[:, 2] - det_boxes[:, 0]) * (det_boxes[:, 3] - det_boxes[:, 1])
        oks, common = keypoint_oks(
            track_points, track_visible, keypoints[dets], visible[dets], areas, self.keypoint_sigmas
        )
        blended = iou.copy()
        rows = np.array(with_points)
        mixed = (1 - self.pose_weight) * iou[rows] + self.pose_weight * oks
        blended[rows] = np.where(common & (iou[rows] > 0), mixed, iou[rows])
        return blended

    def _match_stage(
        self,
        tracks: list[_Track],
        dets: np.ndarray,
        boxes: np.ndarray,
        scores: np.ndarray,
        keypoints: np.ndarray | None,
        visible: np.ndarray | None,
        min_similarity: float,
        det_track: dict[int, _Track],
        fuse: bool,
    ) -> tuple[list[_Track], np.ndarray]:
        """Match ``tracks`` to detections ``dets``; record pairs; return unmatched tracks and dets."""
        if not tracks or len(dets) == 0:
            return list(tracks), dets
        similarity = self._similarity(tracks, dets, boxes, scores, keypoints, visible, fuse)
        rows, cols = _assign(similarity, min_similarity)
        for r, c in zip(rows, cols, strict=True):
            det_track[int(dets[c])] = tracks[r]
        matched_rows = set(rows.tolist())
        left = [t for i, t in enumerate(tracks) if i not in matched_rows]
        return left, np.delete(dets, cols)

    def _recover(
        self, tracks: list[_Track], dets: np.ndarray, boxes: np.ndarray, det_track: dict[int, _Track]
    ) -> tuple[list[_Track], np.ndarray]:
        recent = [t for t in tracks if self._time - t.obs_time <= self.recovery_max_gap]
        if not recent or len(dets) == 0:
            return tracks, dets
        last_seen = np.stack([t.box for t in recent])
        rows, cols = _assign(box_iou(last_seen, boxes[dets]), self.recovery_iou)
        for r, c in zip(rows, cols, strict=True):
            det_track[int(dets[c])] = recent[r]
        matched = {id(recent[r]) for r in rows}
        return [t for t in tracks if id(t) not in matched], np.delete(dets, cols)

    def _observe(
        self,
        det_track: dict[int, _Track],
        boxes: np.ndarray,
        scores: np.ndarray,
        timestamp: float,
        keypoints: np.ndarray | None,
        visible: np.ndarray | None,
    ) -> None:
        """Correct every matched track with its detection: one batched Kalman update, except tracks
        coming back after a gap, which are re-estimated along the gap."""
        if not det_track:
            return
        dets = np.array(list(det_track), dtype=np.int64)
        tracks = list(det_track.values())
        gaps = np.array([(timestamp - t.obs_time) * self.frame_rate for t in tracks])
        returning = np.array([t.state is not TrackState.TENTATIVE for t in tracks]) & (gaps > 1.5)
        returning &= self.reupdate_gaps
        direct = np.flatnonzero(~returning)
        if len(direct):
            mean, cov = kalman.update(
                np.stack([tracks[i].mean for i in direct]),
                np.stack([tracks[i].cov for i in direct]),
                kalman.xyxy_to_xyah(boxes[dets[direct]]),
            )
            state_boxes = kalman.xyah_to_xyxy(mean[:, :4])
            for i, m, c, b in zip(direct, mean, cov, state_boxes, strict=True):
                tracks[i].set_state(m, c, b)
        for i in np.flatnonzero(returning):
            mean, cov = self._reupdate_over_gap(tracks[i], boxes[dets[i]], gaps[i])
            tracks[i].set_state(mean[0], cov[0])
        for det, track in zip(dets, tracks, strict=True):
            track.obs_mean, track.obs_cov = track.mean.copy(), track.cov.copy()
            track.box, track.score, track.obs_time = boxes[det].copy(), float(scores[det]), timestamp
            track.hits += 1
            if keypoints is not None:
                track.keypoints, track.keypoint_visible = keypoints[det].copy(), visible[det].copy()
            if track.state is TrackState.TENTATIVE:
                track.track_id = self._take_id()
            track.state = TrackState.TRACKED

    def _reupdate_over_gap(self, track: _Track, box: np.ndarray, gap: float) -> tuple[np.ndarray, np.ndarray]:
        """OC-SORT's re-update: from the state at the last observation, step along a straight virtual
        path of boxes to the new one, so the velocity reflects the real displacement over the gap."""
        steps = int(min(max(round(gap), 1), _MAX_VIRTUAL_STEPS))
        step_dt = gap / steps
        start, end = kalman.xyxy_to_xyah(track.box[None])[0], kalman.xyxy_to_xyah(box[None])[0]
        mean, cov = track.obs_mean[None], track.obs_cov[None]
        for k in range(1, steps + 1):
            mean, cov = kalman.predict(mean, cov, np.array([step_dt]))
            virtual = start + (end - start) * (k / steps)
            mean, cov = kalman.update(mean, cov, virtual[None])
        return mean, cov

    def _start_tracks(
        self,
        dets: np.ndarray,
        boxes: np.ndarray,
        scores: np.ndarray,
        timestamp: float,
        keypoints: np.ndarray | None,
        visible: np.ndarray | None,
        first_frame: bool,
        det_track: dict[int, _Track],
    ) -> None:
        dets = dets[scores[dets] >= self.new_track_thresh]
        if len(dets) == 0:
            return
        # A second box on a person already matched or just born is a duplicate, not a newcomer:
        # greedy suppression, most confident box first.
        taken = [boxes[d] for d in det_track]
        kept = []
        for det in dets[np.argsort(-scores[dets], kind="stable")]:
            if taken and box_iou(boxes[det][None], np.stack(taken)).max() >= self.birth_suppress_iou:
                continue
            kept.append(det)
            taken.append(boxes[det])
        dets = np.array(kept, dtype=np.int64)
        mean, cov = kalman.initiate(kalman.xyxy_to_xyah(boxes[dets]))
        for det, m, c in zip(dets, mean, cov, strict=True):
            track = _Track(
                mean=m, cov=c, time=timestamp, predicted_box=boxes[det].copy(), box=boxes[det].copy(),
                score=float(scores[det]), start_time=timestamp, obs_time=timestamp,
                obs_mean=m.copy(), obs_cov=c.copy(),
            )
            if keypoints is not None:
                track.keypoints, track.keypoint_visible = keypoints[det].copy(), visible[det].copy()
            if first_frame:
                # On the first frame of a stream there is nothing to confuse a person with.
                track.state, track.track_id = TrackState.TRACKED, self._take_id()
                det_track[int(det)] = track
            self._tracks.append(track)

    def _drop_old_and_duplicates(self, timestamp: float) -> None:
        self._tracks = [
            t for t in self._tracks
            if not (t.state is TrackState.LOST and timestamp - t.obs_time > self.max_lost_seconds)
        ]
        tracked = [t for t in self._tracks if t.state is TrackState.TRACKED]
        lost = [t for t in self._tracks if t.state is TrackState.LOST]
        if not tracked or not lost:
            return
        iou = box_iou(np.stack([t.predicted_box for t in tracked]), np.stack([t.predicted_box for t in lost]))
        duplicates = set()
        for i, j in zip(*np.nonzero(iou > self.duplicate_iou), strict=True):
            # Only a track born after the lost one vanished can be that same person under a new
            # track; two long-lived tracks overlapping is an occlusion, and the hidden one must live.
            if tracked[i].start_time < lost[j].obs_time:
                continue
            # Keep the older of the two: it carries the id people have already seen.
            older_lost = lost[j].start_time < tracked[i].start_time
            duplicates.add(id(tracked[i]) if older_lost else id(lost[j]))
        self._tracks = [t for t in self._tracks if id(t) not in duplicates]

    def _take_id(self) -> int:
        track_id = self._next_id
        self._next_id += 1
        return track_id
