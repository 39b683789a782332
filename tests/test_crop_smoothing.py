"""Smoothed crop boxes: CropBoxSmoother on its own, then in the GPU worker's engine with a trained model.

The class: jitter around a still person drops, a moving person is followed within a frame, persons keep
their own filters whatever the list order, a new person starts at its raw box, and bad rows (NaN,
empty frames) neither crash nor spread. The engine: ``InferenceEngine`` on real frame messages of a still
synthetic figure whose detector boxes jitter, scheduled as the worker schedules them; with smoothing on,
the crops (``crop_to_frame``) and the keypoints decoded from them shake less, keypoints stay as
accurate, and the reported boxes are still the detector's.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from pipeline_fixtures import engine_config, run_engine
from trained_pose import (
    INPUT_SIZE,
    draw_background,
    draw_person,
    keypoint_indices,
    random_body_color,
    random_person,
)

from stream.engine import InferenceEngine
from stream.media.frames import DecodedFrame
from stream.runtime.messages import EOS, RESULTS, Message, control_message, frame_message
from trackers import CropBoxSmoother

FPS = 30.0
BOX_SIZE = np.array([100.0, 250.0])  # a standing person's box, w x h pixels


def person_box(centre: tuple[float, float], size: np.ndarray = BOX_SIZE) -> np.ndarray:
    cx, cy = centre
    return np.array([cx - size[0] / 2, cy - size[1] / 2, cx + size[0] / 2, cy + size[1] / 2])


def detector_noise(
    rng: np.random.Generator, shape: tuple[int, ...], size: np.ndarray, share: float
) -> np.ndarray:
    """Independent Gaussian jitter of every box edge, ``share`` of the box's width or height."""
    return rng.normal(0.0, 1.0, shape) * share * np.tile(size, 2)


def frame_jitter(series: np.ndarray, truth: np.ndarray) -> float:
    """RMS of the frame-to-frame change of the error: the shake one sees."""
    return float(np.sqrt((np.diff(series - truth, axis=0) ** 2).mean()))


