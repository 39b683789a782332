"""SegmentationSmoother: less flicker, no trail behind a moving person, lifecycle per key."""

import cv2
import numpy as np
import pytest

from trackers import SegmentationSmoother
from trackers.seg_smoothing import crop_shift

FPS = 30.0
H, W, C = 48, 64, 3


def disc_labels(cx: float, cy: float, radius: int = 10) -> np.ndarray:
    labels = np.zeros((H, W), np.uint8)
    cv2.circle(labels, (round(cx), round(cy)), radius, 1, -1)
    cv2.rectangle(labels, (round(cx) - 3, round(cy) - 3), (round(cx) + 3, round(cy) + 3), 2, -1)
    return labels


def noisy(labels: np.ndarray, rng: np.random.Generator, noise: float = 1.3) -> np.ndarray:
    logits = np.eye(C, dtype=np.float32)[labels].transpose(2, 0, 1) * 3.0
    logits += rng.normal(0, noise, logits.shape).astype(np.float32)
    e = np.exp(logits - logits.max(axis=0))
    return e / e.sum(axis=0)


def label_changes(maps: list[np.ndarray]) -> float:
    return float(np.mean([np.mean(a != b) for a, b in zip(maps[:-1], maps[1:], strict=True)]))


def test_static_scene_flicker_drops_and_accuracy_rises():
    rng = np.random.default_rng(0)
    truth = disc_labels(32, 24)
    seg = SegmentationSmoother()
    raw, smooth = [], []
    for f in range(40):
        probs = noisy(truth, rng)
        out = seg(probs, f / FPS)
        assert out.shape == probs.shape and out.dtype == np.float32
        np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-4)
        raw.append(probs.argmax(axis=0))
        smooth.append(out.argmax(axis=0))
    assert label_changes(smooth[5:]) * 5 < label_changes(raw[5:])
    assert np.mean(smooth[-1] == truth) > np.mean(raw[-1] == truth)


def test_shift_carries_the_previous_map_with_the_person():
    # Clean maps of a disc moving 3 px per frame: carried by the right shift, the blend stays sharp
    # and on the disc; without the shift it would smear behind.
    seg = SegmentationSmoother(mode="ema", time_constant=0.2, flow=False)
    previous = np.eye(3, dtype=np.float64)[:2]
    for f in range(12):
        truth = disc_labels(15 + 3 * f, 24)
        probs = np.eye(C, dtype=np.float32)[truth].transpose(2, 0, 1)
        shift = None if f == 0 else crop_shift(previous, previous, motion=(3.0, 0.0))
        out = seg(probs, f / FPS, shift=shift)
        np.testing.assert_allclose(out.sum(axis=0), 1.0, atol=1e-4)  # also where the shift uncovers
    assert np.mean(out.argmax(axis=0) == truth) > 0.99
    unshifted = SegmentationSmoother(mode="ema", time_constant=0.2, flow=False)
    for f in range(12):
        truth = disc_labels(15 + 3 * f, 24)
        lagging = unshifted(np.eye(C, dtype=np.float32)[truth].transpose(2, 0, 1), f / FPS)
    assert np.mean(lagging.argmax(axis=0) == truth) < np.mean(out.argmax(axis=0) == truth)


def test_crop_shift_composes_crop_transforms_and_motion():
    previous = np.array([[2.0, 0.0, 100.0], [0.0, 2.0, 50.0]])  # crop px -> frame px
    current = np.array([[2.0, 0.0, 110.0], [0.0, 2.0, 50.0]])
    # A person standing still: a crop pixel moves opposite to the crop window.
    np.testing.assert_allclose(crop_shift(previous, current) @ [4.0, 4.0, 1.0], [-1.0, 4.0])
    # A person moving with the window: the same crop pixel.
    np.testing.assert_allclose(crop_shift(previous, current, (10.0, 0.0)) @ [4.0, 4.0, 1.0], [4.0, 4.0])


def test_optical_flow_follows_a_moving_textured_person():
    rng = np.random.default_rng(1)
    texture = cv2.GaussianBlur(rng.integers(0, 255, (H, W)).astype(np.uint8), (0, 0), 1.0)
    figure = cv2.GaussianBlur(rng.integers(0, 255, (H, W)).astype(np.uint8), (0, 0), 1.0)
    flow_seg = SegmentationSmoother(flow=True, time_constant=0.2)
    plain_seg = SegmentationSmoother(flow=False, time_constant=0.2)
    scores = {"flow": [], "plain": []}
    for f in range(20):
        cx = 15 + 1.5 * f
        truth = disc_labels(cx, 24)
        moved = np.roll(figure, round(1.5 * f), axis=1)
        image = np.where(truth > 0, moved, texture).astype(np.uint8)
        probs = noisy(truth, rng, noise=0.5)
        for name, seg in (("flow", flow_seg), ("plain", plain_seg)):
            out = seg(probs, f / FPS, image=image if name == "flow" else None)
            assert np.isfinite(out).all()
            scores[name].append(np.mean(out.argmax(axis=0) == truth))
    assert np.mean(scores["flow"][5:]) > np.mean(scores["plain"][5:])


def test_keys_are_independent_and_size_change_starts_afresh():
    rng = np.random.default_rng(2)
    seg = SegmentationSmoother()
    a = noisy(disc_labels(20, 20), rng)
    b = noisy(disc_labels(40, 30), rng)
    seg(a, 0.0, key=1)
    np.testing.assert_allclose(seg(b, 0.0, key=2), b, atol=1e-6)  # a new key starts from its map
    bigger = np.full((C, H + 8, W), 1.0 / C, np.float32)
    np.testing.assert_allclose(seg(bigger, 0.033, key=1), bigger)
    seg.reset()
    np.testing.assert_allclose(seg(a, 0.05, key=2), a, atol=1e-6)


def test_nan_and_zero_maps_give_finite_output():
    seg = SegmentationSmoother()
    seg(np.full((C, H, W), 1.0 / C, np.float32), 0.0)
    bad = np.zeros((C, H, W), np.float32)
    bad[:, :5] = np.nan
    out = seg(bad, 1 / FPS)
    assert np.isfinite(out).all()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="mode"):
        SegmentationSmoother(mode="median")
    seg = SegmentationSmoother()
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        seg(np.zeros((H, W)), 0.0)
    seg(np.zeros((C, H, W)), 1.0)
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        seg(np.zeros((C, H, W)), 1.1, shift=np.eye(3))
    with pytest.raises(ValueError, match="backwards"):
        seg(np.zeros((C, H, W)), 0.5)
