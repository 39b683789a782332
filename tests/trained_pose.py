"""A tiny Sapiens2 pose checkpoint with meaningful outputs, trained on synthetic figures in seconds.

Random weights give keypoints that any small change of the input moves anywhere, so accuracy tests need
a model that has learnt something. This module draws synthetic "persons" whose keypoints are known,
trains transformers' ``Sapiens2ForPoseEstimation`` (a tiny configuration) on crops of them and writes the
result with ``save_pretrained``: the official on-disk format the pipeline loads.

The figures face the camera, so a person's LEFT keypoints lie on the image's RIGHT side, and paired
keypoints (left/right shoulder, ...) share colour and shape: only geometry tells the sides apart.
Mirroring an image therefore turns left keypoints into right ones, exactly what flip test-time
augmentation assumes of real people.

Run as a script to write a checkpoint: ``python tests/trained_pose.py OUT_DIR``.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from models.meta import pose_decode_constants, pose_meta

# The keypoints the synthetic figures carry (a subset of the 308); the checkpoint leaves the rest silent.
KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "left_shoulder",
    "right_shoulder",
    "left_wrist",
    "right_wrist",
    "left_hip",
    "right_hip",
    "left_ankle",
    "right_ankle",
)
INPUT_SIZE: tuple[int, int] = (128, 96)  # (H, W) model input; heatmaps are a quarter of it
HEATMAP_SIGMA = 2.0  # in heatmap pixels; the DARK blur (kernel 11) assumes about this width
BOX_PADDING = 1.25
POSITIVE_WEIGHT = 10.0  # extra loss weight at a target heatmap's peak

# Marker colours (RGB): one per keypoint kind, shared by the two sides of a pair.
_MARKER_COLORS = {
    "nose": (255, 40, 40),
    "shoulder": (255, 230, 0),
    "wrist": (0, 230, 255),
    "hip": (255, 0, 255),
    "ankle": (40, 255, 40),
}


def keypoint_indices() -> np.ndarray:
    """Indices of ``KEYPOINT_NAMES`` within the 308 Sapiens2 keypoints."""
    names = pose_meta().names
    return np.array([names.index(name) for name in KEYPOINT_NAMES], dtype=np.int64)


@dataclass
class SyntheticPerson:
    """One drawn figure: keypoints (K, 2) in image pixels, ordered like ``KEYPOINT_NAMES``."""

    keypoints: np.ndarray
    height: float  # body height in pixels, the scale every part is drawn at

    @property
    def marker_radius(self) -> float:
        return max(2.0, 0.03 * self.height)

    @property
    def head_radius(self) -> float:
        return 0.065 * self.height

    def box(self) -> np.ndarray:
        """Tight (4,) xyxy box around everything drawn: what a perfect detector would report."""
        points = self.keypoints
        head_centre = points[0] - np.array([0.0, 0.015 * self.height])
        margin = self.marker_radius + 1.0
        x1 = min(points[:, 0].min() - margin, head_centre[0] - self.head_radius)
        x2 = max(points[:, 0].max() + margin, head_centre[0] + self.head_radius)
        y1 = min(points[:, 1].min() - margin, head_centre[1] - self.head_radius)
        y2 = points[:, 1].max() + margin
        return np.array([x1, y1, x2, y2], dtype=np.float64)


def random_person(rng: np.random.Generator, centre: tuple[float, float], height: float) -> SyntheticPerson:
    """A figure facing the camera, its body centre at ``centre`` (x, y), ``height`` pixels tall."""
    h = height

    def outward(origin: np.ndarray, length: float, angle_deg: float, side: float) -> np.ndarray:
        # side +1 = the person's left = the image's right.
        angle = math.radians(angle_deg)
        return origin + length * np.array([side * math.sin(angle), math.cos(angle)])

    nose = np.array([rng.normal(0.0, 0.02) * h, 0.07 * h])
    points = {"nose": nose}
    for side_name, side in (("left", 1.0), ("right", -1.0)):
        shoulder = np.array([side * rng.uniform(0.11, 0.16) * h, rng.uniform(0.18, 0.22) * h])
        hip = np.array([side * rng.uniform(0.07, 0.11) * h, rng.uniform(0.50, 0.54) * h])
        points[f"{side_name}_shoulder"] = shoulder
        points[f"{side_name}_hip"] = hip
        points[f"{side_name}_wrist"] = outward(shoulder, 0.3 * h, rng.uniform(8.0, 100.0), side)
        points[f"{side_name}_ankle"] = outward(hip, 0.44 * h, rng.uniform(-4.0, 22.0), side)
    local = np.stack([points[name] for name in KEYPOINT_NAMES])  # relative to the top centre
    local[:, 1] -= 0.5 * h
    # A small lean keeps the figures from all being upright copies of each other.
    tilt = math.radians(rng.uniform(-10.0, 10.0))
    rotation = np.array([[math.cos(tilt), -math.sin(tilt)], [math.sin(tilt), math.cos(tilt)]])
    keypoints = local @ rotation.T + np.asarray(centre, dtype=np.float64)
    return SyntheticPerson(keypoints=keypoints, height=float(height))


def draw_background(rng: np.random.Generator, size_hw: tuple[int, int]) -> np.ndarray:
    """Muted texture (smooth noise plus a few faint shapes), (H, W, 3) uint8 RGB."""
    height, width = size_hw
    coarse = rng.uniform(70, 170, size=(max(2, height // 24), max(2, width // 24), 1))
    tint = rng.uniform(0.85, 1.15, size=(1, 1, 3))
    image = cv2.resize(coarse * tint, (width, height), interpolation=cv2.INTER_CUBIC)
    image = image + rng.normal(0.0, 6.0, size=(height, width, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    for _ in range(rng.integers(2, 6)):
        color = tuple(int(c) for c in rng.uniform(60, 180, size=3))
        p1 = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
        p2 = (int(rng.uniform(0, width)), int(rng.uniform(0, height)))
        if rng.uniform() < 0.5:
            cv2.rectangle(image, p1, p2, color, thickness=-1)
        else:
            cv2.line(image, p1, p2, color, thickness=int(rng.integers(1, 4)), lineType=cv2.LINE_AA)
    return image


def _point(xy: np.ndarray) -> tuple[int, int]:
    # cv2 draws at integer pixels; 4 fractional bits keep sub-pixel positions exact.
    return int(round(xy[0] * 16)), int(round(xy[1] * 16))


def draw_person(image: np.ndarray, person: SyntheticPerson, body_color: tuple[int, int, int]) -> None:
    """Draw ``person`` into ``image`` (RGB uint8, in place): limbs, torso, head, then keypoint markers."""
    k = {name: person.keypoints[i] for i, name in enumerate(KEYPOINT_NAMES)}
    limb = max(1, int(round(0.04 * person.height)))
    shift = 4
    for side in ("left", "right"):
        for a, b in ((f"{side}_shoulder", f"{side}_wrist"), (f"{side}_hip", f"{side}_ankle")):
            cv2.line(image, _point(k[a]), _point(k[b]), body_color, limb, cv2.LINE_AA, shift)
    corners = ("left_shoulder", "right_shoulder", "right_hip", "left_hip")
    torso = np.array([_point(k[name]) for name in corners], dtype=np.int32)
    cv2.fillConvexPoly(image, torso, body_color, cv2.LINE_AA, shift)
    skin = tuple(min(255, c + 60) for c in body_color)
    head_centre = k["nose"] - np.array([0.0, 0.015 * person.height])
    cv2.circle(image, _point(head_centre), int(round(person.head_radius * 16)), skin, -1, cv2.LINE_AA, shift)
    radius = int(round(person.marker_radius * 16))
    for name in KEYPOINT_NAMES:
        color = _MARKER_COLORS[name.split("_")[-1]]
        cv2.circle(image, _point(k[name]), radius, color, -1, cv2.LINE_AA, shift)


def random_body_color(rng: np.random.Generator) -> tuple[int, int, int]:
    base = rng.uniform(35, 95)
    return tuple(int(np.clip(base + rng.normal(0, 15), 0, 255)) for _ in range(3))


def crop_to_input_matrix(box_xyxy: np.ndarray, input_size: tuple[int, int] = INPUT_SIZE) -> np.ndarray:
    """(2, 3) affine taking image pixels to model-input pixels (UDP: corner pixel centres map exactly).

    The box is padded by 1.25 and widened or heightened to the input's aspect ratio, like the
    reference processor does.
    """
    out_h, out_w = input_size
    x1, y1, x2, y2 = box_xyxy
    centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
    width, height = (x2 - x1) * BOX_PADDING, (y2 - y1) * BOX_PADDING
    aspect = out_w / out_h
    if width > height * aspect:
        height = width / aspect
    else:
        width = height * aspect
    sx, sy = (out_w - 1) / width, (out_h - 1) / height
    return np.array(
        [[sx, 0.0, (0.5 * width - centre[0]) * sx], [0.0, sy, (0.5 * height - centre[1]) * sy]],
        dtype=np.float64,
    )


def warp_crop(image: np.ndarray, matrix: np.ndarray, input_size: tuple[int, int] = INPUT_SIZE) -> np.ndarray:
    """Warp ``image`` with ``matrix`` (image -> input pixels) to the model input size; zero border."""
    out_h, out_w = input_size
    scale = matrix[0, 0]
    if scale < 0.8:
        # Shrinking: smooth first so thin markers do not alias away (what area resampling does).
        sigma = 0.45 / scale
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma)
    return cv2.warpAffine(image, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))


def udp_heatmaps(points_input: np.ndarray, input_size: tuple[int, int] = INPUT_SIZE) -> np.ndarray:
    """Gaussian target heatmaps (K, H/4, W/4) for keypoints given in model-input pixels (UDP scaling)."""
    out_h, out_w = input_size
    heat_h, heat_w = out_h // 4, out_w // 4
    scale = np.array([(heat_w - 1) / (out_w - 1), (heat_h - 1) / (out_h - 1)])
    centres = points_input * scale  # (K, 2) heatmap pixels
    ys, xs = np.mgrid[0:heat_h, 0:heat_w].astype(np.float64)
    dist2 = (xs[None] - centres[:, 0, None, None]) ** 2 + (ys[None] - centres[:, 1, None, None]) ** 2
    return np.exp(-dist2 / (2 * HEATMAP_SIGMA**2)).astype(np.float32)


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


@dataclass
class CropSet:
    """Training or evaluation crops: images (N, H, W, 3) uint8, keypoints (N, K, 2) in input pixels."""

    images: np.ndarray
    keypoints: np.ndarray


def make_crops(count: int, seed: int, box_jitter: float = 0.06) -> CropSet:
    """``count`` crops of random figures at random scales, as the pipeline would cut them from frames.

    Each figure is drawn on its own textured canvas at 45..260 px height, its tight box is jittered
    (a detector is never exact), then the crop is warped to ``INPUT_SIZE``; half the canvases go through
    JPEG first to look like decoded video.
    """
    rng = np.random.default_rng(seed)
    images = np.zeros((count, *INPUT_SIZE, 3), np.uint8)
    keypoints = np.zeros((count, len(KEYPOINT_NAMES), 2), np.float64)
    for i in range(count):
        height = math.exp(rng.uniform(math.log(45), math.log(260)))
        canvas_hw = (int(height * 1.8), int(height * 1.8))
        centre = (canvas_hw[1] / 2 + rng.normal(0, 4), canvas_hw[0] / 2 + rng.normal(0, 4))
        person = random_person(rng, centre, height)
        canvas = draw_background(rng, canvas_hw)
        draw_person(canvas, person, random_body_color(rng))
        if rng.uniform() < 0.5:
            quality = int(rng.integers(60, 95))
            ok, encoded = cv2.imencode(".jpg", canvas, [cv2.IMWRITE_JPEG_QUALITY, quality])
            canvas = cv2.imdecode(encoded, cv2.IMREAD_UNCHANGED)
        box = person.box()
        size = box[2:] - box[:2]
        box = box + rng.uniform(-box_jitter, box_jitter, size=4) * np.tile(size, 2)
        matrix = crop_to_input_matrix(box)
        images[i] = warp_crop(canvas, matrix)
        keypoints[i] = apply_affine(matrix, person.keypoints)
    return CropSet(images=images, keypoints=keypoints)


def normalize(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 RGB -> (N, 3, H, W) float32 with the ImageNet mean/std Sapiens2 uses."""
    constants = pose_decode_constants()
    mean = torch.tensor(constants["normalize_mean_rgb"], dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(constants["normalize_std_rgb"], dtype=torch.float32).view(1, 3, 1, 1)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    return (pixels - mean) / std


def tiny_pose_config(input_size: tuple[int, int] = INPUT_SIZE, names: tuple[str, ...] | None = None):
    """A tiny Sapiens2 pose configuration with the official layout (GQA in the middle, deconv head).

    ``names`` are the heatmap channels, all 308 keypoints by default.
    """
    from transformers import Sapiens2Config
    from transformers.models.sapiens2.configuration_sapiens2 import Sapiens2HeadConfig

    names = pose_meta().names if names is None else names
    return Sapiens2Config(
        hidden_size=64,
        intermediate_size=256,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_attention_heads=2,
        num_first_full_attention_layers=1,
        num_last_full_attention_layers=1,
        num_register_tokens=8,
        image_size=list(input_size),
        # Position-coordinate rescaling is a pretraining augmentation; it only slows this small task.
        pos_embed_rescale=None,
        id2label=dict(enumerate(names)),
        head_config=Sapiens2HeadConfig(upsample_out_channels=[32, 32], conv_out_channels=[32]),
    )


def flip_batch(pixels: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mirror images and their (B, K, h, w) targets (K = ``KEYPOINT_NAMES``), swapping left and right."""
    index = keypoint_indices()
    flip_all = pose_meta().flip_indices
    # Position j holds keypoint index[j]; its mirror image is keypoint flip_all[index[j]].
    position = {int(k): j for j, k in enumerate(index)}
    swap = [position[int(flip_all[k])] for k in index]
    return pixels.flip(-1), targets[:, swap].flip(-1)


def expand_to_all_keypoints(model):
    """The trained few-keypoint model as a full 308-keypoint Sapiens2 pose model.

    The backbone and head are copied; the chosen keypoints' predictor rows go to their indices among
    the 308 and every other keypoint gets a zero predictor, so its heatmap is flat with score 0.
    """
    from transformers import Sapiens2ForPoseEstimation

    full = Sapiens2ForPoseEstimation(tiny_pose_config(input_size=tuple(model.config.image_size)))
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("decode_head.predictor.")}
    missing, unexpected = full.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith("decode_head.predictor.") for k in missing), missing
    index = torch.from_numpy(keypoint_indices())
    with torch.no_grad():
        full.decode_head.predictor.weight.zero_()
        full.decode_head.predictor.bias.zero_()
        full.decode_head.predictor.weight[index] = model.decode_head.predictor.weight
        full.decode_head.predictor.bias[index] = model.decode_head.predictor.bias
    return full.eval()


@dataclass
class SceneFrame:
    """One frame of a synthetic clip and the figures in it (their boxes and keypoints are the truth)."""

    image: np.ndarray  # (H, W, 3) uint8 RGB
    persons: list[SyntheticPerson]


@dataclass
class PersonTrack:
    """A figure crossing a clip from ``start`` to ``end`` while it resizes, its limbs moving."""

    pose_seed: int
    start: tuple[float, float]
    end: tuple[float, float]
    height_start: float
    height_end: float


def scene_clip(
    tracks: list[PersonTrack], num_frames: int, frame_size: tuple[int, int], seed: int = 0
) -> list[SceneFrame]:
    """Frames (``frame_size`` = (W, H)) of figures moving over a static textured background."""
    width, height = frame_size
    rng = np.random.default_rng(seed)
    background = draw_background(rng, (height, width))
    colors = [random_body_color(rng) for _ in tracks]
    frames = []
    for i in range(num_frames):
        t = i / max(num_frames - 1, 1)
        image = background.copy()
        persons = []
        for track, color in zip(tracks, colors, strict=True):
            centre = tuple((1 - t) * a + t * b for a, b in zip(track.start, track.end, strict=True))
            person_height = (1 - t) * track.height_start + t * track.height_end
            # A fresh pose every frame: errors of different poses are independent, so an offset common
            # to all keypoints stands out from the model's own scatter.
            pose_rng = np.random.default_rng((track.pose_seed, i))
            person = random_person(pose_rng, centre, person_height)
            draw_person(image, person, color)
            persons.append(person)
        frames.append(SceneFrame(image=image, persons=persons))
    return frames


@dataclass
class TrainResult:
    directory: Path
    steps: int
    final_loss: float
    seconds: float


def train_tiny_pose(
    directory: str | Path,
    steps: int = 300,
    batch_size: int = 16,
    num_crops: int = 1000,
    seed: int = 0,
    lr: float = 6e-3,
    log_every: int = 0,
) -> TrainResult:
    """Train the tiny pose model on synthetic crops and ``save_pretrained`` it into ``directory``.

    Training runs on the chosen keypoints' channels only (the 308-channel predictor would dominate
    the cost on a CPU); the saved checkpoint is the full 308-keypoint model.
    """
    start = time.perf_counter()
    threads = torch.get_num_threads()
    # One thread: these small ops scale poorly, and on a shared 2-core machine a second thread that
    # waits for a busy core makes every step several times slower.
    torch.set_num_threads(1)
    try:
        model, loss_value = _train(steps, batch_size, num_crops, seed, lr, log_every, start)
    finally:
        torch.set_num_threads(threads)
    directory = Path(directory)
    expand_to_all_keypoints(model).save_pretrained(directory)
    return TrainResult(directory, steps, loss_value, time.perf_counter() - start)


def _lr_factor(step: int, steps: int) -> float:
    """Linear warm-up over the first 5% of the steps, then cosine decay to zero."""
    warmup = max(1, steps // 20)
    return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step, steps) / steps))


def _train(steps: int, batch_size: int, num_crops: int, seed: int, lr: float, log_every: int, start: float):
    from transformers import Sapiens2ForPoseEstimation

    torch.manual_seed(seed)
    crops = make_crops(num_crops, seed=seed)
    pixels = normalize(crops.images)
    targets = torch.from_numpy(np.stack([udp_heatmaps(k) for k in crops.keypoints]))  # (N, K, h, w)

    model = Sapiens2ForPoseEstimation(tiny_pose_config(names=KEYPOINT_NAMES))
    with torch.no_grad():
        # Start from near-silent heatmaps: the default init outputs large maps that take most of a
        # short run to unlearn.
        model.decode_head.predictor.weight.mul_(0.01)
        model.decode_head.predictor.bias.zero_()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: _lr_factor(step, steps))
    generator = torch.Generator().manual_seed(seed)
    loss_value = float("nan")
    for step in range(steps):
        batch = torch.randint(0, num_crops, (batch_size,), generator=generator)
        x, y = pixels[batch], targets[batch]
        if step % 2 == 1:
            x, y = flip_batch(x, y)
        heatmaps = model(pixel_values=x).heatmaps
        # MSE weighted up near the peaks, so the few pixels that matter are not drowned by the
        # background (the minimiser is still the target heatmap itself).
        loss = ((heatmaps - y).square() * (1 + POSITIVE_WEIGHT * y)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        loss_value = loss.item()
        if log_every and step % log_every == 0:
            print(f"step {step:4d} loss {loss_value:.5f} ({time.perf_counter() - start:.1f}s)", flush=True)
    return model.eval(), loss_value


def crop_errors(model, crops: CropSet) -> np.ndarray:
    """Keypoint errors (N, K) in model-input pixels of a transformers pose model on ``crops``.

    Decoding is the reference one (transformers' argmax + UDP-DARK refinement), independent of ours.
    """
    from transformers.models.sapiens2.image_processing_sapiens2 import (
        get_keypoint_predictions,
        post_dark_unbiased_data_processing,
    )

    with torch.inference_mode():
        heatmaps = model(pixel_values=normalize(crops.images)).heatmaps.float()
    if heatmaps.shape[1] != len(KEYPOINT_NAMES):
        heatmaps = heatmaps[:, torch.from_numpy(keypoint_indices())]
    peaks, _ = get_keypoint_predictions(heatmaps)
    refined = post_dark_unbiased_data_processing(peaks, heatmaps, blur_kernel_size=11).numpy()
    heat_h, heat_w = heatmaps.shape[-2:]
    to_input = np.array([(INPUT_SIZE[1] - 1) / (heat_w - 1), (INPUT_SIZE[0] - 1) / (heat_h - 1)])
    return np.linalg.norm(refined * to_input - crops.keypoints, axis=-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", type=Path, help="directory for config.json + model.safetensors")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=6e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = train_tiny_pose(args.out, steps=args.steps, seed=args.seed, lr=args.lr, log_every=50)
    print(f"wrote {result.directory}: {result.steps} steps in {result.seconds:.1f} s")
    print(f"final training loss {result.final_loss:.5f}")
    from transformers import Sapiens2ForPoseEstimation

    errors = crop_errors(Sapiens2ForPoseEstimation.from_pretrained(args.out), make_crops(200, seed=12345))
    print(f"held-out crops: mean error {errors.mean():.2f}, median {np.median(errors):.2f} (input pixels)")
    print("per keypoint:", dict(zip(KEYPOINT_NAMES, errors.mean(axis=0).round(2).tolist(), strict=True)))


if __name__ == "__main__":
    main()
