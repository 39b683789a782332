"""Association costs and matching: box IoU, keypoint similarity as a tie-breaker, assignment.

Keypoints can only help. A top-down pose model crops each box and finds the most salient person in it,
so where two persons overlap, the occluded person's keypoints land on the person in front; letting OKS
pull the similarity there swaps identities. So keypoints never decide whether a pair may match (the
gates look at the boxes alone) and add at most ``tie_weight`` times their OKS to the assignment score of
a pair whose keypoint sets are both confident: they decide only between assignments whose box evidence
is nearly equal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from trackers.config import TrackerConfig

_INFEASIBLE = 1e4  # assignment cost of a pair below its similarity gate


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of (M,4) and (N,4) xyxy boxes -> (M,N)."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-9), 0.0)


def keypoint_oks(
    track_points: np.ndarray,
    track_visible: np.ndarray,
    det_points: np.ndarray,
    det_visible: np.ndarray,
    det_areas: np.ndarray,
    sigmas: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """COCO object keypoint similarity of (M,K,2) against (N,K,2) -> oks (M,N), common (M,N) int: the
    number of keypoints confident in both."""
    d2 = ((track_points[:, None] - det_points[None]) ** 2).sum(axis=-1)  # (M,N,K)
    variances = (2.0 * sigmas) ** 2
    e = d2 / (2.0 * variances[None, None] * np.maximum(det_areas, 1.0)[None, :, None])
    both = track_visible[:, None] & det_visible[None]  # (M,N,K)
    count = both.sum(axis=-1)
    oks = np.where(both, np.exp(-e), 0.0).sum(axis=-1) / np.maximum(count, 1)
    return oks, count


def default_keypoint_sigmas(num_keypoints: int) -> np.ndarray:
    """OKS sigmas: the 308 Sapiens2 keypoints, or their COCO-17 subset."""
    from models.meta import pose_meta  # imported here: only pose-aware association needs it

    meta = pose_meta()
    if num_keypoints == len(meta.oks_sigmas):
        return meta.oks_sigmas
    if num_keypoints == len(meta.coco17_index):
        return meta.oks_sigmas[meta.coco17_index]
    raise ValueError(
        f"no default OKS sigmas for {num_keypoints} keypoints (have 308 and 17); pass keypoint_sigmas="
    )


def keypoint_boxes(
    keypoints: np.ndarray, keypoint_scores: np.ndarray, score_threshold: float = 0.3, margin: float = 0.08
) -> tuple[np.ndarray, np.ndarray]:
    """Person boxes from keypoints, for frames between detector runs.

    keypoints (N,K,2), keypoint_scores (N,K) -> boxes (N,4) xyxy around the confident keypoints,
    widened by ``margin`` of their size on each side and twice that above (the crown of the head lies
    above the highest keypoint), and scores (N,): the mean confident keypoint score. A person with
    fewer than two confident keypoints gets a NaN box and score 0, which ``update`` ignores.
    """
    keypoints = np.asarray(keypoints, np.float64)
    keypoint_scores = np.nan_to_num(np.asarray(keypoint_scores, np.float64), nan=0.0)
    if keypoints.ndim != 3 or keypoints.shape[2] != 2 or keypoint_scores.shape != keypoints.shape[:2]:
        raise ValueError(
            "need keypoints (N, K, 2) and keypoint_scores (N, K), "
            f"got {keypoints.shape} and {keypoint_scores.shape}"
        )
    good = (keypoint_scores >= score_threshold) & np.isfinite(keypoints).all(axis=-1)
    enough = good.sum(axis=1) >= 2
    lo = np.where(good[..., None], keypoints, np.inf).min(axis=1)
    hi = np.where(good[..., None], keypoints, -np.inf).max(axis=1)
    size = np.where(enough[:, None], hi - lo, 0.0)
    pad = margin * size
    boxes = np.concatenate([lo - pad * np.array([1.0, 2.0]), hi + pad], axis=1)
    boxes[~enough] = np.nan
    count = np.maximum(good.sum(axis=1), 1)
    scores = np.where(enough, (keypoint_scores * good).sum(axis=1) / count, 0.0)
    return boxes, scores


@dataclass
class FrameDetections:
    """One frame's detections as the association sees them."""

    boxes: np.ndarray  # (N,4) xyxy
    scores: np.ndarray  # (N,)
    keypoints: np.ndarray | None = None  # (N,K,2)
    visible: np.ndarray | None = None  # (N,K) bool: confident keypoints


@dataclass
class TrackView:
    """What the association needs of the tracks it matches (rows of the similarity)."""

    predicted: np.ndarray  # (M,4) xyxy boxes predicted for this frame
    keypoints: np.ndarray | None = None  # (M,K,2) last keypoints moved along with the predicted box
    visible: np.ndarray | None = None  # (M,K) bool, False where a track has no keypoints


def keypoint_bonus(
    tracks: TrackView, dets: FrameDetections, cols: np.ndarray, cfg: TrackerConfig, sigmas: np.ndarray
) -> np.ndarray:
    """(M,N) ``tie_weight`` times OKS where both keypoint sets are confident (enough confident keypoints
    in common), else 0."""
    det_boxes = dets.boxes[cols]
    areas = (det_boxes[:, 2] - det_boxes[:, 0]) * (det_boxes[:, 3] - det_boxes[:, 1])
    oks, common = keypoint_oks(
        tracks.keypoints, tracks.visible, dets.keypoints[cols], dets.visible[cols], areas, sigmas
    )
    need = cfg.min_common_keypoints * np.maximum(
        tracks.visible.sum(axis=1)[:, None], dets.visible[cols].sum(axis=1)[None, :]
    )
    return np.where(common >= np.maximum(need, 2), cfg.tie_weight * oks, 0.0)


def assign(
    similarity: np.ndarray, min_similarity: float, bonus: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Optimal one-to-one matching of the pairs whose similarity reaches the gate, maximising the sum of
    (similarity - gate + bonus) over the matched pairs: ByteTrack's assignment (``lapjv`` with a cost
    limit), where a pair is worth matching by how far it clears the gate. The bonus never opens a gate."""
    if similarity.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    feasible = similarity >= min_similarity
    gain = similarity - min_similarity if bonus is None else similarity - min_similarity + bonus
    rows, cols = linear_sum_assignment(np.where(feasible, -gain, 0.0))
    keep = feasible[rows, cols]
    return rows[keep], cols[keep]


def match(
    tracks: TrackView, dets: FrameDetections, cols: np.ndarray, cfg: TrackerConfig, min_similarity: float,
    fuse: bool, sigmas: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Match track rows to detections ``cols`` -> (rows, indices into ``cols``) of the matched pairs.
    ``sigmas`` given (and keypoints in both views): keypoints break near-ties."""
    if len(tracks.predicted) == 0 or len(cols) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    similarity = box_iou(tracks.predicted, dets.boxes[cols])
    if fuse and cfg.fuse_score:
        # ByteTrack's fuse_score: a confident detection is the better match of two equal overlaps.
        similarity = similarity * dets.scores[cols][None, :]
    use_keypoints = sigmas is not None and tracks.keypoints is not None and dets.keypoints is not None
    bonus = keypoint_bonus(tracks, dets, cols, cfg, sigmas) if use_keypoints and cfg.tie_weight > 0 else None
    return assign(similarity, min_similarity, bonus)
