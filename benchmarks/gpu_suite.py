"""One prepared GPU run that measures everything, most important first, in at most 8 minutes on one H100/H200.

    python -m benchmarks.gpu_suite --out DIR             # on a CUDA machine (make gpu-suite)
    python -m benchmarks.gpu_suite --dry-run --out DIR   # the same suite on the CPU, tiny models, < 1 minute
    benchmarks/gpu_launch.sh                             # a bare GPU machine: carried wheels, then the suite

Parts, in this order, each in a process of its own with a time budget (a part that fails or runs out of
time records its error and what it measured until then, and the suite goes on; time a part leaves unused
goes to the next):

- ``tests``: ``pytest -m cuda tests/test_cuda.py`` (bf16 against fp32 for every head, the copy stream
  overlapping compute, crops, pose decoding and seg smoothing on the device against the CPU path, the
  video encoder), with each test's measured figures;
- ``model``: pose-0.4b at 1024x768, bf16, ours against transformers on the same weights, batch 1/8/32,
  eager and compiled with CUDA graphs (``torch.compile`` mode ``reduce-overhead``), and the attention
  backends; crops/s, MFU against the card's dense bf16 peak, peak memory (``benchmarks/model_throughput``'s
  timing, FLOP counting and peak functions);
- ``pipeline``: ``benchmarks/pipeline.py --device cuda`` with the same model: pipeline fps against the
  model alone on the same clip (target >= 0.9) with flip-TTA off and on, against the per-frame
  transformers loop (target >= 5x), and the overhead against a bare transcode;
- ``live``: ``benchmarks/live_latency.py --device cuda`` with one and with four RTSP cameras.

Writes ``DIR/gpu_suite.json`` (its keys are ``SCHEMA``'s, in a dry run too), ``DIR/summary.txt`` (one
screen, also printed) and ``DIR/gpu_suite.log`` (every part's output).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(ROOT))

PARTS = ("tests", "model", "pipeline", "live")
CPU_TESTS_VARIABLE = "SAPIENS_STREAM_CUDA_TESTS_ON_CPU"  # tests/test_cuda.py runs on the CPU when set
TARGETS = {"pipeline_vs_model_only": 0.9, "pipeline_vs_transformers_loop": 5.0, "overhead_vs_transcode": 0.8}

# --------------------------------------------------------------------------------------------- schema
# The JSON's keys, defined once. A dict is an object with exactly these keys, a one-element list a list of
# such rows, a string a leaf (its description). Unmeasured leaves are null; a real run and a dry run have
# the same keys (tests/test_gpu_suite.py compares them).

TIMING = {
    "ms_per_batch": "median ms per forward",
    "ms_per_batch_min": "fastest forward, ms",
    "images_per_s": "crops per second at the median",
    "samples_ms": "every timed forward, ms",
}
THROUGHPUT_ROW = {
    "impl": "ours or transformers",
    "mode": "eager or compiled (torch.compile, CUDA graphs on CUDA)",
    "batch": "crops per forward",
    **TIMING,
    "mfu": "model FLOPs per second over the card's dense bf16 peak (CUDA only)",
    "peak_memory_mib": "peak allocated memory of one forward (CUDA only)",
    "compile_s": "first call of a compiled model (compilation and graph capture), s",
    "error": "why this row was not measured",
}
ATTENTION_ROW = {
    "impl": "ours or transformers",
    "backend": "SDPA backend (ours) or attention implementation (transformers)",
    "batch": "crops per forward",
    **TIMING,
    "mfu": "as in throughput",
    "error": "why this row was not measured (backend unavailable for these shapes, ...)",
}
PIPELINE_RUN = {
    "frames": "frames out",
    "fps": "whole command: frames / wall time of its own cold process",
    "steady_fps": "first to last frame at the sink",
    "startup_s": "process start to first frame out",
    "max_batch": "crops per forward",
}
SCHEMA: dict = {
    "suite": "gpu_suite",
    "dry_run": "true: CPU, tiny models, short clips",
    "started_utc": "ISO time",
    "seconds": "whole suite, s",
    "budget_s": "the suite's time budget, s",
    "machine": {
        "python": "version",
        "torch": "version",
        "transformers": "version",
        "cuda": "CUDA version torch was built with",
        "gpu": "torch.cuda.get_device_name",
        "gpu_capability": "compute capability",
        "gpu_memory_gib": "total memory",
        "bf16_peak_tflops": "dense bf16 tensor-core peak used for MFU",
        "cpu_count": "os.cpu_count",
    },
    "parts": {
        name: {
            "status": "ok, failed (error), timeout (budget spent) or crashed (no result)",
            "seconds": "wall time",
            "budget_s": "time limit the part ran under",
            "error": "one line, when not ok",
            "results": results,
        }
        for name, results in {
            "tests": {
                "passed": "count",
                "failed": "count (failures and errors)",
                "skipped": "count",
                "tests": [
                    {
                        "name": "test id",
                        "outcome": "passed, failed or skipped",
                        "seconds": "duration",
                        "message": "failure or skip message",
                        "figures": [{"name": "figure recorded by the test", "value": "its value"}],
                    }
                ],
            },
            "model": {
                "config": {
                    "arch": "official size",
                    "task": "pose",
                    "input_hw": "[H, W]",
                    "dtype": "bf16 on CUDA",
                    "device": "torch device",
                    "params_m": "parameters, millions",
                    "gflop_per_image": "FLOPs of one crop's forward (torch.utils.flop_counter), G",
                    "gflop_per_image_config": "the transformer's FLOPs per crop from the config (no head), G",
                    "peak_flops": "FLOP/s used for MFU",
                    "compile": "torch.compile backend and mode of the compiled rows",
                },
                "throughput": [THROUGHPUT_ROW],
                "versus": [
                    {
                        "mode": "eager or compiled",
                        "batch": "crops per forward",
                        "ratio": "transformers ms / ours ms (> 1: ours faster)",
                        "max_abs_difference": "largest heatmap difference, ours vs transformers",
                    }
                ],
                "attention": [ATTENTION_ROW],
            },
            "pipeline": {
                "config": {"arch": "pose model size", "input_hw": "[H, W]", "clip": "clip of (b) and (c)"},
                "versus_model_only": [
                    {
                        "flip": "flip-TTA on",
                        "model_only_fps": "frames/s of the bare forwards of the clip's crops",
                        "model_only_crops_per_s": "crops/s of the bare forwards",
                        "pipeline": PIPELINE_RUN,
                        "ratio_total": "pipeline whole-command fps / model-only fps",
                        "ratio_steady": "pipeline steady fps / model-only fps",
                    }
                ],
                "versus_transformers_loop": {
                    "loop_fps": "per-frame transformers loop",
                    "pipeline": PIPELINE_RUN,
                    "ratio_total": "pipeline fps / loop fps",
                    "ratio_steady": "pipeline steady fps / loop fps",
                },
                "overhead": {
                    "bare_fps": "the pipeline's own I/O in one bare PyAV loop (decode, RGB, encode), cold",
                    "pipeline": PIPELINE_RUN,
                    "ratio_total": "pipeline fps / bare fps",
                    "ratio_steady": "pipeline steady fps / bare loop's steady fps",
                },
            },
            "live": {
                "runs": [
                    {
                        "cameras": "RTSP cameras at once",
                        "p50_ms": "capture -> render, median of the stats windows, worst camera",
                        "p95_ms": "same, p95",
                        "p95_worst_window_ms": "worst window's p95",
                        "drop_rate": "dropped / decoded frames",
                        "output_fps_per_camera": "frames written per camera per second",
                        "error": "why this run has no figures",
                    }
                ]
            },
        }.items()
    },
    "targets": [
        {
            "what": "figure",
            "value": "measured",
            "target": "required (>=)",
            "met": "value >= target (null when unmeasured)",
        }
    ],
}
# Leaves a dry run (CPU) leaves null: they exist only on CUDA.
CUDA_ONLY = {
    "machine.cuda",
    "machine.gpu",
    "machine.gpu_capability",
    "machine.gpu_memory_gib",
    "machine.bf16_peak_tflops",
    "parts.model.results.config.peak_flops",
    "parts.model.results.throughput[].mfu",
    "parts.model.results.throughput[].peak_memory_mib",
    "parts.model.results.attention[].mfu",
}


def key_paths(value: object, schema: object, prefix: str = "") -> set[str]:
    """Dotted paths of ``value``'s keys, read as far as ``schema`` goes (``[]`` for list rows). A key the
    schema lacks is listed too, so ``key_paths(x, SCHEMA) == key_paths(SCHEMA, SCHEMA)`` checks both ways."""
    paths = set()
    if isinstance(schema, dict) and isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}.{key}" if prefix else key
            paths.add(path)
            if key in schema:
                paths |= key_paths(item, schema[key], path)
    elif isinstance(schema, list) and isinstance(value, list):
        for item in value:
            paths |= key_paths(item, schema[0], f"{prefix}[]")
    return paths


def conform(values: dict | None, schema: dict) -> dict:
    """``values`` with every key of ``schema`` (missing ones null, rows conformed); a key the schema does
    not define is a programming error (KeyError), so the JSON never drifts from the schema."""
    values = values or {}
    unknown = set(values) - set(schema)
    if unknown:
        raise KeyError(f"keys not in the suite's schema: {sorted(unknown)}")
    out = {}
    for key, spec in schema.items():
        value = values.get(key)
        if isinstance(spec, dict):
            out[key] = conform(value, spec) if isinstance(value, dict) or value is None else value
        elif isinstance(spec, list):
            rows = value or []
            out[key] = [conform(row, spec[0]) if isinstance(spec[0], dict) else row for row in rows]
        else:
            out[key] = value
    return out


def null_leaves(value: object, schema: object, prefix: str = "") -> set[str]:
    """Paths of the null leaves of a conformed ``value`` (list rows as ``[]``)."""
    if isinstance(schema, dict):
        found = set()
        for key, spec in schema.items():
            path = f"{prefix}.{key}" if prefix else key
            item = value.get(key) if isinstance(value, dict) else None
            if item is None and not isinstance(spec, (dict, list)):
                found.add(path)
            elif item is not None:
                found |= null_leaves(item, spec, path)
        return found
    if isinstance(schema, list) and isinstance(value, list):
        return set().union(*(null_leaves(row, schema[0], f"{prefix}[]") for row in value))
    return set()


# ------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    """What a run measures: the real GPU configuration or the dry run's tiny CPU one."""

    dry_run: bool
    device: str
    budgets: dict[str, float]  # seconds per part, in PARTS order
    arch: str
    input_hw: tuple[int, int]
    dtype: str
    batches: tuple[int, ...]
    compiled_batches: tuple[int, ...]  # most important first
    attention_batch: int
    repeats: int
    compile_backend: str
    compile_mode: str | None
    compile_reserve_s: float  # start another compiled batch only with this much of the budget left
    pipeline_args: tuple[str, ...]
    live_args: tuple[str, ...]
    cameras: tuple[int, ...]
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def budget_s(self) -> float:
        return sum(self.budgets.values())


