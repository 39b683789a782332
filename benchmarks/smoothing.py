"""Temporal smoothing on synthetic ground truth: keypoint jitter/lag and mask flicker/mIoU.

Keypoints: 308 keypoints of a person 200 px tall, 30 fps, 5 s per case; observations are the truth
plus Gaussian noise (1 % of the person scale; 3 % for ``noise``), scores in 0.5-1. Cases: ``still``,
``slow`` (a 0.25 scale/s drift), ``fast`` (1 Hz swing of half the scale: up to 3 scales/s), ``step``
(a sudden jump of half the scale), ``noise``, ``outliers`` (3 % of samples thrown 20-60 % of the scale
away, with the low score a pose model gives them). Per case, raw against smoothed:

- jitter: RMS of the frame-to-frame change of the error (px), the shake one sees;
- acceleration error: mean |second difference of output - of truth| (px / frame^2);
- lag: the delay (frames) that best aligns output with truth on moving cases; for ``step``, the
  frames until the error falls under 10 % of the jump.

Masks: a moving figure of 3 parts over background (4 classes), 160x128, 60 frames; per-frame noisy
logits -> probabilities. Flicker = share of pixels whose label changes from one frame to the next
while the true label does not; mIoU over classes, mean over frames. Modes: a crop cut around the
jittery detected box (previous map carried by the box shift, then optical flow), and a full frame
(carried by DIS optical flow on the probabilities or on a rendered image, or not at all).

Crop boxes (the boxes the GPU worker crops persons from, ``CropBoxSmoother``): a 100x250 px person
box at 30 fps, 5 s per case, every edge jittered by 2 % of the box's width or height (a detector's
frame-to-frame wobble). Cases ``still``, ``slow`` (0.25 scale/s), ``fast`` (2 scales/s, a run across
the view), ``step`` (a jump of half the scale). Jitter ratio raw/smoothed and lag as above, on the box
centre. Then, unless ``--no-model``, the same with a model: a tiny pose checkpoint trained on synthetic
figures (``tests/trained_pose.py``, about 20 s to train, or ``--checkpoint DIR``) runs in the worker's
``InferenceEngine`` on a still and a walking figure whose detector boxes jitter by 3 %; keypoint jitter
and mean error against the figure's true keypoints, with crops from raw and from smoothed boxes (no
keypoint smoothing: what changes is the crop alone).

Dense maps (normals, depth, mattes; ``--dense``, written to ``smoothing_dense.json``): the same walking
figure over a static textured background, its true map (depth 2 m on a 5 m background) observed with
per-pixel and blotchy noise of 0.15 m, smoothed as the engine does (``stream.engine.tasks.smooth_map``:
EMA along the optical flow of the rendered image). Flicker: RMS of the frame-to-frame change of the
error (m) where the true map does not change, with the mean absolute error; lag: on a still scene whose
map jumps by 1 m at once, the frames until the mean (signed) error falls under 10 % of the jump.

Run: ``.venv/bin/python benchmarks/smoothing.py [--out FILE] [--no-model] [--checkpoint DIR] [--dense]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_results  # noqa: E402
from trackers import BoxSmoother, CropBoxSmoother, KeypointSmoother, SegmentationSmoother  # noqa: E402
from trackers.seg_smoothing import crop_shift  # noqa: E402

FPS = 30.0
NUM_KEYPOINTS = 308
SCALE = 200.0  # person scale in px (sqrt of box area)


# ---------------------------------------------------------------------------------------- keypoints


def keypoint_case(kind: str, rng: np.random.Generator, frames: int = 150) -> tuple:
    """truth (T,K,2), observed (T,K,2), scores (T,K)."""
    t = np.arange(frames) / FPS
    body = rng.uniform(-0.5, 0.5, (NUM_KEYPOINTS, 2)) * SCALE * np.array([0.6, 1.6]) + np.array([320, 240.0])
    offset = np.zeros((frames, 1, 2))
    if kind == "slow":
        offset[:, 0, 0] = 0.25 * SCALE * t
    elif kind == "fast":
        offset[:, 0, 0] = 0.5 * SCALE * np.sin(2 * np.pi * 1.0 * t)
    elif kind == "step":
        offset[t >= 2.5, 0, 0] = 0.5 * SCALE
    truth = body[None] + offset
    noise = 0.03 if kind == "noise" else 0.01
    observed = truth + rng.normal(0.0, noise * SCALE, truth.shape)
    scores = rng.uniform(0.5, 1.0, truth.shape[:2])
    if kind == "outliers":
        hit = rng.random(truth.shape[:2]) < 0.03
        angle = rng.uniform(0, 2 * np.pi, hit.sum())
        radius = rng.uniform(0.2, 0.6, hit.sum()) * SCALE
        observed[hit] += np.stack([np.cos(angle), np.sin(angle)], axis=1) * radius[:, None]
        scores[hit] = rng.uniform(0.02, 0.25, hit.sum())
    return truth, observed, scores


def jitter(out: np.ndarray, truth: np.ndarray) -> float:
    step = np.diff(out - truth, axis=0)
    return float(np.sqrt((step**2).sum(-1).mean()))


def acceleration_error(out: np.ndarray, truth: np.ndarray) -> float:
    diff = np.diff(out, 2, axis=0) - np.diff(truth, 2, axis=0)
    return float(np.linalg.norm(diff, axis=-1).mean())


def best_delay(out: np.ndarray, truth: np.ndarray, warmup: int = 30) -> float:
    """Delay (frames, 0.05 steps) of the truth that best matches the output (x only)."""
    t = np.arange(len(truth), dtype=np.float64)
    errors = []
    delays = np.arange(0.0, 6.0, 0.05)
    for d in delays:
        shifted = np.stack([np.interp(t - d, t, truth[:, k, 0]) for k in range(truth.shape[1])], 1)
        errors.append(np.sqrt(((out[warmup:, :, 0] - shifted[warmup:]) ** 2).mean()))
    return float(delays[int(np.argmin(errors))])


def settle_frames(out: np.ndarray, truth: np.ndarray, jump_frame: int, jump: float) -> int:
    error = np.abs(out[:, :, 0] - truth[:, :, 0]).mean(axis=1)
    after = np.flatnonzero(error[jump_frame:] < 0.1 * jump)
    return int(after[0]) if len(after) else len(error) - jump_frame


def run_keypoint_case(kind: str, smoother: KeypointSmoother, seed: int) -> dict:
    truth, observed, scores = keypoint_case(kind, np.random.default_rng(seed))
    smoother.reset()
    ids = np.array([1])
    out = np.stack([smoother(ids, observed[i][None], scores[i][None], i / FPS)[0] for i in range(len(truth))])
    result = {}
    for name, series in (("raw", observed), ("smoothed", out)):
        entry = {
            "jitter_px": jitter(series, truth),
            "accel_error_px": acceleration_error(series, truth),
            "rmse_px": float(np.sqrt(((series - truth) ** 2).sum(-1).mean())),
        }
        if kind in ("slow", "fast"):
            entry["lag_frames"] = best_delay(series, truth)
        if kind == "step":
            entry["settle_frames"] = settle_frames(series, truth, int(2.5 * FPS), 0.5 * SCALE)
        result[name] = entry
    return result


def time_keypoint_smoother(persons: int = 10, frames: int = 200) -> float:
    rng = np.random.default_rng(0)
    smoother = KeypointSmoother()
    ids = np.arange(persons)
    points = rng.uniform(0, 500, (frames, persons, NUM_KEYPOINTS, 2))
    scores = rng.uniform(0, 1, (frames, persons, NUM_KEYPOINTS))
    start = time.perf_counter()
    for i in range(frames):
        smoother(ids, points[i], scores[i], i / FPS)
    return 1000.0 * (time.perf_counter() - start) / frames


def time_seg_smoother(height: int, width: int, classes: int = 29, frames: int = 6) -> float:
    """ms per call of the default SegmentationSmoother on a full-frame (C,H,W) map."""
    rng = np.random.default_rng(0)
    maps = rng.dirichlet(np.ones(classes), (frames, height, width)).astype(np.float32).transpose(0, 3, 1, 2)
    seg = SegmentationSmoother()
    seg(maps[0], 0.0)
    start = time.perf_counter()
    for i in range(1, frames):
        seg(maps[i], i / FPS)
    return 1000.0 * (time.perf_counter() - start) / (frames - 1)


def mean_cases(runs: list[dict]) -> dict:
    return {
        which: {k: round(float(np.mean([r[which][k] for r in runs])), 5) for k in runs[0][which]}
        for which in runs[0]
    }


# ---------------------------------------------------------------------------------------- masks

MASK_SIZE = (128, 160)  # H, W
NUM_CLASSES = 4


def figure_labels(cx: float, cy: float) -> np.ndarray:
    """(H,W) labels of a figure centred at (cx, cy): torso (1), head (2), arm (3) over background."""
    h, w = MASK_SIZE
    labels = np.zeros((h, w), np.uint8)
    cv2.ellipse(labels, (round(cx), round(cy)), (18, 34), 0, 0, 360, 1, -1)
    cv2.circle(labels, (round(cx), round(cy - 44)), 11, 2, -1)
    cv2.rectangle(labels, (round(cx + 14), round(cy - 20)), (round(cx + 22), round(cy + 18)), 3, -1)
    return labels


def noisy_probs(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(C,H,W) probabilities: soft true logits plus per-pixel and blotchy noise, as a model flickers."""
    one_hot = np.eye(NUM_CLASSES, dtype=np.float32)[labels].transpose(2, 0, 1)
    logits = np.stack([cv2.GaussianBlur(c, (0, 0), 1.5) for c in one_hot]) * 5.0
    logits += rng.normal(0, 1.2, logits.shape).astype(np.float32)
    blotches = rng.normal(0, 1.0, logits.shape).astype(np.float32)
    logits += np.stack([cv2.GaussianBlur(c, (0, 0), 3.0) for c in blotches]) * 3.0
    e = np.exp(logits - logits.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def render(labels: np.ndarray, texture: np.ndarray, cx: float, cy: float) -> np.ndarray:
    """Grey image: static textured background, the figure textured and moving with it."""
    moved = cv2.warpAffine(texture, np.float32([[1, 0, cx - 80], [0, 1, cy - 64]]), texture.shape[::-1],
                           borderMode=cv2.BORDER_REFLECT)
    return np.where(labels > 0, 60 + moved // 2, texture).astype(np.uint8)


def miou(pred: np.ndarray, truth: np.ndarray) -> float:
    ious = []
    for c in range(NUM_CLASSES):
        union = np.logical_or(pred == c, truth == c).sum()
        if union:
            ious.append(np.logical_and(pred == c, truth == c).sum() / union)
    return float(np.mean(ious))


def flicker(preds: list[np.ndarray], truths: list[np.ndarray]) -> float:
    pairs = zip(preds[:-1], preds[1:], truths[:-1], truths[1:], strict=True)
    rates = [np.mean((p1 != p0) & (t1 == t0)) for p0, p1, t0, t1 in pairs]
    return float(np.mean(rates))


def mask_scores(raws: list[np.ndarray], smooths: list[np.ndarray], truths: list[np.ndarray]) -> dict:
    return {
        name: {
            "flicker": flicker(preds, truths),
            "mIoU": float(np.mean([miou(p, t) for p, t in zip(preds, truths, strict=True)])),
        }
        for name, preds in (("raw", raws), ("smoothed", smooths))
    }


def walk(frame: int) -> tuple[float, float]:
    """The figure's centre: a walk to the right with a sway."""
    return 50 + 1.2 * frame + 6 * np.sin(frame / 5), 70 + 3 * np.sin(frame / 9)


def run_crop_case(seg: SegmentationSmoother, seed: int, frames: int = 60) -> dict:
    """Crops cut around the detected box (a few px of detector jitter, so the figure moves a little
    inside the crop); the person's motion is the displacement of the smoothed box."""
    rng = np.random.default_rng(seed)
    boxes = BoxSmoother()
    truths, raws, smooths = [], [], []
    previous = None
    for f in range(frames):
        t = f / FPS
        cx, cy = walk(f)
        box = np.array([cx, cy]) + rng.normal(0, 2.0, 2)
        smooth_centre = boxes(np.array([7]), np.r_[box, box + 1.0][None], t)[0, :2]
        crop_to_frame = np.float64([[1, 0, box[0] - 80], [0, 1, box[1] - 64]])
        shift = None
        if previous is not None:
            shift = crop_shift(previous[0], crop_to_frame, tuple(smooth_centre - previous[1]))
        previous = (crop_to_frame, smooth_centre)
        labels = figure_labels(80 + cx - box[0], 64 + cy - box[1])
        probs = noisy_probs(labels, rng)
        smooths.append(seg(probs, t, key=7, shift=shift).argmax(axis=0))
        truths.append(labels)
        raws.append(probs.argmax(axis=0))
    return mask_scores(raws, smooths, truths)


def run_full_frame_case(
    seg: SegmentationSmoother, seed: int, frames: int = 60, with_image: bool = False
) -> dict:
    """Full frames of a static camera; optionally the rendered grey image is given for optical flow."""
    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.integers(0, 255, MASK_SIZE).astype(np.uint8), (0, 0), 1.0)
    truths, raws, smooths = [], [], []
    for f in range(frames):
        cx, cy = walk(f)
        labels = figure_labels(cx, cy)
        probs = noisy_probs(labels, rng)
        image = render(labels, texture, cx, cy) if with_image else None
        smooths.append(seg(probs, f / FPS, key=0, image=image).argmax(axis=0))
        truths.append(labels)
        raws.append(probs.argmax(axis=0))
    return mask_scores(raws, smooths, truths)


# ---------------------------------------------------------------------------------------- dense maps


def noisy_map(truth: np.ndarray, rng: np.random.Generator, sigma: float = 0.15) -> np.ndarray:
    """(H,W) map plus per-pixel noise and blotches of about ``sigma``, as a model's maps flicker."""
    blotches = cv2.GaussianBlur(rng.normal(0, 1.0, truth.shape).astype(np.float32), (0, 0), 3.0) * 3.0
    return truth + sigma * (rng.normal(0, 1.0, truth.shape).astype(np.float32) * 0.5 + blotches)


def run_dense_case(kind: str, seed: int, frames: int = 60) -> dict:
    """``walk``: the figure walks; ``step``: a still scene whose map jumps by 1 m at frame 30."""
    import torch

    from stream.engine.tasks import smooth_map

    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.integers(0, 255, MASK_SIZE).astype(np.uint8), (0, 0), 1.0)
    smoother = SegmentationSmoother(mode="ema")
    truths, raws, smooths = [], [], []
    for f in range(frames):
        cx, cy = walk(f) if kind == "walk" else walk(0)
        labels = figure_labels(cx, cy)
        jump = 1.0 if kind == "step" and f >= 30 else 0.0
        truth = np.where(labels > 0, 2.0, 5.0).astype(np.float32) + jump
        observed = noisy_map(truth, rng)
        frame = torch.from_numpy(np.repeat(render(labels, texture, cx, cy)[..., None], 3, axis=2))
        smoothed = smooth_map(smoother, torch.from_numpy(observed)[None], frame, f / FPS)[0].numpy()
        truths.append(truth)
        raws.append(observed)
        smooths.append(smoothed)
    # Flicker where the truth stays put (2 px away from where it changes): a moving depth edge is lag or
    # trail, measured by the error, not flicker.
    kernel = np.ones((5, 5), np.uint8)
    pairs = zip(truths, truths[1:], strict=False)
    steady = [cv2.erode((t1 == t0).astype(np.uint8), kernel) > 0 for t0, t1 in pairs]
    result = {}
    for name, maps in (("raw", raws), ("smoothed", smooths)):
        errors = [m - t for m, t in zip(maps, truths, strict=True)]
        changes = [(b - a)[mask] for a, b, mask in zip(errors, errors[1:], steady, strict=False)]
        result[name] = {
            "flicker_m": float(np.sqrt(np.mean(np.square(np.concatenate(changes[5:]))))),
            "mean_abs_error_m": float(np.mean(np.abs(errors[5:]))),
        }
        if kind == "step":
            # The mean signed error over the frame: the noise averages out, the lag behind the jump stays.
            settled = [i for i in range(30, frames) if abs(float(np.mean(errors[i]))) < 0.1]
            result[name]["settle_frames"] = (settled[0] - 30) if settled else frames - 30
    return result


