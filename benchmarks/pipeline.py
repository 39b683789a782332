"""Pipeline benchmarks, every side a cold run in a process of its own (CPU by default; --device cuda).

Each measured side runs as ``python -m benchmarks.pipeline --side NAME ...`` in a fresh interpreter, and
its "whole command" time is the wall time of that process, from its start (interpreter and imports
included) to its exit: nothing is warm, no fork server or model is shared between sides.

(a) overhead: a clip without persons (default 1080p, 600 frames) through the whole pipeline (decode ->
    GPU worker -> track -> render -> libx264) against two baselines on the same clip with the same
    encoder settings:
    (i)  ``same_io``: the pipeline's own I/O work in one bare PyAV loop: decode, convert each frame to RGB
         (what the detector is given), encode the decoded frame itself (what the pipeline encodes when
         nothing is drawn);
    (ii) ``decode_encode``: the plain decode + encode floor, no conversion at all.
    Ratios: pipeline fps / baseline fps over the whole command, and the pipeline's steady state (first
    to last frame at the sink) over the baseline's. The pipeline's start-up to its first output is
    reported on its own.
(b) against (iii) the loop a user would write from the transformers page: per frame the Sapiens2 image
    processor with the boxes, the transformers model, its pose post-processing, cv2 drawing of the
    skeleton, the keypoints as a JSON line and a libx264 write (the outputs the pipeline writes); same
    tiny weights, same boxes, same clip, both cold. Ratio = pipeline fps / loop fps over the whole
    command, and the pipeline's steady state over the loop's whole command.

(c) against the model alone on the same clip: (b)'s pipeline fps over the fps of the bare forwards of the
    same number of crops (frames x persons, in batches of the pipeline's ``max_batch``, random pixels
    already on the device, flip-TTA as one 2B forward when on), also a cold process. Target >= 0.9: the
    pipeline keeps the model busy. ``--flip`` also runs (b)'s pipeline and (c) with flip-TTA on (the
    loop has no flip).

    .venv/bin/python -m benchmarks.pipeline [--frames 600] [--size 1920x1080] [--loop-frames 300] [--out FILE]
    python -m benchmarks.pipeline --device cuda --arch 0.4b --input-size 1024x768 --flip   # GPU
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import cv2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks._common import write_results  # noqa: E402
from stream.config import PipelineConfig  # noqa: E402
from stream.media.synth import moving_squares, write_clip  # noqa: E402

SIDES = ("pipeline", "same_io", "decode_encode", "transformers_loop", "model_only")
CRF, PRESET = 20, "veryfast"
TINY_INPUT = (256, 192)


def _transcode(clip: Path, out: Path, to_rgb: bool) -> int:
    """PyAV decode -> libx264 (the pipeline's sink settings) of the decoded frames themselves; with
    ``to_rgb`` every frame is also converted to an RGB array, as the pipeline hands it to the detector."""
    frames = 0
    with av.open(str(clip)) as src, av.open(str(out), "w") as dst:
        in_stream = src.streams.video[0]
        in_stream.thread_type = "AUTO"
        out_stream = dst.add_stream("libx264", rate=in_stream.average_rate)
        out_stream.width, out_stream.height = in_stream.codec_context.width, in_stream.codec_context.height
        out_stream.pix_fmt = "yuv420p"
        out_stream.options = {"crf": str(CRF), "preset": PRESET}
        for frame in src.decode(in_stream):
            if to_rgb:
                frame.to_ndarray(format="rgb24")
            for packet in out_stream.encode(frame):
                dst.mux(packet)
            frames += 1
        for packet in out_stream.encode(None):
            dst.mux(packet)
    return frames


def ratios(pipeline: dict, baseline: dict) -> dict:
    """Pipeline fps over baseline fps: whole command over whole command, and the pipeline's steady state
    over the baseline's steady state (its frames over its loop's time, imports and start-up excluded)."""
    steady = pipeline["steady_fps"]
    return {
        "ratio_whole_command": round(pipeline["fps"] / baseline["fps"], 3),
        "ratio_steady": None if steady is None else round(steady / baseline["steady_fps"], 3),
    }


def pose_checkpoint(directory: Path, arch: str = "tiny", input_size: tuple[int, int] = TINY_INPUT) -> Path:
    """A pose checkpoint with random weights (seed 0): the tiny test architecture or an official size."""
    import torch

    from models import Sapiens2Config, build_sapiens2, save_sapiens2

    torch.manual_seed(0)
    config = Sapiens2Config.from_arch(arch, task="pose", image_size=input_size)
    save_sapiens2(build_sapiens2(config), directory)
    return directory


def model_only(
    model_dir: Path, device: str, input_size: tuple[int, int], frames: int, persons: int, max_batch: int,
    flip: bool,
) -> dict:
    """Frames per second of the model alone over ``frames * persons`` crops, in the pipeline's batches and
    precision (bf16 on CUDA, fp32 on CPU), after one untimed forward of each batch size."""
    import torch

    from models import flip_tta, load_sapiens2

    torch_device = torch.device(device)
    cuda = torch_device.type == "cuda"
    model = load_sapiens2(model_dir, device=torch_device, dtype=torch.bfloat16 if cuda else torch.float32)
    dtype = next(model.parameters()).dtype
    crops = frames * persons
    sizes = [max_batch] * (crops // max_batch) + ([crops % max_batch] if crops % max_batch else [])
    pixels = torch.randn(max_batch, 3, *input_size, device=torch_device, dtype=dtype)

    def forward(batch: int) -> None:
        with torch.inference_mode():
            flip_tta(model, pixels[:batch]) if flip else model(pixels[:batch])

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(torch_device)

    for batch in sorted(set(sizes)):
        forward(batch)
    sync()
    start = time.perf_counter()
    for batch in sizes:
        forward(batch)
    sync()
    seconds = time.perf_counter() - start
    return {
        "crops": crops, "forward_s": round(seconds, 3), "steady_fps": round(frames / seconds, 3),
        "crops_per_s": round(crops / seconds, 3), "flip": flip, "max_batch": max_batch,
    }


def person_boxes(num_frames: int, size: tuple[int, int], persons: int) -> dict[int, list[list[float]]]:
    width, height = size
    boxes = {}
    for i in range(num_frames):
        boxes[i] = []
        for p in range(persons):
            x = (p + 0.5) * width / persons - width / (3 * persons) + (i % 20)
            boxes[i].append([x, height * 0.1, x + width / (1.6 * persons), height * 0.95, 0.9])
    return boxes


def write_boxes(path: Path, boxes: dict[int, list[list[float]]]) -> Path:
    with open(path, "w") as f:
        for frame, frame_boxes in boxes.items():
            f.write(json.dumps({"frame": frame, "boxes": frame_boxes}) + "\n")
    return path


def pipeline_side(
    clip: Path, out: Path, boxes: Path, model: Path, device: str, input_size, flip: bool, max_batch=None
) -> dict:
    """The pipeline as the CLI runs it (``run_pipeline``, default process workers)."""
    from stream.config import build_config
    from stream.pipeline.coordinator import run_pipeline

    extra = {} if max_batch is None else {"max_batch": max_batch}
    config = build_config(
        {
            "sources": [str(clip)],
            "out": str(out),
            "pose_model": str(model),
            "detector": f"boxes:{boxes}",
            "input_size": input_size,
            "device": device,
            "flip": flip,
            "crf": CRF,
            "preset": PRESET,
            "codec": "libx264",
            "progress": False,
            **extra,
        }
    )
    start = time.perf_counter()
    report = run_pipeline(config)
    seconds = time.perf_counter() - start
    before_run = seconds - report.elapsed  # checks and probing, before the report's clock starts
    frames = report.frames
    steady = None
    if report.first_output is not None and frames > 1:
        steady = (frames - 1) / max(1e-9, report.last_output - report.first_output)
    return {
        "frames": frames,
        "first_output_s": None if report.first_output is None else before_run + report.first_output,
        "shutdown_s": None if report.last_output is None else round(report.elapsed - report.last_output, 3),
        "steady_fps": None if steady is None else round(steady, 3),
        "device": report.device,
        "max_batch": config.max_batch,
        "worker_cpu_s": report.worker_cpu,
    }


def transcode_side(clip: Path, out: Path, to_rgb: bool) -> dict:
    start = time.perf_counter()
    frames = _transcode(clip, out, to_rgb)
    return {"frames": frames, "steady_fps": round(frames / (time.perf_counter() - start), 3)}


def naive_loop(
    clip: Path, out: Path, boxes: dict[int, list[list[float]]], model_dir: Path, device: str,
    input_size: tuple[int, int] = TINY_INPUT,
) -> dict:
    """The per-frame loop from the transformers Sapiens2 page, with the outputs the pipeline writes: the
    skeleton in the official colours drawn with cv2, the keypoints as JSON lines, the video through PyAV."""
    import torch
    from transformers import Sapiens2ForPoseEstimation
    from transformers.models.sapiens2.image_processing_sapiens2 import Sapiens2ImageProcessor

    from models.meta import pose_meta

    meta = pose_meta()
    processor = Sapiens2ImageProcessor(size={"height": input_size[0], "width": input_size[1]})
    model = Sapiens2ForPoseEstimation.from_pretrained(str(model_dir)).eval().to(device)
    frames = 0
    with (
        av.open(str(clip)) as src,
        av.open(str(out), "w") as dst,
        open(out.with_suffix(".jsonl"), "w") as log,
    ):
        in_stream = src.streams.video[0]
        out_stream = dst.add_stream("libx264", rate=in_stream.average_rate)
        out_stream.width, out_stream.height = in_stream.codec_context.width, in_stream.codec_context.height
        out_stream.pix_fmt = "yuv420p"
        out_stream.options = {"crf": str(CRF), "preset": PRESET}
        for index, frame in enumerate(src.decode(in_stream)):
            image = frame.to_ndarray(format="rgb24")
            xyxy = boxes.get(index, [])
            xywh = [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2, _ in xyxy]
            persons = []
            if xywh:
                inputs = processor(image, boxes=[xywh], return_tensors="pt").to(device)
                with torch.inference_mode():
                    outputs = model(**inputs)
                persons = processor.post_process_pose_estimation(outputs, boxes=[xywh])[0]
            canvas = image.copy()
            records = []
            for box, person in zip(xyxy, persons, strict=True):
                points, scores = person["keypoints"].tolist(), person["scores"].tolist()
                draw_person(canvas, meta, box, points, scores)
                records.append({"bbox": box[:4], "score": box[4], "keypoints": points, "scores": scores})
            log.write(json.dumps({"frame": index, "persons": records}) + "\n")
            for packet in out_stream.encode(av.VideoFrame.from_ndarray(canvas, format="rgb24")):
                dst.mux(packet)
            frames += 1
        for packet in out_stream.encode(None):
            dst.mux(packet)
    return {"frames": frames}


def draw_person(canvas, meta, box, points, scores, threshold: float = 0.3) -> None:
    """Box, skeleton links in their colours and keypoint dots, as a cv2 user would draw them."""
    x1, y1, x2, y2 = (int(v) for v in box[:4])
    cv2.rectangle(canvas, (x1, y1), (x2, y2), (0, 255, 0), 2)
    for (a, b), color in zip(meta.skeleton.tolist(), meta.link_colors.tolist(), strict=True):
        if scores[a] > threshold and scores[b] > threshold:
            start, end = (int(v) for v in points[a]), (int(v) for v in points[b])
            cv2.line(canvas, tuple(start), tuple(end), color, 2, cv2.LINE_AA)
    for (x, y), score in zip(points, scores, strict=True):
        if score > threshold:
            cv2.circle(canvas, (int(x), int(y)), 2, (255, 0, 0), -1)


def run_side(side: str, args: argparse.Namespace, flip: bool = False, **paths: Path) -> dict:
    """``side`` in a fresh interpreter; its whole-command time is that process's wall time."""
    command = [sys.executable, "-m", "benchmarks.pipeline", "--side", side, "--device", args.device,
               "--input-size", args.input_size, "--loop-frames", str(args.loop_frames),
               "--persons", str(args.persons), *(["--flip"] if flip else [])]
    for key, value in paths.items():
        command += [f"--{key}", str(value)]
    if args.max_batch:
        command += ["--max-batch", str(args.max_batch)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, check=False)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"side {side} failed: {done.stderr[-2000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["seconds"] = round(seconds, 3)
    result["fps"] = round(result["frames"] / seconds, 3)
    # CPU time of the side's process and its threads, plus, for the pipeline, that of its workers (the
    # fork server's children, which this process never waits for, so it counts them as they report it):
    # on a machine with few cores the work a side needs bounds its speed as much as how it is spread.
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    used += sum(w["user_s"] + w["system_s"] for w in result.get("worker_cpu_s", {}).values())
    result["cpu_s"] = round(used, 3)
    if result.get("first_output_s") is not None:
        # Start-up to the first output, process start included: the child's own clock starts after
        # its interpreter and imports, so add the time it took the child to reach it.
        result["startup_s"] = round(seconds - result.pop("child_s") + result.pop("first_output_s"), 3)
    result.pop("child_s", None)
    return result


