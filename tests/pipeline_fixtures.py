"""Material for the pipeline tests: tiny checkpoints, short clips, image folders and boxes files, and
the GPU worker's engine run on frame messages as the worker runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import torch

from stream.config import PipelineConfig
from stream.engine import Group, InferenceEngine
from stream.media.synth import moving_squares, write_clip
from stream.runtime.messages import EOS, Message

INPUT_SIZE = (64, 48)  # the tiny checkpoints' input (H, W)


def save_tiny_model(
    directory: Path,
    task: str,
    seed: int = 0,
    image_size: tuple[int, int] = INPUT_SIZE,
    processor: dict | None = None,
) -> Path:
    """A tiny random checkpoint in the Hub layout; with ``processor`` (``Sapiens2ImageProcessor``'s
    arguments) also the ``preprocessor_config.json`` transformers writes for it."""
    from models import Sapiens2Config, build_sapiens2, save_sapiens2

    torch.manual_seed(seed)
    model = build_sapiens2(Sapiens2Config.from_arch("tiny", task=task, image_size=image_size))
    save_sapiens2(model, directory)
    if processor is not None:
        from transformers import Sapiens2ImageProcessor

        Sapiens2ImageProcessor(**processor).save_pretrained(directory)
    return directory


def write_test_clip(path: Path, num_frames: int, size: tuple[int, int], fps: int, seed: int = 0) -> Path:
    write_clip(path, moving_squares(num_frames, size, seed=seed), fps=fps)
    return path


def write_image_folder(folder: Path, num_images: int, size: tuple[int, int]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(moving_squares(num_images, size, seed=3)):
        cv2.imwrite(str(folder / f"img_{i:03d}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return folder


def write_boxes(path: Path, per_frame: dict[int, list[list[float]]]) -> Path:
    """A ``boxes:FILE`` JSONL: ``{"frame": i, "boxes": [[x1, y1, x2, y2, score], ...]}``."""
    with open(path, "w") as f:
        for frame, boxes in sorted(per_frame.items()):
            f.write(json.dumps({"frame": frame, "boxes": boxes}) + "\n")
    return path


def two_people(num_frames: int, empty_every: int = 4) -> dict[int, list[list[float]]]:
    """Two moving persons per frame, and no one at all on every ``empty_every``-th frame."""
    boxes = {}
    for i in range(num_frames):
        if i % empty_every == empty_every - 1:
            boxes[i] = []
        else:
            boxes[i] = [[4.0 + i, 6.0, 34.0 + i, 58.0, 0.95], [50.0, 8.0 + i / 2, 86.0, 60.0, 0.9]]
    return boxes


def read_video(path: Path) -> tuple[list[np.ndarray], list[int], Fraction, Fraction]:
    """Frames, pts, average rate and time base of the first video stream."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames, pts = [], []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            pts.append(frame.pts)
        return frames, pts, stream.average_rate, stream.time_base


def source_times(path: Path) -> list[float | None]:
    """PyAV's presentation time (seconds) of every decoded frame of ``path``."""
    with av.open(str(path)) as container:
        return [frame.time for frame in container.decode(video=0)]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def results_so_far(path: Path) -> list[dict]:
    """The results a running command has written to the JSONL ``path`` so far: a line still being written
    and skipped frames left out."""
    if not path.exists():
        return []
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]
    return [line for line in lines if not line.get("skipped")]


def wait_while_running(run: subprocess.Popen, condition, what: str, timeout: float = 120) -> None:
    """Wait until ``condition()`` holds; fails if the command exits first or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert run.poll() is None, f"the run exited while waiting for {what}"
        assert time.monotonic() < deadline, f"no {what} in {timeout} s"
        time.sleep(0.2)


def engine_config(model: Path, boxes_file: Path, input_size: tuple[int, int], **overrides) -> PipelineConfig:
    """The GPU worker's config for an engine on the CPU: pose, ``boxes:FILE`` detections, flip off."""
    values = {
        "sources": ["clip"],
        "out": "unused",
        "task": ("pose",),
        "pose_model": str(model),
        "detector": f"boxes:{boxes_file}",
        "device": "cpu",
        "flip": False,
        "input_size": input_size,
        "max_batch": 8,
    }
    return PipelineConfig(**{**values, **overrides})


def run_engine(engine: InferenceEngine, messages: list[Message], group_size: int = 4) -> list[Message]:
    """``messages`` in groups of ``group_size``, through ``run_groups``."""
    return run_groups(engine, [messages[i : i + group_size] for i in range(0, len(messages), group_size)])


def run_groups(engine: InferenceEngine, groups: list[list[Message]]) -> list[Message]:
    """The worker's schedule (``InferenceEngine.scheduler``), groups in arrival order; an ``eos`` ends its
    source's segment as it leaves. Returns every outgoing message in order."""
    scheduler = engine.scheduler()
    out = []
    for batch in [*(scheduler.submit(_group(messages)) for messages in groups), scheduler.flush()]:
        for messages in batch:
            for message in messages:
                if message.kind == EOS:
                    engine.end_segment(message.source, message.segment)
                out.append(message)
    return out


def _group(messages: list[Message]) -> Group:
    group = Group()
    for message in messages:
        group.messages.append(message)
        if message.kind != EOS:
            group.frames.append(message)
    return group


def http_json(method: str, url: str, body: dict | bytes | None = None) -> tuple[int, object]:
    """One request to a JSON API (the control API): its status and decoded body, errors included."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def stop_run(run: subprocess.Popen, timeout: float = 90) -> None:
    """Stop a run started in its own session with SIGINT (it drains); whatever of its process group is
    still there after ``timeout`` is killed."""
    run.send_signal(signal.SIGINT)
    try:
        run.wait(timeout=timeout)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
