"""Views of the dense maps for the video: normals as RGB, depth as a colour map with a legend, and the
matte composited over a replacement background (the webcam's virtual background).

``DenseViews`` puts the views a run renders side by side: first the frame (or, with matting, the
composite) with pose and segmentation drawn on it, then the normals, then the depth. All images are
(H, W, 3) uint8 RGB.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np

from stream.media.frames import ModelOutputs

NAMED_COLORS = {
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "green": (0, 177, 64),  # chroma-key green
    "blue": (0, 71, 187),  # chroma-key blue
    "grey": (128, 128, 128),
    "gray": (128, 128, 128),
}
DEPTH_PERCENTILES = (2.0, 98.0)  # the colour map's range: robust to stray far or near pixels
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def normals_to_rgb(normals: np.ndarray) -> np.ndarray:
    """(H, W, 3) unit normals -> RGB ``(n + 1) / 2 * 255`` (x right = red, y = green, z = blue)."""
    rgb = (np.nan_to_num(np.asarray(normals, np.float32)) + 1.0) * 127.5
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def depth_to_rgb(depth: np.ndarray, legend: bool = True) -> np.ndarray:
    """(H, W) depth in metres -> turbo colour map, near red and far blue, over the frame's own range
    (2nd to 98th percentile of valid depths); black where there is no depth. ``legend`` adds a bar with
    the range in metres at the right edge."""
    depth = np.asarray(depth, np.float32)
    valid = np.isfinite(depth) & (depth > 0)
    near, far = (np.percentile(depth[valid], DEPTH_PERCENTILES) if valid.any() else (0.0, 1.0))
    far = max(far, near + 1e-3)
    # Near = 1 so that near is red in turbo; values outside the range clip to its ends.
    level = np.clip((far - np.where(valid, depth, far)) / (far - near), 0.0, 1.0)
    gray = np.rint(level * 255).astype(np.uint8)
    rgb = cv2.applyColorMap(gray, cv2.COLORMAP_TURBO)[..., ::-1]
    rgb = np.where(valid[..., None], rgb, 0).astype(np.uint8)
    if legend:
        _draw_depth_legend(rgb, float(near), float(far))
    return rgb


def _draw_depth_legend(canvas: np.ndarray, near: float, far: float) -> None:
    """A vertical colour bar at the right edge, near (top) to far (bottom), labelled in metres."""
    height, width = canvas.shape[:2]
    short = min(height, width)
    bar_w, bar_h = max(4, short // 40), max(8, height // 2)
    scale, thickness = max(0.3, short / 1400), max(1, short // 600)
    labels = [f"{near:.2f} m", f"{far:.2f} m"]
    text_w = max(cv2.getTextSize(t, _FONT, scale, thickness)[0][0] for t in labels)
    text_h = cv2.getTextSize("0", _FONT, scale, thickness)[0][1]
    pad = max(2, short // 100)
    x1 = width - pad - bar_w
    y0 = (height - bar_h) // 2
    if x1 - pad - text_w < 0:
        return  # too small a frame for a legend
    levels = np.linspace(255, 0, bar_h).round().astype(np.uint8)[:, None]
    bar = cv2.applyColorMap(np.repeat(levels, bar_w, axis=1), cv2.COLORMAP_TURBO)[..., ::-1]
    canvas[y0 : y0 + bar_h, x1 : x1 + bar_w] = bar
    for text, y in ((labels[0], y0 + text_h), (labels[1], y0 + bar_h)):
        origin = (x1 - pad - text_w, y)
        cv2.putText(canvas, text, origin, _FONT, scale, (0, 0, 0), thickness + 2, cv2.LINE_AA)
        cv2.putText(canvas, text, origin, _FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def composite(foreground: np.ndarray, alpha: np.ndarray, background: np.ndarray) -> np.ndarray:
    """The matte over ``background``: ``foreground + (1 - alpha) * background`` (pre-multiplied
    foreground, as transformers' ``post_process_image_matting`` composites)."""
    alpha = np.asarray(alpha, np.float32)[..., None]
    blended = foreground.astype(np.float32) + (1.0 - alpha) * background.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


class Background:
    """The replacement background behind the matte: ``blur`` (the frame itself, blurred), a colour
    (``black``, ``green``, ``#00b140``, ``0,177,64``), an image file, or a video file (played along
    with the source, looped)."""

    def __init__(self, spec: str):
        self.spec = spec
        self.color: tuple[int, int, int] | None = None
        self.image: np.ndarray | None = None
        self._video = None
        self._frames = None
        if spec == "blur":
            return
        path = Path(spec).expanduser()
        if path.is_file():
            if path.suffix.lower() in _IMAGE_SUFFIXES:
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if image is None:
                    raise ValueError(f"background image {spec!r} cannot be read")
                self.image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            else:
                self._open_video(path)
            return
        self.color = parse_color(spec)

    def _open_video(self, path: Path) -> None:
        import av

        try:
            self._video = av.open(str(path))
            self._frames = self._video.decode(video=0)
            self.image = next(self._frames).to_ndarray(format="rgb24")
        except Exception as exc:
            raise ValueError(f"background {str(path)!r} is neither an image nor a playable video") from exc

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        """The background for ``frame`` (H, W, 3), at its size."""
        height, width = frame.shape[:2]
        if self.color is not None:
            return np.broadcast_to(np.array(self.color, np.uint8), (height, width, 3))
        if self.image is None:
            return _blurred(frame)
        image = self.image
        if self._video is not None:
            self.image = self._next_video_frame()
        if image.shape[:2] != (height, width):
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        return image

    def _next_video_frame(self) -> np.ndarray:
        try:
            return next(self._frames).to_ndarray(format="rgb24")
        except StopIteration:  # loop the background video
            self._video.seek(0)
            self._frames = self._video.decode(video=0)
            return next(self._frames).to_ndarray(format="rgb24")

    def close(self) -> None:
        if self._video is not None:
            self._video.close()
            self._video = None


def _blurred(frame: np.ndarray) -> np.ndarray:
    """A strong blur of the frame, computed at an eighth of its size (a wide kernel at full size took
    tens of milliseconds per 1080p frame) and scaled back up."""
    height, width = frame.shape[:2]
    small = cv2.resize(frame, (max(1, width // 8), max(1, height // 8)), interpolation=cv2.INTER_AREA)
    small = cv2.GaussianBlur(small, (0, 0), sigmaX=max(1.0, min(small.shape[:2]) / 20))
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def parse_color(spec: str) -> tuple[int, int, int]:
    """``green``, ``#00b140`` or ``0,177,64`` -> an RGB tuple; ValueError otherwise."""
    text = spec.strip().lower()
    if text in NAMED_COLORS:
        return NAMED_COLORS[text]
    try:
        if text.startswith("#") and len(text) == 7:
            return tuple(int(text[i : i + 2], 16) for i in (1, 3, 5))
        parts = [int(v) for v in text.split(",")]
        if len(parts) == 3 and all(0 <= v <= 255 for v in parts):
            return tuple(parts)
    except ValueError:
        pass
    raise ValueError(
        f"background must be blur, a colour (name, #RRGGBB or R,G,B), an image or a video file, got {spec!r}"
    )


class DenseViews:
    """The video image of one frame: the views of ``view``'s tasks side by side (see module doc)."""

    def __init__(self, render: tuple[str, ...], background: str = "blur"):
        self.render = tuple(render)
        self.background = Background(background) if "matting" in self.render else None
        overlays = {"pose", "seg", "matting"} & set(self.render)
        self.first_panel = bool(overlays) or not ({"normal", "pointmap"} & set(self.render))

    def __call__(
        self, overlay, image: np.ndarray, result: ModelOutputs, banner: str | None = None
    ) -> np.ndarray:
        panels = []
        if self.first_panel:
            base = image
            if self.background is not None and result.alpha is not None:
                base = composite(result.foreground, result.alpha, self.background(image))
            panels.append(overlay(base, self._overlays(result), banner=banner))
        if "normal" in self.render and result.normals is not None:
            panels.append(normals_to_rgb(result.normals))
        if "pointmap" in self.render and result.pointmap is not None:
            panels.append(depth_to_rgb(result.pointmap[..., 2]))
        if not panels:  # a frame whose maps are missing (nothing computed): the frame as it is
            panels.append(overlay(image, None, banner=banner))
        if not self.first_panel and banner:
            panels[0] = overlay(panels[0], None, banner=banner)
        return panels[0] if len(panels) == 1 else np.ascontiguousarray(np.hstack(panels))

    def _overlays(self, result: ModelOutputs) -> ModelOutputs:
        """The result with only what the video shows of pose and segmentation; boxes go with either."""
        changes = {}
        if "pose" not in self.render:
            changes["keypoints"] = None
        if "seg" not in self.render:
            changes["seg_labels"] = None
        if not {"pose", "seg"} & set(self.render):
            empty = ModelOutputs.empty()
            changes.update(boxes=empty.boxes, scores=empty.scores, track_ids=empty.track_ids)
        return dataclasses.replace(result, **changes) if changes else result

    def close(self) -> None:
        if self.background is not None:
            self.background.close()
