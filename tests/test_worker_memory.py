"""Worker processes keep freed memory for reuse (``retain_freed_memory``).

Each batch allocates and frees the same large tensors; with glibc's defaults their pages were handed back
to the system and faulted in again on the next batch. Measured in fresh interpreters, so the setting never
touches the test process: a tiny pose model's forward and decoding at batch 8, minor page faults per batch.
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
import textwrap

import pytest

BATCH_FAULTS = textwrap.dedent(
    """
    import resource, sys
    import torch
    from models import Sapiens2Config, build_sapiens2
    from models.postprocess import decode_pose_heatmaps
    from models.preprocess import crop_to_frame_affine
    from stream.runtime.stage import retain_freed_memory

    if sys.argv[1] == "retain":
        assert retain_freed_memory()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    size = (128, 96)
    model = build_sapiens2(Sapiens2Config.from_arch("tiny", task="pose", image_size=size)).eval()
    pixels = torch.randn(8, 3, *size)
    affines = crop_to_frame_affine(torch.tensor([[10.0, 10.0, 200.0, 300.0]] * 8), size)

    def batch():
        with torch.inference_mode():
            decode_pose_heatmaps(model(pixels).heatmaps, affines, size)

    batch()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        batch()
    print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5)
    """
)


def faults_per_batch(mode: str) -> float:
    done = subprocess.run(
        [sys.executable, "-c", BATCH_FAULTS, mode], capture_output=True, text=True, timeout=120, check=True
    )
    return float(done.stdout.split()[-1])


@pytest.mark.skipif(not hasattr(ctypes.CDLL(None), "gnu_get_libc_version"), reason="the setting is glibc's")
def test_retained_memory_stops_refaulting_every_batch():
    default, retained = faults_per_batch("default"), faults_per_batch("retain")
    # A batch's heatmaps alone are 7.5 MB (about 1,800 pages).
    assert default > 1000
    assert retained < default / 10
