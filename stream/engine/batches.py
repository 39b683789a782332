"""A group of frames on its way through the engine, one record per step.

The inference worker collects a ``Group`` (messages in arrival order, the frames among them);
``InferenceEngine.prepare`` turns it into a ``PreparedGroup`` (persons detected, frames uploading),
``launch`` into a ``LaunchedGroup`` (models run; the pose decoding of its crops, a ``PendingPose``, may
still be under way on the pose-decoding thread) and ``finish`` into the outgoing messages.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from stream.engine.device import StagedTensors
from stream.media.frames import ModelOutputs
from stream.runtime.messages import Message


@dataclass
class Group:
    """Messages collected for one batch, in arrival order, and the frames among them."""

    messages: list[Message] = field(default_factory=list)
    frames: list[Message] = field(default_factory=list)


@dataclass
class PreparedGroup:
    """A group after detection, with its frames uploaded (or uploading) to the device."""

    group: Group
    staged: StagedTensors
    boxes: list[np.ndarray]  # per frame (N_i, 4) float32
    scores: list[np.ndarray]  # per frame (N_i,) float32
    skipped: dict[int, str]  # position in group.frames -> drop cause


@dataclass
class PendingPose:
    """A group's pose work after its forwards: the pose decoding of each chunk, maybe still running."""

    counts: list[int]  # persons per active frame
    crop_to_frame: np.ndarray  # (N, 2, 3) float32, every person's crop affine
    chunks: list[Future]  # per chunk of crops: (keypoints (n, K, 2), scores (n, K)) on the device


@dataclass
class LaunchedGroup:
    """A group whose models have run (``InferenceEngine.launch``), waiting to be finished."""

    group: Group
    active: list[int]  # positions in group.frames that were computed (not skipped)
    skipped: dict[int, str]  # position in group.frames -> drop cause
    results: dict[int, ModelOutputs] = field(default_factory=dict)
    pose: PendingPose | None = None
