"""Overlapping host-to-device uploads with compute: a copy stream and a compute stream.

On CUDA, ``DeviceStreams.upload`` copies a batch's frames into pinned host buffers and issues the
host-to-device copies on a dedicated copy stream (non-blocking), recording an event; ``compute`` runs
on the compute stream after waiting for that event. ``OverlapScheduler`` orders the work so that batch
k+1 is uploaded before batch k's compute is launched, which lets the copy engine and the SMs work at
the same time. On CPU the same calls run synchronously in the same order (uploads are zero-copy
``torch.from_numpy`` views), so the scheduling logic is the same code on both.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
import torch

B = TypeVar("B")
S = TypeVar("S")
C = TypeVar("C")
R = TypeVar("R")


@dataclass
class StagedTensors:
    """A batch's frames on the device plus what is needed to use them safely."""

    tensors: list[torch.Tensor]
    ready: torch.cuda.Event | None = None  # recorded on the copy stream after the uploads
    host: list[torch.Tensor] = field(default_factory=list)  # pinned buffers, reusable after ``ready``


class PinnedPool:
    """Reusable page-locked host buffers keyed by shape (pinning is slow; reuse keeps it off the path)."""

    def __init__(self, max_per_shape: int = 16) -> None:
        self.free: dict[tuple[int, ...], list[torch.Tensor]] = {}
        self.max_per_shape = max_per_shape

    def take(self, shape: tuple[int, ...]) -> torch.Tensor:
        buffers = self.free.get(shape)
        if buffers:
            return buffers.pop()
        return torch.empty(shape, dtype=torch.uint8, pin_memory=True)

    def give_back(self, buffers: list[torch.Tensor]) -> None:
        for buffer in buffers:
            bucket = self.free.setdefault(tuple(buffer.shape), [])
            if len(bucket) < self.max_per_shape:
                bucket.append(buffer)


class DeviceStreams:
    """A copy stream and a compute stream on CUDA; synchronous pass-through on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.pool = PinnedPool()
        if self.cuda:
            self.copy_stream = torch.cuda.Stream(device)
            self.compute_stream = torch.cuda.Stream(device)

    def upload(self, images: list[np.ndarray]) -> StagedTensors:
        """Start moving (H, W, 3) uint8 frames to the device; returns at once on CUDA."""
        if not self.cuda:
            # torch.from_numpy shares memory; the frames are read-only message buffers, never written.
            return StagedTensors([_as_tensor(image) for image in images])
        host = []
        for image in images:
            buffer = self.pool.take(tuple(image.shape))
            buffer.numpy()[...] = image
            host.append(buffer)
        with torch.cuda.stream(self.copy_stream):
            tensors = [buffer.to(self.device, non_blocking=True) for buffer in host]
            ready = torch.cuda.Event()
            ready.record(self.copy_stream)
        return StagedTensors(tensors, ready, host)

    @contextmanager
    def compute(self, staged: StagedTensors) -> Iterator[None]:
        """Run the block on the compute stream once ``staged``'s uploads have landed."""
        if not self.cuda:
            yield
            return
        with torch.cuda.stream(self.compute_stream):
            self.compute_stream.wait_event(staged.ready)
            for tensor in staged.tensors:
                # Allocated on the copy stream, used on the compute stream: tell the caching allocator.
                tensor.record_stream(self.compute_stream)
            yield
        self.compute_stream.synchronize()
        self.pool.give_back(staged.host)


def _as_tensor(image: np.ndarray) -> torch.Tensor:
    with warnings.catch_warnings():
        # Received frames are read-only buffers; torch warns about that, but nothing writes to them.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(image)


class OverlapScheduler(Generic[B, S, C, R]):
    """Run ``prepare`` (upload) one batch ahead of ``compute``, and ``finish`` (if given) one behind it.

    ``submit(batch)`` prepares ``batch``, then computes the batch submitted before it, so the upload of k+1
    is in flight while k computes. Without ``finish`` that batch's result is returned. With ``finish``,
    ``compute`` only starts work that completes elsewhere (the CPU engine's pose-decoding thread), and
    the batch computed before is finished and returned after it: batch k-1's last heatmaps are decoded
    while batch k is cropped and forwarded. ``flush()`` computes and finishes everything pending.
    Results come out in submission order.
    """

    def __init__(
        self,
        prepare: Callable[[B], S],
        compute: Callable[[S], C],
        finish: Callable[[C], R] | None = None,
    ) -> None:
        self.prepare = prepare
        self.compute = compute
        self.finish = finish
        self.staged: list[S] = []  # at most one: prepared, not computed
        self.computed: list[C] = []  # at most one: computed, not finished

    @property
    def has_pending(self) -> bool:
        return bool(self.staged or self.computed)

    def submit(self, batch: B) -> list[R]:
        staged = self.prepare(batch)
        results = self._advance()
        self.staged.append(staged)
        return results

    def flush(self) -> list[R]:
        results = []
        while self.has_pending:
            results += self._advance()
        return results

    def _advance(self) -> list[R]:
        """Compute the staged batch, then finish the one computed before it."""
        computed = [self.compute(self.staged.pop())] if self.staged else []
        if self.finish is None:
            return computed
        results = [self.finish(self.computed.pop())] if self.computed else []
        self.computed = computed
        return results


def static_batch_sizes(max_batch: int) -> list[int]:
    """The few batch sizes every forward is padded to (powers of two up to ``max_batch``, and it)."""
    if max_batch < 1:
        raise ValueError(f"max_batch must be >= 1, got {max_batch}")
    sizes = []
    size = 1
    while size < max_batch:
        sizes.append(size)
        size *= 2
    sizes.append(max_batch)
    return sizes


def padded_size(count: int, sizes: list[int]) -> int:
    """The smallest static size that holds ``count`` items (``count`` <= the largest size)."""
    for size in sizes:
        if size >= count:
            return size
    raise ValueError(f"{count} items exceed the largest static batch size {sizes[-1]}")