GPU = Settings(
    dry_run=False,
    device="cuda",
    budgets={"tests": 70, "model": 175, "pipeline": 125, "live": 90},
    arch="0.4b",
    input_hw=(1024, 768),
    dtype="bf16",
    batches=(1, 8, 32),
    compiled_batches=(8, 32, 1),
    attention_batch=8,
    repeats=10,
    compile_backend="inductor",
    compile_mode="reduce-overhead",
    compile_reserve_s=40,
    pipeline_args=tuple(
        "--arch 0.4b --input-size 1024x768 --flip --frames 150 --size 1920x1080 --loop-frames 90 "
        "--persons 3".split()
    ),
    live_args=tuple("--warmup 5 --duration 15 --input-size 256x192".split()),
    cameras=(1, 4),
)
DRY = Settings(
    dry_run=True,
    device="cpu",
    budgets={"tests": 60, "model": 60, "pipeline": 90, "live": 90},
    arch="tiny",
    input_hw=(64, 48),
    dtype="fp32",
    batches=(1, 2, 4),
    compiled_batches=(2,),
    attention_batch=2,
    repeats=2,
    compile_backend="eager",  # dynamo alone: the compiled code path in seconds on a CPU
    compile_mode=None,
    compile_reserve_s=0,
    pipeline_args=tuple(
        "--arch tiny --input-size 64x48 --flip --frames 8 --size 320x240 --loop-frames 8 --persons 2".split()
    ),
    # One run, of several cameras: the loop over runs is the same code, and each run costs start-up.
    live_args=tuple("--warmup 1 --duration 2 --input-size 64x48 --width 160 --height 120".split()),
    cameras=(2,),
    extra_env={CPU_TESTS_VARIABLE: "1"},
)


