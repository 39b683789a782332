"""Where and how the engine's models run: device, precision, CPU threads, and loading the models.

``load_task_model`` reads a checkpoint (Hub id or directory) or, with ``random_weights`` (the demo's
fallback when no weights can be fetched), builds a randomly initialised model of the architecture the
name mentions.
"""

from __future__ import annotations

import os
import re

import torch

from stream.config import PipelineConfig
from stream.runtime.errors import first_line

ARCH_PATTERN = re.compile(r"(0\.1b|0\.4b|0\.8b|1b|5b)", re.IGNORECASE)


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded (one line naming the model and the reason)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here (use --device cpu)")
    return device


def use_all_cores() -> None:
    """A process-mode CPU inference worker runs the model's forward on every core; the pose-decoding
    thread (``InferenceEngine``) shares them.

    With real models the forward dominates: the demo (0.1b pose model at 256x192, 2 cores) ran its 24
    frames in 35 s with the forward on both cores and in 64 s with it on one core beside the pose
    decoding. Only a model as small as the tests' tiny one gains from giving the pose decoding a core of
    its own (about 8 % in ``benchmarks/pipeline.py`` (b)). ``OMP_NUM_THREADS``, when set, wins.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores))


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        # The models were trained in bf16; CPUs run fp32 faster and exactly.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def load_task_model(spec: str, task: str, cfg: PipelineConfig, device: torch.device, dtype: torch.dtype):
    """The ``task`` model from a Hub id or directory, or a randomly initialised one (demo fallback)."""
    from models import Sapiens2Config, build_sapiens2, load_sapiens2
    from models.processor_config import DEFAULT_INPUT_SIZE

    if cfg.random_weights:
        match = ARCH_PATTERN.search(spec)
        arch = match.group(1).lower() if match else "0.4b"
        # Built with the release's preprocessing (``build_sapiens2``), at its input size unless given.
        image_size = cfg.input_size or DEFAULT_INPUT_SIZE
        config = Sapiens2Config.from_arch(arch, task=task, image_size=image_size)
        return build_sapiens2(config, device=device, dtype=dtype)
    try:
        model = load_sapiens2(spec, device=device, dtype=dtype)
    except Exception as exc:
        raise ModelLoadError(f"cannot load {task} model {spec!r}: {first_line(exc)}") from exc
    if getattr(model, "task", task) != task:
        raise ModelLoadError(f"{task} model {spec!r} is a {model.task} model")
    return model