def dense_section(seeds: int) -> dict:
    cases = {kind: mean_cases([run_dense_case(kind, s) for s in range(seeds)]) for kind in ("walk", "step")}
    walk_case = cases["walk"]
    cases["flicker_reduction_walking"] = round(
        walk_case["raw"]["flicker_m"] / max(walk_case["smoothed"]["flicker_m"], 1e-9), 2
    )
    return cases


# ---------------------------------------------------------------------------------------- crop boxes

CROP_BOX_SIZE = np.array([100.0, 250.0])  # w, h of a standing person's box in px
CROP_BOX_JITTER = 0.02  # detector jitter per edge, share of the box's width or height


def crop_box_case(kind: str, rng: np.random.Generator, frames: int = 150) -> tuple[np.ndarray, np.ndarray]:
    """truth (T,4) and detected (T,4) xyxy boxes."""
    t = np.arange(frames) / FPS
    scale = float(np.sqrt(CROP_BOX_SIZE.prod()))
    cx = np.full(frames, 320.0)
    if kind == "slow":
        cx = cx + 0.25 * scale * t
    elif kind == "fast":
        cx = 60.0 + 2.0 * scale * t
    elif kind == "step":
        cx = np.where(t >= 2.5, cx + 0.5 * scale, cx)
    centres = np.stack([cx, np.full(frames, 240.0)], axis=1)
    truth = np.concatenate([centres - CROP_BOX_SIZE / 2, centres + CROP_BOX_SIZE / 2], axis=1)
    detected = truth + rng.normal(0.0, 1.0, truth.shape) * CROP_BOX_JITTER * np.tile(CROP_BOX_SIZE, 2)
    return truth, detected


