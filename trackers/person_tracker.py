"""Person tracker of the ByteTrack family: the steps of one frame, composed from ``association`` (costs
and matching), ``track`` (the life cycle of a track) and ``motion`` (camera motion), with every
threshold in ``TrackerConfig``.

One ``PersonTracker`` per source. ``update`` takes one frame's detections with its timestamp and returns,
per detection, the id of the track it belongs to (-1 while a track is still tentative, or for detections
left out). The steps are ByteTrack's:

0. with the frame given, the tracks are warped by the camera's motion since the previous frame;
1. every track's Kalman state is advanced to the frame's timestamp;
2. high-score detections are matched against every confirmed track, tracked and lost (IoU times score;
   keypoints break near-ties, see ``association``);
3. low-score detections against the tracks still unmatched that were tracked on the previous frame (an
   occluded person's weak detection keeps the track alive); tracks still unmatched are lost;
4. tentative tracks against the remaining high-score detections; a track is confirmed, and gets its id,
   at its second hit (on the very first frame of a stream, at once); unmatched tentative tracks go;
5. leftover detections above ``new_track_thresh`` start tentative tracks; tracks lost for longer than
   the buffer, and duplicates of a lost track, are dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from trackers import association, kalman
from trackers.association import FrameDetections, TrackView, box_iou, keypoint_boxes, keypoint_oks
from trackers.config import TrackerConfig
from trackers.motion import CameraMotion
from trackers.track import Track, TrackState, advance, drop_expired_and_duplicates, new_tracks, observe, warp

__all__ = ["PersonTracker", "TrackerConfig", "box_iou", "keypoint_boxes", "keypoint_oks"]


class PersonTracker:
    """``update(boxes (N,4) xyxy, scores (N,), timestamp seconds, keypoints (N,K,2)=None,
    keypoint_scores (N,K)=None, frame=None, motion=None) -> ids (N,) int64`` (-1: not tracked yet).

    ``PersonTracker(frame_rate, config=TrackerConfig(...))``, or any ``TrackerConfig`` field as a
    keyword (``PersonTracker(frame_rate=25, track_buffer=60)``).
    """

    def __init__(
        self, frame_rate: float = 30.0, config: TrackerConfig | None = None,
        keypoint_sigmas: np.ndarray | None = None, **overrides: float,
    ) -> None:
        if frame_rate <= 0:
            raise ValueError(f"frame_rate must be positive, got {frame_rate}")
        unknown = set(overrides) - set(TrackerConfig.field_names())
        if unknown:
            raise TypeError(f"unknown tracker setting(s): {', '.join(sorted(unknown))}")
        self.config = replace(config or TrackerConfig(), **overrides)
        self.frame_rate = float(frame_rate)
        self.keypoint_sigmas = None if keypoint_sigmas is None else np.asarray(keypoint_sigmas, np.float64)
        self.camera = CameraMotion()
        self._next_id = 1
        self.reset()

    def reset(self, restart_ids: bool = False, first_id: int = 1) -> None:
        """Forget every track (end of stream or of a segment). Ids keep counting unless ``restart_ids``
        (then they begin at ``first_id``), so a person in a new segment never inherits an id already
        written for someone else."""
        self._tracks: list[Track] = []
        self._time: float | None = None
        self.camera.reset()
        if restart_ids:
            self._next_id = first_id

    @property
    def time(self) -> float | None:
        """Timestamp of the last update, None before the first."""
        return self._time

    def camera_moved(self, motion: np.ndarray | Sequence[float]) -> None:
        """The camera moved by ``motion`` ((2,3) affine, or its 6 numbers row by row) since the last
        update, or since the last call of this (a frame the tracker does not see): the tracks move with
        it. What ``update(motion=...)`` does first."""
        if self.config.camera_motion:
            warp(self._tracks, np.asarray(motion, np.float64).reshape(2, 3))

    def update(
        self,
        boxes: np.ndarray,
        scores: np.ndarray,
        timestamp: float,
        keypoints: np.ndarray | None = None,
        keypoint_scores: np.ndarray | None = None,
        frame: np.ndarray | None = None,
        motion: np.ndarray | None = None,
    ) -> np.ndarray:
        """Ids (N,) of this frame's detections. ``frame`` (H,W,3 RGB): the tracker estimates the camera's
        motion since the previous frame from it; or ``motion``, that (2,3) matrix estimated elsewhere
        (``CameraMotion.estimate`` where the frames are)."""
        cfg = self.config
        boxes, scores, keypoints, visible = self._check_inputs(boxes, scores, keypoints, keypoint_scores)
        timestamp = self._check_time(timestamp)
        first_frame = self._time is None and not self._tracks
        if motion is None and frame is not None and cfg.camera_motion:
            motion = self.camera.estimate(frame, boxes)
        if motion is not None:
            self.camera_moved(motion)
        advance(self._tracks, timestamp, self.frame_rate)
        self._time = timestamp

        usable = np.isfinite(boxes).all(axis=1) & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        usable &= np.isfinite(scores) & (scores >= cfg.track_low_thresh)
        high = np.flatnonzero(usable & (scores >= cfg.track_high_thresh))
        low = np.flatnonzero(usable & (scores < cfg.track_high_thresh))
        dets = FrameDetections(boxes, scores, keypoints, visible)

        matched: dict[int, Track] = {}
        confirmed = [t for t in self._tracks if t.state is not TrackState.TENTATIVE]
        tentative = [t for t in self._tracks if t.state is TrackState.TENTATIVE]
        # 2. high-score detections against every confirmed track, tracked and lost.
        pool, high = self._match(confirmed, dets, high, 1.0 - cfg.match_thresh, matched, fuse=True)
        # 3. low-score detections against the tracks that were tracked until now (boxes only: a weak box
        # is mostly a hidden person, whose keypoints are someone else's).
        recent = [t for t in pool if t.state is TrackState.TRACKED]
        recent_left, _ = self._match(recent, dets, low, 1.0 - cfg.low_match_thresh, matched, fuse=False,
                                     keypoints=False)
        # 4. tentative tracks against the remaining high-score detections.
        tentative_left, high = self._match(
            tentative, dets, high, 1.0 - cfg.tentative_match_thresh, matched, fuse=True
        )

        for track in matched.values():
            if track.state is TrackState.TENTATIVE:
                track.track_id = self._take_id()
        observe([(t, d) for d, t in matched.items()], boxes, scores, timestamp, keypoints, visible)
        for track in recent_left:
            track.state = TrackState.LOST
        dropped = {id(t) for t in tentative_left}
        self._tracks = [t for t in self._tracks if id(t) not in dropped]
        # 5. new tracks; expired and duplicate tracks go.
        self._start_tracks(high, dets, timestamp, first_frame, matched)
        self._tracks = drop_expired_and_duplicates(
            self._tracks, timestamp, cfg.max_lost_seconds, cfg.duplicate_iou
        )

        alive = {id(t) for t in self._tracks}
        ids = np.full(len(boxes), -1, dtype=np.int64)
        for det, track in matched.items():
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

    def _view(self, tracks: list[Track], with_keypoints: bool) -> TrackView:
        view = TrackView(np.stack([t.predicted_box for t in tracks]))
        if with_keypoints:
            k = len(self.keypoint_sigmas)
            view.keypoints = np.stack([t.moved_keypoints() if t.keypoints is not None else np.zeros((k, 2))
                                       for t in tracks])
            view.visible = np.stack([t.keypoint_visible if t.keypoints is not None else np.zeros(k, bool)
                                     for t in tracks])
        return view

    def _match(
        self, tracks: list[Track], dets: FrameDetections, cols: np.ndarray, min_similarity: float,
        matched: dict[int, Track], fuse: bool, keypoints: bool = True,
    ) -> tuple[list[Track], np.ndarray]:
        """Match ``tracks`` to detections ``cols``; record pairs; return unmatched tracks and dets."""
        if not tracks or len(cols) == 0:
            return list(tracks), cols
        with_keypoints = keypoints and dets.keypoints is not None
        view = self._view(tracks, with_keypoints)
        sigmas = self.keypoint_sigmas if with_keypoints else None
        rows, picked = association.match(view, dets, cols, self.config, min_similarity, fuse, sigmas)
        for r, c in zip(rows, picked, strict=True):
            matched[int(cols[c])] = tracks[r]
        taken = set(rows.tolist())
        return [t for i, t in enumerate(tracks) if i not in taken], np.delete(cols, picked)

    def _start_tracks(
        self, cols: np.ndarray, dets: FrameDetections, timestamp: float, first_frame: bool,
        matched: dict[int, Track],
    ) -> None:
        kept = cols[dets.scores[cols] >= self.config.new_track_thresh]
        if not len(kept):
            return
        keypoints = None if dets.keypoints is None else dets.keypoints[kept]
        visible = None if dets.visible is None else dets.visible[kept]
        born = new_tracks(dets.boxes[kept], dets.scores[kept], timestamp, keypoints, visible)
        for det, track in zip(kept, born, strict=True):
            if first_frame:
                # On the first frame of a stream there is nothing to confuse a person with.
                track.state, track.track_id = TrackState.TRACKED, self._take_id()
                matched[int(det)] = track
        self._tracks.extend(born)

    def _check_inputs(
        self, boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray | None,
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
            self.keypoint_sigmas = association.default_keypoint_sigmas(keypoints.shape[1])
        if len(self.keypoint_sigmas) != keypoints.shape[1]:
            raise ValueError(
                f"{keypoints.shape[1]} keypoints but {len(self.keypoint_sigmas)} keypoint sigmas"
            )
        visible = (keypoint_scores >= self.config.keypoint_threshold) & np.isfinite(keypoints).all(axis=-1)
        return boxes, scores, keypoints, visible

    def _check_time(self, timestamp: float) -> float:
        timestamp = float(timestamp)
        if not np.isfinite(timestamp):
            raise ValueError(f"timestamp must be a finite number of seconds, got {timestamp}")
        if self._time is not None and timestamp < self._time:
            raise ValueError(
                f"timestamp went backwards ({timestamp} < {self._time}); call reset() at a new segment"
            )
        return timestamp

    def _take_id(self) -> int:
        track_id = self._next_id
        self._next_id += 1
        return track_id
