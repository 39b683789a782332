"""The CUDA path: bf16 against fp32 for every head, the copy stream overlapping compute, crops, pose
decoding and segmentation smoothing on the device against the CPU path, and the video encoder choice.

Marked ``cuda`` (``pytest -m cuda``) and skipped without a GPU. ``benchmarks/gpu_suite.py --dry-run`` sets
SAPIENS_STREAM_CUDA_TESTS_ON_CPU=1 to run them on the CPU instead (device against CPU then compares the
CPU with itself), so the tests cannot rot before a GPU runs them; the stream overlap test needs CUDA.
Each test records its measured figures with ``record_property`` for the suite's JSON.
"""

from __future__ import annotations

import copy
import os
from fractions import Fraction

import numpy as np
import pytest
import torch

from models import Sapiens2Config, build_sapiens2

pytestmark = pytest.mark.cuda

ON_CPU_VARIABLE = "SAPIENS_STREAM_CUDA_TESTS_ON_CPU"
HEADS = ("pose", "seg", "normal", "pointmap", "matting")
# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 per operation); through a few layers the outputs
# drift by about 1 %. Bound: relative L2 error ||bf16 - fp32|| / ||fp32|| per output.
BF16_RELATIVE_L2 = 0.03
CROP_GREY_LEVELS_SAME_BACKEND = 0.05  # torch warp on the device vs torch warp on the CPU, 0..255 scale
CROP_GREY_LEVELS_OPENCV = 1.5  # torch warp on the device vs the CPU default (OpenCV), max over pixels
KEYPOINT_PIXELS = 1e-2  # decoded keypoints, device vs CPU, frame pixels
# Smoothed probabilities, device vs CPU: the optical flow runs on an 8-bit guide image, so a last-bit
# difference of the device's upsampling can move a guide pixel by one level and the flow a little.
SEG_PROBABILITY_MAX, SEG_PROBABILITY_MEAN, SEG_LABEL_AGREEMENT = 0.05, 1e-3, 0.995


@pytest.fixture(scope="module")
def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if os.environ.get(ON_CPU_VARIABLE) == "1":
        return torch.device("cpu")
    pytest.skip("needs CUDA")


def relative_l2(value: torch.Tensor, reference: torch.Tensor) -> float:
    reference = reference.float()
    return float((value.float() - reference).norm() / reference.norm().clamp_min(1e-12))


def head_outputs(out) -> dict[str, torch.Tensor]:
    names = ("heatmaps", "logits", "normals", "pointmaps", "scales", "alphas", "foregrounds")
    return {name: getattr(out, name) for name in names if getattr(out, name, None) is not None}


