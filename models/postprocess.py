"""Sapiens2 outputs -> results in frame coordinates, batched on the outputs' device.

Pose decoding equals transformers' ``Sapiens2ImageProcessor.post_process_pose_estimation`` (argmax, then
the UDP-DARK Newton step on the log of the blurred heatmap, then the UDP inverse affine) without blurring
whole heatmaps: the Newton step reads only the 3 x 3 blurred values around each maximum, so those nine
values are computed from the 13 x 13 heatmap patch around it. The reference rescales every blurred map to
keep its maximum, then clamps to ``[1e-3, 50]`` before the log; the rescaling adds a constant to the log,
which the step's differences cancel, unless the clamp bites. Whether it can bite is decided from bounds
(the blurred maximum lies between the largest of the nine values and the heatmap maximum); the few maps
where it can are blurred in full, exactly as the reference does.

Segmentation, normals, pointmaps and matting follow the reference's post-processing; person-crop
segmentation is pasted back through each crop's affine (see ``paste_person_segmentation``).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from models.preprocess import padding_window, pick_backend

LOG_CLAMP = (1e-3, 50.0)


def gaussian_kernel_1d(kernel_size: int, device: torch.device | None = None) -> torch.Tensor:
    """cv2.getGaussianKernel(kernel_size, sigma=0) as float32: the blur of the DARK refinement."""
    if kernel_size % 2 == 0 or kernel_size <= 1:
        raise ValueError(f"blur kernel size must be an odd integer > 1, got {kernel_size}")
    sigma = 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8
    half = (kernel_size - 1) * 0.5
    x = torch.linspace(-half, half, kernel_size, device=device)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return kernel / kernel.sum()


def _blurred_neighbourhood(
    heatmaps: torch.Tensor, peak_xy: torch.Tensor, kernel: torch.Tensor
) -> torch.Tensor:
    """Blurred values (N, K, 3, 3) at the peak's 3 x 3 neighbourhood, edge-replicated like the reference.

    The blur pads the heatmap with zeros; the neighbourhood beyond the map's edge repeats the edge. Only
    the (2r + 3)^2 patch around each peak is read, then blurred separably.
    """
    n, k, h, w = heatmaps.shape
    radius = kernel.shape[0] // 2
    device = heatmaps.device
    reach = torch.arange(-radius - 1, radius + 2, device=device)  # patch offsets around the peak
    rows = peak_xy[..., 1, None] + reach  # (N, K, P)
    cols = peak_xy[..., 0, None] + reach
    inside = ((rows >= 0) & (rows < h))[..., :, None] & ((cols >= 0) & (cols < w))[..., None, :]
    base = torch.arange(n * k, device=device).view(n, k, 1, 1) * (h * w)
    index = base + rows.clamp(0, h - 1)[..., :, None] * w + cols.clamp(0, w - 1)[..., None, :]
    patch = heatmaps.reshape(-1)[index] * inside  # (N, K, P, P), zeros outside the map
    # The separable blur at the nine points, as two flat matrix products with the (P, 3) band whose
    # column i holds the kernel at rows i..i+2r: one GEMM each instead of a batch of tiny ones.
    band = _blur_band(reach.shape[0], kernel)[:, radius : radius + 3]  # (P, 3)
    cols3 = (patch.reshape(-1, reach.shape[0]) @ band).view(n * k, -1, 3)  # (NK, P, 3): columns x-1..x+1
    patch = (cols3.transpose(1, 2).reshape(-1, reach.shape[0]) @ band).view(n, k, 3, 3).transpose(-1, -2)
    # Replicate at the map's edge: a neighbour beyond it reads the edge pixel's value.
    step = torch.arange(-1, 2, device=device)
    pick_y = (peak_xy[..., 1, None] + step).clamp(0, h - 1) - peak_xy[..., 1, None] + 1  # (N, K, 3)
    pick_x = (peak_xy[..., 0, None] + step).clamp(0, w - 1) - peak_xy[..., 0, None] + 1
    patch = patch.gather(-2, pick_y[..., :, None].expand(-1, -1, -1, 3))
    return patch.gather(-1, pick_x[..., None, :].expand(-1, -1, 3, -1))


def _blur_band(size: int, kernel: torch.Tensor) -> torch.Tensor:
    """(size, size) banded matrix B with B @ v = v convolved with ``kernel`` under zero padding."""
    radius = kernel.shape[0] // 2
    index = torch.arange(size, device=kernel.device)
    offset = index[None, :] - index[:, None]
    inside = offset.abs() <= radius
    taps = kernel[(offset + radius).clamp(0, 2 * radius)]
    return torch.where(inside, taps, torch.zeros((), dtype=kernel.dtype, device=kernel.device))


BLUR_CHUNK_PIXELS = 1 << 18  # pixels per OpenCV call: about 1 MB of float32, which stays in cache


def full_blur_max(
    maps: torch.Tensor, kernel: torch.Tensor, which: torch.Tensor | None = None, backend: str = "auto"
) -> torch.Tensor:
    """Maximum of each zero-padded, blurred map: the reference's rescaling denominator.

    ``maps`` is (M, h, w); ``which`` (optional, indices into M) picks the maps to blur, and the result has
    one value per picked map. ``opencv`` (the ``auto`` choice for CPU maps) stacks the maps into tall
    images for ``cv2.sepFilter2D``; ``torch`` (the ``auto`` choice elsewhere) runs the separable blur as
    two batched products with banded matrices. On a 2-core CPU the OpenCV path is the faster one, and
    single-channel conv2d was slower than both (``benchmarks/postprocess.py``).
    """
    backend = pick_backend(backend, maps.device, "blur")
    if which is None:
        which = torch.arange(maps.shape[0], device=maps.device)
    if backend == "opencv":
        return _full_blur_max_opencv(maps, kernel, which)
    return _full_blur_max_matmul(maps, kernel, which)


def _full_blur_max_matmul(maps: torch.Tensor, kernel: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """``full_blur_max`` as B_h @ map @ B_w with banded matrices, on the maps' device."""
    _, h, w = maps.shape
    kernel = kernel.to(maps.dtype)
    if which.numel() * 2 > maps.shape[0]:
        # Most maps are wanted: blurring all of them in place beats gathering a copy of those first.
        blurred = _blur_band(h, kernel) @ maps @ _blur_band(w, kernel)  # the band is symmetric
        return blurred.amax(dim=(1, 2))[which]
    blurred = _blur_band(h, kernel) @ maps[which] @ _blur_band(w, kernel)
    return blurred.amax(dim=(1, 2))


