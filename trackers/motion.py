"""Camera motion between consecutive frames, as BoT-SORT's GMC (sparse optical flow).

A handheld or panning camera moves every box in the frame; a Kalman filter that assumes a still camera
then predicts each person where they were in the image, not where they are, and association fails on
large pans. ``CameraMotion`` estimates the frame-to-frame motion as a partial affine transform (rotation,
uniform scale, translation): corners are picked on a downscaled grey frame, away from the persons'
boxes (they move on their own), followed to the next frame with pyramidal Lucas-Kanade flow, and the
transform is fitted robustly (RANSAC). The tracker warps its tracks by it before associating.

Two guards against a still camera being seen as moving: corners are picked with a low quality level (a
few strong corners, say of a sign, would otherwise crowd out the weak ones of the ground and walls), and
a point is kept only if flowing it back lands where it started (forward-backward check); the fit must
explain half of the kept points, else the motion is taken as none.
"""

from __future__ import annotations

import cv2
import numpy as np

IDENTITY = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


class CameraMotion:
    """One per source: ``estimate(frame, boxes) -> (2,3)`` maps the previous frame's pixels to this one's."""

    def __init__(
        self, max_width: int = 480, max_corners: int = 400, min_inliers: int = 12, box_margin: float = 0.15
    ) -> None:
        self.max_width = max_width
        self.max_corners = max_corners
        self.min_inliers = min_inliers
        self.box_margin = box_margin  # persons' boxes are widened by this much: detectors clip limbs
        self.reset()

    def reset(self) -> None:
        self._previous: np.ndarray | None = None
        self._corners: np.ndarray | None = None
        self._scale = 1.0

    def estimate(self, frame: np.ndarray, boxes: np.ndarray | None = None) -> np.ndarray:
        """Motion from the previous frame to ``frame`` (H,W,3 RGB or H,W grey uint8), in full-frame
        pixels; identity on the first frame, after a change of size, or when too few corners agree.
        ``boxes`` (N,4) xyxy of this frame's persons are left out when picking the next corners."""
        grey, scale = self._downscaled(frame)
        matrix = IDENTITY.copy()
        if self._previous is not None and self._previous.shape == grey.shape and self._corners is not None:
            matrix = self._fit(grey, scale)
        self._previous, self._scale = grey, scale
        self._corners = self._pick_corners(grey, boxes, scale)
        return matrix

    def _downscaled(self, frame: np.ndarray) -> tuple[np.ndarray, float]:
        grey = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) if frame.ndim == 3 else frame
        scale = min(1.0, self.max_width / grey.shape[1])
        if scale < 1.0:
            size = (round(grey.shape[1] * scale), round(grey.shape[0] * scale))
            grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        return grey, scale

    def _pick_corners(self, grey: np.ndarray, boxes: np.ndarray | None, scale: float) -> np.ndarray | None:
        mask = np.full(grey.shape, 255, np.uint8)
        if boxes is not None and len(boxes):
            boxes = np.nan_to_num(np.asarray(boxes, np.float64).reshape(-1, 4)) * scale
            pad = (boxes[:, 2:] - boxes[:, :2]) * self.box_margin
            for x1, y1, x2, y2 in np.concatenate([boxes[:, :2] - pad, boxes[:, 2:] + pad], axis=1):
                mask[max(int(y1), 0) : max(int(y2) + 1, 0), max(int(x1), 0) : max(int(x2) + 1, 0)] = 0
        return cv2.goodFeaturesToTrack(
            grey, maxCorners=self.max_corners, qualityLevel=0.001, minDistance=8, blockSize=3, mask=mask
        )

    def _fit(self, grey: np.ndarray, scale: float) -> np.ndarray:
        moved, status, _ = cv2.calcOpticalFlowPyrLK(self._previous, grey, self._corners, None)
        back, status_back, _ = cv2.calcOpticalFlowPyrLK(grey, self._previous, moved, None)
        round_trip = np.linalg.norm((back - self._corners).reshape(-1, 2), axis=1)
        found = (status.reshape(-1) == 1) & (status_back.reshape(-1) == 1) & (round_trip < 0.5)
        if found.sum() < self.min_inliers:
            return IDENTITY.copy()
        matrix, inliers = cv2.estimateAffinePartial2D(
            self._corners[found], moved[found], method=cv2.RANSAC, ransacReprojThreshold=1.0
        )
        if matrix is None or inliers is None or inliers.sum() < max(self.min_inliers, found.sum() / 2):
            return IDENTITY.copy()
        matrix = matrix.astype(np.float64)
        matrix[:, 2] /= scale  # the linear part is the same at every scale; the shift is not
        return matrix
