"""The tasks beyond pose: normals, pointmaps (depth), matting and segmentation (frame or person crops).

Each dense task takes the whole frame, prepared as the release's image processor prepares it for that
task (``preprocessing``): normals and pointmaps are resized keeping the aspect ratio and padded to the
input size, centred (``do_pad=True``); matting and full-frame segmentation stretch the frame. The
outputs are post-processed as transformers' ``post_process_*`` do (padding removed, resized to the
frame; matte clamped to [0, 1]), then, with smoothing on, blended over time per source
(``smooth_map``). Only the frame-sized maps leave the device.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from models.processor_config import Preprocessing, release_preprocessing
from stream.config import PipelineConfig
from stream.engine.state import SourceStates, smoothing_size
from stream.media.frames import ModelOutputs
from stream.runtime.messages import Message

# Model output fields per dense task, in the order the post-processing takes them.
OUTPUT_FIELDS = {
    "normal": ("normals",),
    "pointmap": ("pointmaps", "scales"),
    "matting": ("foregrounds", "alphas"),
}

Forward = Callable[[torch.nn.Module, torch.Tensor, tuple[str, ...]], dict[str, torch.Tensor]]


def preprocessing(task: str, model: torch.nn.Module, cfg: PipelineConfig) -> Preprocessing:
    """How ``task``'s inputs are prepared: as the checkpoint's ``preprocessor_config.json`` says (size,
    mean/std, resampling, padding; the release's defaults without one), at ``--input-size`` when given.
    Full frames follow all of it; person crops (pose, ``--seg-mode person``) its size and normalisation,
    as the processor's box crops do."""
    base = getattr(model, "preprocessing", None) or release_preprocessing(task)
    return base.with_input_size(cfg.input_size)


def run_dense(
    task: str,
    model: torch.nn.Module,
    forward: Forward,
    frames: list[torch.Tensor],
    messages: list[Message],
    results: list[ModelOutputs],
    cfg: PipelineConfig,
    states: SourceStates,
) -> None:
    """One dense task on every frame of a group (one batched forward), its maps stored in ``results``."""
    from models.preprocess import prepare_frames

    prep = preprocessing(task, model, cfg)
    pixel_values = prepare_frames(frames, prep)
    outputs = forward(model, pixel_values, OUTPUT_FIELDS[task])
    for i, (frame, message, result) in enumerate(zip(frames, messages, results, strict=True)):
        maps = _postprocess(task, {name: value[i : i + 1] for name, value in outputs.items()}, frame, prep)
        if cfg.smooth:
            smoother = states.dense_smoother(message, task)
            # Matting: the matte is smoothed; the foreground colours follow the current frame.
            key = "alpha" if task == "matting" else next(iter(maps))
            maps[key] = smooth_map(smoother, maps[key], frame, message.timestamp)
            if task == "normal":
                maps[key] = F.normalize(maps[key], p=2, dim=0, eps=1e-8)
            if task == "matting":
                maps[key] = maps[key].clamp(0.0, 1.0)
        _store(task, maps, result)


def _postprocess(
    task: str, out: dict[str, torch.Tensor], frame: torch.Tensor, prep: Preprocessing
) -> dict[str, torch.Tensor]:
    """One frame's outputs as transformers' ``post_process_*`` give them, at the frame's size."""
    from models.postprocess import postprocess_matting, postprocess_normals, postprocess_pointmaps

    frame_hw = [tuple(frame.shape[:2])]
    source = frame_hw if prep.do_pad else None  # padding to remove
    if task == "normal":
        return {"normals": postprocess_normals(out["normals"], source, frame_hw)[0]}
    if task == "pointmap":
        return {"pointmap": postprocess_pointmaps(out["pointmaps"], out.get("scales"), source, frame_hw)[0]}
    matte = postprocess_matting(out["foregrounds"], out["alphas"], target_size=frame_hw[0])
    return {"alpha": matte["alpha"][0], "foreground": matte["foreground"][0]}


def _store(task: str, maps: dict[str, torch.Tensor], result: ModelOutputs) -> None:
    """The maps as the result's host arrays, channels last."""
    if task == "normal":
        result.normals = _host(maps["normals"].permute(1, 2, 0))
    elif task == "pointmap":
        result.pointmap = _host(maps["pointmap"].permute(1, 2, 0))
    else:
        result.alpha = _host(maps["alpha"][0])
        # Pre-multiplied colours in 8 bits: they only feed the composite shown in the video.
        foreground = maps["foreground"].permute(1, 2, 0).mul(255.0).round_().clamp_(0, 255)
        result.foreground = foreground.to(torch.uint8).cpu().numpy()


def smooth_map(smoother, current: torch.Tensor, frame: torch.Tensor, timestamp: float) -> torch.Tensor:
    """``current`` (C, H, W) blended with its source's earlier maps (``SegmentationSmoother``, EMA
    following the frames' optical flow), returned at full resolution.

    The smoother works at a reduced size (optical flow and blending on the host took seconds per
    frame at 1080p); what it changes there is added back to the full-resolution map as a smooth
    correction, so the current frame's detail is kept and only the temporal flicker is averaged out.
    """
    height, width = current.shape[-2:]
    small_hw = smoothing_size((height, width))
    small = F.interpolate(current[None].float(), size=small_hw, mode="bilinear", antialias=True)[0]
    image = frame.permute(2, 0, 1)[None].float()
    guide = F.interpolate(image, size=small_hw, mode="bilinear", antialias=True)[0].permute(1, 2, 0)
    guide = guide.round().clamp(0, 255).to(torch.uint8).cpu().numpy()
    smoothed = torch.from_numpy(smoother(small.cpu().numpy(), timestamp, image=guide)).to(current.device)
    correction = F.interpolate((smoothed - small)[None], size=(height, width), mode="bilinear")[0]
    return current.float() + correction


def run_frame_seg(
    model: torch.nn.Module,
    forward: Forward,
    frames: list[torch.Tensor],
    messages: list[Message],
    results: list[ModelOutputs],
    cfg: PipelineConfig,
    states: SourceStates,
) -> None:
    """Segmentation of the whole frames, stretched to the input as the official demo does; logits
    upsampled to the frame, then argmax (``models.postprocess.segment_full_frame``)."""
    from models.postprocess import segment_full_frame
    from models.preprocess import prepare_frames

    prep = preprocessing("seg", model, cfg)
    pixel_values = prepare_frames(frames, prep)
    logits = forward(model, pixel_values, ("logits",))["logits"]
    for frame, message, result, frame_logits in zip(frames, messages, results, logits, strict=True):
        frame_hw = tuple(frame.shape[:2])
        if cfg.smooth:
            # Smoothing (optical flow and blending on the host) runs at a reduced size: at 1080p it took
            # seconds per frame on a CPU. The smoothed probabilities are then upsampled to the frame like
            # the raw logits would be.
            _, probs = segment_full_frame(frame_logits.float(), smoothing_size(frame_hw), return_probs=True)
            smoothed = states.seg_smoother(message)(probs.cpu().numpy(), message.timestamp)
            labels, _ = segment_full_frame(torch.from_numpy(smoothed), frame_hw, return_probs=False)
        else:
            labels, _ = segment_full_frame(frame_logits.float(), frame_hw, return_probs=False)
        result.seg_labels = labels.cpu().numpy().astype(np.uint8)


def run_person_seg(
    model: torch.nn.Module,
    forward: Forward,
    frames: list[torch.Tensor],
    messages: list[Message],
    boxes: list[np.ndarray],
    results: list[ModelOutputs],
    cfg: PipelineConfig,
    states: SourceStates,
) -> None:
    """Segmentation on person crops (``--seg-mode person``), each crop's logits pasted back into its
    frame (``models.postprocess.paste_person_segmentation``); where crops overlap the more confident
    person owns the pixel. Crops come from the detector's boxes; a frame without persons is background."""
    from models.postprocess import paste_person_segmentation, segment_full_frame
    from models.preprocess import crop_and_warp

    prep = preprocessing("seg", model, cfg)
    counts = [len(b) for b in boxes]
    logits = crop_to_frame = None
    if sum(counts):
        device = frames[0].device
        all_boxes = torch.from_numpy(np.concatenate(boxes)).to(device)
        index = torch.repeat_interleave(torch.arange(len(frames)), torch.tensor(counts)).to(device)
        batch = crop_and_warp(frames, all_boxes, index, input_size=prep.input_size, normalisation=prep)
        logits = forward(model, batch.pixel_values, ("logits",))["logits"]
        crop_to_frame = batch.crop_to_frame
    start = 0
    for frame, message, count, result in zip(frames, messages, counts, results, strict=True):
        frame_hw = tuple(frame.shape[:2])
        if count == 0:
            result.seg_labels = np.zeros(frame_hw, np.uint8)
            continue
        chunk = slice(start, start + count)
        start += count
        labels, _, probs = paste_person_segmentation(
            logits[chunk].float(), crop_to_frame[chunk], frame_hw, input_size=prep.input_size
        )
        if cfg.smooth:
            small_hw = smoothing_size(frame_hw)
            small = F.interpolate(probs[None], size=small_hw, mode="bilinear", antialias=True)[0]
            smoothed = states.seg_smoother(message)(small.cpu().numpy(), message.timestamp)
            labels, _ = segment_full_frame(torch.from_numpy(smoothed), frame_hw, return_probs=False)
        result.seg_labels = labels.cpu().numpy().astype(np.uint8)


def _host(value: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(value.detach().float().cpu().numpy(), np.float32)
