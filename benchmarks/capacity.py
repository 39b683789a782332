"""Capacity planning past one machine: a cost model (cameras per GPU) and a failure simulation.

Both are a MODEL and a SIMULATION, not a measurement of a cluster. They rest on these measured inputs,
read from results committed under benchmarks/results/:

- ``model_throughput_cuda.json`` when present (ms per image of the compiled model on a GPU); otherwise
  the model's FLOPs per crop (counted with ``torch.utils.flop_counter`` on the meta device, no weights)
  divided by the GPU's peak times an assumed utilisation (``--mfu``), and the CPU measurement in
  ``model_throughput_cpu.json`` is shown as a check of the FLOP count (FLOP/s it implies on this CPU);
- ``render_encode.json``: render, libx264 encode, JSONL and label-map writing per frame, by frame size;
- ``pipeline_cpu.json``: the decode worker's CPU seconds per 1080p frame (scaled by pixels);
- ``postprocess_cpu.json``: crop-and-warp and pose decoding per person on the CPU;
- ``tracking.json``: the tracker's ms per frame.

The GPU bounds the cameras by its forwards (crops x persons x fps, plus full-frame segmentation and the
detector); the host's CPU cores bound them by the per-frame work above. Cameras per GPU is the smaller.

The simulation places 1,000 cameras on 64 GPU shards (as ``--ray`` places sources: each on the least
loaded shard), fails shards at random (exponential times between failures), detects a failure after a
health-check delay, moves the dead shard's cameras to the least loaded survivors (each reconnects and
waits for a keyframe), and restarts the shard (it takes new cameras, none are moved back). It reports
how long cameras are without inference after a failure and how even the load is.

    python -m benchmarks.capacity                      # table + benchmarks/results/capacity.json
    python -m benchmarks.capacity --fps 10 --persons 3 --input-size 512x384 --task pose
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import RESULTS_DIR, write_results  # noqa: E402

# Dense tensor-core peaks, FLOP/s (bf16).
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}
FRAME_SIZES = {"720p": (1280, 720), "1080p": (1920, 1080)}
DETECTOR_GPU_MS = 2.0  # ASSUMED: YOLO11n at 640 on a data-centre GPU per frame (no committed measurement)


def _load(name: str) -> dict | None:
    path = RESULTS_DIR / name
    return json.loads(path.read_text()) if path.is_file() else None


def model_tflops(task: str, input_hw: tuple[int, int], arch: str = "0.4b") -> float:
    """TFLOP of one forward of one crop (or frame), counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from models import Sapiens2Config, build_sapiens2

    config = Sapiens2Config.from_arch(arch, task=task, image_size=input_hw)
    with torch.device("meta"):
        model = build_sapiens2(config).eval()
        image = torch.empty(1, 3, *input_hw)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(image)
    return counter.get_total_flops() / 1e12


@dataclass
class Inputs:
    """What the model rests on: per-forward GPU ms and per-frame / per-person CPU ms."""

    pose_crop_ms: float
    seg_frame_ms: float
    detector_ms: float
    gpu_source: str
    cpu_frame_ms: float  # decode + track + render + encode + JSONL (+ label maps)
    cpu_person_ms: float  # crop and warp + pose decoding, per person
    cpu_breakdown: dict