def child(args: argparse.Namespace) -> None:
    """One side, measured inside its own process; prints one JSON line for the parent."""
    started = time.perf_counter()
    if args.side in ("transformers_loop", "model_only"):
        # Sides that run torch in this process; the pipeline's own process, like the command's, never
        # imports torch (its inference worker does, and sets its threads itself).
        import torch

        torch.set_num_threads(min(2, torch.get_num_threads()))
    work = Path(args.work)
    input_size = _size(args.input_size)
    if args.side == "pipeline":
        result = pipeline_side(Path(args.clip), work / "out", Path(args.boxes), Path(args.model), args.device,
                               input_size, args.flip, args.max_batch)
    elif args.side == "model_only":
        max_batch = args.max_batch or PipelineConfig().max_batch
        result = model_only(Path(args.model), args.device, input_size, args.loop_frames, args.persons,
                            max_batch, args.flip)
        result["frames"] = args.loop_frames
    elif args.side in ("same_io", "decode_encode"):
        result = transcode_side(Path(args.clip), work / f"{args.side}.mp4", to_rgb=args.side == "same_io")
    else:
        boxes = {int(k): v for k, v in json.loads(Path(args.boxes).read_text()).items()}
        loop_out = work / "loop.mp4"
        result = naive_loop(Path(args.clip), loop_out, boxes, Path(args.model), args.device, input_size)
    result["child_s"] = time.perf_counter() - started
    print(json.dumps(result))


