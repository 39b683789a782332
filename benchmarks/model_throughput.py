"""Sapiens2 forward throughput: this package's model against transformers' on identical weights.

Both models load the same checkpoint file (written once by ``save_sapiens2``), run the same batch, dtype
and resolution, and are timed alternately so background load affects both alike. Reports ms per batch,
images/s and the ratio transformers_time / our_time (> 1 means ours is faster). On CUDA it also reports
peak memory and MFU from FLOPs counted by ``torch.utils.flop_counter`` over one forward.

CPU (the committed result)::

    python benchmarks/model_throughput.py                 # 0.4b pose, 512x384, batch 2, fp32, eager

GPU::

    python benchmarks/model_throughput.py --device cuda   # bf16, 1024x768, batch 1/8/32, eager + compiled
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_results  # noqa: E402
from models import Sapiens2Config, build_sapiens2, load_sapiens2, save_sapiens2  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Dense (no sparsity) tensor-core peaks, FLOP/s, for MFU.
PEAK_FLOPS = {
    ("H100", "bf16"): 989.4e12,
    ("H100", "fp16"): 989.4e12,
    ("H100", "fp32"): 494.7e12,  # TF32 tensor cores
    ("H200", "bf16"): 989.4e12,
    ("H200", "fp16"): 989.4e12,
    ("H200", "fp32"): 494.7e12,
    ("A100", "bf16"): 312e12,
    ("A100", "fp16"): 312e12,
    ("A100", "fp32"): 156e12,
}
OUTPUT_FIELD = {"pose": "heatmaps", "seg": "logits", "normal": "normals", "pointmap": "pointmaps"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="0.4b", help="official size: 0.1b, 0.4b, 0.8b, 1b, 5b")
    parser.add_argument("--task", default="pose", choices=sorted(OUTPUT_FIELD))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), help="default: bf16 on CUDA, fp32 on CPU")
    parser.add_argument("--size", help="input HxW; default 1024x768 on CUDA, 512x384 on CPU")
    parser.add_argument("--batch", help="comma-separated batch sizes; default 1,8,32 on CUDA, 2 on CPU")
    parser.add_argument(
        "--repeats", type=int, help="timed calls per model and setting (default 10 CUDA, 3 CPU)"
    )
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (default 1)")
    parser.add_argument(
        "--compile", action="store_true", help="also time torch.compile'd models (default on CUDA)"
    )
    parser.add_argument("--no-eager", action="store_true", help="time compiled models only")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch (default 2)")
    parser.add_argument("--peak-tflops", type=float, help="peak FLOP/s of the GPU for MFU, in TFLOP/s")
    parser.add_argument("--out", help="JSON path (default benchmarks/results/model_throughput_<device>.json)")
    args = parser.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.dtype = args.dtype or ("bf16" if cuda else "fp32")
    height, width = (int(v) for v in (args.size or ("1024x768" if cuda else "512x384")).lower().split("x"))
    args.hw = (height, width)
    args.batches = [int(b) for b in (args.batch or ("1,8,32" if cuda else "2")).split(",")]
    args.repeats = args.repeats or (10 if cuda else 3)
    args.modes = ([] if args.no_eager else ["eager"]) + (["compiled"] if args.compile or cuda else [])
    if not args.modes:
        parser.error("--no-eager needs --compile")
    return args


def timed_alternating(
    calls: dict[str, Callable[[], object]], repeats: int, warmup: int, device: torch.device
) -> dict[str, list[float]]:
    """Seconds per call of each function, the functions interleaved (order flipped every round)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for fn in calls.values():
        for _ in range(warmup):
            fn()
    sync()
    samples: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for round_index in range(repeats):
        for name in names if round_index % 2 == 0 else reversed(names):
            sync()
            start = time.perf_counter()
            calls[name]()
            sync()
            samples[name].append(time.perf_counter() - start)
    return samples


