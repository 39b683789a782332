"""Render and output throughput per frame size: overlay drawing, H.264 encode, JSONL and label-map writes.

    python -m benchmarks.render_encode [--sizes 1280x720,1920x1080] [--persons 3] [--frames 60] [--out F]

Figures are milliseconds per frame (median) and encode frames per second, on synthetic frames with
``--persons`` full 308-keypoint skeletons and a segmentation map covering them.

Pixel-format conversions (on a photo scaled to the size), wall and CPU (all threads) milliseconds:
RGB -> yuv420p for the encoder, swscale (what PyAV's encoder does with an rgb24 frame: wrap the array,
then convert on its own threads) against ``stream.media.color``'s OpenCV path every video sink uses (one
thread, as in the workers); and yuv420p -> RGB while decoding a clip of the photo, swscale
(``to_ndarray(format="rgb24")`` per decoded frame) against the OpenCV path writing into a given
buffer, as the decoder does into a frame-ring slot. On a busy 2-core machine the CPU figures are what
limits throughput.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import torch
import ultralytics
from av.video.reformatter import VideoReformatter

from benchmarks._common import time_call, write_results
from models.meta import pose_meta
from stream.drawing.overlay import OverlayDrawer
from stream.edges.map_sinks import LabelMapSink
from stream.edges.sinks import JsonlSink, VideoSink, jsonl_record
from stream.media.color import RgbDecoder, rgb_to_yuv420p_frame
from stream.media.frames import DecodedFrame, ModelOutputs
from stream.media.synth import moving_squares, write_clip


def synthetic_result(height: int, width: int, persons: int, seed: int = 0) -> ModelOutputs:
    """``persons`` side by side, each with all keypoints scattered in its box and a body-part map."""
    rng = np.random.default_rng(seed)
    num_keypoints = len(pose_meta().names)
    boxes, keypoints = [], []
    labels = np.zeros((height, width), np.uint8)
    slot = width / persons
    for i in range(persons):
        x1, x2 = (i + 0.15) * slot, (i + 0.85) * slot
        y1, y2 = 0.1 * height, 0.95 * height
        boxes.append((x1, y1, x2, y2))
        keypoints.append(
            np.stack([rng.uniform(x1, x2, num_keypoints), rng.uniform(y1, y2, num_keypoints)], 1)
        )
        # Horizontal bands of body-part classes inside the box.
        bands = np.linspace(y1, y2, 9).astype(int)
        for band, (top, bottom) in enumerate(zip(bands[:-1], bands[1:], strict=True)):
            labels[top:bottom, int(x1) : int(x2)] = 1 + (band * 3 + i) % 28
    return ModelOutputs(
        boxes=np.asarray(boxes, np.float32),
        scores=rng.uniform(0.5, 1.0, persons).astype(np.float32),
        track_ids=np.arange(persons, dtype=np.int64),
        keypoints=np.asarray(keypoints, np.float32),
        keypoint_scores=rng.uniform(0.0, 1.0, (persons, num_keypoints)).astype(np.float32),
        seg_labels=labels,
    )


def _ms(times: list[float]) -> float:
    return round(1000 * statistics.median(times), 3)


def bench_size(width: int, height: int, persons: int, frames: int, workdir: Path) -> dict:
    images = list(moving_squares(frames, (width, height)))
    result = synthetic_result(height, width, persons)
    overlay = OverlayDrawer()
    stats = ["fps 30.0 | latency 41 ms | persons 3"]

    render_pose = time_call(lambda: overlay(images[0], _without_seg(result), stats), repeats=20)
    render_all = time_call(lambda: overlay(images[0], result, stats, banner="UNTRAINED WEIGHTS"), repeats=20)
    rendered = [overlay(image, result, stats) for image in images]

    start = time.perf_counter()
    with VideoSink(workdir / f"{width}x{height}.mp4", width, height, Fraction(30), codec="libx264") as sink:
        for i, image in enumerate(rendered):
            sink.write(image, i)
    encode_s = time.perf_counter() - start

    frame = DecodedFrame(images[0], 0, 0.0, Fraction(1, 30), 0.0)
    with JsonlSink(workdir / f"{width}x{height}.jsonl") as jsonl:
        jsonl_times = time_call(lambda: jsonl.write(jsonl_record("bench", frame, result)), repeats=20)
    with LabelMapSink(workdir / f"{width}x{height}_seg") as label_maps:
        label_times = time_call(lambda: label_maps.write(0, result.seg_labels), repeats=20)

    return {
        "size": f"{width}x{height}",
        "persons": persons,
        "render_pose_boxes_text_ms": _ms(render_pose),
        "render_pose_seg_banner_ms": _ms(render_all),
        "encode_libx264_veryfast_fps": round(frames / encode_s, 2),
        "jsonl_record_and_write_ms": _ms(jsonl_times),
        "label_map_png_write_ms": _ms(label_times),
        **bench_conversions(width, height, workdir),
    }


def bench_conversions(width: int, height: int, workdir: Path, repeats: int = 30) -> dict:
    """Wall and CPU milliseconds per frame (medians for the encoder side) of each pixel-format
    conversion: swscale as PyAV runs it by default against ``stream.media.color`` as the workers run it."""
    photo = cv2.imread(str(Path(ultralytics.__file__).parent / "assets" / "bus.jpg"))
    image = cv2.cvtColor(cv2.resize(photo, (width, height), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    scaler = VideoReformatter()  # kept between frames, as the encoder keeps its own

    def swscale_encode() -> av.VideoFrame:
        return scaler.reformat(av.VideoFrame.from_ndarray(image, format="rgb24"), format="yuv420p")

    clip = workdir / f"photo_{width}x{height}.mp4"
    write_clip(clip, [image] * 3 * repeats, fps=30)
    out = np.empty_like(image)
    to_rgb = RgbDecoder()
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)  # as in the decode and render workers (``single_threaded_opencv``)
    times = {}
    for name, convert in {
        "rgb_to_yuv420p_swscale": swscale_encode,
        "rgb_to_yuv420p_opencv": lambda: rgb_to_yuv420p_frame(image),
    }.items():
        times[f"{name}_ms"], times[f"{name}_cpu_ms"] = _wall_and_cpu(convert, repeats)
    # Decoding: every frame is a new frame object (swscale sets up its scaler per frame, as it does when
    # a decoder calls to_ndarray), so whole decodes are timed, less the decode alone.
    _decode_clip(clip, lambda frame: None)  # warm-up: file cache, codec and thread start-up
    decode_only = _decode_clip(clip, lambda frame: None)
    for name, convert in {
        "yuv420p_to_rgb_swscale": lambda frame: frame.to_ndarray(format="rgb24"),
        # What the decoder did before: convert, then copy into the frame-ring slot.
        "yuv420p_to_rgb_swscale_then_copy": lambda frame: np.copyto(out, frame.to_ndarray(format="rgb24")),
        "yuv420p_to_rgb_opencv_into_buffer": lambda frame: to_rgb(frame, out),
    }.items():
        wall, cpu = _decode_clip(clip, convert)
        times[f"{name}_ms"] = round(wall - decode_only[0], 3)
        times[f"{name}_cpu_ms"] = round(cpu - decode_only[1], 3)
    cv2.setNumThreads(threads)
    times["rgb_to_yuv420p_cpu_saving"] = round(
        times["rgb_to_yuv420p_swscale_cpu_ms"] / times["rgb_to_yuv420p_opencv_cpu_ms"], 2
    )
    into_slot = times["yuv420p_to_rgb_opencv_into_buffer_cpu_ms"]
    times["yuv420p_to_rgb_into_slot_cpu_saving"] = round(
        times["yuv420p_to_rgb_swscale_then_copy_cpu_ms"] / into_slot, 2
    )
    return times


def _decode_clip(clip: Path, convert) -> tuple[float, float]:
    """Mean wall and process-CPU milliseconds per frame to decode ``clip`` and ``convert`` each frame."""
    with av.open(str(clip)) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # as the sources decode
        wall, cpu, frames = time.perf_counter(), time.process_time(), 0
        for frame in container.decode(stream):
            convert(frame)
            frames += 1
        return 1000 * (time.perf_counter() - wall) / frames, 1000 * (time.process_time() - cpu) / frames


def _wall_and_cpu(fn, repeats: int) -> tuple[float, float]:
    """Median wall and process-CPU (all threads) milliseconds per call, after one untimed call."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - wall)
    return _ms(walls), _ms(cpus)


def _without_seg(result: ModelOutputs) -> ModelOutputs:
    return ModelOutputs(
        result.boxes, result.scores, result.track_ids, result.keypoints, result.keypoint_scores, None
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1280x720,1920x1080", help="comma-separated WxH")
    parser.add_argument("--persons", type=int, default=3)
    parser.add_argument("--frames", type=int, default=60, help="frames encoded per size")
    parser.add_argument("--out", default=None, help="JSON results path")
    args = parser.parse_args()
    torch.set_num_threads(2)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes.split(","):
            width, height = (int(v) for v in size.lower().split("x"))
            rows.append(bench_size(width, height, args.persons, args.frames, Path(tmp)))
    write_results("render_encode", {"config": vars(args), "results": rows}, args.out)


if __name__ == "__main__":
    main()
