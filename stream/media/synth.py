"""Synthetic video material: clips for the demo, the tests and the benchmarks.

``write_clip`` encodes any sequence of RGB frames with PyAV; ``pan_zoom`` turns one photo into a moving
camera shot (the demo's sample clip); ``moving_squares`` draws simple moving blobs (for tests that need
motion but no content).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np


def write_clip(
    path: str | Path,
    frames: Iterable[np.ndarray],
    fps: int | Fraction = 30,
    codec: str = "libx264",
    options: dict[str, str] | None = None,
) -> int:
    """Encode RGB frames (H, W, 3 uint8, all the same size) into ``path``; returns the frame count."""
    count = 0
    with av.open(str(path), mode="w") as container:
        stream = None
        for image in frames:
            if stream is None:
                stream = container.add_stream(codec, rate=Fraction(fps))
                stream.height, stream.width = image.shape[:2]
                stream.pix_fmt = "yuv420p" if codec in ("libx264", "mpeg4", "h264") else stream.pix_fmt
                default_options = {"preset": "ultrafast", "crf": "18"} if codec == "libx264" else {}
                stream.options = dict(options if options is not None else default_options)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
            count += 1
        if stream is not None:
            for packet in stream.encode(None):
                container.mux(packet)
    return count


def pan_zoom(
    image: np.ndarray, num_frames: int, size: tuple[int, int], zoom: float = 1.3
) -> Iterator[np.ndarray]:
    """A camera move over ``image`` (RGB): pans left to right while zooming in, output ``size`` = (W, H)."""
    out_w, out_h = size
    img_h, img_w = image.shape[:2]
    for i in range(num_frames):
        t = i / max(num_frames - 1, 1)
        scale = 1.0 + (zoom - 1.0) * t
        # The visible window keeps the output aspect ratio and shrinks as we zoom in.
        win_w = min(img_w, img_h * out_w / out_h) / scale
        win_h = win_w * out_h / out_w
        x0 = (img_w - win_w) * t
        y0 = (img_h - win_h) * 0.5
        sx, sy = out_w / win_w, out_h / win_h
        matrix = np.array([[sx, 0.0, -x0 * sx], [0.0, sy, -y0 * sy]], dtype=np.float64)
        yield cv2.warpAffine(image, matrix, (out_w, out_h), flags=cv2.INTER_AREA, borderValue=(0, 0, 0))


def moving_squares(num_frames: int, size: tuple[int, int], seed: int = 0) -> Iterator[np.ndarray]:
    """Frames with a few coloured squares moving over a gradient: cheap, deterministic test content."""
    width, height = size
    rng = np.random.default_rng(seed)
    starts = rng.uniform([0, 0], [width * 0.8, height * 0.8], size=(3, 2))
    velocities = rng.uniform(-3, 3, size=(3, 2))
    colors = rng.integers(64, 256, size=(3, 3))
    background = np.zeros((height, width, 3), np.uint8)
    background[..., 0] = np.linspace(0, 80, width, dtype=np.uint8)[None, :]
    background[..., 2] = np.linspace(0, 80, height, dtype=np.uint8)[:, None]
    side = max(4, min(width, height) // 8)
    for i in range(num_frames):
        image = background.copy()
        for start, velocity, color in zip(starts, velocities, colors, strict=True):
            x, y = (start + velocity * i).astype(int) % np.array([width - side, height - side])
            image[y : y + side, x : x + side] = color
        yield image
