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
