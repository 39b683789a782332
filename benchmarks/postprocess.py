"""Pose decoding and person crops: ours against transformers' Sapiens2ImageProcessor (and cv2's warps).

    python benchmarks/postprocess.py              # CPU: benchmarks/results/postprocess_cpu.json
    python -m benchmarks.postprocess --device cuda --out /tmp/postprocess_cuda.json

Pose: 308 heatmaps of 256x192 (the 1024x768 input) per person, for 1, 8 and 32 persons. The reference
decodes a whole batch at once; its memory grows with it (several GB at 32 persons), so it is timed in
chunks of ``--reference-chunk`` persons and the chunk times are summed. Crops: person boxes in a 1080p
frame warped to the model input, ours (antialiased and single-tap; on CPU both warp backends) against
the reference's ``crop_and_resize`` and against ``cv2.warpAffine`` crop by crop (the official training
warp; CPU only), with the pixel differences between them.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import torch

if __package__ in (None, ""):  # run as a script (as the Makefile does): make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import time_call, write_results  # noqa: E402
from models.postprocess import decode_pose_heatmaps, full_blur_max, gaussian_kernel_1d  # noqa: E402
from models.preprocess import IMAGENET_MEAN, IMAGENET_STD, crop_and_warp, crop_to_frame_affine  # noqa: E402

INPUT_SIZE = (1024, 768)
HEATMAP_SIZE = (256, 192)
NUM_KEYPOINTS = 308


def model_like_heatmaps(num_persons: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """A Gaussian bump per map (sigma 6 as the training targets), amplitude 0.2..1, light noise."""
    generator = torch.Generator().manual_seed(seed)
    h, w = HEATMAP_SIZE
    shape = (num_persons, NUM_KEYPOINTS, 1, 1)
    cx = 4 + torch.rand(shape, generator=generator) * (w - 9)
    cy = 4 + torch.rand(shape, generator=generator) * (h - 9)
    amplitude = 0.2 + 0.8 * torch.rand(shape, generator=generator)
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w)
    heatmaps = torch.empty(num_persons, NUM_KEYPOINTS, h, w)
    for row in range(h):  # row by row keeps the temporaries small
        heatmaps[:, :, row] = (amplitude * torch.exp(-((xs - cx) ** 2 + (row - cy) ** 2) / 72.0))[:, :, 0]
    heatmaps += 0.005 * torch.randn(heatmaps.shape, generator=generator)
    return heatmaps.to(device)


def person_boxes(num_persons: int, frame_hw: tuple[int, int], seed: int = 0) -> torch.Tensor:
    """Standing persons 300..900 px tall spread over the frame, some past its edges."""
    rng = np.random.default_rng(seed)
    height = rng.uniform(300, 900, num_persons)
    width = height * rng.uniform(0.3, 0.5, num_persons)
    x0 = rng.uniform(-0.1, 0.95, num_persons) * frame_hw[1]
    y0 = rng.uniform(-0.05, 0.6, num_persons) * frame_hw[0]
    return torch.tensor(np.stack([x0, y0, x0 + width, y0 + height], axis=1), dtype=torch.float32)


def _reference_processor():
    from transformers.models.sapiens2.image_processing_sapiens2 import Sapiens2ImageProcessor

    return Sapiens2ImageProcessor(size={"height": INPUT_SIZE[0], "width": INPUT_SIZE[1]})


def _reference_decode(processor, heatmaps: torch.Tensor, boxes: torch.Tensor, chunk: int) -> torch.Tensor:
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
    keypoints = []
    for start in range(0, len(boxes), chunk):
        part = slice(start, start + chunk)
        results = processor.post_process_pose_estimation(
            SimpleNamespace(heatmaps=heatmaps[part]), boxes=[xywh[part].tolist()]
        )[0]
        keypoints += [r["keypoints"] for r in results]
    return torch.stack(keypoints)


def bench_pose(device: torch.device, persons: list[int], repeats: int, chunk: int, sync) -> list[dict]:
    processor = _reference_processor()
    rows = []
    for num_persons in persons:
        heatmaps = model_like_heatmaps(num_persons, device)
        boxes = person_boxes(num_persons, (1080, 1920)).to(device)
        affine = crop_to_frame_affine(boxes, INPUT_SIZE)
        ours = time_call(
            lambda h=heatmaps, a=affine: decode_pose_heatmaps(h, a, INPUT_SIZE), repeats, sync=sync
        )
        # The reference takes seconds per call on CPU: fewer repeats for larger batches.
        reference_repeats = max(1, repeats // max(1, num_persons // 4))
        theirs = time_call(
            lambda h=heatmaps, b=boxes: _reference_decode(processor, h, b, chunk),
            reference_repeats,
            warmup=0,
            sync=sync,
        )
        keypoints, _ = decode_pose_heatmaps(heatmaps, affine, INPUT_SIZE)
        reference = _reference_decode(processor, heatmaps, boxes, chunk)
        ours_s, theirs_s = statistics.median(ours), statistics.median(theirs)
        rows.append(
            {
                "persons": num_persons,
                "keypoints": NUM_KEYPOINTS,
                "heatmap_hw": list(HEATMAP_SIZE),
                "ours_ms": round(ours_s * 1e3, 2),
                "reference_ms": round(theirs_s * 1e3, 2),
                "speedup": round(theirs_s / ours_s, 2),
                "reference_chunk_persons": chunk,
                "max_abs_diff_px": float((keypoints - reference).abs().max()),
            }
        )
        print(rows[-1], flush=True)
    return rows


def bench_blur(device: torch.device, repeats: int, sync) -> list[dict]:
    """The full-map blur behind DARK's exact rescaling, per backend, wall and process CPU time.

    Half the maps of a batch, as with randomly initialised weights, where the clamp can bite on about
    half of them: 24 crops of the 64 x 48 heatmaps of a 256 x 192 input, 4 crops of the official 256 x 192.
    """
    kernel = gaussian_kernel_1d(11, device=device)
    generator = torch.Generator().manual_seed(3)
    rows = []
    for crops, heatmap_hw in ((24, (64, 48)), (4, HEATMAP_SIZE)):
        maps = (torch.randn(crops * NUM_KEYPOINTS, *heatmap_hw, generator=generator) * 0.05).to(device)
        which = torch.arange(0, maps.shape[0], 2, device=device)
        row = {"crops": crops, "heatmap_hw": list(heatmap_hw), "maps_blurred": int(which.numel())}
        backends = ["torch", "opencv"] if device.type == "cpu" else ["torch"]
        for backend in backends:
            cpu_start = time.process_time()
            call = functools.partial(full_blur_max, maps, kernel, which, backend)
            wall = time_call(call, repeats, sync=sync)
            cpu = (time.process_time() - cpu_start) / (repeats + 1)  # time_call adds one warm-up call
            row[f"{backend}_ms"] = round(statistics.median(wall) * 1e3, 2)
            row[f"{backend}_cpu_ms"] = round(cpu * 1e3, 2)
        if "opencv" in backends:
            a, b = (full_blur_max(maps, kernel, which, name) for name in backends)
            row["max_abs_diff"] = float((a - b).abs().max())
        rows.append(row)
        print(row, flush=True)
    return rows


def _cv2_warps(frame: np.ndarray, affine: torch.Tensor, input_size: tuple[int, int]) -> list[np.ndarray]:
    """The official warp: cv2.warpAffine per crop, INTER_AREA (bilinear in warpAffine) or INTER_CUBIC."""
    crops = []
    for a in affine.double().cpu().numpy():
        inverse = np.linalg.inv(np.vstack([a, [0, 0, 1]]))[:2]
        flags = cv2.INTER_AREA if max(a[0, 0], a[1, 1]) > 1 else cv2.INTER_CUBIC
        crops.append(
            cv2.warpAffine(
                frame, inverse, (input_size[1], input_size[0]), flags=flags,
                borderMode=cv2.BORDER_CONSTANT, borderValue=0,
            )
        )
    return crops


def bench_crops(
    device: torch.device, num_persons: int, input_size: tuple[int, int], repeats: int, sync
) -> dict:
    from transformers.models.sapiens2.image_processing_sapiens2 import crop_and_resize

    rng = np.random.default_rng(1)
    coarse = (rng.random((1080 // 16 + 1, 1920 // 16 + 1, 3)) * 255).astype(np.uint8)
    frame_np = cv2.resize(coarse, (1920, 1080), interpolation=cv2.INTER_CUBIC)
    frame_np = np.clip(frame_np + rng.normal(0, 8, frame_np.shape), 0, 255).astype(np.uint8)  # fine texture
    frame = torch.from_numpy(frame_np).to(device)
    boxes = person_boxes(num_persons, (1080, 1920)).to(device)
    frame_index = torch.zeros(num_persons, dtype=torch.long, device=device)
    xywh = torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], dim=1)

    def reference():
        image = frame.permute(2, 0, 1).float()
        return crop_and_resize(image, xywh, input_size)

    def ours(antialias: bool, backend: str = "auto") -> torch.Tensor:
        batch = crop_and_warp([frame], boxes, frame_index, input_size, antialias=antialias, backend=backend)
        return batch.pixel_values

    timings = {
        "ours_antialias_ms": time_call(lambda: ours(True), repeats, sync=sync),
        "ours_single_tap_ms": time_call(lambda: ours(False), repeats, sync=sync),
        "reference_crop_and_resize_ms": time_call(reference, repeats, sync=sync),
    }
    if device.type == "cpu":  # "auto" is the opencv backend here; the grid_sample one for comparison
        timings["ours_antialias_torch_backend_ms"] = time_call(lambda: ours(True, "torch"), repeats)
        timings["ours_single_tap_torch_backend_ms"] = time_call(lambda: ours(False, "torch"), repeats)
    affine = crop_to_frame_affine(boxes, input_size)
    if device.type == "cpu":
        timings["cv2_warp_affine_ms"] = time_call(lambda: _cv2_warps(frame_np, affine, input_size), repeats)
    row = {name: round(statistics.median(t) * 1e3, 2) for name, t in timings.items()}

    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255
    antialiased = ours(True) * std + mean
    single = ours(False) * std + mean
    antialiased_torch = ours(True, "torch") * std + mean
    theirs = reference().clamp(0, 255)
    cv2_crops = torch.from_numpy(np.stack(_cv2_warps(frame_np, affine, input_size))).permute(0, 3, 1, 2)
    cv2_crops = cv2_crops.float().to(device)
    shrink = torch.maximum(affine[:, 0, 0], affine[:, 1, 1])

    def diff(a: torch.Tensor, b: torch.Tensor) -> dict:
        d = (a - b).abs()
        return {"mean": round(float(d.mean()), 4), "max": round(float(d.max()), 3)}

    row.update(
        {
            "persons": num_persons,
            "frame_hw": [1080, 1920],
            "input_hw": list(input_size),
            "shrink_range": [round(float(shrink.min()), 3), round(float(shrink.max()), 3)],
            "pixel_diff_0_255": {
                "single_tap_vs_reference": diff(single, theirs),
                "antialias_vs_reference": diff(antialiased, theirs),
                "single_tap_vs_cv2_warp_affine": diff(single, cv2_crops),
                "antialias_vs_cv2_warp_affine": diff(antialiased, cv2_crops),
                "reference_vs_cv2_warp_affine": diff(theirs, cv2_crops),
                "antialias_auto_vs_torch_backend": diff(antialiased, antialiased_torch),
            },
        }
    )
    print(row, flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--persons", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reference-chunk", type=int, default=8)
    parser.add_argument("--crop-persons", type=int, default=8)
    parser.add_argument("--crop-input-sizes", nargs="+", default=["1024x768", "512x384"], help="HxW")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="JSON path (default results/postprocess_<device>.json)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    with torch.inference_mode():
        pose = bench_pose(device, args.persons, args.repeats, args.reference_chunk, sync)
        blur = bench_blur(device, args.repeats, sync)
        crops = [
            bench_crops(device, args.crop_persons, tuple(int(v) for v in size.split("x")), args.repeats, sync)
            for size in args.crop_input_sizes
        ]
    at_8 = [row["speedup"] for row in pose if row["persons"] == 8]
    payload = {
        "device": str(device),
        "pose_decoding": pose,
        "dark_full_blur": blur,
        "crop_and_warp": crops,
        "target": "pose decoding >= 5x the reference at 8 persons (CPU)",
        "target_met": bool(at_8 and at_8[0] >= 5.0),
    }
    write_results(f"postprocess_{device.type}", payload, args.out)


if __name__ == "__main__":
    main()