def _size(text: str) -> tuple[int, int]:
    height, width = (int(v) for v in text.lower().split("x"))
    return height, width


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=600, help="frames of the overhead clip")
    parser.add_argument("--size", default="1920x1080", help="overhead clip WxH")
    parser.add_argument("--loop-frames", type=int, default=300, help="frames of the clip for (b)")
    parser.add_argument("--persons", type=int, default=3, help="persons per frame in (b)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-batch", type=int, help="the pipeline's --max-batch (default: its own default)")
    parser.add_argument("--out", default=None, help="JSON path (default: results/pipeline_<device>.json)")
    parser.add_argument("--arch", default="tiny", help="pose model size, random weights (default tiny)")
    parser.add_argument("--input-size", default="x".join(map(str, TINY_INPUT)), help="model input HxW")
    parser.add_argument("--flip", action="store_true", help="also run (b)'s pipeline and (c) with flip-TTA")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)  # one side, in a child process
    for name in ("clip", "boxes", "model", "work"):
        parser.add_argument(f"--{name}", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        child(args)
        return
    width, height = (int(v) for v in args.size.lower().split("x"))

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        tmp = Path(tmp)
        input_size = _size(args.input_size)
        model = pose_checkpoint(tmp / f"pose_{args.arch}", args.arch, input_size)
        model_name = f"{args.arch} Sapiens2 pose, random weights, input {input_size[0]}x{input_size[1]}"

        # (a) overhead on a clip with no persons.
        clip = tmp / "empty.mp4"
        write_clip(clip, moving_squares(args.frames, (width, height)), fps=30)
        no_boxes = write_boxes(tmp / "none.jsonl", {i: [] for i in range(args.frames)})
        same_io = run_side("same_io", args, clip=clip, work=tmp)
        floor = run_side("decode_encode", args, clip=clip, work=tmp)
        piped = run_side("pipeline", args, clip=clip, boxes=no_boxes, model=model, work=tmp / "a")
        overhead = {
            "clip": f"{width}x{height}, {args.frames} frames, no persons",
            "compared": "each side a cold run in its own process; whole command = that process's wall time",
            "baseline_same_io": same_io,
            "baseline_decode_encode": floor,
            "pipeline": piped,
            "vs_same_io": ratios(piped, same_io),
            "vs_decode_encode": ratios(piped, floor),
            "target": "vs_same_io: >= 0.8 whole command, >= 1.0 steady",
        }

        # (b) against the per-frame transformers loop, same weights and boxes, both cold.
        size = (640, 360)
        clip_b = tmp / "people.mp4"
        write_clip(clip_b, moving_squares(args.loop_frames, size, seed=1), fps=30)
        boxes = person_boxes(args.loop_frames, size, args.persons)
        boxes_file = write_boxes(tmp / "people.jsonl", boxes)
        boxes_json = tmp / "people_boxes.json"
        boxes_json.write_text(json.dumps(boxes))
        loop = run_side("transformers_loop", args, clip=clip_b, boxes=boxes_json, model=model, work=tmp)
        ours = run_side("pipeline", args, clip=clip_b, boxes=boxes_file, model=model, work=tmp / "b")
        versus = {
            "clip": f"{size[0]}x{size[1]}, {args.loop_frames} frames, {args.persons} persons per frame",
            "model": f"{model_name}, no flip (both)",
            "compared": "each side a cold run in its own process; whole command = that process's wall time",
            "transformers_loop": loop,
            "pipeline": ours,
            "ratio_whole_command": round(ours["fps"] / loop["fps"], 3),
            "ratio_steady_vs_loop_whole": None if ours["steady_fps"] is None
            else round(ours["steady_fps"] / loop["fps"], 3),
            "target": ">= 3 (CPU), >= 5 (GPU)",
        }

        # (c) against the model alone on the same clip, flip-TTA off (and on); both sides cold.
        versus_model = {}
        for flip in (False, True) if args.flip else (False,):
            run = ours if not flip else run_side(
                "pipeline", args, flip=True, clip=clip_b, boxes=boxes_file, model=model, work=tmp / "c"
            )
            alone = run_side("model_only", args, flip=flip, model=model, work=tmp)
            versus_model["flip" if flip else "no_flip"] = {
                "clip": versus["clip"], "model": model_name, "model_only": alone, "pipeline": run,
                "ratio_whole_command": round(run["fps"] / alone["steady_fps"], 3),
                "ratio_steady": None if run["steady_fps"] is None
                else round(run["steady_fps"] / alone["steady_fps"], 3),
                "target": ">= 0.9 (steady)",
            }

    name = "pipeline_cpu" if args.device == "cpu" else "pipeline_gpu"
    payload = {"overhead": overhead, "versus_transformers_loop": versus, "versus_model_only": versus_model}
    write_results(name, payload, args.out)


if __name__ == "__main__":
    main()
