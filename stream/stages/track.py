"""Track+smooth stage (one per source, in order): person ids, One-Euro keypoint and box smoothing.

Results from the GPU worker are put back in ``seq`` order first. ``--no-smooth`` keeps boxes and
keypoints exactly as decoded but still assigns track ids. An ``eos`` (end of a segment: reconnect or
new resolution, or the end of the source) resets every tracker and filter.
"""

from __future__ import annotations

import numpy as np
import zmq

from stream.runtime.messages import EOS, RESULTS, Message, follow_up, result_arrays, to_frame_result
from stream.runtime.reorder import ReorderBuffer
from stream.runtime.stage import StageLink, WorkerSpec
from stream.runtime.transport import Stopped, close_sender, make_socket, recv_message, send_until


class SourceTracking:
    """One source's tracker and smoothers."""

    def __init__(self, frame_rate: float, smooth: bool, keypoint_threshold: float) -> None:
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
        self.tracker.reset(restart_ids=True)

    def __call__(self, message: Message) -> Message:
        result = to_frame_result(message)
        timestamp = message.timestamp
        ids = self.tracker.update(
            result.boxes,
            result.scores,
            timestamp,
            keypoints=result.keypoints,
            keypoint_scores=result.keypoint_scores,
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

    def reset(self) -> None:
        self.tracker.reset()
        if self.smooth:
            self.keypoints.reset()
            self.boxes.reset()


def run_tracker(context: zmq.Context, spec: WorkerSpec, link: StageLink) -> None:
    (plan,) = spec.sources
    cfg = spec.config
    hwm = cfg.queue_frames * 4
    inbox = make_socket(context, zmq.PULL, spec.endpoints[f"track.{plan.name}"], bind=True, hwm=hwm)
    outbox = make_socket(
        context, zmq.PUSH, spec.endpoints[f"render.{plan.name}.results"], bind=False, hwm=hwm
    )
    rate = float(plan.info.frame_rate) if plan.info.frame_rate else float(cfg.folder_fps) or 30.0
    tracking = SourceTracking(rate, cfg.smooth, cfg.keypoint_threshold)
    order = ReorderBuffer()
    link.emit("ready")
    try:
        finished = False
        while not finished:
            while not inbox.poll(100, zmq.POLLIN):
                if link.should_abort():
                    return
            for message in order.push(recv_message(inbox)):
                if message.kind == RESULTS:
                    message = tracking(message)
                elif message.kind == EOS:
                    tracking.reset()
                    finished = bool(message.meta.get("final"))
                send_until(outbox, message, link.should_abort)
        link.emit("done", source=plan.name)
        link.wait_for_finish()
    except Stopped:
        pass
    finally:
        inbox.close(linger=0)
        close_sender(outbox, link.finished)
