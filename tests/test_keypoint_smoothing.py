"""KeypointSmoother and BoxSmoother: less jitter, little lag, confidence-aware, lifecycle by id."""

import numpy as np
import pytest

from trackers import BoxSmoother, KeypointSmoother

FPS = 30.0
K = 308


def pose(rng: np.random.Generator, centre=(300.0, 240.0), scale: float = 200.0) -> np.ndarray:
    return rng.uniform(-0.5, 0.5, (K, 2)) * scale * np.array([0.6, 1.6]) + np.array(centre)


def frame_jitter(series: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sqrt((np.diff(series - truth, axis=0) ** 2).sum(-1).mean()))


def smooth_series(smoother, observed: np.ndarray, scores: np.ndarray, track_id: int = 1) -> np.ndarray:
    ids = np.array([track_id])
    frames = range(len(observed))
    return np.stack([smoother(ids, observed[i][None], scores[i][None], i / FPS)[0] for i in frames])


def test_still_person_jitter_drops_at_least_fivefold():
    rng = np.random.default_rng(0)
    truth = np.repeat(pose(rng)[None], 90, axis=0)
    observed = truth + rng.normal(0, 2.0, truth.shape)
    out = smooth_series(KeypointSmoother(), observed, np.full(truth.shape[:2], 0.9))
    assert frame_jitter(out, truth) * 5 < frame_jitter(observed, truth)


def test_moving_person_is_followed_within_a_frame():
    rng = np.random.default_rng(1)
    velocity = np.array([6.0, 0.0])  # px per frame: a walk across the view
    truth = pose(rng)[None] + np.arange(60)[:, None, None] * velocity
    observed = truth + rng.normal(0, 2.0, truth.shape)
    out = smooth_series(KeypointSmoother(), observed, np.full(truth.shape[:2], 0.9))
    lag = -(out[20:] - truth[20:])[..., 0].mean() / velocity[0]
    assert 0.0 <= lag < 1.0


def test_low_score_keypoint_neither_pulls_the_state_nor_disappears():
    rng = np.random.default_rng(2)
    truth = pose(rng)
    smoother = KeypointSmoother()
    scores = np.full((1, K), 0.9)
    for f in range(10):
        held = smoother(np.array([1]), truth[None], scores, f / FPS)
    outlier = truth.copy()
    outlier[5] += 150.0
    low = scores.copy()
    low[0, 5] = 0.05
    out = smoother(np.array([1]), outlier[None], low, 10 / FPS)
    np.testing.assert_allclose(out[0, 5], held[0, 5])
    out = smoother(np.array([1]), truth[None], scores, 11 / FPS)
    np.testing.assert_allclose(out[0, 5], truth[5], atol=1e-6)  # state never moved towards the outlier


def test_zero_score_and_empty_frames_give_no_nan():
    smoother = KeypointSmoother()
    empty = smoother(np.zeros(0, np.int64), np.zeros((0, K, 2)), np.zeros((0, K)), 0.0)
    assert empty.shape == (0, K, 2)
    rng = np.random.default_rng(3)
    points = pose(rng)[None]
    for f in range(5):
        out = smoother(np.array([4]), points, np.zeros((1, K)), f / FPS)  # never confident
        assert np.isfinite(out).all()
        np.testing.assert_allclose(out, points)
    bad = points.copy()
    bad[0, :3] = np.nan
    out = smoother(np.array([4]), bad, np.full((1, K), np.nan), 5 / FPS)
    assert np.isfinite(out[0, 3:]).all()


def test_new_id_starts_from_its_observation_and_reset_forgets():
    rng = np.random.default_rng(4)
    smoother = KeypointSmoother()
    a, b = pose(rng), pose(rng, centre=(100.0, 100.0))
    scores = np.full((1, K), 0.9)
    for f in range(5):
        smoother(np.array([1]), a[None], scores, f / FPS)
    out = smoother(np.array([1, 2]), np.stack([a, b]), np.full((2, K), 0.9), 5 / FPS)
    np.testing.assert_allclose(out[1], b)
    smoother.reset()
    out = smoother(np.array([1]), b[None], scores, 0.0)  # the old state of id 1 is gone
    np.testing.assert_allclose(out[0], b)


