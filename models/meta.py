"""Sapiens2 dataset facts as data: keypoints, flip pairs, skeleton, colours, segmentation classes.

Everything here is read from ``models/data/sapiens2_meta.json``, gathered from the official
Sapiens2 release (see its ``_sources`` entry). All colours are RGB.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

import numpy as np


@dataclass(frozen=True)
class PoseMeta:
    """The 308-keypoint (Goliath without teeth) layout used by every Sapiens2 pose model."""

    names: tuple[str, ...]
    flip_indices: np.ndarray  # (K,) int64 permutation: left <-> right
    flip_pairs: np.ndarray  # (P, 2) int64, each pair once
    skeleton: np.ndarray  # (L, 2) int64 keypoint index pairs; the face has no links
    link_colors: np.ndarray  # (L, 3) uint8 RGB
    keypoint_colors: np.ndarray  # (K, 3) uint8 RGB
    oks_sigmas: np.ndarray  # (K,) float64
    linked: np.ndarray  # (K,) bool: keypoint is an end of a skeleton link (others drawn as dots)
    coco17_index: np.ndarray  # (17,) int64 indices of the COCO-17 subset within the 308


@dataclass(frozen=True)
class SegMeta:
    """The 29 body-part classes of the Sapiens2 segmentation models."""

    classes: tuple[str, ...]
    palette: np.ndarray  # (C, 3) uint8 RGB
    flip_pairs: np.ndarray  # (P, 2) int64 left/right class pairs
    flip_indices: np.ndarray  # (C,) int64 permutation that swaps left and right classes


@lru_cache(maxsize=1)
def raw_meta() -> dict:
    """The whole metadata file as a dict (cached)."""
    text = resources.files("models").joinpath("data/sapiens2_meta.json").read_text()
    return json.loads(text)


def _pairs_to_permutation(pairs: np.ndarray, size: int) -> np.ndarray:
    perm = np.arange(size, dtype=np.int64)
    perm[pairs[:, 0]] = pairs[:, 1]
    perm[pairs[:, 1]] = pairs[:, 0]
    return perm


@lru_cache(maxsize=1)
def pose_meta() -> PoseMeta:
    m = raw_meta()
    skeleton = np.asarray(m["skeleton"], dtype=np.int64)
    num_keypoints = len(m["keypoints"])
    linked = np.zeros(num_keypoints, dtype=bool)
    linked[skeleton.ravel()] = True
    return PoseMeta(
        names=tuple(m["keypoints"]),
        flip_indices=np.asarray(m["flip_indices"], dtype=np.int64),
        flip_pairs=np.asarray(m["flip_pairs"], dtype=np.int64),
        skeleton=skeleton,
        link_colors=np.asarray(m["link_colors"], dtype=np.uint8),
        keypoint_colors=np.asarray(m["keypoint_colors"], dtype=np.uint8),
        oks_sigmas=np.asarray(m["oks_sigmas"], dtype=np.float64),
        linked=linked,
        coco17_index=np.asarray(m["coco17"]["index_in_308"], dtype=np.int64),
    )


@lru_cache(maxsize=1)
def seg_meta() -> SegMeta:
    m = raw_meta()
    pairs = np.asarray(m["seg_flip_pairs"], dtype=np.int64)
    num_classes = len(m["seg_classes"])
    return SegMeta(
        classes=tuple(m["seg_classes"]),
        palette=np.asarray(m["seg_palette"], dtype=np.uint8),
        flip_pairs=pairs,
        flip_indices=_pairs_to_permutation(pairs, num_classes),
    )


def pose_decode_constants() -> dict:
    """Official decoding constants: input/heatmap size, padding, DARK blur kernel, log clamp, mean/std."""
    return dict(raw_meta()["pose_decode"])
