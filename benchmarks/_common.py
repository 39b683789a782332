"""Shared benchmark plumbing: machine description and JSON results under benchmarks/results/."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def machine_info() -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "torch_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def time_call(
    fn: Callable[[], object], repeats: int, warmup: int = 1, sync: Callable[[], None] | None = None
) -> list[float]:
    """Seconds per call for ``repeats`` calls after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - start)
    return times


def write_results(name: str, payload: dict, out: str | Path | None = None) -> Path:
    """Print ``payload`` as JSON and write it to ``out`` (default benchmarks/results/<name>.json)."""
    payload = {"benchmark": name, "machine": machine_info(), **payload}
    path = Path(out) if out else RESULTS_DIR / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(payload, indent=2)
    path.write_text(text + "\n")
    print(text)
    print(f"wrote {path}")
    return path