def gpu_costs(args, tasks: tuple[str, ...]) -> tuple[float, float, str, dict]:
    """ms per pose crop and per full-frame seg forward on the GPU, and where they come from."""
    measured = _load("model_throughput_cuda.json")
    flops = {task: model_tflops(task, args.input_hw, args.arch) for task in ("pose", "seg")}
    notes = {"tflop_per_forward": {t: round(v, 4) for t, v in flops.items()}}
    cpu = _load("model_throughput_cpu.json")
    if cpu:
        hw = tuple(cpu["input_hw"])
        ms = cpu["results"][0]["ours"]["ms_per_batch"] / cpu["results"][0]["batch"]
        notes["cpu_check"] = {
            "measured_ms_per_crop": round(ms, 1),
            "input_hw": list(hw),
            "implied_gflops_per_s": round(model_tflops(cpu["task"], hw, cpu["arch"]) * 1e3 / (ms / 1e3), 1),
        }
    flip = 2.0 if args.flip else 1.0
    if measured and args.mfu is None:
        best = min(r["ours"]["ms_per_batch"] / r["batch"] for r in measured["results"])
        scale = flops["pose"] / model_tflops(measured["task"], tuple(measured["input_hw"]), measured["arch"])
        pose_ms = best * scale * flip
        source = f"model_throughput_cuda.json ({measured['machine'].get('gpu')}), scaled by FLOPs"
    else:
        mfu = args.mfu if args.mfu is not None else 0.4
        rate = PEAK_BF16[args.gpu] * mfu
        pose_ms = flops["pose"] * 1e12 / rate * 1e3 * flip
        source = f"FLOPs / ({args.gpu} bf16 peak x ASSUMED utilisation {mfu})"
    seg_ms = flops["seg"] * 1e12 / (PEAK_BF16[args.gpu] * (args.mfu or 0.4)) * 1e3 * flip
    return (pose_ms if "pose" in tasks else 0.0), (seg_ms if "seg" in tasks else 0.0), source, notes


