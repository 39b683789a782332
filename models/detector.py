"""Person detectors: ultralytics YOLO (person class only, batched) or boxes given in a JSONL file.

``make_detector(spec)`` picks the kind from ``spec``:

- ``"boxes:FILE"``: DESIGN.md section 5's JSONL, one ``{"frame": int, "boxes": [[x1, y1, x2, y2, score],
  ...]}`` line per frame; frames absent from the file have no persons. Boxes come back exactly as given
  (no confidence, NMS or count filtering): the file is the truth.
- a local path to YOLO weights (``.pt``, or any format ultralytics loads). A ``.pt`` file is a pickle,
  as every YOLO checkpoint is: load only weights from a source you trust.
- a YOLO weights name (``"yolo11n.pt"``): looked up in ultralytics' weights directory, downloaded there
  when the network allows, otherwise a clear error says how to proceed.

Every detector is called as ``detector(images, frame_indices)`` with RGB ``(H, W, 3)`` uint8 arrays and
returns, per image, ``(boxes (N, 4) float32 xyxy, scores (N,) float32)`` in that image's pixels.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Protocol

import numpy as np
import torch

from models.boxes import BoxesFileDetector, Detections, DetectorError, empty_detection

_BOXES_PREFIX = "boxes:"
_TRUTHY = {"1", "true", "yes", "on", "y", "t"}


def import_ultralytics() -> ModuleType:
    """The ultralytics package, imported without its process-wide thread setting.

    On import, ultralytics sets ``OMP_NUM_THREADS=1`` (its default for training data loaders) unless the
    variable is set. Processes started afterwards inherit it, so the pipeline's workers, the inference
    worker's model forward among them, would run on one core; a value the user set is kept.
    """
    if "ultralytics" not in sys.modules:
        unset = "OMP_NUM_THREADS" not in os.environ
        import ultralytics  # noqa: F401

        if unset:
            os.environ.pop("OMP_NUM_THREADS", None)
    return sys.modules["ultralytics"]


class Detector(Protocol):
    def __call__(self, images: Sequence[np.ndarray], frame_indices: Sequence[int]) -> Detections: ...


# ---------------------------------------------------------------------------------------------------------
# YOLO


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in _TRUTHY


def _can_reach(host: str, port: int = 443, timeout: float = 3.0) -> bool:
    """A quick TCP connect: tells in seconds whether a download could work at all."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _not_cached_error(name: str, reason: str) -> DetectorError:
    return DetectorError(
        f"YOLO weights {name!r} are not cached and cannot be downloaded ({reason}): "
        f"pass a local path with --detector PATH or use --detector boxes:FILE"
    )


def resolve_yolo_weights(spec: str) -> Path:
    """A local file for ``spec``: an existing path, a cached name, or a name downloaded now.

    Fails fast (no multi-minute retries) when the weights are neither on disk nor downloadable:
    offline mode (``YOLO_OFFLINE`` or ``HF_HUB_OFFLINE``), an unknown name, or no route to GitHub.
    """
    import_ultralytics()
    from ultralytics.utils import SETTINGS
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES, attempt_download_asset

    path = Path(spec).expanduser()
    if path.is_file():
        return path
    if path.suffix in (".yaml", ".yml"):
        raise DetectorError(f"{spec!r} is a model definition without trained weights: pass a weights file")
    if len(path.parts) > 1 or path.is_absolute():
        raise DetectorError(f"YOLO weights file not found: {path}")

    cached = Path(SETTINGS["weights_dir"]) / path.name
    if cached.is_file():
        return cached
    if _env_true("YOLO_OFFLINE") or _env_true("HF_HUB_OFFLINE"):
        raise _not_cached_error(spec, "offline mode is set")
    if path.name not in GITHUB_ASSETS_NAMES:
        raise _not_cached_error(spec, "not a name ultralytics publishes")
    if not _can_reach("github.com"):
        raise _not_cached_error(spec, "github.com is unreachable")
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        attempt_download_asset(cached, retry=1)
    except Exception as exc:  # any download failure means the same thing to the user
        raise _not_cached_error(spec, f"download failed: {exc}") from None
    if not cached.is_file():
        raise _not_cached_error(spec, "download failed")
    return cached


def _ultralytics_device(device: str | torch.device) -> str:
    """ultralytics spells CUDA devices by index ("0"), not "cuda:0"."""
    device = torch.device(device)
    if device.type == "cuda":
        return str(device.index or 0)
    return device.type


