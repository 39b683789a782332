"""Sapiens2 models for inference.

Public API::

    from models import Sapiens2Config, build_sapiens2, load_sapiens2, save_sapiens2, flip_tta

    cfg = Sapiens2Config.from_arch("0.4b", task="pose")              # official architecture
    cfg = Sapiens2Config.from_arch("tiny", task="seg", image_size=(64, 48))   # tiny test architecture
    model = build_sapiens2(cfg)              # random weights, eval mode; model.task, model.config
    out = model(pixel_values)                # (B, 3, H, W), H and W multiples of the patch size
    #   pose: out.heatmaps (B, K, H/4, W/4)   seg: out.logits (B, C, H, W)   normal: out.normals
    #   pointmap: out.pointmaps, out.scales   matting: out.alphas, out.foregrounds
    #   model: out.last_hidden_state, out.pooler_output   backbone: out.feature_maps, out.cls_tokens
    save_sapiens2(model, directory)          # config.json + model.safetensors, official key names
    model = load_sapiens2("facebook/sapiens2-pose-0.4b" or "/path/dir", device="cpu", dtype=torch.float32)
    model.preprocessing                      # its preprocessor_config.json (size, do_pad, mean/std, ...)
    prep = load_preprocessing("facebook/sapiens2-normal-0.4b", input_size=(512, 384))   # without weights
    out = flip_tta(model, pixel_values)      # one 2B forward, averaged and flipped back

Tasks: "pose", "seg", "normal", "pointmap", "matting", "model" (bare transformer), "backbone".
"""

from __future__ import annotations

import importlib

# Imported on first use: workers that only need ``models.meta`` (tracking, rendering) must not pay
# for torch at start-up (over a second per spawned process on a small CPU).
_LAZY = {
    "Sapiens2Config": "models.config",
    "Sapiens2HeadConfig": "models.config",
    "load_preprocessing": "models.loading",
    "load_sapiens2": "models.loading",
    "Preprocessing": "models.processor_config",
    "save_sapiens2": "models.loading",
    "Sapiens2BackboneOutput": "models.sapiens2",
    "Sapiens2MattingOutput": "models.sapiens2",
    "Sapiens2ModelOutput": "models.sapiens2",
    "Sapiens2NormalOutput": "models.sapiens2",
    "Sapiens2PointmapOutput": "models.sapiens2",
    "Sapiens2PoseOutput": "models.sapiens2",
    "Sapiens2SegmentationOutput": "models.sapiens2",
    "build_sapiens2": "models.sapiens2",
    "flip_tta": "models.tta",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + list(_LAZY))


__all__ = [
    "Sapiens2Config",
    "Sapiens2HeadConfig",
    "Sapiens2BackboneOutput",
    "Sapiens2MattingOutput",
    "Sapiens2ModelOutput",
    "Sapiens2NormalOutput",
    "Sapiens2PointmapOutput",
    "Sapiens2PoseOutput",
    "Sapiens2SegmentationOutput",
    "build_sapiens2",
    "flip_tta",
    "load_preprocessing",
    "load_sapiens2",
    "Preprocessing",
    "save_sapiens2",
]
