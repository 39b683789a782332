"""GPU worker (one per device): detect -> crop+warp -> Sapiens2 -> decode, batched across sources.

Frames from every decoder arrive on one PULL socket. The worker collects a group of up to
``max_batch`` frames or ``max_wait_ms`` (whichever comes first), detects persons in the whole group
at once, warps every person box to the model input and runs the model in chunks padded to a few
static batch sizes (flip-TTA doubles each chunk inside the same forward). Keypoints and label maps are
decoded on the device; only those small results leave it, one ``results`` message per frame, to the
source's track stage. On CPU the heatmaps of each chunk are decoded on a second thread while the next
chunk, or the next group, is cropped and forwarded: a group's results leave once the next group is
computed (or at once when no frame is waiting). Control messages (``eos``, ``skip``) travel in the
group in arrival order, so each source's messages leave in the order they came.

With smoothing on (the default; ``--no-smooth`` turns it off), the boxes persons are cropped from are
steadied per source before the crop (``trackers.CropBoxSmoother``: associated with the previous
frame's crop boxes, One-Euro filtered over the frames' timestamps), so detector jitter does not shake
the crops and, through them, the keypoints. The results still carry the detector's boxes (the tracker
downstream associates on them); ``crop_to_frame`` describes the crops actually cut.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch
import zmq

from stream.config import PipelineConfig
from stream.engine.device import (
    DeviceStreams,
    OverlapScheduler,
    StagedTensors,
    padded_size,
    static_batch_sizes,
)
from stream.media.frames import FrameResult
from stream.runtime import topology
from stream.runtime.events import Done, Drop, Ready
from stream.runtime.messages import EOS, FRAME, RESULTS, SKIP, Message, follow_up, result_arrays
from stream.runtime.ring import INFER_READER, release, resolve
from stream.runtime.stage import POLL_MS, Stage, StageLink, WorkerSpec
from stream.runtime.transport import close_sender, recv_message, send_until

if TYPE_CHECKING:
    from trackers import CropBoxSmoother, SegmentationSmoother

ARCH_PATTERN = re.compile(r"(0\.1b|0\.4b|0\.8b|1b|5b)", re.IGNORECASE)


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded (one line naming the model and the reason)."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available here (use --device cpu)")
    return device


def use_all_cores() -> None:
    """A process-mode CPU inference worker runs the model's forward on every core; the pose decoding
    thread (``InferenceEngine``) shares them.

    With real models the forward dominates: the demo (0.1b pose model at 256x192, 2 cores) ran its 24
    frames in 35 s with the forward on both cores and in 64 s with it on one core beside the decoding.
    Only a model as small as the tests' tiny one gains from giving the decoding a core of its own (about
    8 % in ``benchmarks/pipeline.py`` (b)). ``OMP_NUM_THREADS``, when set, wins.
    """
    if "OMP_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores))


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision == "auto":
        # The models were trained in bf16; CPUs run fp32 faster and exactly.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def load_task_model(spec: str, task: str, cfg: PipelineConfig, device: torch.device, dtype: torch.dtype):
    """The ``task`` model from a Hub id or directory, or a randomly initialised one (demo fallback)."""
    from models import Sapiens2Config, build_sapiens2, load_sapiens2

    if cfg.random_weights:
        match = ARCH_PATTERN.search(spec)
        arch = match.group(1).lower() if match else "0.4b"
        config = Sapiens2Config.from_arch(arch, task=task, image_size=cfg.input_size)
        return build_sapiens2(config, device=device, dtype=dtype)
    try:
        model = load_sapiens2(spec, device=device, dtype=dtype)
    except Exception as exc:
        raise ModelLoadError(f"cannot load {task} model {spec!r}: {_one_line(exc)}") from exc
    if getattr(model, "task", task) != task:
        raise ModelLoadError(f"{task} model {spec!r} is a {model.task} model")
    return model


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


@dataclass
class Group:
    """Messages collected for one batch, in arrival order, and the frames among them."""

    messages: list[Message] = field(default_factory=list)
    frames: list[Message] = field(default_factory=list)


@dataclass
class PreparedGroup:
    """A group after detection, with its frames uploaded (or uploading) to the device."""

    group: Group
    staged: StagedTensors
    boxes: list[np.ndarray]  # per frame (N_i, 4) float32
    scores: list[np.ndarray]  # per frame (N_i,) float32
    skipped: dict[int, str]  # position in group.frames -> drop cause


@dataclass
class PendingPose:
    """A group's pose work after its forwards: the decoding of each chunk, maybe still running."""

    counts: list[int]  # persons per active frame
    crop_to_frame: np.ndarray  # (N, 2, 3) float32, every person's crop affine
    chunks: list[Future]  # per chunk of crops: (keypoints (n, K, 2), scores (n, K)) on the device


