"""Temporal smoothing of segmentation probability maps, per source (full frame) or per track (crop).

Per-frame segmentation flickers at part boundaries and on thin parts: a pixel's argmax flips between
two classes of near-equal probability from one frame to the next. Averaging probabilities over time
removes that, but only if the previous map is first carried into the current geometry, otherwise a
moving person leaves a trail. Two ways to carry it:

- ``shift``: a (2,3) affine that maps pixel coordinates of the previous map to the current one,
  following the person. For a crop, ``crop_shift`` builds it from the two crops' transforms and the
  person's motion (the box shift: previous crop -> frame, moved with the person -> current crop);
  for a full frame of a static camera it is None (identity).
- ``flow=True`` (default): OpenCV's DIS optical flow from the current to the previous frame warps
  the previous map pixel by pixel, for full-frame maps of moving people (after ``shift``, if given).
  It runs on the grey image passed as ``image`` or, without one, on the foreground probability, at
  most ``flow_max_side`` px wide or high (cheap, and the motion of a person is smooth anyway). With
  an image, pixels where the warped previous image disagrees with the current one (the flow failed:
  occlusion boundaries, fast limbs) get less history.

Then the carried map and the current one are blended: ``"ema"`` with a factor from the elapsed time
and ``time_constant``; ``"uncertainty"`` weights each pixel's two maps by their confidence (max class
probability), so a confident new observation wins at once where the history is unsure. Pixels the
previous map does not cover take the current map as is.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from functools import partial

import cv2
import numpy as np

_MODES = ("ema", "uncertainty")
_FLOW_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


@dataclass
class _MapState:
    probs: np.ndarray  # (H, W, C) float32, channels last for OpenCV
    time: float
    guide: np.ndarray | None  # (H, W) uint8 image the flow is computed on
    guide_is_image: bool = False  # the guide is the camera image (else the foreground probability)


class SegmentationSmoother:
    """``seg(probs (C,H,W), timestamp, key=0, shift=None, image=None) -> (C,H,W) float32``.

    ``key`` separates independent maps (0 for a source's full frame, the track id for crops).
    ``time_constant`` (seconds) sets how long the past weighs: the per-frame weight of the current
    map is ``1 - exp(-dt / time_constant)``. A key unseen for ``forget_after`` seconds, or whose map
    changes size without a ``shift``, starts afresh.
    """

    def __init__(
        self,
        mode: str = "uncertainty",
        time_constant: float = 0.1,
        flow: bool = True,
        flow_preset: str = "fast",
        flow_max_side: int = 320,
        flow_tolerance: float = 12.0,
        background_class: int = 0,
        forget_after: float = 1.0,
    ) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if flow_preset not in _FLOW_PRESETS:
            raise ValueError(f"flow_preset must be one of {sorted(_FLOW_PRESETS)}, got {flow_preset!r}")
        if time_constant <= 0:
            raise ValueError(f"time_constant must be positive seconds, got {time_constant}")
        self.mode = mode
        self.time_constant = float(time_constant)
        self.flow = flow
        self.flow_tolerance = float(flow_tolerance)
        self.flow_max_side = int(flow_max_side)
        self.background_class = background_class
        self.forget_after = float(forget_after)
        self._states: dict[Hashable, _MapState] = {}
        self._dis = cv2.DISOpticalFlow_create(_FLOW_PRESETS[flow_preset]) if flow else None

    def reset(self) -> None:
        self._states.clear()

    def __call__(
        self,
        probs: np.ndarray,
        timestamp: float,
        key: Hashable = 0,
        shift: np.ndarray | None = None,
        image: np.ndarray | None = None,
    ) -> np.ndarray:
        probs = np.asarray(probs)
        if probs.ndim != 3:
            raise ValueError(f"probs must be (C, H, W), got shape {probs.shape}")
        # Always a private copy: the smoother's state is updated in place later.
        current = np.array(probs.astype(np.float32, copy=False).transpose(1, 2, 0), order="C", copy=True)
        if not np.isfinite(current.sum()):  # one cheap pass; clean only when needed
            current = np.nan_to_num(current, nan=0.0, posinf=1.0, neginf=0.0)
        timestamp = float(timestamp)
        self._forget(timestamp)
        guide = self._guide(current, image) if self.flow else None
        from_image = image is not None
        state = self._states.get(key)
        if state is not None and timestamp < state.time:
            raise ValueError(f"timestamp went backwards for key {key!r}; call reset() at a new segment")
        if state is None or (shift is None and state.probs.shape != current.shape):
            self._states[key] = _MapState(current, timestamp, guide, from_image)
            return current.transpose(2, 0, 1).copy()

        carried, covered = self._carry(state, current.shape[:2], shift, guide, from_image)
        blended = self._blend(current, carried, covered, timestamp - state.time)
        self._states[key] = _MapState(blended, timestamp, guide, from_image)
        return blended.transpose(2, 0, 1).copy()

    def _forget(self, timestamp: float) -> None:
        for key in [k for k, s in self._states.items() if timestamp - s.time > self.forget_after]:
            del self._states[key]

    def _guide(self, current: np.ndarray, image: np.ndarray | None) -> np.ndarray:
        """The grey uint8 image optical flow runs on, at the map's size."""
        height, width = current.shape[:2]
        if image is None:
            foreground = 1.0 - current[..., self.background_class]
            return np.clip(foreground * 255.0, 0, 255).astype(np.uint8)
        image = np.asarray(image)
        if image.ndim == 3:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        if image.shape != (height, width):
            image = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        return image.astype(np.uint8, copy=False)

    def _carry(
        self,
        state: _MapState,
        size: tuple[int, int],
        shift: np.ndarray | None,
        guide: np.ndarray | None,
        from_image: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The previous map in the current geometry, and (H,W) float coverage of valid history."""
        height, width = size
        previous = state.probs
        coverage = np.ones(previous.shape[:2], np.float32)
        if shift is not None:
            matrix = np.asarray(shift, dtype=np.float64)
            if matrix.shape != (2, 3):
                raise ValueError(f"shift must be a (2, 3) affine matrix, got shape {matrix.shape}")
            support = _warp_affine(coverage, matrix, width, height)
            previous = _renormalise(_warp_affine(previous, matrix, width, height), support)
            coverage = support
        if self._dis is not None and state.guide is not None and guide is not None:
            previous_guide = state.guide
            if shift is not None:
                previous_guide = _warp_affine(previous_guide, np.asarray(shift, np.float64), width, height)
            photometric = from_image and state.guide_is_image
            previous, coverage = self._follow_flow(previous, coverage, previous_guide, guide, photometric)
        return previous, coverage

    def _follow_flow(
        self,
        previous: np.ndarray,
        coverage: np.ndarray,
        previous_guide: np.ndarray,
        guide: np.ndarray,
        photometric: bool,
    ) -> tuple[np.ndarray, np.ndarray]:
        flow = self._flow(guide, previous_guide)
        height, width = guide.shape
        grid_x, grid_y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
        map_x, map_y = grid_x + flow[..., 0], grid_y + flow[..., 1]
        warp = partial(cv2.remap, map1=map_x, map2=map_y, interpolation=cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_CONSTANT)
        support = warp(np.ones_like(coverage))
        previous = _renormalise(warp(previous).reshape(height, width, -1), support)
        coverage = warp(coverage)
        if not photometric:
            # A probability guide is itself noisy: comparing it would only measure its noise.
            return previous.reshape(height, width, -1), coverage
        # Where the warped previous image does not look like the current one, the flow is wrong
        # (occlusion boundaries, fast limbs): trust the history there less.
        warped_guide = cv2.remap(
            previous_guide, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        mismatch = np.abs(guide.astype(np.float32) - warped_guide.astype(np.float32))
        coverage = coverage * np.clip(1.0 - mismatch / self.flow_tolerance, 0.0, 1.0)
        return previous.reshape(height, width, -1), coverage

    def _flow(self, guide: np.ndarray, previous_guide: np.ndarray) -> np.ndarray:
        """(H,W,2) flow from the current guide to the previous one (where each pixel came from),
        computed at most ``flow_max_side`` px wide or high and scaled back up."""
        height, width = guide.shape
        scale = min(1.0, self.flow_max_side / max(height, width))
        if scale >= 1.0:
            return self._dis.calc(guide, previous_guide, None)
        small = (max(round(width * scale), 8), max(round(height * scale), 8))
        flow = self._dis.calc(
            cv2.resize(guide, small, interpolation=cv2.INTER_AREA),
            cv2.resize(previous_guide, small, interpolation=cv2.INTER_AREA),
            None,
        )
        flow = cv2.resize(flow, (width, height), interpolation=cv2.INTER_LINEAR)
        flow[..., 0] *= width / small[0]
        flow[..., 1] *= height / small[1]
        return flow

    def _blend(self, current: np.ndarray, carried: np.ndarray, covered: np.ndarray, dt: float) -> np.ndarray:
        """Per-pixel convex combination; ``carried`` (a fresh warp or the replaced state) is reused."""
        alpha = 1.0 - np.exp(-max(dt, 0.0) / self.time_constant)  # weight of the current map
        history = (1.0 - alpha) * np.clip(covered, 0.0, 1.0)  # (H,W)
        present = np.full_like(history, alpha)
        if self.mode == "uncertainty":
            present *= current.max(axis=-1)
            history *= carried.max(axis=-1)
        total = present + history
        empty = total <= 1e-6
        # Pixels with neither weight (nothing carried, zero confidence) keep the current map.
        present = np.where(empty, 1.0, present / np.maximum(total, 1e-6)).astype(np.float32)
        history = np.where(empty, 0.0, history / np.maximum(total, 1e-6)).astype(np.float32)
        blended = np.multiply(carried, history[..., None], out=carried)
        blended += current * present[..., None]
        return blended


def crop_shift(
    previous_crop_to_frame: np.ndarray, crop_to_frame: np.ndarray, motion: tuple[float, float] = (0.0, 0.0)
) -> np.ndarray:
    """The ``shift`` for per-track crop maps: (2,3) affine from the previous crop's pixels to the
    current crop's, for a person who moved by ``motion`` (frame px, e.g. the displacement of the
    tracker's or the box smoother's box) between the two frames.

    ``crop_to_frame`` matrices map crop pixels to frame pixels (as ``CropBatch.crop_to_frame``).
    With the person's real motion, detector jitter of the crop box is undone; with zero motion the
    carry assumes a person standing still in the frame.
    """
    previous = np.vstack([np.asarray(previous_crop_to_frame, np.float64).reshape(2, 3), [0.0, 0.0, 1.0]])
    current = np.vstack([np.asarray(crop_to_frame, np.float64).reshape(2, 3), [0.0, 0.0, 1.0]])
    moved = np.array([[1.0, 0.0, motion[0]], [0.0, 1.0, motion[1]], [0.0, 0.0, 1.0]])
    return (np.linalg.inv(current) @ moved @ previous)[:2]


def _renormalise(warped: np.ndarray, support: np.ndarray) -> np.ndarray:
    """Undo the fade towards the zero border that bilinear warping mixes into edge pixels."""
    factor = np.where(support > 1e-3, 1.0 / np.maximum(support, 1e-3), 0.0).astype(np.float32)
    warped *= factor.reshape(*factor.shape[:2], 1)
    return warped


def _warp_affine(array: np.ndarray, matrix: np.ndarray, width: int, height: int) -> np.ndarray:
    """Warp (H,W) or (H,W,C) with an affine that maps source pixels to destination pixels."""
    warped = cv2.warpAffine(
        array, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    return warped.reshape(height, width, *array.shape[2:])
