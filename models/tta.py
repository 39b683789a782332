"""Horizontal-flip test-time augmentation in one forward pass.

The original and mirrored inputs go through the model as one batch of 2B; the mirrored half is mapped
back (left/right channels swapped where the output has sides, then mirrored, x components negated) and
averaged with the original half. The result has the model's own output type.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from models.meta import pose_meta, seg_meta


def _pose_flip_indices(model: nn.Module, num_keypoints: int) -> torch.Tensor:
    pairs = model.config.flip_pairs
    if pairs:
        perm = np.arange(num_keypoints)
        pairs = np.asarray(pairs, dtype=np.int64)
        perm[pairs[:, 0]], perm[pairs[:, 1]] = pairs[:, 1], pairs[:, 0]
        return torch.from_numpy(perm)
    meta = pose_meta()
    if num_keypoints != len(meta.flip_indices):
        raise ValueError(
            f"no flip pairs for a pose model with {num_keypoints} keypoints: set config.flip_pairs "
            f"or pass flip_indices"
        )
    return torch.from_numpy(meta.flip_indices)


def _seg_flip_indices(num_classes: int) -> torch.Tensor:
    meta = seg_meta()
    if num_classes != len(meta.flip_indices):
        raise ValueError(f"no left/right class pairs for {num_classes} classes: pass flip_indices")
    return torch.from_numpy(meta.flip_indices)


def _mirror(x: torch.Tensor) -> torch.Tensor:
    return x.flip(-1)


def _mirror_negate_x(x: torch.Tensor) -> torch.Tensor:
    """Mirror a (B, 3, H, W) vector field and negate its x component."""
    x = x.flip(-1)
    sign = torch.tensor([-1.0, 1.0, 1.0], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return x * sign


def _average(original: torch.Tensor, flipped_back: torch.Tensor) -> torch.Tensor:
    return (original + flipped_back) * 0.5


@torch.no_grad()
def flip_tta(model: nn.Module, pixel_values: torch.Tensor, flip_indices: torch.Tensor | None = None):
    """Average of ``model(x)`` and the flipped-back ``model(mirror(x))``, from one 2B forward.

    Pose heatmaps swap left/right keypoints (``config.flip_pairs`` or the 308-keypoint layout of
    ``models.meta``), segmentation logits swap left/right classes, normals and pointmaps negate x,
    matting mirrors alpha and foreground; the pointmap scale is averaged as is. ``flip_indices``
    overrides the channel permutation for pose and segmentation.
    """
    task = getattr(model, "task", None)
    if task not in ("pose", "seg", "normal", "pointmap", "matting"):
        raise ValueError(f"flip TTA needs a pose, seg, normal, pointmap or matting model, not {task!r}")
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values must be (B, C, H, W), got shape {tuple(pixel_values.shape)}")
    batch = pixel_values.shape[0]
    out = model(torch.cat([pixel_values, pixel_values.flip(-1)], dim=0))

    def split(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x[:batch], x[batch:]

    changes = {}
    if task == "pose":
        original, flipped = split(out.heatmaps)
        perm = flip_indices if flip_indices is not None else _pose_flip_indices(model, original.shape[1])
        changes["heatmaps"] = _average(original, _mirror(flipped[:, perm.to(flipped.device)]))
    elif task == "seg":
        original, flipped = split(out.logits)
        perm = flip_indices if flip_indices is not None else _seg_flip_indices(original.shape[1])
        changes["logits"] = _average(original, _mirror(flipped[:, perm.to(flipped.device)]))
    elif task == "normal":
        original, flipped = split(out.normals)
        changes["normals"] = _average(original, _mirror_negate_x(flipped))
    elif task == "pointmap":
        original, flipped = split(out.pointmaps)
        changes["pointmaps"] = _average(original, _mirror_negate_x(flipped))
        if out.scales is not None:
            changes["scales"] = _average(*split(out.scales))
    else:
        for name in ("alphas", "foregrounds"):
            original, flipped = split(getattr(out, name))
            changes[name] = _average(original, _mirror(flipped))
    return dataclasses.replace(out, **changes)