@dataclass
class LaunchedGroup:
    """A group whose models have run (``InferenceEngine.launch``), waiting to be finished."""

    group: Group
    active: list[int]  # positions in group.frames that were computed (not skipped)
    skipped: dict[int, str]  # position in group.frames -> drop cause
    results: dict[int, FrameResult] = field(default_factory=dict)
    pose: PendingPose | None = None


class InferenceEngine:
    """Detector and Sapiens2 models on one device, with batched, padded, flip-aware forwards.

    ``decode_thread`` (default: on for CPU) decodes each chunk's heatmaps on a thread of its own while the
    next chunk is forwarded. On CUDA the decoding is queued on the device behind the forward anyway, so it
    runs inline there. ``close()`` (or ``with``) stops the thread.
    """

    def __init__(self, cfg: PipelineConfig, live: bool = False, decode_thread: bool | None = None) -> None:
        from models.detector import make_detector

        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        if decode_thread is None:
            decode_thread = self.device.type == "cpu"
        self.decoder = ThreadPoolExecutor(1, thread_name_prefix="pose-decode") if decode_thread else None
        self.dtype = resolve_dtype(cfg.precision, self.device)
        self.flip = cfg.flip if cfg.flip is not None else not live
        self.live = live
        self.sizes = static_batch_sizes(cfg.max_batch)
        self.streams = DeviceStreams(self.device)
        self.detector = make_detector(
            cfg.detector,
            device=str(self.device),
            conf=cfg.conf,
            iou=cfg.iou,
            max_det=cfg.max_persons,
            imgsz=cfg.detector_imgsz,
        )
        self.pose_model = (
            load_task_model(cfg.pose_model, "pose", cfg, self.device, self.dtype) if cfg.pose else None
        )
        self.seg_model = (
            load_task_model(cfg.seg_model, "seg", cfg, self.device, self.dtype) if cfg.seg else None
        )
        # Per-source state, each entry for one segment of the source and led by its number, so a new
        # segment (reconnect, resolution change) never starts from the state of the one before:
        # (segment, frame the boxes belong to, boxes, scores), carried between detector runs;
        self.last_boxes: dict[str, tuple[int, int, np.ndarray, np.ndarray]] = {}
        # (segment, smoother) of the label maps and, when smoothing is on, of the crop boxes.
        self.seg_smoothers: dict[str, tuple[int, SegmentationSmoother]] = {}
        self.crop_smoothers: dict[str, tuple[int, CropBoxSmoother]] = {}
        self.dropped_boxes = 0

    def close(self) -> None:
        if self.decoder is not None:
            self.decoder.shutdown(wait=True)

    def __enter__(self) -> InferenceEngine:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def scheduler(self) -> OverlapScheduler:
        """How the worker runs this engine: each group is prepared while the one before computes. With a
        decode thread, each group is also finished after the next one is computed, so its last heatmaps
        decode while the next group is cropped and forwarded; not between detector runs
        (``--detect-every``), whose boxes come from keypoints needed before the group after next."""
        if self.decoder is not None and self.cfg.detect_every == 1:
            return OverlapScheduler(self.prepare, self.launch, self.finish)
        return OverlapScheduler(self.prepare, self.compute)

    # --- warm-up ------------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Run every static batch size once (CUDA only: kernels, autotuning and allocator settle)."""
        if self.device.type != "cuda":
            return
        h, w = self.cfg.input_size
        for model in (self.pose_model, self.seg_model):
            if model is None:
                continue
            for size in self.sizes:
                self._forward(model, torch.zeros(size, 3, h, w, device=self.device))
        torch.cuda.synchronize(self.device)

    # --- per group ----------------------------------------------------------------------------------

    def prepare(self, group: Group) -> PreparedGroup:
        """Detect persons in the group's frames and start uploading the frames to the device."""
        skipped = {}
        if self.live:
            now = time.time()
            for i, message in enumerate(group.frames):
                if now - message.capture > self.cfg.stale_after:
                    skipped[i] = "stale"
        active = [i for i in range(len(group.frames)) if i not in skipped]
        boxes = [np.zeros((0, 4), np.float32) for _ in group.frames]
        scores = [np.zeros((0,), np.float32) for _ in group.frames]
        detect, covered = [], {(source, entry[0]) for source, entry in self.last_boxes.items()}
        for i in active:
            message = group.frames[i]
            if self._needs_detection(message, covered):
                detect.append(i)
                covered.add((message.source, message.segment))
        detected = {}
        if detect:
            images = [group.frames[i].arrays["image"] for i in detect]
            indices = [int(group.frames[i].frame) for i in detect]
            detected = dict(zip(detect, self.detector(images, indices), strict=True))
        for i in active:  # in arrival order, so a frame never takes boxes from a later one
            message = group.frames[i]
            if i in detected:
                b, s = detected[i]
                boxes[i], scores[i] = np.asarray(b, np.float32).reshape(-1, 4), np.asarray(s, np.float32)
                self.last_boxes[message.source] = (message.segment, int(message.frame), boxes[i], scores[i])
            else:
                # Between detections: boxes around the latest keypoints (see _carry_pose_boxes), or the
                # last detector boxes when only segmentation runs. Detection covered this segment.
                _, _, boxes[i], scores[i] = self.last_boxes[message.source]
        images = [group.frames[i].arrays["image"] for i in active]
        staged = self.streams.upload(images)
        return PreparedGroup(group, staged, boxes, scores, skipped)

    def _needs_detection(self, message: Message, covered: set[tuple[str, int]]) -> bool:
        """Every k-th frame, and the first frame of a source's segment that has no boxes to carry."""
        k = self.cfg.detect_every
        return k == 1 or (message.source, message.segment) not in covered or int(message.frame) % k == 0

    def compute(self, prepared: PreparedGroup) -> list[Message]:
        """Run the models on a prepared group; returns the outgoing messages in arrival order."""
        return self.finish(self.launch(prepared))

    @torch.inference_mode()
    def launch(self, prepared: PreparedGroup) -> LaunchedGroup:
        """Crop and forward a prepared group; its pose decoding may still run on the decode thread."""
        group = prepared.group
        active = [i for i in range(len(group.frames)) if i not in prepared.skipped]
        launched = LaunchedGroup(group, active, prepared.skipped)
        with self.streams.compute(prepared.staged):
            frames = prepared.staged.tensors
            boxes = [prepared.boxes[i] for i in active]
            scores = [prepared.scores[i] for i in active]
            boxes, scores = self._valid_boxes(frames, boxes, scores)
            crop_boxes = boxes
            if self.cfg.smooth and self.pose_model is not None:
                crop_boxes = self._smoothed_crop_boxes(frames, [group.frames[i] for i in active], boxes)
            for slot, i in enumerate(active):
                launched.results[i] = FrameResult(
                    boxes=boxes[slot],
                    scores=scores[slot],
                    track_ids=np.full(len(boxes[slot]), -1, np.int64),
                )
            if self.pose_model is not None and frames:
                launched.pose = self._launch_pose(frames, crop_boxes)
            if self.seg_model is not None and frames:
                results = [launched.results[i] for i in active]
                self._run_seg(frames, [group.frames[i] for i in active], results)
        for message in group.frames:
            # Nothing computed from here on reads the pixels: the decoder may reuse their ring slots.
            release(message, INFER_READER)
        return launched

    @torch.inference_mode()
    def finish(self, launched: LaunchedGroup) -> list[Message]:
        """Wait for a launched group's pose decoding; returns its outgoing messages in arrival order."""
        crops: dict[int, np.ndarray] = {}
        if launched.pose is not None:
            self._finish_pose(launched, crops)
            if self.cfg.detect_every > 1:
                self._carry_pose_boxes(launched.group, launched.active, launched.results)
        return self._messages(launched.group, launched.results, crops, launched.skipped)

    def _carry_pose_boxes(self, group: Group, active: list[int], results: dict[int, FrameResult]) -> None:
        """Between detector runs, crop each person around its latest keypoints (pose-derived boxes).

        People move between frames; the box around where their keypoints were follows them, where the
        last detector box would not. A person whose keypoints are too weak keeps its detector box.
        """
        from trackers import keypoint_boxes

        for i in active:  # in arrival order: the latest frame of a source wins
            result = results[i]
            if result.keypoints is None or result.num_persons == 0:
                continue
            threshold = self.cfg.keypoint_threshold
            pose_boxes, _ = keypoint_boxes(result.keypoints, result.keypoint_scores, threshold)
            usable = np.isfinite(pose_boxes).all(axis=1)
            boxes = np.where(usable[:, None], pose_boxes, result.boxes).astype(np.float32)
            message = group.frames[i]
            position = (message.segment, int(message.frame))
            # Batches overlap: a later frame's detection may already be there; never replace it with
            # boxes from an older frame (or segment).
            if position > self.last_boxes.get(message.source, (-1, -1))[:2]:
                self.last_boxes[message.source] = (*position, boxes, result.scores)

    def _smoothed_crop_boxes(
        self, frames: list[torch.Tensor], messages: list[Message], boxes: list[np.ndarray]
    ) -> list[np.ndarray]:
        """Each frame's boxes, smoothed over its source's earlier frames, to crop persons from.

        Groups are computed in the order they arrived and ``messages`` are in arrival order, so every
        source's frames reach its smoother in frame order, also when several sources share a group.
        """
        from models.preprocess import valid_box_mask

        crop_boxes = []
        for frame, message, frame_boxes in zip(frames, messages, boxes, strict=True):
            smoothed = self._crop_smoother(message)(frame_boxes, _timestamp(message)).astype(np.float32)
            if len(smoothed):
                # A smoothed box that lags a person leaving the frame may lie outside it, and
                # crop_and_warp refuses such boxes: that person is cropped from the detector's box.
                index = torch.zeros(len(smoothed), dtype=torch.long)
                size = [tuple(frame.shape[:2])]
                inside = valid_box_mask(torch.from_numpy(smoothed), None, size, index).cpu().numpy()
                smoothed = np.where(inside[:, None], smoothed, frame_boxes)
            crop_boxes.append(np.ascontiguousarray(smoothed, np.float32))
        return crop_boxes

    def _crop_smoother(self, message: Message) -> CropBoxSmoother:
        from trackers import CropBoxSmoother

        return _segment_state(self.crop_smoothers, message, CropBoxSmoother)

    def _valid_boxes(self, frames, boxes, scores):
        from models.preprocess import valid_box_mask

        sizes = [tuple(f.shape[:2]) for f in frames]
        kept_boxes, kept_scores = [], []
        for slot, (b, s) in enumerate(zip(boxes, scores, strict=True)):
            b = b[: self.cfg.max_persons]
            s = s[: self.cfg.max_persons]
            if len(b):
                index = torch.full((len(b),), slot, dtype=torch.long)
                mask = valid_box_mask(torch.from_numpy(b), torch.from_numpy(s), sizes, index).cpu().numpy()
                self.dropped_boxes += int((~mask).sum())
                b, s = b[mask], s[mask]
            kept_boxes.append(np.ascontiguousarray(b, np.float32))
            kept_scores.append(np.ascontiguousarray(s, np.float32))
        return kept_boxes, kept_scores

    def _launch_pose(self, frames: list[torch.Tensor], boxes: list[np.ndarray]) -> PendingPose:
        """Crop every person, forward the crops chunk by chunk and queue each chunk's decoding."""
        from models.preprocess import crop_and_warp

        counts = [len(b) for b in boxes]
        if sum(counts) == 0:
            return PendingPose(counts, np.zeros((0, 2, 3), np.float32), [])
        all_boxes = torch.from_numpy(np.concatenate(boxes)).to(self.device)
        frame_index = torch.repeat_interleave(torch.arange(len(frames)), torch.tensor(counts)).to(self.device)
        batch = crop_and_warp(frames, all_boxes, frame_index, input_size=self.cfg.input_size)
        # Heatmaps are decoded chunk by chunk as the forwards produce them: with 308 keypoints they are
        # large (24 crops at 256x192 are 91 MB), and joining them first cost a full extra copy. With a
        # decode thread, chunk k is decoded while chunk k + 1 is forwarded.
        chunks = [
            self._decode_pose(heatmaps, batch.crop_to_frame[start : start + heatmaps.shape[0]])
            for start, heatmaps in self._forward_chunks(self.pose_model, batch.pixel_values)
        ]
        return PendingPose(counts, _numpy(batch.crop_to_frame).astype(np.float32), chunks)

    def _finish_pose(self, launched: LaunchedGroup, crops: dict[int, np.ndarray]) -> None:
        """Each active frame's keypoints, scores and crop affines from its group's decoded chunks."""
        pose = launched.pose
        if pose.chunks:
            decoded = [future.result() for future in pose.chunks]
            keypoints = _numpy(torch.cat([points for points, _ in decoded])).astype(np.float32)
            keypoint_scores = _numpy(torch.cat([scores for _, scores in decoded])).astype(np.float32)
        else:
            k = getattr(self.pose_model.config, "num_keypoints", 308)
            keypoints, keypoint_scores = np.zeros((0, k, 2), np.float32), np.zeros((0, k), np.float32)
        start = 0
        for i, count in zip(launched.active, pose.counts, strict=True):
            result = launched.results[i]
            result.keypoints = keypoints[start : start + count]
            result.keypoint_scores = keypoint_scores[start : start + count]
            if pose.chunks:  # every frame of a group that was cropped carries its (maybe empty) affines
                crops[i] = pose.crop_to_frame[start : start + count]
            start += count

    def _decode_pose(self, heatmaps: torch.Tensor, crop_to_frame: torch.Tensor) -> Future:
        """Keypoints and scores of one chunk: on the decode thread when there is one, else right here."""
        if self.decoder is not None:
            return self.decoder.submit(_decode_pose_chunk, heatmaps, crop_to_frame, self.cfg.input_size)
        future = Future()
        future.set_result(_decode_pose_chunk(heatmaps, crop_to_frame, self.cfg.input_size))
        return future

    def _run_seg(self, frames, messages: list[Message], results: list[FrameResult]) -> None:
        from models.postprocess import segment_full_frame
        from models.preprocess import prepare_full_frame

        pixel_values = prepare_full_frame(frames, self.cfg.input_size)
        logits = self._forward(self.seg_model, pixel_values)
        for frame, message, result, frame_logits in zip(frames, messages, results, logits, strict=True):
            frame_hw = tuple(frame.shape[:2])
            if self.cfg.smooth:
                # Smoothing (optical flow and blending on the host) runs at a reduced size: at 1080p it
                # took seconds per frame on a CPU. The smoothed probabilities are then upsampled to the
                # frame like the raw logits would be.
                small_hw = smoothing_size(frame_hw)
                _, probs = segment_full_frame(frame_logits.float(), small_hw, return_probs=True)
                smoother = self._seg_smoother(message)
                probs = torch.from_numpy(smoother(_numpy(probs), _timestamp(message)))
                labels, _ = segment_full_frame(probs, frame_hw, return_probs=False)
                result.seg_labels = _numpy(labels).astype(np.uint8)
            else:
                labels = segment_full_frame(frame_logits.float(), frame_hw, return_probs=False)
                labels = labels[0] if isinstance(labels, tuple) else labels
                result.seg_labels = _numpy(labels).astype(np.uint8)

    def _seg_smoother(self, message: Message) -> SegmentationSmoother:
        from trackers import SegmentationSmoother

        return _segment_state(self.seg_smoothers, message, SegmentationSmoother)

    def end_segment(self, source: str, segment: int) -> None:
        """Forget a source's state of ``segment`` and earlier ones, once that segment's ``eos`` has left.

        Frames of the next segment may have been computed before (they can share a group with the
        ``eos``, and on CPU a group is finished after the next one is computed): their state is kept.
        """
        for states in (self.last_boxes, self.seg_smoothers, self.crop_smoothers):
            entry = states.get(source)
            if entry is not None and entry[0] <= segment:
                del states[source]

    def _forward(self, model, pixel_values: torch.Tensor) -> torch.Tensor:
        """The model's main output for every row, in chunks padded to the static batch sizes."""
        return torch.cat([value for _, value in self._forward_chunks(model, pixel_values)])

    def _forward_chunks(self, model, pixel_values: torch.Tensor):
        """Yield ``(first row, output)`` per chunk of at most the largest static batch size, each chunk
        padded to a static size for the forward and cut back to its rows."""
        from models import flip_tta

        largest = self.sizes[-1]
        for start in range(0, pixel_values.shape[0], largest):
            chunk = pixel_values[start : start + largest]
            count = chunk.shape[0]
            size = padded_size(count, self.sizes)
            if size > count:
                pad = chunk.new_zeros((size - count, *chunk.shape[1:]))
                chunk = torch.cat([chunk, pad])
            chunk = chunk.to(self.dtype)
            out = flip_tta(model, chunk) if self.flip else model(chunk)
            value = out.heatmaps if getattr(out, "heatmaps", None) is not None else out.logits
            yield start, value[:count]

    def _messages(self, group: Group, results, crops, skipped) -> list[Message]:
        out = []
        position = {id(m): i for i, m in enumerate(group.frames)}
        for message in group.messages:
            if message.kind != FRAME:
                out.append(message)
                continue
            i = position[id(message)]
            if i in skipped:
                out.append(follow_up(message, SKIP, cause=skipped[i]))
                continue
            arrays = result_arrays(results[i], crops.get(i))
            out.append(follow_up(message, RESULTS, arrays).stamp("infer"))
        return out