def test_id_unseen_for_long_is_forgotten():
    rng = np.random.default_rng(5)
    smoother = KeypointSmoother(forget_after=0.5)
    a, b = pose(rng), pose(rng, centre=(500.0, 300.0))
    scores = np.full((1, K), 0.9)
    smoother(np.array([9]), a[None], scores, 0.0)
    smoother(np.array([3]), a[None], scores, 1.0)
    out = smoother(np.array([9]), b[None], scores, 1.1)
    np.testing.assert_allclose(out[0], b)


def test_smoothing_is_scale_invariant():
    rng = np.random.default_rng(6)
    walk = np.arange(40)[:, None, None] * np.array([2.0, 1.0])
    truth = pose(rng, centre=(0.0, 0.0), scale=100.0)[None] + walk
    observed = truth + rng.normal(0, 1.0, truth.shape)
    scores = np.full(truth.shape[:2], 0.9)
    small = smooth_series(KeypointSmoother(), observed, scores)
    large = smooth_series(KeypointSmoother(), observed * 4.0, scores)
    np.testing.assert_allclose(large, small * 4.0, rtol=1e-6, atol=1e-6)


def test_skipped_frames_use_elapsed_time():
    # The same still, noisy input smoothed at 30 fps and at 10 fps: fewer, wider-spaced samples
    # must weigh each new sample more (the factor follows elapsed time, not the call count).
    rng = np.random.default_rng(7)
    base = pose(rng)[None]
    first, second = base, base + 4.0
    dense, sparse = KeypointSmoother(), KeypointSmoother()
    scores = np.full((1, K), 0.9)
    dense(np.array([1]), first, scores, 0.0)
    sparse(np.array([1]), first, scores, 0.0)
    near = dense(np.array([1]), second, scores, 1 / FPS)
    far = sparse(np.array([1]), second, scores, 3 / FPS)
    assert np.abs(far - first).mean() > np.abs(near - first).mean()


def test_bad_input_is_refused():
    smoother = KeypointSmoother()
    with pytest.raises(ValueError, match="unique"):
        smoother(np.array([1, 1]), np.zeros((2, K, 2)), np.ones((2, K)), 0.0)
    with pytest.raises(ValueError, match=r"\(N, K, 2\)"):
        smoother(np.array([1]), np.zeros((1, K)), np.ones((1, K)), 0.0)
    with pytest.raises(ValueError, match="scores"):
        smoother(np.array([1]), np.zeros((1, K, 2)), np.ones((1, 3)), 0.0)
    smoother(np.array([1]), np.zeros((1, K, 2)), np.ones((1, K)), 1.0)
    with pytest.raises(ValueError, match="backwards"):
        smoother(np.array([1]), np.zeros((1, K, 2)), np.ones((1, K)), 0.5)


def test_box_smoother_steadies_a_jittery_box_and_keeps_shape():
    rng = np.random.default_rng(8)
    truth = np.array([100.0, 50.0, 180.0, 250.0])
    smoother = BoxSmoother()
    raw, out = [], []
    for f in range(60):
        box = truth + rng.normal(0, 3.0, 4)
        raw.append(box)
        out.append(smoother(np.array([2]), box[None], f / FPS)[0])
    raw, out = np.array(raw), np.array(out)
    assert np.diff(out[10:], axis=0).std() * 3 < np.diff(raw[10:], axis=0).std()
    assert smoother(np.zeros(0, np.int64), np.zeros((0, 4)), 2.1).shape == (0, 4)
    held = smoother(np.array([2]), np.full((1, 4), np.nan), 2.2)
    np.testing.assert_allclose(held[0], out[-1], atol=1e-9)
    with pytest.raises(ValueError, match=r"\(N, 4\)"):
        smoother(np.array([2]), np.zeros((1, 3)), 2.3)