# ---------------------------------------------------------------------------------------------- parts


class PartRecord:
    """A part's results, saved to its file after every step so a part stopped at its budget still
    reports what it measured."""

    def __init__(self, path: Path, deadline: float) -> None:
        self.path = path
        self.deadline = deadline
        self.results: dict = {}
        self.error: str | None = None

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def save(self) -> None:
        self.path.write_text(json.dumps({"results": self.results, "error": self.error}, default=str))


def part_tests(settings: Settings, record: PartRecord, scratch: Path) -> None:
    junit = scratch / "junit.xml"
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-m",
        "cuda",
        "tests/test_cuda.py",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--junitxml={junit}",
        "-o",
        "junit_family=xunit1",
    ]
    done = subprocess.run(command, cwd=ROOT, env=part_env(settings), timeout=max(5.0, record.remaining()))
    if not junit.exists():
        raise RuntimeError(f"pytest wrote no report (exit status {done.returncode})")
    record.results = read_junit(junit)
    record.save()
    if done.returncode != 0:
        failed = [t["name"] for t in record.results["tests"] if t["outcome"] == "failed"]
        raise RuntimeError(f"{len(failed)} GPU test(s) failed: {', '.join(failed) or 'pytest exit status'}")


def read_junit(path: Path) -> dict:
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", None
        for tag in ("failure", "error", "skipped"):
            node = case.find(tag)
            if node is not None:
                outcome = "skipped" if tag == "skipped" else "failed"
                message = (node.get("message") or "").splitlines()[0][:300] if node.get("message") else tag
        figures = [{"name": p.get("name"), "value": _number(p.get("value"))} for p in case.iter("property")]
        tests.append(
            {
                "name": case.get("name"),
                "outcome": outcome,
                "seconds": round(float(case.get("time", 0)), 3),
                "message": message,
                "figures": figures,
            }
        )
    count = {o: sum(t["outcome"] == o for t in tests) for o in ("passed", "failed", "skipped")}
    return {**count, "tests": tests}