def _precision_args(half: bool) -> dict:
    """fp16 inference: newer ultralytics spell it ``quantize=16``, older ones ``half=True``."""
    import_ultralytics()
    from ultralytics.cfg import DEFAULT_CFG_DICT

    if "quantize" in DEFAULT_CFG_DICT:
        return {"quantize": 16 if half else None}
    return {"half": half}


def _person_class(names: dict[int, str], weights: Path) -> int:
    for index, name in names.items():
        if str(name).strip().lower() == "person":
            return int(index)
    raise DetectorError(
        f"YOLO weights {weights} have no 'person' class (classes: {list(names.values())[:10]}...)"
    )


class YoloPersonDetector:
    """ultralytics YOLO restricted to the person class, one batched predict call per list of images.

    ``conf`` is the minimum score, ``iou`` the NMS overlap threshold, ``max_det`` the most persons kept
    per image, ``imgsz`` the network input side. ``half`` defaults to True on CUDA.
    """

    def __init__(
        self,
        weights: str | Path,
        device: str | torch.device = "cpu",
        conf: float = 0.25,
        iou: float = 0.45,
        max_det: int = 50,
        imgsz: int = 640,
        half: bool | None = None,
    ):
        import_ultralytics()
        from ultralytics import YOLO

        if not 0.0 <= conf <= 1.0 or not 0.0 <= iou <= 1.0:
            raise DetectorError(f"conf and iou must lie in [0, 1], got conf={conf}, iou={iou}")
        if max_det < 1 or imgsz < 32:
            raise DetectorError(f"max_det must be >= 1 and imgsz >= 32, got max_det={max_det}, imgsz={imgsz}")
        self.weights = resolve_yolo_weights(str(weights))
        self.model = YOLO(str(self.weights))
        if self.model.task not in ("detect", "segment", "pose"):
            raise DetectorError(
                f"YOLO weights {self.weights} are a {self.model.task!r} model, not a detector"
            )
        self.person_class = _person_class(self.model.names, self.weights)
        self.device = _ultralytics_device(device)
        use_half = self.device not in ("cpu", "mps") if half is None else half
        self.predict_args = dict(
            conf=conf,
            iou=iou,
            max_det=max_det,
            imgsz=imgsz,
            classes=[self.person_class],
            device=self.device,
            verbose=False,
            **_precision_args(use_half),
        )

    def __call__(self, images: Sequence[np.ndarray], frame_indices: Sequence[int]) -> Detections:
        if len(images) != len(frame_indices):
            raise ValueError(f"got {len(images)} images but {len(frame_indices)} frame indices")
        if not images:
            return []
        for image in images:
            if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
                raise ValueError(
                    f"detector expects (H, W, 3) uint8 RGB images, got {image.shape} {image.dtype}"
                )
        # One predict call per image size: ultralytics letterboxes a mixed-size batch to a square, so
        # grouping keeps a frame's detections independent of which other sources share its batch.
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for position, image in enumerate(images):
            by_shape.setdefault(image.shape, []).append(position)
        detections: list[tuple[np.ndarray, np.ndarray]] = [empty_detection()] * len(images)
        for positions in by_shape.values():
            # ultralytics reads numpy images as BGR (OpenCV's order).
            bgr = [np.ascontiguousarray(images[p][..., ::-1]) for p in positions]
            for position, result in zip(positions, self.model.predict(bgr, **self.predict_args), strict=True):
                boxes = result.boxes
                detections[position] = (
                    boxes.xyxy.float().cpu().numpy().reshape(-1, 4).astype(np.float32, copy=False),
                    boxes.conf.float().cpu().numpy().reshape(-1).astype(np.float32, copy=False),
                )
        return detections


def make_detector(
    spec: str,
    device: str | torch.device = "cpu",
    conf: float = 0.25,
    iou: float = 0.45,
    max_det: int = 50,
    imgsz: int = 640,
) -> Detector:
    """A detector for ``spec``: ``"boxes:FILE"``, a local YOLO weights path, or a YOLO weights name."""
    if not isinstance(spec, str) or not spec.strip():
        raise DetectorError(f"detector spec must be a weights name, a path or boxes:FILE, got {spec!r}")
    if spec.startswith(_BOXES_PREFIX):
        path = spec[len(_BOXES_PREFIX) :]
        if not path:
            raise DetectorError("detector spec 'boxes:' names no file: use boxes:FILE")
        return BoxesFileDetector(path)
    return YoloPersonDetector(spec, device=device, conf=conf, iou=iou, max_det=max_det, imgsz=imgsz)