def _full_blur_max_opencv(maps: torch.Tensor, kernel: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """``full_blur_max`` of CPU maps with ``cv2.sepFilter2D``, a cache-sized chunk of maps per call.

    The maps of a chunk are stacked into one (count * (h + r), w) image with ``r`` (the kernel radius)
    zero rows after each: every map's vertical pass then reads the same zeros beyond its edges as when
    blurred alone, and the horizontal pass never mixes rows.
    """
    source = maps.detach().float().contiguous().numpy()
    picked = which.cpu().numpy()
    _, h, w = source.shape
    taps = kernel.detach().float().cpu().numpy()
    radius = taps.shape[0] // 2
    per_call = max(1, min(len(picked), BLUR_CHUNK_PIXELS // ((h + radius) * w)))
    stacked = np.zeros((per_call, h + radius, w), np.float32)
    maxima = np.empty(len(picked), np.float32)
    for start in range(0, len(picked), per_call):
        chunk = picked[start : start + per_call]
        n = len(chunk)
        stacked[:n, :h] = source[chunk]
        tall = stacked[:n].reshape(n * (h + radius), w)
        blurred = cv2.sepFilter2D(tall, cv2.CV_32F, taps, taps, borderType=cv2.BORDER_CONSTANT)
        maxima[start : start + n] = blurred.reshape(n, h + radius, w)[:, :h].max(axis=(1, 2))
    return torch.from_numpy(maxima)


def _log_neighbourhood(
    heatmaps: torch.Tensor, peak_xy: torch.Tensor, peak_value: torch.Tensor, kernel: torch.Tensor
) -> torch.Tensor:
    """log(clamp(rescaled blur)) at the 3 x 3 neighbourhood, (N, K, 3, 3), up to a constant per map."""
    low, high = LOG_CLAMP
    blurred = _blurred_neighbourhood(heatmaps, peak_xy, kernel)
    flat = blurred.flatten(2)
    # The rescaled value is blurred * peak / blurred_max with blurred_max in [max of the nine, peak]: the
    # clamp cannot bite when every value stays above `low` and the peak below `high` (with margins).
    # Maps without a positive peak are never refined (zero padding of a batch, empty maps): skip them.
    safe = (flat.amin(dim=-1) > low * 1.001) & (peak_value < high * 0.999)
    log_values = blurred.clamp_min(low).log()
    unsure = (~safe & (peak_value > 0)).nonzero(as_tuple=True)
    if unsure[0].numel():
        flat_index = unsure[0] * peak_value.shape[1] + unsure[1]  # (M,) into the (N * K) maps
        blur_max = full_blur_max(heatmaps.flatten(0, 1), kernel, which=flat_index)
        scale = torch.where(blur_max > 0, peak_value[unsure] / blur_max.where(blur_max > 0, 1.0), 1.0)
        rescaled = blurred[unsure] * scale[:, None, None]
        log_values[unsure] = rescaled.clamp(low, high).log()
    return log_values


def _newton_offset(log_values: torch.Tensor) -> torch.Tensor:
    """DARK step (N, K, 2) from the log values at rows y-1..y+1 and columns x-1..x+1."""
    v = log_values
    centre = v[..., 1, 1]
    left, right, up, down = v[..., 1, 0], v[..., 1, 2], v[..., 0, 1], v[..., 2, 1]
    grad_x = 0.5 * (right - left)
    grad_y = 0.5 * (down - up)
    eps = torch.finfo(v.dtype).eps
    hess_xx = right - 2 * centre + left + eps
    hess_yy = down - 2 * centre + up + eps
    hess_xy = 0.5 * (v[..., 2, 2] - right - down + 2 * centre - left - up + v[..., 0, 0])
    det = hess_xx * hess_yy - hess_xy * hess_xy
    offset_x = (hess_yy * grad_x - hess_xy * grad_y) / det
    offset_y = (hess_xx * grad_y - hess_xy * grad_x) / det
    return torch.stack([offset_x, offset_y], dim=-1)


def _peaks(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Maximum (N, K) and its first position (N, K, 2) as integer (x, y); non-finite maps score 0.

    Row maxima first, then the first row holding the maximum, then the first column in that row: the
    flat argmax's answer at a fraction of its cost (one reduction over the maps instead of an argmax).
    """
    row_max = heatmaps.amax(dim=-1)  # (N, K, h)
    scores = row_max.amax(dim=-1)
    row = (row_max == scores[..., None]).byte().argmax(dim=-1)  # (N, K)
    row_values = heatmaps.gather(2, row[..., None, None].expand(-1, -1, 1, heatmaps.shape[-1]))[:, :, 0]
    col = (row_values == scores[..., None]).byte().argmax(dim=-1)
    finite = torch.isfinite(scores)
    scores = torch.where(finite, scores, torch.zeros_like(scores))
    return scores, torch.stack([col, row], dim=-1)


def decode_pose_heatmaps(
    heatmaps: torch.Tensor,
    crop_to_frame: torch.Tensor,
    input_size: Sequence[int],
    blur_kernel_size: int = 11,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps (N, K, h, w) -> keypoints (N, K, 2) in frame pixels and scores (N, K), all float32.

    ``crop_to_frame`` (N, 2, 3) maps crop pixels of the ``input_size`` (height, width) model input to the
    frame (``CropBatch.crop_to_frame``); heatmap pixel ``(0, 0)`` and ``(w - 1, h - 1)`` are the crop's
    corner pixels (UDP). Flip-TTA heatmaps come in already averaged. A keypoint whose score is not
    positive keeps the reference's unrefined location, heatmap pixel (-1, -1); a map holding NaN or inf
    scores 0.
    """
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must have shape (N, K, h, w), got {tuple(heatmaps.shape)}")
    n, k, h, w = heatmaps.shape
    if crop_to_frame.shape != (n, 2, 3):
        raise ValueError(f"crop_to_frame must have shape ({n}, 2, 3), got {tuple(crop_to_frame.shape)}")
    in_h, in_w = int(input_size[0]), int(input_size[1])
    if h < 2 or w < 2 or in_h < 2 or in_w < 2:
        raise ValueError(f"heatmaps ({h}x{w}) and input_size ({in_h}x{in_w}) must be at least 2x2")
    device = heatmaps.device
    if n == 0 or k == 0:
        return torch.zeros(n, k, 2, device=device), torch.zeros(n, k, device=device)

    heatmaps = heatmaps.float().contiguous()
    scores, peak_xy = _peaks(heatmaps)
    found = scores > 0
    kernel = gaussian_kernel_1d(blur_kernel_size, device=device)
    log_values = _log_neighbourhood(heatmaps, peak_xy, scores, kernel)
    offset = _newton_offset(log_values)
    refined = peak_xy.float() - offset
    keypoints_hm = torch.where(found[..., None], refined, torch.full_like(refined, -1.0))

    # Heatmap pixel -> crop pixel -> frame pixel, in float64 so the result is limited by float32 only once.
    affine = crop_to_frame.to(device=device, dtype=torch.float64)
    hm_to_crop = torch.tensor([(in_w - 1) / (w - 1), (in_h - 1) / (h - 1)], dtype=torch.float64)
    hm_to_crop = hm_to_crop.to(device)
    crop_xy = keypoints_hm.double() * hm_to_crop
    frame_xy = torch.einsum("nij,nkj->nki", affine[:, :, :2], crop_xy) + affine[:, None, :, 2]
    return frame_xy.float(), scores


def segment_full_frame(
    logits: torch.Tensor, frame_hw: Sequence[int], return_probs: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One frame's logits (C, h, w) of a stretched full-frame input -> labels (H, W) int64, probs (C, H, W).

    As the official demo and the reference: logits upsampled bilinearly to the frame, then argmax.
    ``probs`` is the softmax of the upsampled logits (None unless asked) for temporal smoothing.
    """
    if logits.ndim != 3:
        raise ValueError(f"logits must have shape (C, h, w) for one frame, got {tuple(logits.shape)}")
    frame_h, frame_w = int(frame_hw[0]), int(frame_hw[1])
    if frame_h < 1 or frame_w < 1:
        raise ValueError(f"frame_hw must be positive, got {tuple(frame_hw)}")
    size = (frame_h, frame_w)
    resized = F.interpolate(logits[None].float(), size=size, mode="bilinear", align_corners=False)
    resized = resized[0]
    labels = resized.argmax(dim=0)
    probs = resized.softmax(dim=0) if return_probs else None
    return labels, probs


def paste_person_segmentation(
    logits: torch.Tensor,
    crop_to_frame: torch.Tensor,
    frame_hw: Sequence[int],
    input_size: Sequence[int] | None = None,
    background_class: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One frame's person-crop logits (P, C, h, w) -> labels (H, W), person masks (P, H, W), probs (C, H, W).

    Each crop's logits are sampled bilinearly at every frame pixel its crop window covers (the inverse
    of ``crop_to_frame``; ``input_size`` defaults to the logits' size) and turned into probabilities.
    Where crops overlap, the person with the highest foreground probability (1 - background) owns the
    pixel; pixels no crop covers are background with probability 1. ``person_masks[p]`` marks the
    non-background pixels person ``p`` owns.
    """
    if logits.ndim != 4:
        raise ValueError(f"logits must have shape (P, C, h, w), got {tuple(logits.shape)}")
    p, c, h, w = logits.shape
    if crop_to_frame.shape != (p, 2, 3):
        raise ValueError(f"crop_to_frame must have shape ({p}, 2, 3), got {tuple(crop_to_frame.shape)}")
    in_h, in_w = (h, w) if input_size is None else (int(input_size[0]), int(input_size[1]))
    frame_h, frame_w = int(frame_hw[0]), int(frame_hw[1])
    device = logits.device
    probs = torch.zeros(c, frame_h, frame_w, device=device)
    probs[background_class] = 1.0
    owner = torch.full((frame_h, frame_w), -1, dtype=torch.long, device=device)
    best_fg = torch.full((frame_h, frame_w), -1.0, device=device)
    affine = crop_to_frame.to(device=device, dtype=torch.float64).cpu()
    # A loop over the persons of one frame: each samples only its own window of the frame.
    for person in range(p):
        window = _frame_window(affine[person], (in_h, in_w), (frame_h, frame_w))
        if window is None:
            continue
        y0, y1, x0, x1 = window
        person_probs, covered = _sample_crop_probs(logits[person], affine[person], (in_h, in_w), window)
        fg = torch.where(covered, 1.0 - person_probs[background_class], -1.0)
        wins = covered & (fg > best_fg[y0:y1, x0:x1])
        best_fg[y0:y1, x0:x1] = torch.where(wins, fg, best_fg[y0:y1, x0:x1])
        owner[y0:y1, x0:x1] = torch.where(wins, person, owner[y0:y1, x0:x1])
        probs[:, y0:y1, x0:x1] = torch.where(wins, person_probs, probs[:, y0:y1, x0:x1])
    labels = probs.argmax(dim=0)
    person_ids = torch.arange(p, device=device).view(p, 1, 1)
    person_masks = (owner[None] == person_ids) & (labels != background_class)[None]
    return labels, person_masks, probs


def _frame_window(
    affine: torch.Tensor, input_hw: tuple[int, int], frame_hw: tuple[int, int]
) -> tuple[int, int, int, int] | None:
    """Frame rows y0:y1 and columns x0:x1 the crop covers, clipped to the frame; None if it misses."""
    (a_x, _, t_x), (_, a_y, t_y) = affine.tolist()
    x_lo, x_hi = t_x, t_x + a_x * (input_hw[1] - 1)
    y_lo, y_hi = t_y, t_y + a_y * (input_hw[0] - 1)
    x0, x1 = max(0, int(x_lo) - 1), min(frame_hw[1], int(x_hi) + 2)
    y0, y1 = max(0, int(y_lo) - 1), min(frame_hw[0], int(y_hi) + 2)
    if x0 >= x1 or y0 >= y1:
        return None
    return y0, y1, x0, x1


def _sample_crop_probs(
    logits: torch.Tensor, affine: torch.Tensor, input_hw: tuple[int, int], window: tuple[int, int, int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Class probabilities (C, wh, ww) of one crop at the frame pixels of ``window`` and their coverage."""
    y0, y1, x0, x1 = window
    (a_x, _, t_x), (_, a_y, t_y) = affine.tolist()
    device = logits.device
    frame_x = torch.arange(x0, x1, device=device, dtype=torch.float64)
    frame_y = torch.arange(y0, y1, device=device, dtype=torch.float64)
    # Crop pixel of each frame pixel; align_corners=True keeps UDP alignment at any logits resolution.
    grid_x = (2.0 * ((frame_x - t_x) / a_x) / (input_hw[1] - 1) - 1.0).float()
    grid_y = (2.0 * ((frame_y - t_y) / a_y) / (input_hw[0] - 1) - 1.0).float()
    grid = torch.stack(torch.broadcast_tensors(grid_x[None, :], grid_y[:, None]), dim=-1)
    sampled = F.grid_sample(logits[None].float(), grid[None], mode="bilinear", align_corners=True)[0]
    covered = (grid[..., 0].abs() <= 1.0) & (grid[..., 1].abs() <= 1.0)
    return sampled.softmax(dim=0), covered


def _remove_padding_and_resize(
    maps: torch.Tensor,
    source_sizes: Sequence[Sequence[int]] | None,
    target_sizes: Sequence[Sequence[int]] | None,
) -> list[torch.Tensor]:
    """Per-image maps: crop away the ``keep_aspect`` padding (with source sizes), resize to the target."""
    batch, _, in_h, in_w = maps.shape
    for name, sizes in (("source_sizes", source_sizes), ("target_sizes", target_sizes)):
        if sizes is not None and len(sizes) != batch:
            raise ValueError(f"{name} has {len(sizes)} entries for a batch of {batch}")
    finals = target_sizes if target_sizes is not None else source_sizes
    results = []
    for i in range(batch):
        item = maps[i : i + 1]
        if source_sizes is not None:
            top, left, bottom, right = padding_window(source_sizes[i], (in_h, in_w))
            item = item[:, :, top:bottom, left:right]
        if finals is not None:
            size = (int(finals[i][0]), int(finals[i][1]))
            item = F.interpolate(item, size=size, mode="bilinear", align_corners=False, antialias=False)
        results.append(item[0])
    return results


def postprocess_normals(
    normals: torch.Tensor,
    source_sizes: Sequence[Sequence[int]] | None = None,
    target_sizes: Sequence[Sequence[int]] | None = None,
) -> list[torch.Tensor]:
    """Normal maps (B, 3, h, w) -> per image (3, H, W) unit normals, padding removed, resized.

    As the reference's ``post_process_normal_estimation``: L2-normalised first, then the ``keep_aspect``
    padding is cropped (when ``source_sizes`` are given) and maps resized to ``target_sizes`` (else to the
    source sizes) bilinearly.
    """
    unit = F.normalize(normals.float(), p=2, dim=1, eps=1e-8)
    return _remove_padding_and_resize(unit, source_sizes, target_sizes)


def postprocess_pointmaps(
    pointmaps: torch.Tensor,
    scales: torch.Tensor | None = None,
    source_sizes: Sequence[Sequence[int]] | None = None,
    target_sizes: Sequence[Sequence[int]] | None = None,
) -> list[torch.Tensor]:
    """Pointmaps (B, 3, h, w) and scales (B, 1) -> per image (3, H, W) XYZ, divided by the scale.

    As the reference's ``post_process_pointmap_estimation``; padding and resizing as ``postprocess_normals``.
    """
    maps = pointmaps.float()
    if scales is not None:
        maps = maps / scales.float().reshape(maps.shape[0], -1)[:, :, None, None]
    return _remove_padding_and_resize(maps, source_sizes, target_sizes)


def postprocess_matting(
    foregrounds: torch.Tensor,
    alphas: torch.Tensor,
    target_size: Sequence[int] | None = None,
    backgrounds: torch.Tensor | None = None,
) -> dict[str, torch.Tensor | None]:
    """Matting outputs -> alpha (B, 1, H, W), foreground (B, 3, H, W) and composite (B, 3, H, W) uint8.

    As the reference's ``post_process_image_matting``: foreground (pre-multiplied) and alpha resized
    bilinearly to ``target_size`` and clamped to [0, 1]; the composite is ``foreground + (1 - alpha) *
    background`` in [0, 255]. ``backgrounds``: (3, H, W) or (B, 3, H, W), uint8 or float in [0, 1],
    resized to the matte when its size differs; None gives no composite.
    """
    if foregrounds.ndim != 4 or alphas.ndim != 4 or foregrounds.shape[0] != alphas.shape[0]:
        raise ValueError(
            f"foregrounds (B, 3, h, w) and alphas (B, 1, h, w) expected, got {tuple(foregrounds.shape)} "
            f"and {tuple(alphas.shape)}"
        )
    matting = torch.cat([foregrounds.float(), alphas.float()], dim=1)
    if target_size is not None:
        size = (int(target_size[0]), int(target_size[1]))
        matting = F.interpolate(matting, size=size, mode="bilinear", align_corners=False, antialias=False)
        matting = matting.clamp(0.0, 1.0)
    foreground, alpha = matting[:, :3], matting[:, 3:]
    composite = None
    if backgrounds is not None:
        background = backgrounds.to(foreground.device)
        background = background.float() / 255.0 if background.dtype == torch.uint8 else background.float()
        if background.ndim == 3:
            background = background[None].expand(foreground.shape[0], -1, -1, -1)
        if background.shape[-2:] != foreground.shape[-2:]:
            background = F.interpolate(
                background, size=foreground.shape[-2:], mode="bilinear", align_corners=False, antialias=False
            )
        blended = (foreground + (1 - alpha) * background).clamp(0.0, 1.0)
        # 0..1 -> 0..255 by truncating x * 255.999, as torchvision's to_dtype (the reference's) does.
        composite = blended.mul(255.999).to(torch.uint8)
    return {"alpha": alpha, "foreground": foreground, "composite": composite}