def _number(text: str | None) -> object:
    try:
        return float(text) if text is not None and any(c.isdigit() for c in text) else text
    except ValueError:
        return text


def part_model(settings: Settings, record: PartRecord, scratch: Path) -> None:
    import torch
    import transformers

    from benchmarks import model_throughput as mt
    from models import Sapiens2Config, build_sapiens2, load_sapiens2, save_sapiens2

    transformers.logging.set_verbosity_error()
    device = torch.device(settings.device)
    dtype = mt.DTYPES[settings.dtype]
    config = Sapiens2Config.from_arch(settings.arch, task="pose", image_size=settings.input_hw)
    torch.manual_seed(0)
    checkpoint = scratch / "pose"
    save_sapiens2(build_sapiens2(config, device=device), checkpoint)  # random weights, built on the device
    ours = load_sapiens2(checkpoint, device=device, dtype=dtype)
    theirs = transformers.Sapiens2ForPoseEstimation.from_pretrained(checkpoint, dtype=dtype).to(device).eval()
    peak = mt.peak_flops(device, settings.dtype, None)
    record.results = {
        "config": {
            "arch": settings.arch,
            "task": "pose",
            "input_hw": list(settings.input_hw),
            "dtype": settings.dtype,
            "device": str(device),
            "params_m": round(sum(p.numel() for p in ours.parameters()) / 1e6, 2),
            "peak_flops": peak,
            "compile": f"{settings.compile_backend}"
            + (f", {settings.compile_mode}" if settings.compile_mode else ""),
        },
        "throughput": [],
        "versus": [],
        "attention": [],
    }
    inputs = {
        b: torch.randn(b, 3, *settings.input_hw, generator=torch.Generator().manual_seed(b)).to(device, dtype)
        for b in sorted(set(settings.batches) | set(settings.compiled_batches) | {settings.attention_batch})
    }
    per_image = config_flops(config, settings.input_hw)
    record.results["config"]["gflop_per_image_config"] = round(per_image / 1e9, 3)
    try:
        flops = {b: mt.count_flops(ours, x) for b, x in inputs.items()}
        smallest = min(flops)
        record.results["config"]["gflop_per_image"] = round(flops[smallest] / smallest / 1e9, 3)
    except Exception:  # MFU from the config's count then (a lower bound: the head is left out)
        traceback.print_exc()
        flops = {b: per_image * b for b in inputs}
    record.save()
    models = {"ours": ours, "transformers": theirs}

    for batch in settings.batches:  # eager: the numbers the pipeline runs at today
        calls = {name: forward(model, inputs[batch], name) for name, model in models.items()}
        measure_pair(record, calls, "eager", batch, flops[batch], peak, settings, device)

    measure_attention(
        record,
        models,
        inputs[settings.attention_batch],
        flops[settings.attention_batch],
        peak,
        settings,
        device,
    )

    for batch in settings.compiled_batches:
        if record.remaining() < settings.compile_reserve_s:
            for name in models:
                record.results["throughput"].append(
                    {"impl": name, "mode": "compiled", "batch": batch, "error": "skipped: part budget spent"}
                )
            record.save()
            continue
        calls, compile_s, errors = {}, {}, {}
        torch._dynamo.reset()  # graphs of the batch before are not needed again
        for name, model in models.items():
            try:
                compiled = torch.compile(
                    model, backend=settings.compile_backend, mode=settings.compile_mode, dynamic=False
                )
                call = forward(compiled, inputs[batch], name)
                start = time.perf_counter()
                for _ in range(3):  # compile, then the warm-ups CUDA graph capture needs
                    call()
                synchronize(device)
                compile_s[name] = round(time.perf_counter() - start, 2)
                calls[name] = call
            except Exception as exc:  # a model that does not compile is a finding, not the end
                errors[name] = one_line(exc)
        measure_pair(
            record, calls, "compiled", batch, flops[batch], peak, settings, device, compile_s, errors
        )


