"""Drawing results onto frames: skeletons, face dots, boxes with track ids, segmentation, text, banner.

All images are RGB and so are all colours. Skeleton links, keypoints and the segmentation palette use
the official Sapiens2 colours from ``models.meta``. Line widths, radii and text sizes follow the frame's
short side, so a 480p preview and a 4K recording look alike.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from models.meta import pose_meta, seg_meta
from stream.media.frames import ModelOutputs

_SHIFT = 4  # cv2 fixed-point bits: keypoints are drawn at 1/16 pixel precision
_ONE = 1 << _SHIFT
_FONT = cv2.FONT_HERSHEY_SIMPLEX
_UNKNOWN_CLASS_COLOR = (255, 255, 255)
_UNTRACKED_COLOR = (255, 255, 255)
_BANNER_COLOR = (200, 0, 0)
_TEXT_COLOR = (255, 255, 255)


@dataclass(frozen=True)
class DrawSizes:
    """Pixel sizes for one frame size; everything grows with the short side (3 px lines at 1080p)."""

    line: int
    radius: int  # skeleton keypoints
    dot: int  # face and other unlinked keypoints
    font_scale: float
    font_thickness: int

    @classmethod
    def for_frame(cls, height: int, width: int) -> DrawSizes:
        short = min(height, width)
        return cls(
            line=max(1, round(short / 360)),
            radius=max(2, round(short / 240)),
            dot=max(1, round(short / 540)),
            font_scale=max(0.4, short / 1200),
            font_thickness=max(1, round(short / 540)),
        )


def _color_tuples(colors: np.ndarray) -> list[tuple[int, int, int]]:
    return [tuple(int(c) for c in color) for color in colors]


def _track_color(track_id: int) -> tuple[int, int, int]:
    """A stable, distinct colour per track id (golden-ratio hue steps)."""
    if track_id < 0:
        return _UNTRACKED_COLOR
    hue = int((track_id * 0.618033988749895 % 1.0) * 180)  # OpenCV hue range is 0..179
    hsv = np.array([[[hue, 200, 255]]], np.uint8)
    return tuple(int(c) for c in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0])


def _fixed(points: np.ndarray) -> np.ndarray:
    """Float pixel coordinates to cv2's fixed-point integers (see ``_SHIFT``)."""
    return np.round(points * _ONE).astype(np.int32)


