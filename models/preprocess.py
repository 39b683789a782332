"""Person crops for Sapiens2, batched on the frames' device.

Geometry follows the reference processor (transformers' ``Sapiens2ImageProcessor``, itself the official
UDP affine): a box ``xyxy`` becomes a centre and a crop window ``padding`` times its size, widened or
heightened to the model input's aspect ratio. Crop pixel ``(0, 0)`` lands on the window's top-left corner
and crop pixel ``(W - 1, H - 1)`` on its bottom-right corner, so with ``a = window / (size - 1)``::

    frame_x = a_x * crop_x + (centre_x - window_w / 2)      (the same for y)

which is ``CropBatch.crop_to_frame``. Everything outside the frame reads as black (zero border), then the
crop is normalised (ImageNet, or the checkpoint's own ``Preprocessing``).

How the sampling differs from transformers' ``crop_and_resize`` (same geometry, same zero border):

- enlarging (``a <= 1``): both sample bicubically (``a = -0.75``, as cv2's INTER_CUBIC); here the result is
  clamped to ``[0, 255]`` as cv2 does for uint8 images, the reference keeps the overshoot.
- shrinking (``a > 1``): the reference samples one bilinear tap per output pixel, which aliases. Here each
  output pixel averages ``k x k`` bilinear taps spread over its footprint in the frame (``k = ceil(a)``,
  capped at ``MAX_SUPERSAMPLE``), an area filter like cv2's ``resize(INTER_AREA)``. ``antialias=False``
  gives the reference's single tap. Note: ``cv2.warpAffine`` treats ``INTER_AREA`` as ``INTER_LINEAR``, so a
  warp made with that flag is the single-tap bilinear one.
- where both are exact (scale 1, integer offsets) the outputs are equal; tests bound the difference
  elsewhere and ``benchmarks/postprocess.py`` measures it.

Two backends compute the same samples. ``torch`` (``grid_sample``, any device, float throughout) is the
GPU path. ``opencv`` (``cv2.warpAffine`` on the uint8 frames, the tap grid then ``cv2.resize(INTER_AREA)``,
an exact k x k average) is the CPU path: several times faster there, within about one grey level of
``torch`` (cv2 places taps on a 1/32-pixel grid and rounds each crop to uint8, as the official demo's
warp does). ``backend="auto"`` picks ``opencv`` for CPU frames.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from models.processor_config import DEFAULT_INPUT_SIZE, Preprocessing
from models.processor_config import IMAGENET_MEAN as IMAGENET_MEAN  # re-exported for callers
from models.processor_config import IMAGENET_STD as IMAGENET_STD

DEFAULT_PADDING = 1.25
MAX_SUPERSAMPLE = 8
# Upper bound on bilinear taps evaluated at once (x 3 channels floats); bounds peak memory of a warp.
_MAX_TAPS_PER_CHUNK = 24_000_000
BACKENDS = ("auto", "torch", "opencv")  # of the crop warp and of the DARK full blur
_RELEASE_NORMALISATION = Preprocessing()


@dataclass
class CropBatch:
    """Person crops ready for the model and the affines that map their pixels back to the frames."""

    pixel_values: torch.Tensor  # (N, 3, H, W) float32, normalised (ImageNet unless told otherwise)
    crop_to_frame: torch.Tensor  # (N, 2, 3) float32: crop pixel (x, y, 1) -> frame pixel
    frame_index: torch.Tensor  # (N,) int64: frame of each crop

    def __len__(self) -> int:
        return self.pixel_values.shape[0]


def _check_input_size(input_size: Sequence[int]) -> tuple[int, int]:
    if len(input_size) != 2 or min(int(v) for v in input_size) < 2:
        raise ValueError(f"input_size must be (height, width) with both >= 2, got {tuple(input_size)}")
    return int(input_size[0]), int(input_size[1])


def _check_frames(frames: Sequence[torch.Tensor]) -> None:
    for i, frame in enumerate(frames):
        if not isinstance(frame, torch.Tensor) or frame.dtype != torch.uint8:
            raise ValueError(f"frame {i} must be a uint8 tensor, got {getattr(frame, 'dtype', type(frame))}")
        if frame.ndim != 3 or frame.shape[2] != 3 or frame.shape[0] < 2 or frame.shape[1] < 2:
            raise ValueError(f"frame {i} must have shape (H, W, 3) with H, W >= 2, got {tuple(frame.shape)}")


def box_to_crop_window(
    boxes: torch.Tensor, input_size: Sequence[int] = DEFAULT_INPUT_SIZE, padding: float = DEFAULT_PADDING
) -> tuple[torch.Tensor, torch.Tensor]:
    """xyxy boxes (N, 4) -> centres (N, 2) and crop windows (N, 2) as (width, height) in frame pixels."""
    height, width = _check_input_size(input_size)
    boxes = boxes.float()
    centre = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    size = (boxes[:, 2:] - boxes[:, :2]) * padding
    aspect = width / height
    box_w, box_h = size.unbind(-1)
    window = torch.where(
        (box_w > box_h * aspect)[:, None],
        torch.stack([box_w, box_w / aspect], dim=-1),
        torch.stack([box_h * aspect, box_h], dim=-1),
    )
    return centre, window


def crop_to_frame_affine(
    boxes: torch.Tensor, input_size: Sequence[int] = DEFAULT_INPUT_SIZE, padding: float = DEFAULT_PADDING
) -> torch.Tensor:
    """xyxy boxes (N, 4) -> (N, 2, 3) affines mapping crop pixels (x, y, 1) to frame pixels."""
    height, width = _check_input_size(input_size)
    centre, window = box_to_crop_window(boxes, input_size, padding)
    affine = torch.zeros(boxes.shape[0], 2, 3, dtype=torch.float32, device=boxes.device)
    affine[:, 0, 0] = window[:, 0] / (width - 1)
    affine[:, 1, 1] = window[:, 1] / (height - 1)
    affine[:, :, 2] = centre - 0.5 * window
    return affine


def valid_box_mask(
    boxes: torch.Tensor,
    scores: torch.Tensor | None,
    frame_sizes: torch.Tensor | Sequence[Sequence[int]],
    frame_index: torch.Tensor,
) -> torch.Tensor:
    """(N,) bool: the box and its score are finite, it has positive size and it overlaps its frame.

    ``frame_sizes`` holds ``(height, width)`` per frame; ``frame_index`` says which frame each box is in.
    Boxes that fail are the caller's to skip and count; ``crop_and_warp`` refuses them.
    """
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {tuple(boxes.shape)}")
    sizes = torch.as_tensor(frame_sizes, dtype=torch.float32, device=boxes.device).reshape(-1, 2)
    frame_index = frame_index.to(device=boxes.device, dtype=torch.long)
    if frame_index.shape != (boxes.shape[0],):
        raise ValueError(f"frame_index must have shape ({boxes.shape[0]},), got {tuple(frame_index.shape)}")
    if sizes.shape[0] == 0:
        return torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    in_range = (frame_index >= 0) & (frame_index < sizes.shape[0])
    frame_h, frame_w = sizes[frame_index.clamp(0, sizes.shape[0] - 1)].unbind(-1)
    boxes = boxes.float()
    x1, y1, x2, y2 = boxes.unbind(-1)
    ok = torch.isfinite(boxes).all(dim=1) & in_range
    ok &= (x2 > x1) & (y2 > y1)
    ok &= (x2 > 0) & (y2 > 0) & (x1 < frame_w) & (y1 < frame_h)
    if scores is not None:
        ok &= torch.isfinite(scores.to(boxes.device).float().reshape(-1))
    return ok


def _supersample_factor(affine: torch.Tensor, antialias: bool) -> torch.Tensor:
    """(N,) int64 taps per axis: 1 when enlarging (or without antialias), ceil(shrink) when shrinking."""
    shrink = torch.maximum(affine[:, 0, 0], affine[:, 1, 1])
    if not antialias:
        return torch.ones_like(shrink, dtype=torch.long)
    return torch.ceil(shrink - 1e-4).clamp(1, MAX_SUPERSAMPLE).long()


def _sample_grid(
    affine: torch.Tensor, out_hw: tuple[int, int], taps: int, frame_hw: tuple[int, int]
) -> torch.Tensor:
    """Normalised grid_sample grid (n, H * taps, W * taps, 2) of the frame positions of every tap.

    Tap ``j`` of crop pixel ``c`` sits at ``c + (j + 0.5) / taps - 0.5`` in crop pixels, so the taps tile
    the pixel's footprint evenly; ``taps == 1`` is the pixel itself.
    """
    out_h, out_w = out_hw
    frame_h, frame_w = frame_hw
    device = affine.device
    sub = (torch.arange(taps, device=device, dtype=torch.float32) + 0.5) / taps - 0.5
    xs = (torch.arange(out_w, device=device, dtype=torch.float32)[:, None] + sub).reshape(-1)
    ys = (torch.arange(out_h, device=device, dtype=torch.float32)[:, None] + sub).reshape(-1)
    frame_x = affine[:, 0, 0, None] * xs + affine[:, 0, 2, None]  # (n, W * taps)
    frame_y = affine[:, 1, 1, None] * ys + affine[:, 1, 2, None]  # (n, H * taps)
    grid_x = (2.0 / (frame_w - 1)) * frame_x - 1.0
    grid_y = (2.0 / (frame_h - 1)) * frame_y - 1.0
    return torch.stack(
        [
            grid_x[:, None, :].expand(-1, ys.shape[0], -1),
            grid_y[:, :, None].expand(-1, -1, xs.shape[0]),
        ],
        dim=-1,
    )


def _warp_group(
    image: torch.Tensor, affine: torch.Tensor, out_hw: tuple[int, int], taps: int, cubic: bool
) -> torch.Tensor:
    """Crops (n, 3, H, W) in 0..255 of one frame image (1, 3, Hf, Wf) float, all with the same taps."""
    frame_hw = (image.shape[2], image.shape[3])
    grid = _sample_grid(affine, out_hw, taps, frame_hw)
    # Enlarging: cubic as cv2.INTER_CUBIC. Shrinking: bilinear taps, then the k x k area average.
    mode = "bicubic" if cubic else "bilinear"
    crops = F.grid_sample(
        image.expand(affine.shape[0], -1, -1, -1), grid, mode=mode, padding_mode="zeros", align_corners=True
    )
    if taps > 1:
        crops = F.avg_pool2d(crops, kernel_size=taps, stride=taps)
    return crops.clamp_(0.0, 255.0)


def crop_and_warp(
    frames: Sequence[torch.Tensor],
    boxes: torch.Tensor,
    frame_index: torch.Tensor,
    input_size: Sequence[int] = DEFAULT_INPUT_SIZE,
    padding: float = DEFAULT_PADDING,
    antialias: bool = True,
    backend: str = "auto",
    normalisation: Preprocessing | None = None,
) -> CropBatch:
    """Warp every person box of ``frames`` to a normalised model input, on the frames' device.

    Args:
        frames: (H_i, W_i, 3) uint8 RGB tensors, all on one device; sizes may differ.
        boxes: (N, 4) xyxy in frame pixels. Filter them with ``valid_box_mask`` first: a box of zero or
            negative size, non-finite or wholly outside its frame raises ValueError.
        frame_index: (N,) which frame each box belongs to.
        input_size: model input (height, width).
        padding: crop window size relative to the box.
        antialias: area-average when shrinking (default); False samples one bilinear tap per pixel.
        backend: ``"torch"``, ``"opencv"`` (CPU frames only) or ``"auto"`` (opencv on CPU, else torch).
        normalisation: the checkpoint's ``Preprocessing``, whose rescaling and mean/std apply to the crops
            (as the processor normalises its box crops); None is the release's ImageNet normalisation.
    """
    out_hw = _check_input_size(input_size)
    if len(frames) == 0:
        raise ValueError("frames is empty: crop_and_warp needs the frames the boxes belong to")
    _check_frames(frames)
    device = frames[0].device
    boxes = torch.as_tensor(boxes, dtype=torch.float32).to(device).reshape(-1, 4)
    frame_index = torch.as_tensor(frame_index, dtype=torch.long).to(device).reshape(-1)
    if frame_index.shape[0] != boxes.shape[0]:
        raise ValueError(f"frame_index has {frame_index.shape[0]} entries for {boxes.shape[0]} boxes")
    if not padding > 0:
        raise ValueError(f"padding must be positive, got {padding}")
    frame_sizes = [tuple(f.shape[:2]) for f in frames]
    bad = ~valid_box_mask(boxes, None, frame_sizes, frame_index)
    if bool(bad.any()):
        first = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"box {first} {boxes[first].tolist()} of frame {int(frame_index[first])} is empty, not finite or "
            "outside its frame; filter boxes with valid_box_mask first"
        )

    backend = pick_backend(backend, device, "warp")

    affine = crop_to_frame_affine(boxes, out_hw, padding)
    taps = _supersample_factor(affine, antialias)
    enlarging = (affine[:, 0, 0] <= 1) & (affine[:, 1, 1] <= 1)
    if backend == "opencv":
        pixels = _warp_opencv(frames, affine, frame_index, out_hw, taps, enlarging)
    else:
        pixels = _warp_torch(frames, affine, frame_index, out_hw, taps, enlarging)
    pixel_values = (normalisation or _RELEASE_NORMALISATION).normalise(pixels)
    return CropBatch(pixel_values=pixel_values, crop_to_frame=affine, frame_index=frame_index)


def pick_backend(backend: str, device: torch.device, what: str) -> str:
    """The implementation of ``what`` to run on ``device``: ``auto`` is OpenCV for CPU tensors and torch
    elsewhere; ``opencv`` only takes CPU tensors."""
    if backend not in BACKENDS:
        raise ValueError(f"{what} backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "opencv" if device.type == "cpu" else "torch"
    if backend == "opencv" and device.type != "cpu":
        raise ValueError(f"the opencv {what} needs tensors on the CPU, got tensors on {device}")
    return backend


def _warp_torch(
    frames: Sequence[torch.Tensor],
    affine: torch.Tensor,
    frame_index: torch.Tensor,
    out_hw: tuple[int, int],
    taps: torch.Tensor,
    enlarging: torch.Tensor,
) -> torch.Tensor:
    """Crops (N, 3, H, W) float in 0..255 through ``grid_sample``, on the frames' device."""
    pixels = torch.empty(affine.shape[0], 3, *out_hw, dtype=torch.float32, device=affine.device)
    # One group per (frame, taps, cubic or not): a few grid_sample launches, never one per person.
    group_key = (frame_index * (MAX_SUPERSAMPLE + 1) + taps) * 2 + enlarging.long()
    images: dict[int, torch.Tensor] = {}  # each frame converted to float once
    for key in torch.unique(group_key).tolist():
        members = (group_key == key).nonzero().squeeze(1)
        f = int(frame_index[members[0]])
        k = int(taps[members[0]])
        cubic = bool(enlarging[members[0]])
        if f not in images:
            images[f] = frames[f].permute(2, 0, 1).unsqueeze(0).float()
        image = images[f]
        per_chunk = max(1, _MAX_TAPS_PER_CHUNK // (out_hw[0] * out_hw[1] * k * k))
        for chunk in members.split(per_chunk):
            pixels[chunk] = _warp_group(image, affine[chunk], out_hw, k, cubic)
    return pixels


def _warp_opencv(
    frames: Sequence[torch.Tensor],
    affine: torch.Tensor,
    frame_index: torch.Tensor,
    out_hw: tuple[int, int],
    taps: torch.Tensor,
    enlarging: torch.Tensor,
) -> torch.Tensor:
    """Crops (N, 3, H, W) float in 0..255 through ``cv2.warpAffine`` on the uint8 frames (CPU).

    With ``k`` taps per axis the warp samples a ``k``-times larger crop whose pixel ``s`` sits at crop
    position ``(s + 0.5) / k - 0.5`` (the torch path's taps), then ``INTER_AREA`` averages each k x k tile.
    """
    out_h, out_w = out_hw
    crops = np.empty((affine.shape[0], out_h, out_w, 3), np.uint8)
    matrices = affine.double().cpu().numpy()
    per_crop = zip(taps.tolist(), enlarging.tolist(), frame_index.tolist(), strict=True)
    for n, (k, cubic, f) in enumerate(per_crop):
        scale = matrices[n, :, :2] / k
        shift = matrices[n, :, 2] + np.diag(matrices[n, :, :2]) * (0.5 / k - 0.5)
        frame_from_taps = np.concatenate([scale, shift[:, None]], axis=1)
        flags = (cv2.INTER_CUBIC if cubic else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
        image = np.ascontiguousarray(frames[f].numpy())
        if k == 1:
            cv2.warpAffine(image, frame_from_taps, (out_w, out_h), crops[n], flags, cv2.BORDER_CONSTANT, 0)
        else:
            size = (out_w * k, out_h * k)
            sampled = cv2.warpAffine(image, frame_from_taps, size, None, flags, cv2.BORDER_CONSTANT, 0)
            cv2.resize(sampled, (out_w, out_h), crops[n], interpolation=cv2.INTER_AREA)
    pixels = torch.empty(affine.shape[0], 3, out_h, out_w, dtype=torch.float32)
    return pixels.copy_(torch.from_numpy(crops).permute(0, 3, 1, 2))


def prepare_full_frame(
    frames: Sequence[torch.Tensor], input_size: Sequence[int] = DEFAULT_INPUT_SIZE, keep_aspect: bool = False
) -> torch.Tensor:
    """``prepare_frames`` with the release's resampling and normalisation at ``input_size``.

    ``keep_aspect=False`` stretches each frame to the input size (segmentation); ``keep_aspect=True`` is
    the processor's ``do_pad`` (normals and pointmaps).
    """
    return prepare_frames(frames, Preprocessing(input_size=_check_input_size(input_size), do_pad=keep_aspect))


# Interpolation of each resampling filter, as torchvision resizes tensors for the processor.
_INTERPOLATION = {"nearest": "nearest-exact", "bilinear": "bilinear", "bicubic": "bicubic"}


def prepare_frames(frames: Sequence[torch.Tensor], preprocessing: Preprocessing) -> torch.Tensor:
    """Whole frames -> (F, 3, H, W) model inputs, as the checkpoint's processor prepares them.

    Without ``do_pad`` each frame is stretched to the input size. With it the frame is fitted inside the
    input size, aspect kept, and the rest padded with black, centred; ``padding_window`` locates it again
    for the post-processing. Bilinear and bicubic resizing are antialiased, as torchvision's, and the
    result is rounded to 8 bits as the processor's uint8 resize does; then rescaled and normalised.
    """
    mode = _INTERPOLATION.get(preprocessing.resample)
    if mode is None:
        raise ValueError(
            f"resample {preprocessing.resample!r} is not supported for tensors; "
            f"expected one of {sorted(_INTERPOLATION)}"
        )
    out_h, out_w = _check_input_size(preprocessing.input_size)
    if len(frames) == 0:
        raise ValueError("frames is empty")
    _check_frames(frames)
    out = torch.zeros(len(frames), 3, out_h, out_w, dtype=torch.float32, device=frames[0].device)
    for i, frame in enumerate(frames):
        top, left, new_h, new_w = 0, 0, out_h, out_w
        if preprocessing.do_pad:
            new_h, new_w = fit_inside(tuple(frame.shape[:2]), (out_h, out_w))
            top, left = (out_h - new_h) // 2, (out_w - new_w) // 2
        out[i, :, top : top + new_h, left : left + new_w] = _resize_frame(frame, (new_h, new_w), mode)
    return preprocessing.normalise(out)


def _native_uint8_resize(mode: str, device: torch.device) -> bool:
    """Whether torchvision resizes a uint8 image with ``mode`` on ``device`` without going to float."""
    if mode == "nearest-exact":
        return True
    if device.type != "cpu":
        return False
    vector_bilinear = torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512")
    return mode == "bicubic" or vector_bilinear or platform.machine() in ("aarch64", "arm64")


def _resize_frame(frame: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, h, w) float holding 8-bit values, as torchvision's ``resize`` computes it.

    Where torchvision resizes uint8 images natively (CPU: nearest, bicubic, and bilinear on AVX2/AVX512
    or ARM) the same kernel runs here, fixed-point rounding and all; elsewhere it resizes in float and
    rounds. (torchvision itself is not imported: its transforms pull in torch's compiler stack, seconds
    of every worker's start-up.)
    """
    image = frame.permute(2, 0, 1).unsqueeze(0)
    if tuple(image.shape[-2:]) == size:
        return image[0].float()
    native = _native_uint8_resize(mode, frame.device)
    if not native:
        image = image.float()
    smoothing = {} if mode == "nearest-exact" else {"align_corners": False, "antialias": True}
    resized = F.interpolate(image, size=size, mode=mode, **smoothing)[0]
    return resized.float() if native else resized.clamp_(0.0, 255.0).round_()


def fit_inside(frame_hw: Sequence[int], input_size: Sequence[int]) -> tuple[int, int]:
    """Largest (height, width) with the frame's aspect that fits the input size (the reference's rule)."""
    scale = min(input_size[0] / frame_hw[0], input_size[1] / frame_hw[1])
    return int(frame_hw[0] * scale), int(frame_hw[1] * scale)


def padding_window(frame_hw: Sequence[int], input_size: Sequence[int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the frame inside a ``keep_aspect`` input, for removing the padding."""
    new_h, new_w = fit_inside(frame_hw, input_size)
    top = (input_size[0] - new_h) // 2 if new_h < input_size[0] else 0
    left = (input_size[1] - new_w) // 2 if new_w < input_size[1] else 0
    return top, left, top + min(new_h, input_size[0]), left + min(new_w, input_size[1])