def box_centres(boxes: np.ndarray) -> np.ndarray:
    """(T,4) xyxy -> (T,1,2) centres, shaped like one keypoint for the keypoint measures."""
    return ((boxes[:, :2] + boxes[:, 2:]) / 2)[:, None]


def run_crop_box_case(kind: str, seed: int) -> dict:
    truth, detected = crop_box_case(kind, np.random.default_rng(seed))
    smoother = CropBoxSmoother()
    out = np.stack([smoother(detected[i][None], i / FPS)[0] for i in range(len(truth))])
    result = {}
    for name, series in (("raw", detected), ("smoothed", out)):
        entry = {
            "jitter_px": jitter(series.reshape(-1, 2, 2), truth.reshape(-1, 2, 2)),
            "rmse_px": float(np.sqrt(((series - truth) ** 2).mean())),
        }
        if kind in ("slow", "fast"):
            entry["lag_frames"] = best_delay(box_centres(series), box_centres(truth))
        if kind == "step":
            jump = 0.5 * float(np.sqrt(CROP_BOX_SIZE.prod()))
            centres, true_centres = box_centres(series), box_centres(truth)
            entry["settle_frames"] = settle_frames(centres, true_centres, int(2.5 * FPS), jump)
        result[name] = entry
    return result


def crop_boxes_section(seeds: int) -> dict:
    cases = {}
    for kind in ("still", "slow", "fast", "step"):
        cases[kind] = mean_cases([run_crop_box_case(kind, seed) for seed in range(seeds)])
        raw, smoothed = cases[kind]["raw"], cases[kind]["smoothed"]
        cases[kind]["jitter_ratio"] = round(raw["jitter_px"] / smoothed["jitter_px"], 2)
    return {
        "setup": f"{CROP_BOX_SIZE[0]:.0f}x{CROP_BOX_SIZE[1]:.0f} px box, 30 fps, 150 frames, "
        f"edge jitter {CROP_BOX_JITTER:.0%} of the box size, {seeds} seeds",
        "cases": cases,
        "jitter_ratio_at_rest": cases["still"]["jitter_ratio"],
        "max_lag_frames_in_motion": max(cases[k]["smoothed"]["lag_frames"] for k in ("slow", "fast")),
    }