def config_flops(config, input_hw: tuple[int, int]) -> float:
    """Multiply-adds x 2 of one image through the transformer: projections (grouped key/value heads
    per layer), the MLP (gated: two inner projections) and attention's two products; not the head."""
    hidden, inner, heads = config.hidden_size, config.intermediate_size, config.num_attention_heads
    tokens = (input_hw[0] // config.patch_size[0]) * (input_hw[1] // config.patch_size[1])
    tokens += config.num_prefix_tokens
    head_dim = hidden // heads
    kv_heads = config.num_key_value_heads_per_layer or [heads] * config.num_hidden_layers
    mlp = (3 if config.use_gated_mlp else 2) * hidden * inner
    total = 0.0
    for kv in kv_heads:
        projections = 2 * hidden * hidden + 2 * hidden * kv * head_dim  # q and out; k and v
        total += 2 * tokens * (projections + mlp) + 4 * tokens * tokens * hidden
    patch = 2 * tokens * hidden * config.num_channels * config.patch_size[0] * config.patch_size[1]
    return total + patch


def forward(model, pixel_values, impl: str) -> Callable[[], object]:
    import torch

    def call():
        with torch.inference_mode():
            out = model(pixel_values) if impl == "ours" else model(pixel_values=pixel_values)
            return out.heatmaps

    return call


def synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_pair(record, calls, mode, batch, flops, peak, settings, device, compile_s=None, errors=None):
    """Time ours and transformers alternately (``model_throughput.timed_alternating``) and add their rows."""
    from benchmarks import model_throughput as mt

    compile_s, errors = compile_s or {}, dict(errors or {})
    samples = {}
    if calls:
        try:
            samples = mt.timed_alternating(calls, settings.repeats, 1, device)
        except Exception as exc:
            errors.update({name: one_line(exc) for name in calls})
    for name in ("ours", "transformers"):
        row = {"impl": name, "mode": mode, "batch": batch, "compile_s": compile_s.get(name)}
        if name in samples:
            row.update(mt.summarise(samples[name], batch))
            row["mfu"] = mfu(flops, row["ms_per_batch"], peak)
            row["peak_memory_mib"] = memory_mib(mt.peak_memory(calls[name], device))
        else:
            row["error"] = errors.get(name, "not run")
        record.results["throughput"].append(row)
    if len(samples) == 2:
        difference = (calls["ours"]().float() - calls["transformers"]().float()).abs().max()
        ours, theirs = (mt.summarise(samples[n], batch)["ms_per_batch"] for n in ("ours", "transformers"))
        record.results["versus"].append(
            {
                "mode": mode,
                "batch": batch,
                "ratio": round(theirs / ours, 3),
                "max_abs_difference": float(difference),
            }
        )
    record.save()


def measure_attention(record, models, pixel_values, flops, peak, settings, device) -> None:
    """Ours under each SDPA backend, transformers under each of its attention implementations."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from benchmarks import model_throughput as mt

    batch = pixel_values.shape[0]
    variants = [
        ("ours", name, backend)
        for name, backend in (
            ("flash", SDPBackend.FLASH_ATTENTION),
            ("efficient", SDPBackend.EFFICIENT_ATTENTION),
            ("cudnn", SDPBackend.CUDNN_ATTENTION),
            ("math", SDPBackend.MATH),
        )
    ]
    variants += [("transformers", name, None) for name in ("sdpa", "eager")]
    for impl, name, backend in variants:
        row = {"impl": impl, "backend": name, "batch": batch}
        try:
            model = models[impl]
            if impl == "transformers":
                model.set_attn_implementation(name)
            call = forward(model, pixel_values, impl)

            def timed(call=call, backend=backend):
                if backend is None:
                    return call()
                with sdpa_kernel(backend):
                    return call()

            samples = mt.timed_alternating({name: timed}, settings.repeats, 1, device)[name]
            row.update(mt.summarise(samples, batch))
            row["mfu"] = mfu(flops, row["ms_per_batch"], peak)
        except Exception as exc:  # a backend that cannot run these shapes here
            row["error"] = one_line(exc)
        record.results["attention"].append(row)
        record.save()
    if hasattr(models["transformers"], "set_attn_implementation"):
        models["transformers"].set_attn_implementation("sdpa")  # back to the default for what follows


def mfu(flops: int, ms: float, peak: float | None) -> float | None:
    return None if not peak else round(flops / (ms / 1e3) / peak, 4)


def memory_mib(value: int | None) -> float | None:
    return None if value is None else round(value / 2**20, 1)


def part_pipeline(settings: Settings, record: PartRecord, scratch: Path) -> None:
    out = scratch / "pipeline.json"
    command = [
        sys.executable,
        "benchmarks/pipeline.py",
        "--device",
        settings.device,
        *settings.pipeline_args,
        "--out",
        str(out),
    ]
    done = subprocess.run(command, cwd=ROOT, env=part_env(settings), timeout=max(5.0, record.remaining()))
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"benchmarks/pipeline.py exited with status {done.returncode}")
    raw = json.loads(out.read_text())
    arguments = dict(zip(settings.pipeline_args[::2], settings.pipeline_args[1::2], strict=False))
    loop = raw["versus_transformers_loop"]
    record.results = {
        "config": {
            "arch": arguments.get("--arch"),
            "input_hw": arguments.get("--input-size"),
            "clip": loop["clip"],
        },
        "versus_model_only": [
            {
                "flip": entry["model_only"]["flip"],
                "model_only_fps": entry["model_only"]["steady_fps"],
                "model_only_crops_per_s": entry["model_only"]["crops_per_s"],
                "pipeline": pipeline_figures(entry["pipeline"]),
                "ratio_total": entry["ratio_whole_command"],
                "ratio_steady": entry["ratio_steady"],
            }
            for entry in raw["versus_model_only"].values()
        ],
        "versus_transformers_loop": {
            "loop_fps": loop["transformers_loop"]["fps"],
            "pipeline": pipeline_figures(loop["pipeline"]),
            "ratio_total": loop["ratio_whole_command"],
            "ratio_steady": loop["ratio_steady_vs_loop_whole"],
        },
        "overhead": {
            "bare_fps": raw["overhead"]["baseline_same_io"]["fps"],
            "pipeline": pipeline_figures(raw["overhead"]["pipeline"]),
            "ratio_total": raw["overhead"]["vs_same_io"]["ratio_whole_command"],
            "ratio_steady": raw["overhead"]["vs_same_io"]["ratio_steady"],
        },
    }
    record.save()


def pipeline_figures(run: dict) -> dict:
    return {key: run.get(key) for key in PIPELINE_RUN}


def part_live(settings: Settings, record: PartRecord, scratch: Path) -> None:
    record.results = {"runs": []}
    for index, cameras in enumerate(settings.cameras):
        out = scratch / f"live_{cameras}.json"
        command = [
            sys.executable,
            "benchmarks/live_latency.py",
            "--device",
            settings.device,
            "--cameras",
            str(cameras),
            *settings.live_args,
            "--out",
            str(out),
        ]
        share = record.remaining() / (len(settings.cameras) - index)  # the runs left split what is left
        row: dict = {"cameras": cameras}
        try:
            done = subprocess.run(
                command,
                cwd=ROOT,
                env=part_env(settings),
                timeout=max(5.0, share),
                capture_output=True,
                text=True,
            )
            sys.stdout.write(done.stdout + done.stderr)
            if done.returncode != 0 or not out.exists():
                reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
                raise RuntimeError(f"live_latency.py: {reason}")
            raw = json.loads(out.read_text())
            latency = raw["latency_ms"]
            row.update(
                p50_ms=latency["p50"],
                p95_ms=latency["p95"],
                p95_worst_window_ms=latency["p95_worst_window"],
                drop_rate=raw["frames"]["drop_rate"],
                output_fps_per_camera=raw["frames"]["output_fps_per_camera"],
            )
        except Exception as exc:
            row["error"] = one_line(exc)
        record.results["runs"].append(row)
        record.save()
    errors = [row["error"] for row in record.results["runs"] if row.get("error")]
    if errors:
        raise RuntimeError(errors[0])


PART_FUNCTIONS: dict[str, Callable[[Settings, PartRecord, Path], None]] = {
    "tests": part_tests,
    "model": part_model,
    "pipeline": part_pipeline,
    "live": part_live,
}


def part_env(settings: Settings) -> dict[str, str]:
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, **settings.extra_env, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def run_part_here(name: str, settings: Settings, part_file: Path, budget: float) -> int:
    """The part process: run ``name`` and leave its record in ``part_file``."""
    record = PartRecord(part_file, time.monotonic() + budget - 3)  # a few seconds to write and exit
    record.save()
    with tempfile.TemporaryDirectory(prefix=f"gpu-suite-{name}-") as scratch:
        try:
            PART_FUNCTIONS[name](settings, record, Path(scratch))
        except Exception as exc:
            traceback.print_exc()
            record.error = one_line(exc)
    record.save()
    return 0 if record.error is None else 1


# -------------------------------------------------------------------------------------------- the suite


def run_part(name: str, settings: Settings, budget: float, log, scratch: Path) -> dict:
    """Run one part in a process of its own (its own session, so a timeout ends everything it started)."""
    part_file = scratch / f"{name}.json"
    command = [
        sys.executable,
        "-m",
        "benchmarks.gpu_suite",
        "--part",
        name,
        "--part-file",
        str(part_file),
        "--part-budget",
        str(budget),
    ] + (["--dry-run"] if settings.dry_run else [])
    log.write(f"\n===== part {name} (budget {budget:.0f} s) =====\n")
    log.flush()
    start = time.monotonic()
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=part_env(settings),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    status = None
    try:
        process.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        status = "timeout"
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)  # whatever the part left running (servers, workers)
        except ProcessLookupError:
            pass
        process.wait()
    seconds = round(time.monotonic() - start, 1)
    saved = json.loads(part_file.read_text()) if part_file.exists() else {}
    error = saved.get("error")
    if status == "timeout":
        error = f"stopped at its budget of {budget:.0f} s" + (f" ({error})" if error else "")
    elif error:
        status = "failed"
    elif process.returncode != 0 or not saved:
        status, error = "crashed", f"exit status {process.returncode}, no result (see gpu_suite.log)"
    else:
        status = "ok"
    return {
        "status": status,
        "seconds": seconds,
        "budget_s": round(budget, 1),
        "error": error,
        "results": saved.get("results"),
    }


def machine() -> dict:
    import torch

    info = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "transformers": _version("transformers"),
        "cuda": torch.version.cuda,
    }
    if torch.cuda.is_available():
        from benchmarks.model_throughput import peak_flops

        properties = torch.cuda.get_device_properties(0)
        peak = peak_flops(torch.device("cuda"), "bf16", None)
        info.update(
            gpu=properties.name,
            gpu_capability=f"{properties.major}.{properties.minor}",
            gpu_memory_gib=round(properties.total_memory / 2**30, 1),
            bf16_peak_tflops=None if peak is None else round(peak / 1e12, 1),
        )
    return info


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


def targets(parts: dict) -> list[dict]:
    """The figures with targets, each with its verdict; the same four rows whatever was measured."""
    pipeline = parts["pipeline"]["results"]
    by_flip = {entry["flip"]: entry["ratio_steady"] for entry in pipeline["versus_model_only"]}
    rows = [
        (
            f"pipeline / model alone, steady, flip {'on' if flip else 'off'}",
            by_flip.get(flip),
            TARGETS["pipeline_vs_model_only"],
        )
        for flip in (False, True)
    ]
    rows.append(
        (
            "pipeline / transformers loop, whole run",
            pipeline["versus_transformers_loop"]["ratio_total"],
            TARGETS["pipeline_vs_transformers_loop"],
        )
    )
    rows.append(
        (
            "pipeline / bare transcode, whole run",
            pipeline["overhead"]["ratio_total"],
            TARGETS["overhead_vs_transcode"],
        )
    )
    return [
        {"what": what, "value": value, "target": target, "met": None if value is None else value >= target}
        for what, value, target in rows
    ]


def run_suite(settings: Settings, out_dir: Path) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    started = time.time()
    start = time.monotonic()
    parts, slack = {}, 0.0
    with (
        tempfile.TemporaryDirectory(prefix="gpu-suite-") as scratch,
        open(out_dir / "gpu_suite.log", "w") as log,
    ):
        for name in PARTS:
            budget = settings.budgets[name] + slack
            print(f"gpu_suite: part {name} (budget {budget:.0f} s) ...", flush=True)
            parts[name] = run_part(name, settings, budget, log, Path(scratch))
            slack = max(0.0, budget - parts[name]["seconds"])
            print(
                f"gpu_suite: part {name}: {parts[name]['status']} in {parts[name]['seconds']} s"
                + (f" ({parts[name]['error']})" if parts[name]["error"] else ""),
                flush=True,
            )
    report = {
        "suite": "gpu_suite",
        "dry_run": settings.dry_run,
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "seconds": round(time.monotonic() - start, 1),
        "budget_s": settings.budget_s,
        "machine": machine(),
        "parts": parts,
    }
    report = conform(report, SCHEMA)
    report["targets"] = [conform(row, SCHEMA["targets"][0]) for row in targets(report["parts"])]
    (out_dir / "gpu_suite.json").write_text(json.dumps(report, indent=2) + "\n")
    text = summary(report)
    (out_dir / "summary.txt").write_text(text + "\n")
    print(text)
    return report


# ---------------------------------------------------------------------------------------------- summary


def _fmt(value: object, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


SUMMARY_WIDTH = 120  # columns of the summary's lines (one screen: at most about 40 lines)


def summary(report: dict) -> str:
    """One screen: parts, test figures, throughput, attention, pipeline targets, live latency."""
    m, parts = report["machine"], report["parts"]
    where = m["gpu"] or "CPU (dry run: tiny models)"
    peak = f", bf16 peak {m['bf16_peak_tflops']} TFLOP/s" if m["bf16_peak_tflops"] else ""
    lines = [
        f"GPU suite on {where}{peak}",
        f"torch {m['torch']}, transformers {m['transformers']}; "
        f"{report['seconds']} s of {report['budget_s']} s",
        "part      status   seconds  note",
    ]
    for name, part in parts.items():
        lines.append(f"{name:<9} {_fmt(part['status']):<8} {_fmt(part['seconds']):>7}  {part['error'] or ''}")
    lines += test_lines(parts["tests"]["results"]) + model_lines(parts["model"]["results"])
    for row in report["targets"]:
        verdict = {True: "met", False: "MISSED", None: "not measured"}[row["met"]]
        lines.append(f"target: {row['what']:<42} {_fmt(row['value'], 3):>7} (>= {row['target']}) {verdict}")
    for run in parts["live"]["results"]["runs"]:
        lines.append(
            f"live, {run['cameras']} camera(s): p50 {_fmt(run['p50_ms'])} ms, p95 {_fmt(run['p95_ms'])} ms, "
            f"drops {_fmt(run['drop_rate'], 4)}, {_fmt(run['output_fps_per_camera'])} fps/camera"
            + (f" ({run['error']})" if run["error"] else "")
        )
    return "\n".join(line[:SUMMARY_WIDTH] for line in lines)


def test_lines(tests: dict) -> list[str]:
    if not tests["tests"]:
        return []
    figures = {f["name"]: f["value"] for t in tests["tests"] for f in t["figures"]}
    worst_bf16 = max((v for k, v in figures.items() if k.endswith("relative_l2")), default=None)
    return [
        f"tests: {tests['passed']} passed, {tests['failed']} failed, {tests['skipped']} skipped; "
        f"bf16 vs fp32 worst rel. L2 {_fmt(worst_bf16, 4)}; upload/compute overlap "
        f"{_fmt(figures.get('overlap_fraction'), 2)}",
        f"  crops vs CPU {_fmt(figures.get('grey_levels_max_vs_cpu_opencv'), 2)} grey levels; keypoints "
        f"{_fmt(figures.get('keypoint_max_difference_px'), 4)} px; {figures.get('video_codec_line', '')}",
    ]


def model_lines(model: dict) -> list[str]:
    if not model["throughput"]:
        return []
    c = model["config"]
    lines = [
        f"model: pose-{c['arch']} {c['input_hw']} {c['dtype']}, {c['gflop_per_image']} GFLOP/crop, "
        f"compiled: {c['compile']}",
        "  mode      batch  ours crops/s  transformers  ratio  ours MFU  ours MiB  compile s",
    ]
    rows = {(r["impl"], r["mode"], r["batch"]): r for r in model["throughput"]}
    versus = {(v["mode"], v["batch"]): v["ratio"] for v in model["versus"]}
    for (impl, mode, batch), row in rows.items():
        if impl != "ours":
            continue
        theirs = rows.get(("transformers", mode, batch), {})
        lines.append(
            f"  {mode:<9} {batch:>5}  {_fmt(row['images_per_s']):>12}  {_fmt(theirs.get('images_per_s')):>12}"
            f"  {_fmt(versus.get((mode, batch)), 2):>5}  {_fmt(row['mfu'], 3):>8}"
            f"  {_fmt(row['peak_memory_mib'], 0):>8}  {_fmt(row['compile_s']):>9}"
            + (f"  {row['error']}" if row["error"] else "")
        )
    if model["attention"]:
        lines.append(f"  attention, ms per batch of {model['attention'][0]['batch']}:")
        cells = [f"{r['impl']}/{r['backend']} {_fmt(r['ms_per_batch'])}" for r in model["attention"]]
        lines += ["    " + ", ".join(cells[i : i + 4]) for i in range(0, len(cells), 4)]
    return lines


# ------------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        default=str(ROOT / "benchmarks" / "results" / "gpu_suite"),
        help="folder for gpu_suite.json, summary.txt and gpu_suite.log",
    )
    parser.add_argument("--dry-run", action="store_true", help="the whole suite on the CPU with tiny models")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # one part, in its own process
    parser.add_argument("--part-file", help=argparse.SUPPRESS)
    parser.add_argument("--part-budget", type=float, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = DRY if args.dry_run else GPU
    if args.part:
        return run_part_here(args.part, settings, Path(args.part_file), args.part_budget)
    if not args.dry_run:
        import torch

        if not torch.cuda.is_available():
            print(
                "sapiens-stream: error: the GPU suite needs CUDA; --dry-run runs it on the CPU",
                file=sys.stderr,
            )
            return 2
    report = run_suite(settings, Path(args.out))
    return 0 if all(part["status"] == "ok" for part in report["parts"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