def run_boxes(smoother: CropBoxSmoother, observed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Feed (T, N, 4) boxes at 30 fps; returns ids (T, N) and smoothed boxes (T, N, 4)."""
    outputs = [smoother.update(frame, i / FPS) for i, frame in enumerate(observed)]
    return np.stack([ids for ids, _ in outputs]), np.stack([boxes for _, boxes in outputs])


# --- the class alone ------------------------------------------------------------------------------------


def test_still_person_crop_jitter_drops_severalfold() -> None:
    rng = np.random.default_rng(0)
    truth = np.repeat(person_box((320.0, 240.0))[None, None], 90, axis=0)  # (T, 1, 4)
    observed = truth + detector_noise(rng, truth.shape, BOX_SIZE, 0.02)
    ids, smoothed = run_boxes(CropBoxSmoother(), observed)
    assert (ids == ids[0, 0]).all(), "a still person must keep one crop id"
    raw, steady = frame_jitter(observed, truth), frame_jitter(smoothed, truth)
    assert steady * 4 < raw, f"jitter {raw:.2f} px raw, {steady:.2f} px smoothed"
    # Smoothing must not pull the box off the person: the average error stays small.
    assert np.abs((smoothed - truth)[10:].mean(axis=0)).max() < 2.0


def test_moving_person_is_followed_with_little_lag() -> None:
    rng = np.random.default_rng(1)
    speed = 6.0  # px per frame: a brisk walk across a 640 px view
    centres = [(100.0 + speed * i, 240.0) for i in range(60)]
    truth = np.stack([person_box(c) for c in centres])[:, None]
    observed = truth + detector_noise(rng, truth.shape, BOX_SIZE, 0.02)
    ids, smoothed = run_boxes(CropBoxSmoother(), observed)
    assert (ids == ids[0, 0]).all()
    centre_error = ((smoothed[..., 0] + smoothed[..., 2]) - (truth[..., 0] + truth[..., 2])) / 2
    lag_frames = -centre_error[15:].mean() / speed
    assert 0.0 <= lag_frames < 1.0, f"the crop lags {lag_frames:.2f} frames"
    assert frame_jitter(smoothed, truth) < frame_jitter(observed, truth)


def test_crossing_persons_keep_their_own_filters_in_any_list_order() -> None:
    """Two persons walk past each other (one nearer, so larger); the detector lists them in a
    different order every other frame. Each keeps its crop id and its box follows its own person."""
    rng = np.random.default_rng(2)
    near, far = np.array([110.0, 270.0]), np.array([70.0, 180.0])
    frames = 50
    truth = np.stack([
        [person_box((150.0 + 7.0 * i, 250.0), near), person_box((500.0 - 7.0 * i, 230.0), far)]
        for i in range(frames)
    ])  # (T, 2, 4): person 0 walks right, person 1 walks left, they cross near frame 25
    noise = np.stack([detector_noise(rng, (frames, 4), size, 0.02) for size in (near, far)], axis=1)
    observed = truth + noise
    order = np.array([[0, 1] if i % 2 == 0 else [1, 0] for i in range(frames)])
    listed = np.take_along_axis(observed, order[..., None], axis=1)
    ids_listed, smoothed_listed = run_boxes(CropBoxSmoother(), listed)
    # Back to person order: row p of frame i is person p.
    back = np.argsort(order, axis=1)
    ids = np.take_along_axis(ids_listed, back, axis=1)
    smoothed = np.take_along_axis(smoothed_listed, back[..., None], axis=1)
    assert (ids == ids[0]).all(), f"crop ids changed hands: {ids.tolist()}"
    assert ids[0, 0] != ids[0, 1]
    error = np.abs(smoothed - truth).max(axis=-1)  # (T, 2)
    assert error.max() < 15.0, f"a box strayed {error.max():.1f} px from its person"


def test_new_person_far_away_starts_at_its_raw_box() -> None:
    rng = np.random.default_rng(3)
    smoother = CropBoxSmoother()
    still = person_box((150.0, 240.0))
    for i in range(20):
        smoother(still[None] + detector_noise(rng, (1, 4), BOX_SIZE, 0.02), i / FPS)
    newcomer = person_box((480.0, 240.0))
    first = still + detector_noise(rng, (4,), BOX_SIZE, 0.02)
    ids, out = smoother.update(np.stack([first, newcomer]), 20 / FPS)
    np.testing.assert_array_equal(out[1], newcomer)
    assert ids[1] not in ids[:1] and len(smoother.crop_ids) == 2
    assert not np.array_equal(out[0], first), "the known person must still be smoothed"


def test_reset_and_timestamps_going_back_start_afresh() -> None:
    rng = np.random.default_rng(4)
    smoother = CropBoxSmoother()
    box = person_box((300.0, 240.0))
    for i in range(15):
        smoother(box[None] + detector_noise(rng, (1, 4), BOX_SIZE, 0.02), i / FPS)
    shifted = box + 6.0
    assert not np.array_equal(smoother(shifted[None], 15 / FPS)[0], shifted)
    smoother.reset()
    assert smoother.crop_ids == []
    np.testing.assert_array_equal(smoother(shifted[None], 16 / FPS)[0], shifted)
    # A segment that starts its clock again without a reset is a new segment too.
    np.testing.assert_array_equal(smoother(box[None], 0.0)[0], box)


def test_empty_frames_nan_rows_and_gaps() -> None:
    rng = np.random.default_rng(5)
    smoother = CropBoxSmoother(forget_after=0.5)
    box = person_box((300.0, 240.0))
    t = 0.0
    for _ in range(10):
        ids, out = smoother.update(box[None] + detector_noise(rng, (1, 4), BOX_SIZE, 0.02), t)
        t += 1 / FPS
    person_id = int(ids[0])
    empty_ids, empty_out = smoother.update(np.zeros((0, 4), np.float32), t)
    assert empty_ids.shape == (0,) and empty_out.shape == (0, 4)
    t += 1 / FPS

    bad = np.array([[np.nan, 1.0, 50.0, 90.0], [10.0, 10.0, 5.0, 40.0], [np.inf, 0.0, 1.0, 1.0]])
    ids, out = smoother.update(np.vstack([bad[:1], box[None], bad[1:]]), t)
    t += 1 / FPS
    assert ids.tolist() == [-1, person_id, -1, -1]  # a one-frame gap keeps the filter
    assert np.isfinite(out[1]).all()
    np.testing.assert_array_equal(out[[0, 2, 3]], bad)  # unusable rows come back as given
    ids, out = smoother.update(box[None].astype(np.float32), t)
    assert out.dtype == np.float32 and np.isfinite(out).all() and ids[0] == person_id

    # Gone for longer than forget_after: the person comes back as a new crop, at its raw box.
    t += 0.6
    ids, out = smoother.update(box[None], t)
    assert ids[0] != person_id
    np.testing.assert_array_equal(out[0], box)


def test_bad_input_is_a_clear_error() -> None:
    smoother = CropBoxSmoother()
    with pytest.raises(ValueError, match=r"boxes must be \(N, 4\)"):
        smoother(np.zeros((2, 3)), 0.0)
    with pytest.raises(ValueError, match="timestamp must be a finite"):
        smoother(np.zeros((0, 4)), float("nan"))
    with pytest.raises(ValueError, match="min_iou"):
        CropBoxSmoother(min_iou=0.0)


# --- through the GPU worker's engine ----------------------------------------------------------------------

FRAME_SIZE = (320, 240)  # (W, H)
NUM_FRAMES = 40
BOX_JITTER = 0.03  # detector jitter: share of the box size per edge


@pytest.fixture(scope="module")
def still_figure() -> dict:
    """A still figure (its keypoints are the truth), 40 frames of it, and jittered detector boxes."""
    rng = np.random.default_rng(7)
    width, height = FRAME_SIZE
    image = draw_background(rng, (height, width))
    person = random_person(rng, (160.0, 120.0), 140.0)
    draw_person(image, person, random_body_color(rng))
    box = person.box()
    size = box[2:] - box[:2]
    jittered = box + detector_noise(rng, (NUM_FRAMES, 4), size, BOX_JITTER)
    return {"image": image, "keypoints": person.keypoints, "box": box, "boxes": jittered}


def write_boxes_file(path: Path, boxes_by_frame: dict[int, np.ndarray]) -> Path:
    with path.open("w") as f:
        for frame, boxes in sorted(boxes_by_frame.items()):
            f.write(json.dumps({"frame": frame, "boxes": [[*b, 0.95] for b in boxes.tolist()]}) + "\n")
    return path


def frame_messages(source: str, image: np.ndarray, indices: list[int], segment: int = 0) -> list[Message]:
    """Frame messages of a 30 fps clip showing ``image``; ``indices`` are the frames' decode indices
    (the boxes file is looked up by them) and give their timestamps."""
    messages = []
    for seq, index in enumerate(indices):
        decoded = DecodedFrame(
            image=image, index=index, pts=index / FPS, time_base=Fraction(1, 30), capture_time=0.0,
            segment=segment,
        )
        messages.append(frame_message(source, seq, decoded))
    return messages


def make_engine(checkpoint: Path, boxes_file: Path, smooth: bool) -> InferenceEngine:
    return InferenceEngine(engine_config(checkpoint, boxes_file, INPUT_SIZE, smooth=smooth))


def crop_centres(results: list[Message]) -> np.ndarray:
    """(F, 2) centre of each frame's (single) crop in frame pixels, from its ``crop_to_frame``."""
    h, w = INPUT_SIZE
    centre = np.array([(w - 1) / 2, (h - 1) / 2, 1.0])
    return np.stack([m.arrays["crop_to_frame"][0] @ centre for m in results])


def chosen_keypoints(results: list[Message]) -> np.ndarray:
    return np.stack([m.arrays["keypoints"][0, keypoint_indices()] for m in results])  # (F, K, 2)


SHIFT = 60  # a second source shows the figure this many pixels further left
OFFSET = 1000  # that source's decode indices start here, so one boxes file holds both sources' boxes


@pytest.fixture(scope="module")
def engine_runs(trained_checkpoint: Path, still_figure: dict, tmp_path_factory) -> Iterator[dict]:
    """One engine with smoothing off and one with it on, and their results for the still figure."""
    moved = still_figure["boxes"] - np.array([SHIFT, 0, SHIFT, 0])
    boxes_file = write_boxes_file(
        tmp_path_factory.mktemp("crop_boxes") / "boxes.jsonl",
        {
            **{i: still_figure["boxes"][i][None] for i in range(NUM_FRAMES)},
            **{OFFSET + i: moved[i][None] for i in range(NUM_FRAMES)},
        },
    )
    runs = {"engines": {}}
    for smooth in (False, True):
        engine = make_engine(trained_checkpoint, boxes_file, smooth)
        messages = frame_messages("clip", still_figure["image"], list(range(NUM_FRAMES)))
        results = run_engine(engine, messages)
        assert [m.kind for m in results] == [RESULTS] * NUM_FRAMES
        assert [m.frame for m in results] == list(range(NUM_FRAMES))
        runs[smooth] = results
        runs["engines"][smooth] = engine
    yield runs
    for engine in runs["engines"].values():
        engine.close()


def test_engine_reports_detector_boxes_and_crops_from_smoothed_ones(engine_runs: dict, still_figure) -> None:
    for smooth in (False, True):
        reported = np.stack([m.arrays["boxes"][0] for m in engine_runs[smooth]])
        np.testing.assert_allclose(reported, still_figure["boxes"], atol=1e-4)
    raw, steady = crop_centres(engine_runs[False]), crop_centres(engine_runs[True])
    np.testing.assert_allclose(steady[0], raw[0], atol=1e-3)  # the first crop is the detector's box
    truth = np.repeat(raw.mean(axis=0, keepdims=True), NUM_FRAMES, axis=0)
    ratio = frame_jitter(raw, truth) / frame_jitter(steady, truth)
    assert ratio > 3.0, f"crop centre jitter only {ratio:.2f}x lower"


def test_engine_keypoints_shake_less_and_stay_accurate(engine_runs: dict, still_figure) -> None:
    truth = np.repeat(still_figure["keypoints"][None], NUM_FRAMES, axis=0)
    raw, steady = chosen_keypoints(engine_runs[False]), chosen_keypoints(engine_runs[True])
    raw_jitter, steady_jitter = frame_jitter(raw, truth), frame_jitter(steady, truth)
    raw_error = np.linalg.norm(raw - truth, axis=-1).mean()
    steady_error = np.linalg.norm(steady - truth, axis=-1).mean()
    summary = (
        f"jitter {raw_jitter:.3f} -> {steady_jitter:.3f} px, "
        f"mean error {raw_error:.3f} -> {steady_error:.3f} px"
    )
    assert steady_jitter * 2.0 < raw_jitter, summary
    assert steady_error <= raw_error * 1.05 + 0.05, summary


def test_engine_keeps_crop_state_per_source(engine_runs: dict, still_figure: dict) -> None:
    """Two sources interleaved in the same groups crop exactly as each would alone."""
    engine = engine_runs["engines"][True]
    image = still_figure["image"]
    first = frame_messages("a", image, list(range(NUM_FRAMES)))
    other = np.ascontiguousarray(np.roll(image, -SHIFT, axis=1))
    second = frame_messages("b", other, [OFFSET + i for i in range(NUM_FRAMES)])
    # Source b's clock runs 1000 / 30 s ahead: were its state shared with a's, a's frames would go
    # back in time and restart the filter.
    interleaved = [m for pair in zip(first, second, strict=True) for m in pair]
    results = [m for m in run_engine(engine, interleaved, group_size=5) if m.kind == RESULTS]
    by_source = {name: [m for m in results if m.source == name] for name in ("a", "b")}
    alone = crop_centres(engine_runs[True])
    np.testing.assert_allclose(crop_centres(by_source["a"]), alone, atol=1e-4)
    np.testing.assert_allclose(crop_centres(by_source["b"]), alone - np.array([SHIFT, 0]), atol=1e-3)


def test_engine_starts_crop_smoothing_afresh_at_a_new_segment(engine_runs: dict, still_figure: dict) -> None:
    """A segment ends after frame 19 and a new one (a reconnect) starts at frame 20, in the middle of
    a group: frame 20 is cropped from its detector box, later frames are smoothed again, also after
    the old segment's ``eos`` has left the engine."""
    engine = engine_runs["engines"][True]
    split = 20
    before = frame_messages("c", still_figure["image"], list(range(split)))
    segment_end = control_message(EOS, "c", split, final=False)
    segment_end.segment = 0
    after = frame_messages("c", still_figure["image"], list(range(split, NUM_FRAMES)), segment=1)
    results = [m for m in run_engine(engine, [*before, segment_end, *after]) if m.kind == RESULTS]
    centres = crop_centres(results)
    smoothed, unsmoothed = crop_centres(engine_runs[True]), crop_centres(engine_runs[False])
    np.testing.assert_allclose(centres[:split], smoothed[:split], atol=1e-4)
    np.testing.assert_allclose(centres[split], unsmoothed[split], atol=1e-3)
    assert (np.abs(centres[split + 1 :] - unsmoothed[split + 1 :]).max(axis=1) > 1e-3).all()