T = TypeVar("T")


def _segment_state(states: dict[str, tuple[int, T]], message: Message, make: Callable[[], T]) -> T:
    """The message's source's entry in ``states`` (segment, state); a new segment starts a fresh one."""
    segment, state = states.get(message.source, (None, None))
    if state is None or segment != message.segment:
        state = make()
        states[message.source] = (message.segment, state)
    return state


def _decode_pose_chunk(heatmaps: torch.Tensor, crop_to_frame: torch.Tensor, input_size) -> tuple:
    from models.postprocess import decode_pose_heatmaps

    with torch.inference_mode():  # per thread: the decode thread needs its own
        return decode_pose_heatmaps(heatmaps, crop_to_frame, input_size)  # it takes any float dtype


SEG_SMOOTH_MAX_SIDE = 384  # longest side of the probability maps that temporal smoothing works on


def smoothing_size(frame_hw: tuple[int, int]) -> tuple[int, int]:
    """The frame's size scaled down so its longest side is at most ``SEG_SMOOTH_MAX_SIDE``."""
    height, width = frame_hw
    scale = min(1.0, SEG_SMOOTH_MAX_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy() if value.is_floating_point() else value.cpu().numpy()
    return np.asarray(value)


def _timestamp(message: Message) -> float:
    return float(message.pts) if message.pts is not None else float(message.capture)


# --- the worker loop ------------------------------------------------------------------------------------


class InferenceStage(Stage):
    """The GPU worker's loop: groups of frames from every decoder in, one results message per frame out."""

    def __init__(self, context: zmq.Context, spec: WorkerSpec, link: StageLink) -> None:
        cfg = spec.config
        if cfg.workers != "inproc" and resolve_device(cfg.device).type == "cpu":
            use_all_cores()  # in-process runs keep the process's settings
        self.cfg = cfg
        self.link = link
        self.live = any(plan.live for plan in spec.sources)
        self.inbox = topology.open(context, spec, "frames")
        self.outboxes = {
            plan.name: topology.open(context, spec, "results", source=plan.name) for plan in spec.sources
        }
        self.inputs = [self.inbox]
        self.open_sources = set(self.outboxes)
        self.engine: InferenceEngine | None = None

    def start(self) -> Ready:
        self.engine = InferenceEngine(self.cfg, live=self.live)
        self.engine.warm_up()
        self.scheduler = self.engine.scheduler()
        dtype = str(self.engine.dtype).replace("torch.", "")
        return Ready(device=str(self.engine.device), dtype=dtype, flip=self.engine.flip)

    def poll_ms(self) -> int:
        return 0 if self.scheduler.has_pending else POLL_MS  # work held back: finish it when idle

    def receive(self, sock: zmq.Socket, message: Message) -> None:
        self._send(self.scheduler.submit(_collect(self.inbox, self.cfg, message)))

    def step(self) -> None:
        if self.scheduler.has_pending:
            self._send(self.scheduler.flush())

    def _send(self, outputs) -> None:
        for messages in outputs:
            for message in messages:
                if message.kind == EOS:
                    self.engine.end_segment(message.source, message.segment)
                    if message.meta.get("final"):
                        self.open_sources.discard(message.source)
                elif message.kind == SKIP and message.meta.get("cause") == "stale":
                    self.link.emit(Drop(source=message.source, cause="stale", frame=message.frame))
                send_until(self.outboxes[message.source], message, self.link.should_abort)
        self.finished = not self.open_sources

    def finish(self) -> Done:
        return Done(boxes_dropped=self.engine.dropped_boxes)

    def close(self, finished: bool) -> None:
        if self.engine is not None:
            self.engine.close()
        self.inbox.close(linger=0)
        for sock in self.outboxes.values():
            close_sender(sock, finished)


def _collect(inbox: zmq.Socket, cfg: PipelineConfig, first: Message) -> Group:
    """``first`` and what follows it, up to ``max_batch`` frames or ``max_wait_ms`` after the first."""
    group = Group()
    deadline = time.monotonic() + cfg.max_wait_ms / 1000.0
    _add(group, first)
    while len(group.frames) < cfg.max_batch:
        remaining_ms = int((deadline - time.monotonic()) * 1000.0)
        if remaining_ms <= 0 or not inbox.poll(remaining_ms, zmq.POLLIN):
            break
        _add(group, recv_message(inbox))
    return group


def _add(group: Group, message: Message) -> None:
    group.messages.append(message)
    if message.kind == FRAME:
        resolve(message)
        group.frames.append(message)