def count_flops(model: torch.nn.Module, pixel_values: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(pixel_values)
    return counter.get_total_flops()


def peak_flops(device: torch.device, dtype: str, override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for (family, kind), value in PEAK_FLOPS.items():
        if family in name and kind == dtype:
            if family == "H100" and "PCIe" in name:
                return value * 756 / 989.4
            return value
    return None


def peak_memory(fn: Callable[[], object], device: torch.device) -> int | None:
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated(device)


def summarise(times: list[float], batch: int) -> dict:
    median = statistics.median(times)
    return {
        "ms_per_batch": round(median * 1e3, 2),
        "ms_per_batch_min": round(min(times) * 1e3, 2),
        "images_per_s": round(batch / median, 3),
        "samples_ms": [round(t * 1e3, 2) for t in times],
    }


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import transformers

    transformers.logging.set_verbosity_error()
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    hf_class = {
        "pose": transformers.Sapiens2ForPoseEstimation,
        "seg": transformers.Sapiens2ForSemanticSegmentation,
        "normal": transformers.Sapiens2ForNormalEstimation,
        "pointmap": transformers.Sapiens2ForPointmapEstimation,
    }[args.task]
    field = OUTPUT_FIELD[args.task]

    config = Sapiens2Config.from_arch(args.arch, task=args.task, image_size=args.hw)
    with tempfile.TemporaryDirectory() as checkpoint:
        torch.manual_seed(0)
        save_sapiens2(build_sapiens2(config), checkpoint)
        ours = load_sapiens2(checkpoint, device=device, dtype=dtype)
        theirs = hf_class.from_pretrained(checkpoint, dtype=dtype).to(device).eval()

    peak = peak_flops(device, args.dtype, args.peak_tflops)
    results = []
    for mode in args.modes:
        if mode == "compiled":
            run_ours, run_theirs = torch.compile(ours), torch.compile(theirs)
        else:
            run_ours, run_theirs = ours, theirs
        for batch in args.batches:
            generator = torch.Generator().manual_seed(batch)
            pixel_values = torch.randn(batch, 3, *args.hw, generator=generator).to(device=device, dtype=dtype)

            def call_ours(fn=run_ours, x=pixel_values):
                with torch.inference_mode():
                    return fn(x)

            def call_theirs(fn=run_theirs, x=pixel_values):
                with torch.inference_mode():
                    return fn(pixel_values=x)

            difference = (
                (getattr(call_ours(), field).float() - getattr(call_theirs(), field).float()).abs().max()
            )
            samples = timed_alternating(
                {"ours": call_ours, "transformers": call_theirs}, args.repeats, args.warmup, device
            )
            entry = {
                "mode": mode,
                "batch": batch,
                "ours": summarise(samples["ours"], batch),
                "transformers": summarise(samples["transformers"], batch),
                "max_abs_difference": float(difference),
            }
            entry["ratio"] = round(entry["transformers"]["ms_per_batch"] / entry["ours"]["ms_per_batch"], 3)
            entry["ratio_min"] = round(
                entry["transformers"]["ms_per_batch_min"] / entry["ours"]["ms_per_batch_min"], 3
            )
            if device.type == "cuda":
                flops = count_flops(ours, pixel_values)
                entry["gflop_per_batch"] = round(flops / 1e9, 1)
                for name, fn in (("ours", call_ours), ("transformers", call_theirs)):
                    entry[name]["peak_memory_mib"] = round(peak_memory(fn, device) / 2**20, 1)
                    if peak:
                        seconds = entry[name]["ms_per_batch"] / 1e3
                        entry[name]["mfu"] = round(flops / seconds / peak, 4)
            print(
                f"{mode} batch {batch}: ours {entry['ours']['ms_per_batch']} ms, transformers "
                f"{entry['transformers']['ms_per_batch']} ms, ratio {entry['ratio']}",
                flush=True,
            )
            results.append(entry)

    payload = {
        "arch": args.arch,
        "task": args.task,
        "device": str(device),
        "dtype": args.dtype,
        "input_hw": list(args.hw),
        "repeats": args.repeats,
        "warmup": args.warmup,
        "peak_flops": peak,
        "ratio_definition": "transformers ms per batch / ours ms per batch (medians); > 1: ours is faster",
        "results": results,
    }
    name = f"model_throughput_{device.type}"
    write_results(name, payload, out=args.out)
    return payload


if __name__ == "__main__":
    main()
