"""Person tracking and temporal smoothing of keypoints, boxes and segmentation maps (numpy only).

One set of instances per source, fed in frame order with the frame's timestamp in seconds (pts, or
the capture time for live sources); call ``reset()`` on all of them at EOS / a new segment::

    tracker = PersonTracker(frame_rate=fps)
    boxes_sm, points_sm, seg_sm = BoxSmoother(), KeypointSmoother(), SegmentationSmoother()

    # a frame with detector output, after pose (tracking comes after the model in the pipeline)
    ids = tracker.update(boxes, scores, t, keypoints, keypoint_scores, frame=frame_rgb)
    # keypoints optional (they only help, see trackers/association.py); the frame, optional, lets the
    # tracker follow camera motion (trackers/motion.py); thresholds: trackers/config.py
    boxes = boxes_sm(ids, boxes, t)                           # steadier boxes for the output
    keypoints = points_sm(ids, keypoints, keypoint_scores, t) # ids < 0 pass through unchanged
    probs = seg_sm(probs, t, key=0, image=frame_rgb)          # full frame (flow=True to follow motion)
    probs = seg_sm(crop_probs, t, key=int(track_id), shift=crop_shift(prev_crop_to_frame, crop_to_frame,
                                                                       motion))  # per-track crops

    # a frame between detector runs (detect every k frames)
    ids, boxes = tracker.predict(t)                           # -1 for tracks not confirmed yet
    ...pose on those boxes...
    pose_boxes, pose_scores = keypoint_boxes(keypoints, keypoint_scores)
    ids = tracker.update(pose_boxes, pose_scores, t)          # keeps the tracks observed

Where persons are cropped (before the model, so before any tracking), the crop boxes are steadied on
their own: ``CropBoxSmoother`` associates each frame's boxes with the previous crop boxes by IoU and
One-Euro filters them, so detector jitter does not become crop jitter::

    crops = CropBoxSmoother()                                 # one per source, reset at EOS
    crop_boxes = crops(boxes, t)                              # crop from these; report ``boxes``
"""

from trackers.association import keypoint_boxes
from trackers.config import TrackerConfig
from trackers.crop_boxes import CropBoxSmoother
from trackers.motion import CameraMotion
from trackers.one_euro import BoxSmoother, KeypointSmoother
from trackers.person_tracker import PersonTracker
from trackers.seg_smoothing import SegmentationSmoother, crop_shift

__all__ = [
    "BoxSmoother",
    "CameraMotion",
    "CropBoxSmoother",
    "KeypointSmoother",
    "PersonTracker",
    "SegmentationSmoother",
    "TrackerConfig",
    "crop_shift",
    "keypoint_boxes",
]