# Keypoints through the worker's engine, with crops from raw or from smoothed boxes.

MODEL_FRAMES = 60
MODEL_BOX_JITTER = 0.03
MODEL_FRAME_SIZE = (320, 240)  # W, H


def figure_clip(seed: int, walk_px_per_frame: float) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Frames of one synthetic figure (fixed pose, moving by ``walk_px_per_frame`` to the right),
    its true keypoints (T,K,2) and jittered detector boxes (T,4)."""
    from trained_pose import draw_background, draw_person, random_body_color, random_person

    rng = np.random.default_rng(seed)
    width, height = MODEL_FRAME_SIZE
    background = draw_background(rng, (height, width))
    start_x = width / 2 - walk_px_per_frame * MODEL_FRAMES / 2
    person = random_person(rng, (start_x, height / 2), 130.0)
    color = random_body_color(rng)
    frames, keypoints, boxes = [], [], []
    for i in range(MODEL_FRAMES):
        person_i = type(person)(person.keypoints + np.array([walk_px_per_frame * i, 0.0]), person.height)
        image = background.copy()
        draw_person(image, person_i, color)
        frames.append(image)
        keypoints.append(person_i.keypoints)
        box = person_i.box()
        size = np.tile(box[2:] - box[:2], 2)
        boxes.append(box + rng.normal(0.0, 1.0, 4) * MODEL_BOX_JITTER * size)
    return frames, np.stack(keypoints), np.stack(boxes)


def engine_keypoints(
    checkpoint: Path, frames: list[np.ndarray], boxes: np.ndarray, smooth: bool
) -> np.ndarray:
    """Keypoints (T,K,2) of the trained keypoints from ``InferenceEngine``, scheduled as the worker does."""
    from pipeline_fixtures import engine_config, run_engine, write_boxes
    from trained_pose import INPUT_SIZE, keypoint_indices

    from stream.engine import InferenceEngine
    from stream.media.frames import DecodedFrame
    from stream.runtime.messages import frame_message

    with tempfile.TemporaryDirectory() as work:
        per_frame = {i: [[*b, 0.95]] for i, b in enumerate(boxes.tolist())}
        boxes_file = write_boxes(Path(work) / "boxes.jsonl", per_frame)
        messages = [
            frame_message("clip", i, DecodedFrame(frame, i, i / FPS, Fraction(1, 30), 0.0))
            for i, frame in enumerate(frames)
        ]
        with InferenceEngine(engine_config(checkpoint, boxes_file, INPUT_SIZE, smooth=smooth)) as engine:
            results = run_engine(engine, messages)
    return np.stack([m.arrays["keypoints"][0, keypoint_indices()] for m in results])


def model_section(checkpoint: Path | None, seeds: int) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from trained_pose import train_tiny_pose

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as work:
        if checkpoint is None:
            checkpoint = train_tiny_pose(Path(work) / "tiny_pose").directory
        trained_s = time.perf_counter() - start
        cases = {}
        for kind, speed in (("still", 0.0), ("walk", 1.5)):
            runs = []
            for seed in range(seeds):
                frames, truth, boxes = figure_clip(100 + seed, speed)
                run = {}
                for name, smooth in (("raw_crops", False), ("smoothed_crops", True)):
                    out = engine_keypoints(checkpoint, frames, boxes, smooth)
                    run[name] = {
                        "jitter_px": jitter(out, truth),
                        "mean_error_px": float(np.linalg.norm(out - truth, axis=-1).mean()),
                    }
                runs.append(run)
            cases[kind] = mean_cases(runs)
            raw, smoothed = cases[kind]["raw_crops"], cases[kind]["smoothed_crops"]
            cases[kind]["jitter_ratio"] = round(raw["jitter_px"] / smoothed["jitter_px"], 2)
    return {
        "setup": "tiny pose checkpoint trained on synthetic figures (9 keypoints, 128x96 input), figures "
        f"130 px tall in {MODEL_FRAME_SIZE[0]}x{MODEL_FRAME_SIZE[1]} frames, {MODEL_FRAMES} frames at "
        "30 fps, "
        f"box edge jitter {MODEL_BOX_JITTER:.0%}, walk 1.5 px/frame, {seeds} figures, no flip, "
        "no keypoint smoothing",
        "cases": cases,
        "seconds": round(time.perf_counter() - start, 1),
        "training_seconds": round(trained_s, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--out", default=None)
    parser.add_argument("--no-model", action="store_true", help="skip the crop boxes' keypoint jitter")
    parser.add_argument("--checkpoint", type=Path, default=None, help="trained tiny pose checkpoint to reuse")
    parser.add_argument("--dense", action="store_true", help="only the dense maps (smoothing_dense.json)")
    args = parser.parse_args()
    if args.dense:
        command = f"benchmarks/smoothing.py --dense --seeds {args.seeds}"
        payload = {"command": command, **dense_section(args.seeds)}
        write_results("smoothing_dense", payload, args.out)
        return

    smoother = KeypointSmoother()
    keypoints = {}
    for kind in ("still", "slow", "fast", "step", "noise", "outliers"):
        keypoints[kind] = mean_cases([run_keypoint_case(kind, smoother, seed) for seed in range(args.seeds)])
    jitter_ratio = keypoints["still"]["raw"]["jitter_px"] / keypoints["still"]["smoothed"]["jitter_px"]
    max_lag = max(keypoints[k]["smoothed"]["lag_frames"] for k in ("slow", "fast"))

    masks = {}
    for mode, run_case, make in (
        ("crop: box shift + flow (default)", run_crop_case, SegmentationSmoother),
        ("crop: box shift only", run_crop_case, lambda: SegmentationSmoother(flow=False)),
        ("full frame: flow on probabilities (default)", run_full_frame_case, SegmentationSmoother),
        ("full frame: flow on the image", lambda seg, seed: run_full_frame_case(seg, seed, with_image=True),
         SegmentationSmoother),
        ("full frame: no motion compensation", run_full_frame_case, lambda: SegmentationSmoother(flow=False)),
    ):
        masks[mode] = mean_cases([run_case(make(), seed) for seed in range(args.seeds)])
        raw, smoothed = masks[mode]["raw"], masks[mode]["smoothed"]
        masks[mode]["flicker_reduction"] = round(raw["flicker"] / max(smoothed["flicker"], 1e-9), 2)

    crop_boxes = crop_boxes_section(args.seeds)
    command = f"benchmarks/smoothing.py --seeds {args.seeds}" + (" --no-model" if args.no_model else "")
    if not args.no_model:
        crop_boxes["keypoints_through_the_engine"] = model_section(args.checkpoint, seeds=3)

    write_results(
        "smoothing",
        {
            "command": command,
            "keypoints": keypoints,
            "keypoint_summary": {
                "jitter_reduction_at_rest": round(jitter_ratio, 2),
                "max_lag_frames_in_motion": max_lag,
                "target": "jitter >= 5x lower with <= 1 frame lag at 30 fps",
                "target_met": bool(jitter_ratio >= 5.0 and max_lag <= 1.0),
                "ms_per_frame_10_persons_308_keypoints": round(time_keypoint_smoother(), 3),
            },
            "masks": masks,
            "mask_target": "flicker >= 5x lower, mIoU not below the raw masks'",
            "seg_ms_per_frame_29_classes": {
                f"{h}x{w}": round(time_seg_smoother(h, w), 1)
                for h, w in ((192, 256), (384, 512), (768, 1024))
            },
            "crop_boxes": crop_boxes,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