def _banner_band(text: str, height: int, width: int, thickness: int) -> np.ndarray:
    """White ``text`` as large as fits 80% of the width and 12% of the height, on a coloured band."""
    (unit_w, unit_h), _ = cv2.getTextSize(text, _FONT, 1.0, thickness)
    scale = min(0.8 * width / max(unit_w, 1), 0.12 * height / max(unit_h, 1))
    (text_w, text_h), baseline = cv2.getTextSize(text, _FONT, scale, thickness)
    band_height = min(height, text_h + baseline + 2 * max(4, text_h // 4))
    band = np.empty((band_height, width, 3), np.uint8)
    band[:] = _BANNER_COLOR
    origin = ((width - text_w) // 2, (band_height + text_h - baseline) // 2)
    cv2.putText(band, text, origin, _FONT, scale, _TEXT_COLOR, thickness, cv2.LINE_AA)
    return band


class OverlayDrawer:
    """Draws one ``ModelOutputs`` onto a copy of its frame.

    ``keypoint_threshold``: keypoints scoring at or below it are not drawn, nor links touching them.
    ``draw_boxes``: person boxes with their track id. ``seg_alpha``: opacity of the segmentation colours
    (class 0, background, stays untinted). An overlay drawer keeps work buffers between calls: use one per
    thread.
    """

    def __init__(self, keypoint_threshold: float = 0.3, draw_boxes: bool = True, seg_alpha: float = 0.5):
        if not 0.0 <= seg_alpha <= 1.0:
            raise ValueError(f"seg_alpha must lie in [0, 1], got {seg_alpha}")
        self.keypoint_threshold = float(keypoint_threshold)
        self.draw_boxes = draw_boxes
        self.seg_alpha = float(seg_alpha)

        pose = pose_meta()
        self._skeleton = pose.skeleton
        self._linked = pose.linked
        self._num_keypoints = len(pose.names)
        self._link_colors = _color_tuples(pose.link_colors)
        self._keypoint_colors = _color_tuples(pose.keypoint_colors)
        # One packed RGBA word per possible uint8 class id: a uint32 gather is several times faster than
        # cv2.LUT or a (256, 3) fancy index on full frames.
        palette = seg_meta().palette
        table = np.zeros((256, 4), np.uint8)
        table[:, :3] = _UNKNOWN_CLASS_COLOR
        table[: len(palette), :3] = palette
        self._seg_words = table.view(np.uint32).ravel()
        self._banners: dict[tuple, np.ndarray] = {}
        self._buffers: dict[str, np.ndarray] = {}

    def draws_on(
        self, result: ModelOutputs | None, text_lines: list[str] | None = None, banner: str | None = None
    ) -> bool:
        """False when ``__call__`` would return an unchanged copy of the frame (nothing to draw), so a
        caller can use the frame itself and skip the copy."""
        if banner or text_lines:
            return True
        if result is None:
            return False
        # Background (class 0) is never tinted: an all-background map draws nothing.
        has_seg = result.seg_labels is not None and self.seg_alpha > 0 and bool(result.seg_labels.any())
        return has_seg or result.num_persons > 0

    def __call__(
        self,
        image: np.ndarray,
        result: ModelOutputs | None,
        text_lines: list[str] | None = None,
        banner: str | None = None,
    ) -> np.ndarray:
        """A new (H, W, 3) uint8 RGB image with ``result`` drawn on ``image`` (which is left unchanged)."""
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(
                f"OverlayDrawer expects an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}"
            )
        image = np.ascontiguousarray(image)  # cv2 cannot take views with negative strides
        height, width = image.shape[:2]
        sizes = DrawSizes.for_frame(height, width)
        if result is not None and result.seg_labels is not None and self.seg_alpha > 0:
            canvas = self._overlay_segmentation(image, result.seg_labels)
        else:
            canvas = image.copy()
        if result is not None:
            if result.keypoints is not None:
                self._draw_poses(canvas, result, sizes)
            if self.draw_boxes:
                self._draw_boxes(canvas, result, sizes)
        top = 0
        if banner:
            top = self._draw_banner(canvas, banner, sizes)
        if text_lines:
            self._draw_text_lines(canvas, text_lines, sizes, top)
        return canvas

    def _overlay_segmentation(self, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
        if labels.shape != image.shape[:2] or labels.dtype != np.uint8:
            raise ValueError(
                f"seg_labels must be {image.shape[:2]} uint8 like the frame, "
                f"got {labels.shape} {labels.dtype}"
            )
        height, width = labels.shape
        # 255 where a body part is; the background stays untinted.
        mask = cv2.compare(labels, 0, cv2.CMP_NE, dst=self._scratch("mask", (height, width), np.uint8))
        x, y, w, h = cv2.boundingRect(mask)
        canvas = image.copy()
        if w == 0:
            return canvas
        # Only the box around the labelled pixels is coloured and blended.
        window = (slice(y, y + h), slice(x, x + w))
        words = self._scratch("words", (h, w), np.uint32)
        np.take(self._seg_words, labels[window], out=words, mode="clip")  # "raise" would buffer `out`
        colors = cv2.cvtColor(
            words.view(np.uint8).reshape(h, w, 4),
            cv2.COLOR_RGBA2RGB,
            dst=self._scratch("colors", (h, w, 3), np.uint8),
        )
        blended = cv2.addWeighted(
            image[window],
            1.0 - self.seg_alpha,
            colors,
            self.seg_alpha,
            0.0,
            dst=self._scratch("blended", (h, w, 3), np.uint8),
        )
        cv2.copyTo(blended, mask[window], canvas[window])
        return canvas

    def _scratch(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """A reusable contiguous work buffer: fresh frame-sized arrays cost more in page faults than
        the arithmetic done in them."""
        size = int(np.prod(shape))
        buffer = self._buffers.get(name)
        if buffer is None or buffer.size < size or buffer.dtype != dtype:
            buffer = np.empty(size, dtype)
            self._buffers[name] = buffer
        return buffer[:size].reshape(shape)

    def _draw_poses(self, canvas: np.ndarray, result: ModelOutputs, sizes: DrawSizes) -> None:
        keypoints = np.asarray(result.keypoints, dtype=np.float32)
        if keypoints.ndim != 3 or keypoints.shape[1:] != (self._num_keypoints, 2):
            raise ValueError(f"keypoints must be (N, {self._num_keypoints}, 2), got {keypoints.shape}")
        if result.keypoint_scores is None:
            scores = np.ones(keypoints.shape[:2], np.float32)
        else:
            scores = np.asarray(result.keypoint_scores, dtype=np.float32)
        visible = (scores > self.keypoint_threshold) & np.isfinite(keypoints).all(axis=2)
        fixed = _fixed(np.nan_to_num(keypoints))
        radii = np.where(self._linked, sizes.radius * _ONE, sizes.dot * _ONE).tolist()
        for person_visible, person_fixed in zip(visible, fixed, strict=True):
            points = [tuple(point) for point in person_fixed.tolist()]
            shown = person_visible[self._skeleton[:, 0]] & person_visible[self._skeleton[:, 1]]
            for link in np.flatnonzero(shown).tolist():
                start, end = self._skeleton[link].tolist()
                color = self._link_colors[link]
                cv2.line(canvas, points[start], points[end], color, sizes.line, cv2.LINE_AA, _SHIFT)
            # Points after links so each keypoint shows its own colour on top.
            for k in np.flatnonzero(person_visible).tolist():
                color = self._keypoint_colors[k]
                cv2.circle(canvas, points[k], radii[k], color, -1, cv2.LINE_AA, _SHIFT)

    def _draw_boxes(self, canvas: np.ndarray, result: ModelOutputs, sizes: DrawSizes) -> None:
        boxes = np.asarray(result.boxes, dtype=np.float32).reshape(-1, 4)
        for box, track_id in zip(boxes, result.track_ids.tolist(), strict=True):
            if not np.isfinite(box).all():
                continue
            x1, y1, x2, y2 = (int(round(float(v))) for v in box)
            color = _track_color(track_id)
            cv2.rectangle(canvas, (x1, y1), (x2, y2), color, sizes.line, cv2.LINE_AA)
            if track_id >= 0:
                label = f"#{track_id}"
                (text_w, text_h), baseline = cv2.getTextSize(
                    label, _FONT, sizes.font_scale, sizes.font_thickness
                )
                pad = sizes.line + 1
                label_top = max(0, y1 - text_h - baseline - 2 * pad)
                cv2.rectangle(
                    canvas,
                    (x1, label_top),
                    (x1 + text_w + 2 * pad, label_top + text_h + baseline + 2 * pad),
                    color,
                    -1,
                )
                cv2.putText(
                    canvas,
                    label,
                    (x1 + pad, label_top + pad + text_h),
                    _FONT,
                    sizes.font_scale,
                    (0, 0, 0),
                    sizes.font_thickness,
                    cv2.LINE_AA,
                )

    def _draw_banner(self, canvas: np.ndarray, banner: str, sizes: DrawSizes) -> int:
        """A full-width band at the top with ``banner`` in big letters; returns the band's height."""
        height, width = canvas.shape[:2]
        key = (banner, height, width)
        band = self._banners.get(key)
        if band is None:  # drawn once per text and frame size, then pasted
            band = _banner_band(banner, height, width, thickness=max(2, 2 * sizes.font_thickness))
            self._banners = {key: band}  # one entry: a run shows one banner at one size
        canvas[: band.shape[0]] = band
        return band.shape[0]

    def _draw_text_lines(self, canvas: np.ndarray, lines: list[str], sizes: DrawSizes, top: int) -> None:
        """Lines at the top left on a darkened panel, so they stay legible over any picture."""
        pad = 2 * sizes.font_thickness + 2
        metrics = [cv2.getTextSize(line, _FONT, sizes.font_scale, sizes.font_thickness) for line in lines]
        text_h = max(h for (_, h), _ in metrics)
        line_h = text_h + max(baseline for _, baseline in metrics) + pad
        panel_w = max(w for (w, _), _ in metrics) + 2 * pad
        panel_bottom = min(canvas.shape[0], top + line_h * len(lines) + pad)
        panel = canvas[top:panel_bottom, : min(canvas.shape[1], panel_w)]
        panel[:] = (panel * 0.4).astype(np.uint8)
        for i, line in enumerate(lines):
            origin = (pad, top + pad + i * line_h + text_h)
            cv2.putText(
                canvas, line, origin, _FONT, sizes.font_scale, _TEXT_COLOR, sizes.font_thickness, cv2.LINE_AA
            )
