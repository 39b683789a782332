"""Camera motion compensation: real OpenCV flow on a synthetic panning shot, and the tracker using it."""

import numpy as np
import pytest
from trained_pose import draw_background

from stream.media.synth import write_clip
from trackers import CameraMotion, PersonTracker

FPS = 25.0
VIEW = (320, 240)  # W, H of the camera's view


def panning_shot(offsets: list[float], seed: int = 0) -> list[np.ndarray]:
    """Views of one wide textured scene, the camera's left edge at each of ``offsets`` (pixels)."""
    scene = draw_background(np.random.default_rng(seed), (VIEW[1], VIEW[0] + int(max(offsets)) + 2))
    return [np.ascontiguousarray(scene[:, int(x) : int(x) + VIEW[0]]) for x in offsets]


def test_estimate_recovers_a_pan_and_ignores_persons(tmp_path):
    offsets = [0.0, 0.0, 12.0, 30.0, 52.0]
    frames = panning_shot(offsets)
    # Through a real encode and decode, as frames reach the tracker.
    import av

    write_clip(tmp_path / "pan.mp4", frames, fps=25)
    with av.open(str(tmp_path / "pan.mp4")) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    # A person walking with the camera is painted on every frame: their box must not pull the estimate.
    person = np.array([140.0, 60.0, 190.0, 200.0])
    for image in decoded:
        image[60:200, 140:190] = (200, 40, 40)
    motion = CameraMotion()
    shifts = []
    for image in decoded:
        matrix = motion.estimate(image, person[None])
        shifts.append(matrix[:, 2])
        assert matrix[:, :2] == pytest.approx(np.eye(2), abs=0.01)
    expected = -np.diff([0.0, *offsets])  # the scene moves left as the camera pans right
    assert np.array(shifts)[:, 0] == pytest.approx(expected, abs=0.5)
    assert np.abs(np.array(shifts)[:, 1]).max() < 0.5


def test_tracker_keeps_ids_through_a_fast_pan_only_with_the_frames():
    # Two persons standing still in the scene; the camera starts panning 28 px per frame. Their boxes
    # jump further than they are wide, so the still-camera prediction loses them.
    offsets = [0.0] * 8 + [28.0 * k for k in range(1, 16)]
    frames = panning_shot(offsets, seed=1)
    standing = np.array([[300.0, 60.0, 340.0, 180.0], [380.0, 70.0, 420.0, 190.0]])
    results = {}
    for with_frames in (True, False):
        tracker = PersonTracker(frame_rate=FPS)
        seen = []
        for i, (x, image) in enumerate(zip(offsets, frames, strict=True)):
            boxes = standing - np.array([x, 0.0, x, 0.0])
            ids = tracker.update(boxes, np.array([0.9, 0.85]), i / FPS, frame=image if with_frames else None)
            seen.append(ids)
        results[with_frames] = np.array(seen)
    with_gmc, without = results[True], results[False]
    assert (with_gmc == with_gmc[0]).all() and len(set(with_gmc[0])) == 2
    assert not (without == without[0]).all()


@pytest.mark.parametrize("workers", ["inproc", "ipc"])
def test_the_run_command_keeps_ids_through_a_fast_pan_with_camera_motion(tmp_path, workers):
    """Through ``sapiens-stream run``: the decoder estimates the camera's motion and the track stage moves
    its tracks by it; without ``--camera-motion`` the same pan breaks both persons' ids."""
    from pipeline_fixtures import read_jsonl, save_tiny_model, write_boxes

    from stream.front.cli import main

    # Two narrow persons standing in the scene, in view throughout; each pan step moves them further
    # than they are wide.
    offsets = [0.0] * 8 + [20.0 * k for k in range(1, 11)]
    write_clip(tmp_path / "pan.mp4", panning_shot(offsets, seed=1), fps=int(FPS))
    standing = [[220.0, 60.0, 236.0, 180.0, 0.9], [280.0, 70.0, 296.0, 190.0, 0.85]]
    boxes = {
        i: [[x1 - x, y1, x2 - x, y2, s] for x1, y1, x2, y2, s in standing] for i, x in enumerate(offsets)
    }
    write_boxes(tmp_path / "boxes.jsonl", boxes)
    model = save_tiny_model(tmp_path / "pose", "pose")
    ids = {}
    for flag in ("--camera-motion", "--no-camera-motion"):
        out = tmp_path / flag
        argv = ["run", str(tmp_path / "pan.mp4"), "--out", str(out), "--pose-model", str(model),
                "--input-size", "64x48", "--detector", f"boxes:{tmp_path / 'boxes.jsonl'}", "--no-smooth",
                "--workers", workers, "--no-progress", flag]  # fmt: skip
        assert main(argv) == 0
        records = read_jsonl(out / "pan.jsonl")
        assert len(records) == len(offsets)
        # Confirmed from the second frame on: each frame's ids in box order.
        ids[flag] = [[person["id"] for person in record["persons"]] for record in records[1:]]
    kept = ids["--camera-motion"]
    assert all(frame == kept[0] for frame in kept) and len(set(kept[0])) == 2, kept
    assert any(frame != ids["--no-camera-motion"][0] for frame in ids["--no-camera-motion"])


def test_the_camera_motion_of_a_frame_the_tracker_skips_still_moves_its_tracks():
    """A live GPU worker may skip a stale frame: the pan in it must still move the tracks, else the next
    frame's persons are found twice as far as predicted."""
    from fractions import Fraction

    from stream.media.frames import DecodedFrame, ModelOutputs
    from stream.runtime.messages import CAMERA_MOTION, RESULTS, SKIP, follow_up, frame_message, result_arrays
    from stream.stages.track import SourceTracking

    standing = np.array([[220.0, 60.0, 236.0, 180.0], [280.0, 70.0, 296.0, 190.0]], np.float32)
    offsets = [0.0] * 4 + [20.0 * k for k in range(1, 9)]

    def ids_seen(skip: set[int], with_skipped_motion: bool) -> list[list[int]]:
        tracking = SourceTracking(FPS, smooth=False, keypoint_threshold=0.3)
        seen, previous = [], 0.0
        for i, x in enumerate(offsets):
            image = np.zeros((240, 320, 3), np.uint8)
            frame = DecodedFrame(image=image, index=i, pts=i / FPS, time_base=Fraction(1, 25), capture_time=0)
            motion = [1.0, 0.0, previous - x, 0.0, 1.0, 0.0]  # the scene moves left as the camera pans right
            previous = x
            sent = frame_message("pan", i, frame, meta={CAMERA_MOTION: motion})
            if i in skip:
                if with_skipped_motion:
                    tracking.skipped(follow_up(sent, SKIP))
                continue
            outputs = ModelOutputs.empty()
            outputs.boxes, outputs.scores = standing - np.float32([x, 0, x, 0]), np.float32([0.9, 0.85])
            tracked = tracking(follow_up(sent, RESULTS, result_arrays(outputs)))
            seen.append(tracked.arrays["track_ids"].tolist())
        return seen

    skip = {5, 7, 9}
    kept = ids_seen(skip, with_skipped_motion=True)
    assert all(frame == kept[1] for frame in kept[1:]) and len(set(kept[1])) == 2, kept
    lost = ids_seen(skip, with_skipped_motion=False)
    assert any(frame != lost[1] for frame in lost[1:]), lost
