"""How a checkpoint's inputs are prepared, read from its ``preprocessor_config.json``.

The file is the one transformers' ``Sapiens2ImageProcessor.save_pretrained`` writes and the released
checkpoints carry: input ``size``, ``do_pad`` (aspect-preserving resize and centred padding instead of a
stretch), ``image_mean``/``image_std``, ``do_rescale``/``rescale_factor``, ``do_normalize`` and
``resample``. Keys the file leaves out take the processor's class defaults, as transformers fills them.
Without a file the release's defaults for the task apply: the processor's, with padding for normals and
pointmaps. Settings this package cannot follow (no resize, a centre crop, a size other than height and
width) are refused rather than ignored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

PREPROCESSOR_NAME = "preprocessor_config.json"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_INPUT_SIZE = (1024, 768)
RELEASE_DEFAULTS = "release defaults"
# The released normal and pointmap models see whole frames resized into the input and padded (the
# processor's note on ``do_pad``); the others are stretched: transformers' matting post-processing, like
# segmentation's, removes no padding.
PADDED_TASKS = ("normal", "pointmap")
# PIL's resampling filter numbers, as transformers stores ``resample``.
RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


@dataclass(frozen=True)
class Preprocessing:
    """Input preparation of one checkpoint; defaults are ``Sapiens2ImageProcessor``'s.

    ``normalise`` maps pixels in 0..255 to model inputs:
    ``((x * rescale_factor if do_rescale else x) - mean) / std`` when ``do_normalize``.
    """

    input_size: tuple[int, int] = DEFAULT_INPUT_SIZE  # (height, width)
    do_pad: bool = False
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    do_normalize: bool = True
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    resample: str = "bilinear"
    source: str = field(default=RELEASE_DEFAULTS, compare=False)  # the file read, for messages

    def with_input_size(self, input_size: Sequence[int] | None) -> Preprocessing:
        """The same preparation at another input size (a user's choice overrides the checkpoint's)."""
        if input_size is None:
            return self
        return replace(self, input_size=_input_size(input_size, "input_size"))

    def scale_shift(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel ``(scale, shift)`` with ``input = pixel * scale + shift`` for pixels in 0..255."""
        rescale = self.rescale_factor if self.do_rescale else 1.0
        if not self.do_normalize:
            return (rescale,) * 3, (0.0,) * 3
        scale = tuple(rescale / s for s in self.image_std)
        shift = tuple(-m / s for m, s in zip(self.image_mean, self.image_std, strict=True))
        return scale, shift

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float pixels in 0..255 -> model inputs, in place."""
        scale, shift = self.scale_shift()
        view = (1, 3, 1, 1)
        pixels.mul_(torch.tensor(scale, dtype=pixels.dtype, device=pixels.device).view(view))
        return pixels.add_(torch.tensor(shift, dtype=pixels.dtype, device=pixels.device).view(view))


def release_preprocessing(task: str) -> Preprocessing:
    """The preparation the released checkpoints of ``task`` use when no file says otherwise."""
    return Preprocessing(do_pad=task in PADDED_TASKS)


def read_preprocessing(
    directory: Path, task: str | None, input_size: Sequence[int] | None = None
) -> Preprocessing:
    """The checkpoint directory's ``preprocessor_config.json``, or the release defaults of ``task``."""
    path = directory / PREPROCESSOR_NAME
    if not path.is_file():
        if task is None:
            raise ValueError(f"no {PREPROCESSOR_NAME} in {directory} and no task to take the defaults of")
        return release_preprocessing(task).with_input_size(input_size)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object")
    try:
        preprocessing = preprocessing_from_dict(data, source=str(path))
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    return preprocessing.with_input_size(input_size)


def preprocessing_from_dict(data: dict[str, Any], source: str) -> Preprocessing:
    """Parse a ``preprocessor_config.json`` dict; absent keys take the processor's defaults."""
    kind = data.get("image_processor_type")
    if kind is not None and not str(kind).startswith("Sapiens2ImageProcessor"):
        raise ValueError(f"image_processor_type is {kind!r}, not a Sapiens2ImageProcessor")
    if not _flag(data, "do_resize", True):
        raise ValueError("do_resize is false: the model runs at a fixed input size, so inputs are resized")
    if _flag(data, "do_center_crop", False):
        raise ValueError("do_center_crop is true: centre cropping is not supported")
    defaults = Preprocessing()
    rescale_factor = data.get("rescale_factor", defaults.rescale_factor)
    if not _is_number(rescale_factor) or rescale_factor <= 0:
        raise ValueError(f"rescale_factor must be a positive number, got {rescale_factor!r}")
    return Preprocessing(
        input_size=_size(data.get("size", {"height": DEFAULT_INPUT_SIZE[0], "width": DEFAULT_INPUT_SIZE[1]})),
        do_pad=_flag(data, "do_pad", defaults.do_pad),
        image_mean=_channels(data.get("image_mean", defaults.image_mean), "image_mean"),
        image_std=_channels(data.get("image_std", defaults.image_std), "image_std", positive=True),
        do_normalize=_flag(data, "do_normalize", defaults.do_normalize),
        do_rescale=_flag(data, "do_rescale", defaults.do_rescale),
        rescale_factor=float(rescale_factor),
        resample=_resample(data.get("resample", 2)),
        source=source,
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _flag(data: dict[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise ValueError(f"{key} must be true or false, got {value!r}")
    return value


def _input_size(value: Sequence[int], name: str) -> tuple[int, int]:
    values = tuple(value)
    if len(values) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
        raise ValueError(f"{name} must be (height, width) of positive integers, got {value!r}")
    return values[0], values[1]


def _size(value: Any) -> tuple[int, int]:
    """``{"height", "width"}`` or a single int (square), as the processor takes ``size``."""
    if isinstance(value, int) and not isinstance(value, bool):
        return _input_size((value, value), "size")
    if isinstance(value, dict) and set(value) == {"height", "width"}:
        return _input_size((value["height"], value["width"]), "size")
    raise ValueError(f"size must be {{'height': H, 'width': W}} with positive integers, got {value!r}")


def _channels(value: Any, name: str, positive: bool = False) -> tuple[float, float, float]:
    """Three per-channel numbers; a single number applies to every channel."""
    values = [value] * 3 if _is_number(value) else value
    ok = isinstance(values, (list, tuple)) and len(values) == 3 and all(_is_number(v) for v in values)
    if not ok or (positive and min(values) <= 0):
        need = "three positive numbers" if positive else "three numbers"
        raise ValueError(f"{name} must be {need} (one per RGB channel), got {value!r}")
    return float(values[0]), float(values[1]), float(values[2])


def _resample(value: Any) -> str:
    """PIL's filter number (as transformers writes it) or its name."""
    if isinstance(value, str) and value.lower() in RESAMPLE_NAMES.values():
        return value.lower()
    if isinstance(value, int) and not isinstance(value, bool) and value in RESAMPLE_NAMES:
        return RESAMPLE_NAMES[value]
    raise ValueError(f"resample must be one of {sorted(RESAMPLE_NAMES.items())}, got {value!r}")
