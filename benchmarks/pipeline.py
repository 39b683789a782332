"""Pipeline benchmarks (CPU configuration by default; pass --device cuda on a GPU machine).

(a) overhead: a 1080p clip with no persons through the whole pipeline (decode -> GPU worker -> track ->
    render -> libx264) against a bare PyAV decode -> libx264 encode of the same clip with the same
    encoder settings. Ratio = pipeline fps / bare fps (target >= 0.8), over the whole run and in steady
    state (first to last frame at the sink: process start-up, model loading and exit excluded).
(b) against the loop a user would write from the transformers page: per frame the Sapiens2 image
    processor with the boxes, the transformers model, its pose post-processing, cv2 drawing of the
    skeleton, the keypoints as a JSON line and a libx264 write (the outputs the pipeline writes); same
    tiny weights, same boxes, same clip. Ratio = pipeline fps / loop fps, both over the whole run
    (model loading included) and the pipeline's steady state.
(c) against the model alone on the same clip: (b)'s pipeline fps over the fps of the bare forwards of the
    same number of crops (frames x persons, in batches of the pipeline's ``max_batch``, random pixels
    already on the device, flip-TTA as one 2B forward when on). Target >= 0.9: the pipeline keeps the
    model busy. ``--flip`` also runs (b)'s pipeline and (c) with flip-TTA on (the loop has no flip).

    .venv/bin/python benchmarks/pipeline.py [--frames 300] [--size 1920x1080] [--max-batch N] [--out FILE]
    python benchmarks/pipeline.py --device cuda --arch 0.4b --input-size 1024x768 --flip   # GPU
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import av
import cv2
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_results  # noqa: E402
from stream.config import build_config  # noqa: E402
from stream.media.synth import moving_squares, write_clip  # noqa: E402
from stream.pipeline.coordinator import run_pipeline  # noqa: E402

CRF, PRESET = 20, "veryfast"
TINY_INPUT = (256, 192)


def bare_transcode(clip: Path, out: Path) -> float:
    """Seconds for PyAV decode -> rgb24 -> libx264 (same settings as the pipeline's video sink)."""
    start = time.perf_counter()
    with av.open(str(clip)) as src, av.open(str(out), "w") as dst:
        in_stream = src.streams.video[0]
        in_stream.thread_type = "AUTO"
        out_stream = dst.add_stream("libx264", rate=in_stream.average_rate)
        out_stream.width, out_stream.height = in_stream.codec_context.width, in_stream.codec_context.height
        out_stream.pix_fmt = "yuv420p"
        out_stream.options = {"crf": str(CRF), "preset": PRESET}
        for frame in src.decode(in_stream):
            image = frame.to_ndarray(format="rgb24")
            for packet in out_stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                dst.mux(packet)
        for packet in out_stream.encode(None):
            dst.mux(packet)
    return time.perf_counter() - start


def ratios(pipeline: dict, baseline: dict) -> dict:
    """Pipeline fps over baseline fps, for the whole run and for the steady state (None if unknown)."""
    steady = pipeline["steady_fps"]
    return {
        "ratio_total": round(pipeline["fps"] / baseline["fps"], 3),
        "ratio_steady": None if steady is None else round(steady / baseline["fps"], 3),
    }


def pose_checkpoint(directory: Path, arch: str = "tiny", input_size: tuple[int, int] = TINY_INPUT) -> Path:
    """A pose checkpoint with random weights (seed 0): the tiny test architecture or an official size."""
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
        "crops": crops, "seconds": round(seconds, 3), "fps": round(frames / seconds, 3),
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


def pipeline_run(
    clip: Path, out: Path, boxes: Path, model: Path, device: str, input_size, flip: bool, max_batch=None
):
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
    seconds = time.perf_counter() - start  # the whole call: checks, probing, workers, run, exit
    # The report's times count from the start of the run proper; before it came checks and probing.
    before_run = seconds - report.elapsed
    frames = report.frames
    steady = None
    if report.first_output is not None and frames > 1:
        steady = (frames - 1) / max(1e-9, report.last_output - report.first_output)
    return {
        "frames": frames,
        "seconds": round(seconds, 3),
        "fps": round(frames / seconds, 3),
        "startup_s": None if report.first_output is None else round(before_run + report.first_output, 3),
        "shutdown_s": None if report.last_output is None else round(report.elapsed - report.last_output, 3),
        "steady_fps": None if steady is None else round(steady, 3),
        "device": report.device,
        "max_batch": config.max_batch,
        "worker_cpu_s": report.worker_cpu,
    }


def naive_loop(
    clip: Path, out: Path, boxes: dict[int, list[list[float]]], model_dir: Path, device: str,
    input_size: tuple[int, int] = TINY_INPUT,
) -> dict:
    """The per-frame loop from the transformers Sapiens2 page, with the outputs the pipeline writes: the
    skeleton in the official colours drawn with cv2, the keypoints as JSON lines, the video through PyAV."""
    from transformers import Sapiens2ForPoseEstimation
    from transformers.models.sapiens2.image_processing_sapiens2 import Sapiens2ImageProcessor

    from models.meta import pose_meta

    start = time.perf_counter()
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
    seconds = time.perf_counter() - start
    return {"frames": frames, "seconds": round(seconds, 3), "fps": round(frames / seconds, 3)}


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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=300, help="frames of the overhead clip")
    parser.add_argument("--size", default="1920x1080", help="overhead clip WxH")
    parser.add_argument("--loop-frames", type=int, default=300, help="frames of the clip for (b)")
    parser.add_argument("--persons", type=int, default=3, help="persons per frame in (b)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-batch", type=int, help="the pipeline's --max-batch (default: its own default)")
    parser.add_argument("--arch", default="tiny", help="pose model size, random weights (default tiny)")
    parser.add_argument(
        "--input-size", default="x".join(map(str, TINY_INPUT)), help="model input HxW (default 256x192)"
    )
    parser.add_argument("--flip", action="store_true", help="also run (b)'s pipeline and (c) with flip-TTA")
    parser.add_argument(
        "--out", default=None, help="JSON result path (default benchmarks/results/pipeline_<dev>.json)"
    )
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    input_size = tuple(int(v) for v in args.input_size.lower().split("x"))
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model_name = f"{args.arch} Sapiens2 pose, random weights, input {input_size[0]}x{input_size[1]}"

    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        tmp = Path(tmp)
        model = pose_checkpoint(tmp / f"pose_{args.arch}", args.arch, input_size)

        # (a) overhead on a clip with no persons.
        clip = tmp / "empty.mp4"
        write_clip(clip, moving_squares(args.frames, (width, height)), fps=30)
        no_boxes = write_boxes(tmp / "none.jsonl", {i: [] for i in range(args.frames)})
        bare_s = bare_transcode(clip, tmp / "bare.mp4")
        bare = {"frames": args.frames, "seconds": round(bare_s, 3), "fps": round(args.frames / bare_s, 3)}
        piped = pipeline_run(clip, tmp / "a", no_boxes, model, args.device, input_size, False, args.max_batch)
        overhead = {
            "clip": f"{width}x{height}, {args.frames} frames, no persons",
            "bare_pyav_transcode": bare,
            "pipeline": piped,
            **ratios(piped, bare),
            "target": ">= 0.8",
            "note": "whole run includes starting the fork server that every later run of this process reuses",
        }

        # (b) against the per-frame transformers loop, same weights and boxes.
        size = (640, 360)
        clip_b = tmp / "people.mp4"
        write_clip(clip_b, moving_squares(args.loop_frames, size, seed=1), fps=30)
        boxes = person_boxes(args.loop_frames, size, args.persons)
        boxes_file = write_boxes(tmp / "people.jsonl", boxes)
        loop = naive_loop(clip_b, tmp / "loop.mp4", boxes, model, args.device, input_size)
        ours = pipeline_run(
            clip_b, tmp / "b", boxes_file, model, args.device, input_size, False, args.max_batch
        )
        clip_name = f"{size[0]}x{size[1]}, {args.loop_frames} frames, {args.persons} persons per frame"
        versus = {
            "clip": clip_name,
            "model": f"{model_name}, no flip (both)",
            "transformers_loop": loop,
            "pipeline": ours,
            **ratios(ours, loop),
            "target": ">= 3 (CPU), >= 5 (GPU)",
            "note": "the pipeline's workers fork from the fork server (a) started, as in any later run",
        }

        # (c) against the model alone on the same clip, flip-TTA off (and on).
        versus_model = {}
        for flip in (False, True) if args.flip else (False,):
            run = ours if not flip else pipeline_run(
                clip_b, tmp / "c", boxes_file, model, args.device, input_size, True, args.max_batch
            )
            alone = model_only(
                model, args.device, input_size, args.loop_frames, args.persons, run["max_batch"], flip
            )
            versus_model["flip" if flip else "no_flip"] = {
                "clip": clip_name, "model": model_name, "model_only": alone, "pipeline": run,
                **ratios(run, alone), "target": ">= 0.9",
            }

    name = "pipeline_cpu" if args.device == "cpu" else "pipeline_gpu"
    payload = {"overhead": overhead, "versus_transformers_loop": versus, "versus_model_only": versus_model}
    write_results(name, payload, args.out)


if __name__ == "__main__":
    main()
