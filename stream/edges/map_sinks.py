"""Lossless per-frame maps, one PNG per frame in a folder per task: segmentation label maps (8-bit class
ids), normals (16-bit RGB), depth (16-bit millimetres, plus float16 ``.npy`` pointmaps on request) and
mattes (16-bit alpha), with the functions that read each back. The formulas are in the README."""

from __future__ import annotations

import io
from pathlib import Path

import cv2
import numpy as np

from stream.edges.sinks import _Sink, write_file

# ---------------------------------------------------------------------------------------------------------
# Label maps

# Label maps are large flat areas: run-length deflate without PNG row filters is ~5x faster than the
# defaults and still a few KB per 1080p map.
_PNG_FAST = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_RLE]
if hasattr(cv2, "IMWRITE_PNG_FILTER"):  # OpenCV >= 4.10
    _PNG_FAST += [cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]


class LabelMapSink(_Sink):
    """Segmentation class ids per pixel as lossless 8-bit PNGs: ``DIRECTORY/<frame:06d>.png``."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.maps_written = 0
        self._closed = False

    def path_for(self, frame_index: int) -> Path:
        return self.directory / f"{int(frame_index):06d}.png"

    def write(self, frame_index: int, labels: np.ndarray) -> Path:
        if self._closed:
            raise ValueError(f"LabelMapSink {self.directory} is closed")
        if frame_index < 0:
            raise ValueError(f"frame index must be >= 0, got {frame_index}")
        if labels.ndim != 2 or labels.dtype != np.uint8:
            raise ValueError(f"label map must be (H, W) uint8 class ids, got {labels.shape} {labels.dtype}")
        path = self.path_for(frame_index)
        _write_png(path, np.ascontiguousarray(labels), _PNG_FAST)
        self.maps_written += 1
        return path

    def close(self) -> None:
        self._closed = True


def _write_png(path: Path, pixels: np.ndarray, params: list[int]) -> None:
    # Encoded in memory and written here rather than by cv2.imwrite, which says only "False" on a full
    # disk and leaves a cut PNG: a failed write is one error naming the file and the reason, no file.
    encoded, data = cv2.imencode(".png", pixels, params)
    if not encoded:
        raise ValueError(f"could not encode {path.name} as PNG")
    write_file(path, data)


def read_label_map(path: str | Path) -> np.ndarray:
    """A label map written by ``LabelMapSink``, as (H, W) uint8 class ids."""
    labels = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if labels is None:
        raise FileNotFoundError(f"cannot read label map {path}")
    return labels


# ---------------------------------------------------------------------------------------------------------
# Dense maps: normals, depth and pointmaps, alpha mattes

# Smooth 16-bit maps compress well with PNG's row filters, which run-length coding alone ignores.
_PNG_DENSE = [cv2.IMWRITE_PNG_COMPRESSION, 1]
DEPTH_UNIT = 1000.0  # 16-bit depth PNGs hold millimetres
UINT16_MAX = 65535


def encode_normals(normals: np.ndarray) -> np.ndarray:
    """(H, W, 3) unit normals in [-1, 1] -> (H, W, 3) uint16 ``round((n + 1) / 2 * 65535)``."""
    return _to_uint16((np.asarray(normals, np.float64) + 1.0) * 0.5 * UINT16_MAX)


def encode_depth(pointmap: np.ndarray) -> np.ndarray:
    """(H, W, 3) pointmap in metres -> (H, W) uint16 depth (its Z) in millimetres, ``round(z * 1000)``;
    0 where there is no depth (not finite, not in front of the camera); clipped at 65.535 m."""
    depth = np.asarray(pointmap, np.float64)[..., 2] * DEPTH_UNIT
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, 0.0)
    return _to_uint16(depth)


def encode_alpha(alpha: np.ndarray) -> np.ndarray:
    """(H, W) matte in [0, 1] -> (H, W) uint16 ``round(alpha * 65535)``."""
    return _to_uint16(np.asarray(alpha, np.float64) * UINT16_MAX)


def _to_uint16(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(np.nan_to_num(values)), 0, UINT16_MAX).astype(np.uint16)


def read_normals(path: str | Path) -> np.ndarray:
    """(H, W, 3) float32 normals of a ``<name>_normal/<frame>.png``: ``png / 65535 * 2 - 1``."""
    return (_read_png16(path, 3).astype(np.float32) / UINT16_MAX) * 2.0 - 1.0


def read_depth(path: str | Path) -> np.ndarray:
    """(H, W) float32 depth in metres of a ``<name>_pointmap/<frame>.png``: ``png / 1000``, NaN where 0."""
    depth = _read_png16(path, 1).astype(np.float32) / DEPTH_UNIT
    depth[depth == 0] = np.nan
    return depth


def read_alpha(path: str | Path) -> np.ndarray:
    """(H, W) float32 matte of a ``<name>_matting/<frame>.png``: ``png / 65535``."""
    return _read_png16(path, 1).astype(np.float32) / UINT16_MAX


def _read_png16(path: str | Path, channels: int) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None or image.dtype != np.uint16 or (image.ndim == 3) != (channels == 3):
        raise FileNotFoundError(f"cannot read a {channels}-channel 16-bit PNG from {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if channels == 3 else image


class DenseMapSink(_Sink):
    """One dense task's maps per frame, losslessly: ``DIRECTORY/<frame:06d>.png`` (16-bit, see the
    ``encode_*`` functions) and, for pointmaps when asked, ``DIRECTORY/<frame:06d>.npy`` (float16)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.maps_written = 0

    def path_for(self, frame_index: int, suffix: str = ".png") -> Path:
        return self.directory / f"{int(frame_index):06d}{suffix}"

    def write_png(self, frame_index: int, image: np.ndarray) -> Path:
        """A uint16 (H, W) or (H, W, 3) RGB image as a 16-bit PNG."""
        if image.dtype != np.uint16 or image.ndim not in (2, 3):
            raise ValueError(
                f"a 16-bit map must be (H, W) or (H, W, 3) uint16, got {image.shape}, {image.dtype}"
            )
        path = self.path_for(frame_index)
        pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else np.ascontiguousarray(image)
        _write_png(path, pixels, _PNG_DENSE)
        self.maps_written += 1
        return path

    def write_npy(self, frame_index: int, array: np.ndarray) -> Path:
        """An array as float16 ``.npy`` (the pointmap, (H, W, 3) XYZ in metres)."""
        path = self.path_for(frame_index, ".npy")
        buffer = io.BytesIO()
        np.save(buffer, np.asarray(array, np.float16))
        write_file(path, buffer.getbuffer())
        return path

    def close(self) -> None:
        pass
