"""``sapiens-stream demo``: the whole pipeline on a short clip made from photos shipped with ultralytics.

The clip is a camera pan and zoom over ``zidane.jpg`` and then ``bus.jpg``. Persons come from YOLO
when its weights are cached or downloadable, else from the boxes shipped in ``stream/data`` (mapped
through the same camera move). The pose model is the default Sapiens2 checkpoint from the Hub; when it
cannot be fetched, the demo (and only the demo) says so loudly and runs randomly initialised weights,
stamping "UNTRAINED WEIGHTS" on every frame, so the pipeline can still be seen working.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from importlib import resources
from pathlib import Path

import av
import numpy as np

from stream.config import DEFAULT_DETECTOR, DEFAULT_POSE_MODEL
from stream.media.synth import pan_zoom, write_clip
from stream.runtime.errors import first_line

CLIP_SIZE = (512, 384)  # (W, H)
CLIP_FPS = 12
PHOTOS = ("zidane.jpg", "bus.jpg")
UNTRAINED = "UNTRAINED WEIGHTS"
CLIP_ZOOM = 1.2
MIN_SIDE = 16  # pixels: narrower remains of a box at the frame's edge are left out


def _asset(name: str) -> Path:
    from models.detector import import_ultralytics

    return Path(import_ultralytics().__file__).parent / "assets" / name


def _read_rgb(path: Path) -> np.ndarray:
    with av.open(str(path)) as container:
        return next(container.decode(video=0)).to_ndarray(format="rgb24")


def _photo_boxes() -> dict[str, list[list[float]]]:
    text = resources.files("stream").joinpath("data/demo_persons.json").read_text()
    return {k: v for k, v in json.loads(text).items() if not k.startswith("_")}


def _moved_boxes(
    image_hw: tuple[int, int], boxes: list[list[float]], num_frames: int
) -> list[list[list[float]]]:
    """Per clip frame, each box after the camera move. The box is drawn as a mask and moved with the very
    same ``pan_zoom`` the clip uses, so boxes and pixels cannot disagree; a box cut down to a sliver at
    the frame's edge is left out."""
    per_frame: list[list[list[float]]] = [[] for _ in range(num_frames)]
    for x1, y1, x2, y2, score in boxes:
        mask = np.zeros((*image_hw, 3), np.uint8)
        mask[int(y1) : int(y2), int(x1) : int(x2)] = 255
        for i, moved in enumerate(pan_zoom(mask, num_frames, CLIP_SIZE, zoom=CLIP_ZOOM)):
            ys, xs = np.nonzero(moved[..., 0] > 127)
            if len(xs) == 0:
                continue
            box = [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]
            if min(box[2] - box[0], box[3] - box[1]) >= MIN_SIDE:
                per_frame[i].append([*box, float(score)])
    return per_frame


def make_sample_clip(clip: Path, boxes_file: Path, num_frames: int) -> int:
    """Write the sample clip and its person boxes (``boxes:FILE`` JSONL); returns the frame count."""
    photo_boxes = _photo_boxes()
    frames: list[np.ndarray] = []
    records: list[list[list[float]]] = []
    counts = [num_frames // 2, num_frames - num_frames // 2]
    for name, count in zip(PHOTOS, counts, strict=True):
        image = _read_rgb(_asset(name))
        frames.extend(pan_zoom(image, count, CLIP_SIZE, zoom=CLIP_ZOOM))
        records.extend(_moved_boxes(image.shape[:2], photo_boxes[name], count))
    write_clip(clip, frames, fps=CLIP_FPS)
    with open(boxes_file, "w") as f:
        for index, boxes in enumerate(records):
            f.write(json.dumps({"frame": index, "boxes": [[round(v, 1) for v in b] for b in boxes]}) + "\n")
    return len(frames)


def _reachable(host: str, timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _loud(lines: list[str]) -> None:
    bar = "!" * 78
    print("\n".join([bar, *[f"!! {line}" for line in lines], bar]), file=sys.stderr, flush=True)


def pick_detector(boxes_file: Path) -> str:
    """YOLO when its weights can be had, else the shipped boxes."""
    from models.detector import DetectorError, resolve_yolo_weights

    try:
        return str(resolve_yolo_weights(DEFAULT_DETECTOR))
    except DetectorError as exc:
        print(f"demo: YOLO unavailable ({exc}); using the shipped person boxes", file=sys.stderr)
        return f"boxes:{boxes_file}"


def pose_weights_available() -> bool:
    """True when the default pose checkpoint is cached or can be downloaded now (it is fetched here)."""
    from models.loading import resolve_checkpoint

    if not os.environ.get("HF_HUB_OFFLINE") and not _reachable("huggingface.co"):
        os.environ["HF_HUB_OFFLINE"] = "1"  # answer from the cache at once instead of retrying
    try:
        resolve_checkpoint(DEFAULT_POSE_MODEL)
    except (FileNotFoundError, OSError, ValueError) as exc:
        _loud(
            [
                f"Sapiens2 weights {DEFAULT_POSE_MODEL} could not be fetched:",
                f"  {first_line(exc)[:200]}",
                "The demo runs with RANDOMLY INITIALISED weights: keypoints are meaningless and",
                f'every output frame is stamped "{UNTRAINED}". Connect to the Hugging Face Hub',
                "(or set HF_HOME to a cache holding the checkpoint) for real results.",
            ]
        )
        return False
    return True


def run_demo(out: str | Path = "demo_out", frames: int = 24, device: str = "auto") -> int:
    """Make the sample clip, run the pose pipeline on it and print where the outputs are."""
    import torch

    import stream.api

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # The input apart from the outputs: the annotated video is named after its source (sample.mp4) and
    # must not overwrite the clip it is decoded from.
    (out / "input").mkdir(exist_ok=True)
    clip, boxes_file = out / "input" / "sample.mp4", out / "input" / "sample_boxes.jsonl"
    count = make_sample_clip(clip, boxes_file, frames)
    print(f"demo: sample clip {clip} ({count} frames, {CLIP_SIZE[0]}x{CLIP_SIZE[1]})", file=sys.stderr)
    trained = pose_weights_available()
    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    values = {
        "out": str(out),
        "task": "pose",
        "detector": pick_detector(boxes_file),
        "device": device,
        "max_persons": 4,
    }
    if not on_gpu:
        # CPU: a smaller model input and no flip keep the demo to a few minutes on two cores.
        values.update(input_size=(512, 384), flip=False)
    if not trained:
        values.update(random_weights=True, banner=UNTRAINED)
        if not on_gpu:
            # Random weights show the pipeline, not the model: the smallest architecture is enough.
            values.update(pose_model="facebook/sapiens2-pose-0.1b", input_size=(256, 192))
    report = stream.api.run([clip], **values)
    source = next(iter(report.sources.values()))
    print(f"demo: {source.lines} frames in {report.elapsed:.1f} s")
    for kind, path in source.outputs.items():
        print(f"demo output ({kind}): {path}")
    if not trained:
        _loud([f"outputs were made with UNTRAINED WEIGHTS (see above): {out}"])
    return 0
