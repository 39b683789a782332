"""Track+smooth stage (one per source, in order): person ids, One-Euro keypoint and box smoothing.

Results from the GPU worker are put back in ``seq`` order first. ``--no-smooth`` keeps boxes and
keypoints exactly as decoded but still assigns track ids. An ``eos`` (end of a segment: reconnect or
new resolution, or the end of the source) resets every tracker and filter.
"""

from __future__ import annotations

import logging

import numpy as np
import zmq

from stream.runtime import topology
from stream.runtime.events import Done
from stream.runtime.messages import (
    CAMERA_MOTION,
    EOS,
    RESULTS,
    SKIP,
    Message,
    follow_up,
    result_arrays,
    to_frame_result,
)
from stream.runtime.reorder import ReorderBuffer
from stream.runtime.stage import Stage, StageLink, WorkerSpec
from stream.runtime.transport import close_sender, send_until

log = logging.getLogger(__name__)


class SourceTracking:
    """One source's tracker and smoothers."""

    def __init__(self, frame_rate: float, smooth: bool, keypoint_threshold: float, first_id: int = 1) -> None:
        from models.meta import pose_meta
        from trackers import BoxSmoother, KeypointSmoother, PersonTracker

        self.tracker = PersonTracker(frame_rate=frame_rate, keypoint_threshold=keypoint_threshold)
        self.smooth = smooth
        self.keypoints = KeypointSmoother(score_threshold=keypoint_threshold) if smooth else None
        self.boxes = BoxSmoother() if smooth else None
        # The first update pulls in the assignment solver (seconds): pay that before frames arrive.
        box, score = np.array([[0.0, 0.0, 8.0, 8.0]], np.float32), np.array([0.9], np.float32)
        k = len(pose_meta().names)
        points, point_scores = np.full((1, k, 2), 4.0, np.float32), np.ones((1, k), np.float32)
        for timestamp in (0.0, 0.04):
            self.tracker.update(box, score, timestamp, keypoints=points, keypoint_scores=point_scores)
        self.tracker.reset(restart_ids=True, first_id=first_id)
        self.last_time: float | None = None

    def __call__(self, message: Message) -> Message:
        result = to_frame_result(message)
        timestamp = message.timestamp
        if self.last_time is not None and timestamp < self.last_time:
            # Sources start a new segment when their clock jumps; a step back that gets here anyway
            # (a source whose frames mix timed and untimed ones) restarts this source's tracks rather
            # than ending the run.
            log.warning("%s: time went back %.3f s within a segment; tracks restart", message.source,
                        self.last_time - timestamp)
            self.reset()
        self.last_time = timestamp
        ids = self.tracker.update(
            result.boxes,
            result.scores,
            timestamp,
            keypoints=result.keypoints,
            keypoint_scores=result.keypoint_scores,
            motion=message.meta.get(CAMERA_MOTION),
        )
        result.track_ids = np.asarray(ids, np.int64)
        if self.smooth and result.num_persons:
            result.boxes = np.asarray(self.boxes(result.track_ids, result.boxes, timestamp), np.float32)
            if result.keypoints is not None:
                smoothed = self.keypoints(
                    result.track_ids, result.keypoints, result.keypoint_scores, timestamp
                )
                result.keypoints = np.asarray(smoothed, np.float32)
        crops = message.arrays.get("crop_to_frame")
        return follow_up(message, RESULTS, result_arrays(result, crops)).stamp("track")

    def skipped(self, message: Message) -> None:
        """A frame the tracker does not see: the camera motion it carries still moves the tracks."""
        if CAMERA_MOTION in message.meta:
            self.tracker.camera_moved(message.meta[CAMERA_MOTION])

    def reset(self) -> None:
        self.last_time = None
        self.tracker.reset()
        if self.smooth:
            self.keypoints.reset()
            self.boxes.reset()


class TrackStage(Stage):
    """Puts one source's results back in order, tracks and smooths them and passes them to render."""

    def __init__(self, context: zmq.Context, spec: WorkerSpec, link: StageLink) -> None:
        (plan,) = spec.sources
        cfg = spec.config
        self.link = link
        self.source = plan.name
        rate = float(plan.info.frame_rate) if plan.info.frame_rate else float(cfg.folder_fps) or 30.0
        self.tracking = SourceTracking(rate, cfg.smooth, cfg.keypoint_threshold, spec.first_track_id)
        self.session = spec.session
        self.order = ReorderBuffer()
        self.inbox = topology.open(context, spec, "results", source=plan.name)
        self.outbox = topology.open(context, spec, "tracked", source=plan.name)
        self.inputs = [self.inbox]

    def receive(self, sock: zmq.Socket, message: Message) -> None:
        if message.session != self.session:
            return  # sent for this source's workers before they were restarted
        for ready in self.order.push(message):
            if ready.kind == RESULTS:
                ready = self.tracking(ready)
            elif ready.kind == SKIP:
                self.tracking.skipped(ready)
            elif ready.kind == EOS:
                self.tracking.reset()
                self.finished = self.finished or bool(ready.meta.get("final"))
            send_until(self.outbox, ready, self.link.should_abort)

    def finish(self) -> Done:
        return Done(source=self.source)

    def close(self, finished: bool) -> None:
        self.inbox.close(linger=0)
        close_sender(self.outbox, finished)