def cpu_costs(frame: str, tasks: tuple[str, ...], input_hw: tuple[int, int]) -> tuple[float, float, dict]:
    """Host CPU ms per frame and per person, from the committed CPU measurements."""
    render = _load("render_encode.json")
    size = "x".join(map(str, FRAME_SIZES[frame]))
    row = next(r for r in render["results"] if r["size"] == size)
    pixels = FRAME_SIZES[frame][0] * FRAME_SIZES[frame][1]
    pipeline = _load("pipeline_cpu.json")["overhead"]
    decode = pipeline["pipeline"]["worker_cpu_s"]
    decode_key = next(k for k in decode if k.startswith("decode"))
    decode_ms = (decode[decode_key]["user_s"] + decode[decode_key]["system_s"]) * 1e3
    decode_ms = decode_ms / pipeline["pipeline"]["frames"] * pixels / (1920 * 1080)
    tracker = _load("tracking.json")["trackers"]["sapiens-stream PersonTracker"]["ms_per_frame"]
    breakdown = {
        "decode": decode_ms,
        "track": tracker,
        "render": row["render_pose_seg_banner_ms" if "seg" in tasks else "render_pose_boxes_text_ms"],
        "encode_libx264": 1e3 / row["encode_libx264_veryfast_fps"],
        "jsonl": row["jsonl_record_and_write_ms"],
    }
    if "seg" in tasks:
        breakdown["label_map_png"] = row["label_map_png_write_ms"]
    post = _load("postprocess_cpu.json")
    warps = post["crop_and_warp"]
    warp = next((r for r in warps if tuple(r["input_hw"]) == tuple(input_hw)), warps[0])
    crop_ms = warp["ours_antialias_ms"] / warp["persons"] * math.prod(input_hw) / math.prod(warp["input_hw"])
    one = next(r for r in post["pose_decoding"] if r["persons"] == 1)
    heat = (input_hw[0] // 4) * (input_hw[1] // 4)
    decode_pose_ms = one["ours_ms"] * heat / math.prod(one["heatmap_hw"]) if "pose" in tasks else 0.0
    person = {"crop_and_warp": crop_ms, "pose_decoding": decode_pose_ms}
    return sum(breakdown.values()), sum(person.values()), {"per_frame": breakdown, "per_person": person}


def cameras_per_gpu(args, inputs: Inputs) -> dict:
    """Cameras one GPU carries at ``args.fps`` with ``args.persons`` each: the GPU bound and the CPU bound
    (``args.cores_per_gpu`` host cores), both at ``args.headroom`` of full load."""
    gpu_ms_per_frame = args.persons * inputs.pose_crop_ms + inputs.seg_frame_ms + inputs.detector_ms
    cpu_ms_per_frame = inputs.cpu_frame_ms + args.persons * inputs.cpu_person_ms
    gpu_bound = args.headroom * 1e3 / (args.fps * gpu_ms_per_frame)
    cpu_bound = args.headroom * args.cores_per_gpu * 1e3 / (args.fps * cpu_ms_per_frame)
    return {
        "gpu_ms_per_camera_frame": round(gpu_ms_per_frame, 2),
        "cpu_ms_per_camera_frame": round(cpu_ms_per_frame, 2),
        "gpu_bound": round(gpu_bound, 1),
        "cpu_bound": round(cpu_bound, 1),
        "cameras_per_gpu": math.floor(min(gpu_bound, cpu_bound)),
        "limited_by": "gpu" if gpu_bound <= cpu_bound else "cpu",
    }


@dataclass
class SimParams:
    cameras: int = 1000
    shards: int = 64
    capacity: int = 20  # cameras a shard carries at full rate (from the model, or given)
    hours: float = 24.0 * 7
    shard_mtbf_h: float = 24.0 * 3  # ASSUMED mean time between failures of one shard (host, GPU, process)
    detect_s: float = 3.0  # health check: a dead actor is noticed within this (Ray's actor death + our poll)
    restart_s: float = 60.0  # a replacement shard loads its models and is ready
    reconnect_s: tuple[float, float] = (0.5, 2.5)  # camera reopen + first keyframe, uniform
    start_s: float = 1.0  # a shard that takes a camera starts its pipeline segment (models already loaded)
    seed: int = 0


def simulate(p: SimParams) -> dict:
    """Discrete-event simulation of shard failures; returns outage and load-balance statistics."""
    rng = np.random.default_rng(p.seed)
    end = p.hours * 3600.0
    alive = [True] * p.shards
    members: list[set[int]] = [set() for _ in range(p.shards)]
    for camera in range(p.cameras):
        members[min(range(p.shards), key=lambda s: len(members[s]))].add(camera)
    events: list[tuple[float, str, int]] = []
    for shard in range(p.shards):
        heapq.heappush(events, (rng.exponential(p.shard_mtbf_h * 3600.0), "fail", shard))
    outages: list[float] = []
    failures = 0
    samples_max_over_mean, samples_cv, overloaded_time, last_t = [], [], 0.0, 0.0
    over_capacity_camera_s = 0.0

    def sample(t: float) -> None:
        nonlocal overloaded_time, last_t, over_capacity_camera_s
        loads = np.array([len(members[s]) for s in range(p.shards) if alive[s]])
        if len(loads):
            samples_max_over_mean.append(loads.max() / loads.mean())
            samples_cv.append(loads.std() / loads.mean())
            excess = np.clip(loads - p.capacity, 0, None).sum()
            over_capacity_camera_s += excess * (t - last_t)
            if excess:
                overloaded_time += t - last_t
        last_t = t

    while events:
        t, kind, shard = heapq.heappop(events)
        if t > end:
            break
        sample(t)
        if kind == "fail":
            failures += 1
            alive[shard] = False
            orphans = sorted(members[shard])
            members[shard] = set()
            for camera in orphans:
                survivors = [s for s in range(p.shards) if alive[s]]
                if not survivors:
                    break
                target = min(survivors, key=lambda s: len(members[s]))
                members[target].add(camera)
                outages.append(p.detect_s + p.start_s + rng.uniform(*p.reconnect_s))
            heapq.heappush(events, (t + p.restart_s, "restart", shard))
        else:
            alive[shard] = True
            heapq.heappush(events, (t + rng.exponential(p.shard_mtbf_h * 3600.0), "fail", shard))
    sample(end)
    gaps = np.array(outages) if outages else np.zeros(1)
    return {
        "params": asdict(p),
        "shard_failures": failures,
        "cameras_moved": len(outages),
        "outage_s": {
            "p50": round(float(np.percentile(gaps, 50)), 2),
            "p99": round(float(np.percentile(gaps, 99)), 2),
            "max": round(float(gaps.max()), 2),
        },
        "camera_hours_without_inference": round(float(gaps.sum()) / 3600.0, 3),
        "availability": round(1.0 - float(gaps.sum()) / (p.cameras * end), 7),
        "load": {
            "max_over_mean_p50": round(float(np.median(samples_max_over_mean)), 3),
            "max_over_mean_max": round(float(np.max(samples_max_over_mean)), 3),
            "cv_p50": round(float(np.median(samples_cv)), 3),
            "time_over_capacity_fraction": round(overloaded_time / end, 5),
            "camera_s_over_capacity": round(over_capacity_camera_s, 1),
        },
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fps", type=float, nargs="+", default=[5.0, 10.0, 30.0])
    parser.add_argument("--persons", type=int, nargs="+", default=[1, 3, 10])
    parser.add_argument("--input-size", nargs="+", default=["1024x768", "512x384"], help="model input HxW")
    parser.add_argument("--task", nargs="+", default=["pose", "pose,seg"])
    parser.add_argument("--frame", default="1080p", choices=sorted(FRAME_SIZES), help="camera frame size")
    parser.add_argument("--arch", default="0.4b")
    parser.add_argument("--gpu", default="H100", choices=sorted(PEAK_BF16))
    parser.add_argument("--mfu", type=float, help="assumed model FLOP utilisation (default 0.4)")
    parser.add_argument("--flip", action="store_true", help="flip test-time augmentation (2 forwards)")
    parser.add_argument("--cores-per-gpu", type=int, default=16, help="host CPU cores per GPU")
    parser.add_argument("--headroom", type=float, default=0.8, help="fraction of full load planned for")
    parser.add_argument("--sim-fps", type=float, default=5.0, help="the simulated cameras' rate")
    parser.add_argument("--sim-persons", type=int, default=3)
    parser.add_argument("--sim-input-size", default="512x384")
    parser.add_argument("--mtbf-h", type=float, default=72.0, help="ASSUMED shard mean time between failures")
    parser.add_argument("--hours", type=float, default=168.0, help="simulated time")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="JSON path (default benchmarks/results/capacity.json)")
    return parser.parse_args(argv)


def _hw(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def model_table(args) -> tuple[list[dict], dict]:
    rows, sources = [], {}
    for size in args.input_size:
        args.input_hw = _hw(size)
        for task_text in args.task:
            tasks = tuple(task_text.split(","))
            pose_ms, seg_ms, gpu_source, notes = gpu_costs(args, tasks)
            frame_ms, person_ms, breakdown = cpu_costs(args.frame, tasks, args.input_hw)
            inputs = Inputs(pose_ms, seg_ms, DETECTOR_GPU_MS, gpu_source, frame_ms, person_ms, breakdown)
            sources[f"{size} {task_text}"] = {
                "gpu_ms_per_pose_crop": round(pose_ms, 3),
                "gpu_ms_per_seg_frame": round(seg_ms, 3),
                "gpu_ms_detector_ASSUMED": DETECTOR_GPU_MS,
                "gpu_source": gpu_source,
                **notes,
                "cpu_ms": {k: {n: round(v, 3) for n, v in d.items()} for k, d in breakdown.items()},
            }
            for fps in args.fps:
                for persons in args.persons:
                    point = argparse.Namespace(**{**vars(args), "fps": fps, "persons": persons})
                    result = cameras_per_gpu(point, inputs)
                    rows.append({"input_size": size, "task": task_text, "fps": fps, "persons": persons,
                                 **result})  # fmt: skip
    return rows, sources


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    rows, inputs = model_table(args)
    print(f"MODEL (not a measurement): cameras per {args.gpu} GPU, {args.frame} cameras, "
          f"{args.cores_per_gpu} host cores per GPU, planned at {args.headroom:.0%} load")  # fmt: skip
    print(f"{'input':>9} {'task':>9} {'fps':>5} {'persons':>7} {'gpu ms':>8} {'cpu ms':>7} "
          f"{'gpu bound':>9} {'cpu bound':>9} {'cameras':>7} limit")  # fmt: skip
    for r in rows:
        print(f"{r['input_size']:>9} {r['task']:>9} {r['fps']:>5g} {r['persons']:>7} "
              f"{r['gpu_ms_per_camera_frame']:>8} {r['cpu_ms_per_camera_frame']:>7} {r['gpu_bound']:>9} "
              f"{r['cpu_bound']:>9} {r['cameras_per_gpu']:>7} {r['limited_by']}")  # fmt: skip
    sim_args = argparse.Namespace(**{**vars(args), "fps": args.sim_fps, "persons": args.sim_persons})
    sim_args.input_hw = _hw(args.sim_input_size)
    pose_ms, seg_ms, source, _ = gpu_costs(sim_args, ("pose",))
    frame_ms, person_ms, breakdown = cpu_costs(args.frame, ("pose",), sim_args.input_hw)
    capacity = cameras_per_gpu(sim_args, Inputs(pose_ms, seg_ms, DETECTOR_GPU_MS, source, frame_ms,
                                                person_ms, breakdown))["cameras_per_gpu"]  # fmt: skip
    params = SimParams(capacity=capacity, hours=args.hours, shard_mtbf_h=args.mtbf_h, seed=args.seed)
    sim = simulate(params)
    print(f"\nSIMULATION (not a measurement): {params.cameras} cameras on {params.shards} shards of "
          f"{capacity} cameras ({args.sim_input_size} pose, {args.sim_fps:g} fps, "
          f"{args.sim_persons} persons), "
          f"{args.hours:g} h, shard MTBF {args.mtbf_h:g} h (assumed)")  # fmt: skip
    needed = math.ceil(params.cameras / max(capacity, 1))
    print(f"  shards needed at full rate: {needed} of {params.shards}"
          f"{' (over capacity: frames will be dropped)' if needed > params.shards else ''}")
    sim["shards_needed"] = needed
    print(f"  shard failures {sim['shard_failures']}, cameras moved {sim['cameras_moved']}")
    gap = sim["outage_s"]
    print(f"  without inference after a failure: p50 {gap['p50']} s, p99 {gap['p99']} s, "
          f"max {gap['max']} s; availability {sim['availability']}")  # fmt: skip
    load = sim["load"]
    print(f"  load: busiest shard / mean p50 {load['max_over_mean_p50']}, worst {load['max_over_mean_max']}; "
          f"coefficient of variation p50 {load['cv_p50']}; time over capacity "
          f"{load['time_over_capacity_fraction']:.3%}")  # fmt: skip
    write_results(
        "capacity",
        {
            "kind": "MODEL AND SIMULATION, not measurements; the inputs are measured or marked ASSUMED",
            "measured_inputs_from": ["model_throughput_cpu.json", "render_encode.json", "pipeline_cpu.json",
                                     "postprocess_cpu.json", "tracking.json"]
            + (["model_throughput_cuda.json"] if _load("model_throughput_cuda.json") else []),  # fmt: skip
            "assumptions": {
                "gpu": args.gpu,
                "mfu": args.mfu if args.mfu is not None else 0.4,
                "detector_gpu_ms": DETECTOR_GPU_MS,
                "cores_per_gpu": args.cores_per_gpu,
                "headroom": args.headroom,
                "frame": args.frame,
                "flip": args.flip,
                "host_cpu_costs": "measured on this 2-core CPU; a server core is likely faster",
            },
            "inputs": inputs,
            "cameras_per_gpu": rows,
            "simulation": sim,
        },
        args.out,
    )


if __name__ == "__main__":
    main()
