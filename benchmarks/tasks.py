"""Cost of each Sapiens2 task in the inference engine: per crop (pose, segmentation on person crops) or
per frame (full-frame segmentation, normals, pointmaps, matting).

Each task runs alone in an ``InferenceEngine`` (random weights of the given architecture, the given
detector boxes, flip off) on a group of frames; the time of the whole engine step (crop or full-frame
preparation, forward, post-processing on the device, maps to the host) is divided by the crops or
frames it computed. Dense tasks are timed with and without temporal smoothing (``--no-smooth``).

CPU (the committed result)::

    python benchmarks/tasks.py        # 0.1b, 256x192 input, 640x480 frames, 2 frames per step, 2 repeats

GPU::

    python benchmarks/tasks.py --device cuda --arch 0.4b --size 1024x768 --frames 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import time_call, write_results  # noqa: E402

# (name in the results, task, seg mode, unit of the cost)
CASES = [
    ("pose", "pose", "frame", "crop"),
    ("seg_frame", "seg", "frame", "frame"),
    ("seg_person", "seg", "person", "crop"),
    ("normal", "normal", "frame", "frame"),
    ("pointmap", "pointmap", "frame", "frame"),
    ("matting", "matting", "frame", "frame"),
]
DENSE = {"seg_frame", "seg_person", "normal", "pointmap", "matting"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="0.1b", help="official size: 0.1b, 0.4b, 0.8b, 1b, 5b")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", default="256x192", help="model input HxW")
    parser.add_argument("--frame", default="640x480", help="frame WxH")
    parser.add_argument("--frames", type=int, default=2, help="frames per group (one person each)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for torch")
    parser.add_argument("--cases", help="comma-separated subset of " + ",".join(c[0] for c in CASES))
    parser.add_argument("--out", help="JSON path (default benchmarks/results/tasks_<device>.json)")
    return parser.parse_args(argv)


def _group(num_frames: int, frame_wh: tuple[int, int], start: int):
    from stream.engine import Group
    from stream.media.frames import DecodedFrame
    from stream.media.synth import moving_squares
    from stream.runtime.messages import frame_message

    group = Group()
    images = list(moving_squares(start + num_frames, frame_wh, seed=1))[start:]
    for i, image in enumerate(images, start):
        message = frame_message("bench", i, DecodedFrame(image, i, i / 25, Fraction(1, 25), 0.0))
        group.messages.append(message)
        group.frames.append(message)
    return group


def run_case(args, case: tuple[str, str, str, str], smooth: bool, boxes_file: Path) -> dict:
    from stream.config import PipelineConfig
    from stream.engine import InferenceEngine

    name, task, seg_mode, unit = case
    cfg = PipelineConfig(
        sources=["bench"], out="unused", task=(task,), detector=f"boxes:{boxes_file}", device=args.device,
        flip=False, input_size=args.size, smooth=smooth, seg_mode=seg_mode, random_weights=True,
        max_batch=max(8, args.frames), **{f"{task}_model": f"sapiens2-{task}-{args.arch}"},
    )  # fmt: skip
    counter = iter(range(0, 10_000, args.frames))
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else None
    with InferenceEngine(cfg) as engine:
        engine.warm_up()
        times = time_call(
            lambda: engine.compute(engine.prepare(_group(args.frames, args.frame_wh, next(counter)))),
            repeats=args.repeats, warmup=1, sync=sync,
        )  # fmt: skip
    per_unit = [t / args.frames * 1000 for t in times]  # one person per frame: a crop per frame
    return {"case": name, "task": task, "seg_mode": seg_mode, "unit": unit, "smooth": smooth,
            "ms_per_unit": round(statistics.median(per_unit), 1),
            "samples_ms_per_unit": [round(t, 1) for t in per_unit]}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    width, height = (int(v) for v in args.frame.lower().split("x"))
    args.frame_wh = (width, height)
    wanted = set(args.cases.split(",")) if args.cases else {c[0] for c in CASES}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        boxes_file = Path(tmp) / "boxes.jsonl"
        box = [width * 0.3, height * 0.1, width * 0.7, height * 0.95, 0.9]
        boxes_file.write_text("".join(json.dumps({"frame": i, "boxes": [box]}) + "\n" for i in range(10_000)))
        for case in CASES:
            if case[0] not in wanted:
                continue
            for smooth in ((False, True) if case[0] in DENSE else (False,)):
                result = run_case(args, case, smooth, boxes_file)
                print(json.dumps(result), flush=True)
                results.append(result)
    device = "cuda" if args.device.startswith("cuda") else "cpu"
    payload = {
        "arch": args.arch, "device": args.device, "input_hw": args.size, "frame_wh": list(args.frame_wh),
        "frames_per_group": args.frames, "repeats": args.repeats, "weights": "random (timing only)",
        "definition": "median ms of one engine step (prepare + compute) / crops or frames in it",
        "results": results,
    }  # fmt: skip
    write_results(f"tasks_{device}", payload, args.out)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