@pytest.mark.parametrize("task", HEADS)
def test_bf16_matches_fp32(task, device, record_property):
    torch.manual_seed(0)
    fp32 = build_sapiens2(Sapiens2Config.from_arch("tiny", task=task, image_size=(64, 48))).to(device)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    pixels = torch.randn(4, 3, 64, 48, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.inference_mode():
        reference, lowered = head_outputs(fp32(pixels)), head_outputs(bf16(pixels.bfloat16()))
    assert reference.keys() == lowered.keys() and reference
    for name, value in lowered.items():
        assert value.dtype == torch.bfloat16, name
        error = relative_l2(value, reference[name])
        record_property(f"{task}.{name}.relative_l2", round(error, 5))
        assert error <= BF16_RELATIVE_L2, f"{task} {name}: relative L2 error {error:.4f}"


def test_copy_stream_overlaps_previous_compute(device, record_property):
    """Uploads of batch k+1 (copy stream) run while batch k computes (compute stream), scheduled as the
    worker schedules them (``OverlapScheduler``). The profiler's device timeline gives the copies' own
    intervals: CUDA events recorded around ``upload`` would also span its host-side copy into pinned
    memory, during which the device is idle by design."""
    if device.type != "cuda":
        pytest.skip("streams need CUDA")
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from stream.engine.device import DeviceStreams, OverlapScheduler

    streams = DeviceStreams(device)
    frames = [np.random.default_rng(i).integers(0, 255, (2160, 3840, 3), np.uint8) for i in range(4)]
    weight = torch.randn(4096, 4096, device=device, dtype=torch.bfloat16)

    def compute(staged):
        with streams.compute(staged):
            x = weight
            for _ in range(60):  # about 10 ms of matrix products: longer than one batch's uploads
                x = (x @ weight).clamp_(-1, 1)
            for tensor in staged.tensors:  # the uploaded frames are read on the compute stream
                x = x + tensor[:1, :1].float().mean()
            return x

    scheduler = OverlapScheduler(streams.upload, compute)
    for _ in range(3):  # pinned buffers, cuBLAS and the allocator settle first
        scheduler.submit(frames)
    scheduler.flush()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(6):
            scheduler.submit(frames)
        scheduler.flush()
        torch.cuda.synchronize(device)

    on_device = [e for e in prof.events() if e.device_type == DeviceType.CUDA]
    copies = [(e.time_range.start, e.time_range.end) for e in on_device if "HtoD" in e.name]
    kernels = sorted(
        (e.time_range.start, e.time_range.end)
        for e in on_device
        if not e.name.startswith(("Memcpy", "Memset"))
    )
    assert copies and kernels, "the profiler saw no host-to-device copies or kernels (CUPTI unavailable?)"
    busy = []  # the union of kernel intervals
    for start, end in kernels:
        if busy and start <= busy[-1][1]:
            busy[-1][1] = max(busy[-1][1], end)
        else:
            busy.append([start, end])
    overlapped = sum(
        max(0, min(end, busy_end) - max(start, busy_start))
        for start, end in copies
        for busy_start, busy_end in busy
    )
    copied = sum(end - start for start, end in copies)
    # The first batch's uploads have no compute before them: at most 5/6 of the copy time can overlap.
    fraction = overlapped / copied
    record_property("upload_ms_total", round(copied / 1e3, 3))
    record_property("compute_ms_total", round(sum(end - start for start, end in busy) / 1e3, 3))
    record_property("overlap_fraction", round(fraction, 3))
    assert fraction >= 0.5, f"uploads overlapped compute for {fraction:.0%} of their time"


def person_frames(device: torch.device) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Two smooth frames (1080p and 720p on CUDA, a quarter of that on the CPU) and boxes that shrink
    (antialiased), enlarge and cross the edges."""
    import cv2

    scale = 1.0 if device.type == "cuda" else 0.25
    rng = np.random.default_rng(0)
    frames = []
    for height, width in ((1080, 1920), (720, 1280)):
        height, width = int(height * scale), int(width * scale)
        noise = rng.integers(0, 255, (height // 8, width // 8, 3), np.uint8)
        frames.append(torch.from_numpy(cv2.resize(noise, (width, height), interpolation=cv2.INTER_CUBIC)))
    boxes = scale * torch.tensor(
        [[100, 50, 700, 1000], [1500, 600, 1950, 1100], [10, 10, 60, 90], [300, 200, 500, 650],
         [-40, 100, 200, 700]], dtype=torch.float32,
    )
    frame_index = torch.tensor([0, 0, 0, 1, 1])
    return [f.to(device) for f in frames], boxes, frame_index


def grey_levels(pixel_values: torch.Tensor) -> torch.Tensor:
    """Normalised crops back to the 0..255 scale, so differences read as grey levels."""
    from models.preprocess import IMAGENET_MEAN, IMAGENET_STD

    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255
    return pixel_values.float().cpu() * std + mean


def test_crops_on_device_equal_cpu_path(device, record_property):
    from models.preprocess import crop_and_warp

    frames, boxes, frame_index = person_frames(device)
    on_device = crop_and_warp(frames, boxes, frame_index, (256, 192), backend="torch")
    cpu_frames = [f.cpu() for f in frames]
    cpu_torch = crop_and_warp(cpu_frames, boxes, frame_index, (256, 192), backend="torch")
    cpu_default = crop_and_warp(cpu_frames, boxes, frame_index, (256, 192))
    torch.testing.assert_close(on_device.crop_to_frame.cpu(), cpu_default.crop_to_frame, atol=1e-4, rtol=1e-5)
    same_backend = (grey_levels(on_device.pixel_values) - grey_levels(cpu_torch.pixel_values)).abs()
    opencv = (grey_levels(on_device.pixel_values) - grey_levels(cpu_default.pixel_values)).abs()
    record_property("grey_levels_max_vs_cpu_torch", round(float(same_backend.max()), 4))
    record_property("grey_levels_max_vs_cpu_opencv", round(float(opencv.max()), 4))
    record_property("grey_levels_mean_vs_cpu_opencv", round(float(opencv.mean()), 4))
    assert float(same_backend.max()) <= CROP_GREY_LEVELS_SAME_BACKEND
    assert float(opencv.max()) <= CROP_GREY_LEVELS_OPENCV and float(opencv.mean()) <= 0.3


def test_pose_decoding_on_device_equals_cpu_path(device, record_property):
    from models.postprocess import decode_pose_heatmaps
    from models.preprocess import crop_to_frame_affine

    generator = torch.Generator().manual_seed(3)
    n, k, h, w = 6, 308, 64, 48
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    centres = torch.rand(n, k, 2, generator=generator) * torch.tensor([w - 1, h - 1])
    squared = (xs - centres[..., 0, None, None]) ** 2 + (ys - centres[..., 1, None, None]) ** 2
    heatmaps = torch.exp(-squared / 8)
    heatmaps = heatmaps + 0.02 * torch.rand(n, k, h, w, generator=generator)  # flat maps take the full blur
    affine = crop_to_frame_affine(torch.tensor([[100.0, 50, 400, 900]]).repeat(n, 1), (256, 192))
    points_cpu, scores_cpu = decode_pose_heatmaps(heatmaps, affine, (256, 192))
    points, scores = decode_pose_heatmaps(heatmaps.to(device), affine.to(device), (256, 192))
    difference = float((points.cpu() - points_cpu).abs().max())
    record_property("keypoint_max_difference_px", round(difference, 6))
    torch.testing.assert_close(scores.cpu(), scores_cpu)
    assert difference <= KEYPOINT_PIXELS


def smoothed_labels(logits: list[torch.Tensor], frame_hw: tuple[int, int], small_hw: tuple[int, int]):
    """The worker's smoothing of full-frame segmentation: probabilities at a reduced size on the logits'
    device, smoothed on the host, then upsampled to labels on the device."""
    from models.postprocess import segment_full_frame
    from trackers import SegmentationSmoother

    smoother = SegmentationSmoother()
    labels, probabilities = [], []
    for index, frame_logits in enumerate(logits):
        _, probs = segment_full_frame(frame_logits.float(), small_hw, return_probs=True)
        smoothed = torch.from_numpy(smoother(probs.cpu().numpy(), index / 30)).to(frame_logits.device)
        frame_labels, _ = segment_full_frame(smoothed, frame_hw, return_probs=False)
        labels.append(frame_labels.cpu())
        probabilities.append(smoothed.cpu())
    return labels, probabilities


def test_seg_smoothing_on_device_equals_cpu_path(device, record_property):
    generator = torch.Generator().manual_seed(4)
    base = torch.randn(29, 32, 24, generator=generator) * 3
    logits = [base + 0.5 * torch.randn(29, 32, 24, generator=generator) for _ in range(4)]
    labels_cpu, probs_cpu = smoothed_labels(logits, (360, 640), (90, 160))
    labels, probs = smoothed_labels([x.to(device) for x in logits], (360, 640), (90, 160))
    agreement = float(np.mean([(a == b).float().mean() for a, b in zip(labels, labels_cpu, strict=True)]))
    differences = [(a - b).abs() for a, b in zip(probs, probs_cpu, strict=True)]
    largest = max(float(d.max()) for d in differences)
    mean = float(np.mean([float(d.mean()) for d in differences]))
    record_property("label_agreement", round(agreement, 6))
    record_property("probability_max_difference", largest)
    record_property("probability_mean_difference", mean)
    assert largest <= SEG_PROBABILITY_MAX and mean <= SEG_PROBABILITY_MEAN
    assert agreement >= SEG_LABEL_AGREEMENT


def test_nvenc_opens_or_falls_back(device, tmp_path, record_property, capsys):
    """The automatic codec is h264_nvenc only where a GPU encoder opens (an H100 has none); either way a
    short clip encodes and decodes back whole."""
    import av

    from stream.edges.sinks import nvenc_usable, pick_video_codec

    codec = pick_video_codec("auto")
    usable = nvenc_usable()
    line = (
        "video codec: h264_nvenc (the GPU encoder opened)"
        if usable
        else "video codec: libx264 (falling back: h264_nvenc "
        + ("did not open here)" if "h264_nvenc" in av.codecs_available else "is not in this FFmpeg build)")
    )
    with capsys.disabled():
        print(f"\n{line}")
    record_property("video_codec", codec)
    record_property("video_codec_line", line)
    assert codec == ("h264_nvenc" if usable else "libx264")
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=Fraction(30))
        stream.width, stream.height, stream.pix_fmt = 256, 144, "yuv420p"
        for i in range(10):
            image = np.full((144, 256, 3), i * 20, np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        container.mux(stream.encode(None))
    with av.open(str(path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 10
