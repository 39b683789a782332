"""The inference engine: detect -> crop+warp -> Sapiens2 -> pose decoding, batched across sources.

A group of frames (``batches.Group``) goes through three steps. ``prepare`` drops stale frames (live),
detects persons in the whole group at once (every k-th frame with ``--detect-every``; boxes are carried
in between, see ``state``) and starts uploading the frames to the device. ``launch`` warps every person
box to the model input and runs the model in chunks padded to a few static batch sizes (flip-TTA doubles
each chunk inside the same forward), and segments the full frames (or person crops) and runs the
full-frame dense tasks (normals, pointmaps, matting; ``stream.engine.tasks``). ``finish`` waits for the pose
decoding and builds one outgoing message per frame. Keypoints and label maps are computed on the device;
only those small results leave it. On CPU each chunk's heatmaps are decoded on the pose-decoding thread
while the next chunk, or the next group, is cropped and forwarded. Control messages (``eos``, ``skip``)
travel in the group in arrival order, so each source's messages leave in the order they came.

With smoothing on (the default; ``--no-smooth`` turns it off), the boxes persons are cropped from are
steadied per source before the crop (``trackers.CropBoxSmoother``: associated with the previous
frame's crop boxes, One-Euro filtered over the frames' timestamps), so detector jitter does not shake
the crops and, through them, the keypoints. The results still carry the detector's boxes (the tracker
downstream associates on them); ``crop_to_frame`` describes the crops actually cut.

The engine opens no sockets: ``stream.stages.inference`` feeds it groups and sends what it returns.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from stream.config import PipelineConfig
from stream.engine.batches import Group, LaunchedGroup, PendingPose, PreparedGroup
from stream.engine.device import DeviceStreams, OverlapScheduler, padded_size, static_batch_sizes
from stream.engine.runtime import load_task_model, resolve_device, resolve_dtype
from stream.engine.state import SourceStates
from stream.engine.tasks import preprocessing, run_dense, run_frame_seg, run_person_seg
from stream.media.frames import ModelOutputs
from stream.runtime.messages import FRAME, RESULTS, SKIP, Message, follow_up, result_arrays
from stream.runtime.ring import INFER_READER, release


class InferenceEngine:
    """Detector and Sapiens2 models on one device, with batched, padded, flip-aware forwards.

    ``pose_decoding_thread`` (default: on for CPU) decodes each chunk's heatmaps on a thread of its own
    while the next chunk is forwarded. On CUDA the pose decoding is queued on the device behind the
    forward anyway, so it runs inline there. ``close()`` (or ``with``) stops the thread.
    """

    def __init__(
        self, cfg: PipelineConfig, live: bool = False, pose_decoding_thread: bool | None = None
    ) -> None:
        from models.detector import make_detector

        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        if pose_decoding_thread is None:
            pose_decoding_thread = self.device.type == "cpu"
        self.pose_decoding = (
            ThreadPoolExecutor(1, thread_name_prefix="pose-decode") if pose_decoding_thread else None
        )
        self.dtype = resolve_dtype(cfg.precision, self.device)
        self.flip = cfg.flip if cfg.flip is not None else not live
        self.live = live
        self.sizes = static_batch_sizes(cfg.max_batch)  # crops per forward
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
        self.dense_models = {
            task: load_task_model(cfg.task_model(task), task, cfg, self.device, self.dtype)
            for task in cfg.dense_tasks
        }
        # How each model's inputs are prepared: its checkpoint's preprocessor_config.json (the release's
        # defaults without one), at --input-size when given.
        models = {"pose": self.pose_model, "seg": self.seg_model, **self.dense_models}
        self.inputs = {task: preprocessing(task, m, cfg) for task, m in models.items() if m is not None}
        self.state = SourceStates()
        self.dropped_boxes = 0

    def close(self) -> None:
        if self.pose_decoding is not None:
            self.pose_decoding.shutdown(wait=True)

    def __enter__(self) -> InferenceEngine:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def scheduler(self) -> OverlapScheduler:
        """How the worker runs this engine: each group is prepared while the one before computes. With a
        pose-decoding thread, each group is also finished after the next one is computed, so its last
        heatmaps are decoded while the next group is cropped and forwarded; not between detector runs
        (``--detect-every``), whose boxes come from keypoints needed before the group after next."""
        if self.pose_decoding is not None and self.cfg.detect_every == 1:
            return OverlapScheduler(self.prepare, self.launch, self.finish)
        return OverlapScheduler(self.prepare, self.compute)

    def end_segment(self, source: str, segment: int) -> None:
        """Forget ``source``'s state of ``segment`` and earlier ones (see ``SourceStates.end_segment``)."""
        self.state.end_segment(source, segment)

    # --- warm-up ------------------------------------------------------------------------------------

    def warm_up(self) -> None:
        """Run every static batch size once (CUDA only: kernels, autotuning and allocator settle)."""
        if self.device.type != "cuda":
            return
        models = {"pose": self.pose_model, "seg": self.seg_model, **self.dense_models}
        for task, model in models.items():
            if model is None:
                continue
            h, w = self.inputs[task].input_size
            for size in self.sizes:
                for _ in self._output_chunks(model, torch.zeros(size, 3, h, w, device=self.device)):
                    pass
        torch.cuda.synchronize(self.device)

    # --- per group ----------------------------------------------------------------------------------

    def prepare(self, group: Group) -> PreparedGroup:
        """Detect persons in the group's frames and start uploading the frames to the device."""
        skipped = self._stale(group)
        active = [i for i in range(len(group.frames)) if i not in skipped]
        boxes = [np.zeros((0, 4), np.float32) for _ in group.frames]
        scores = [np.zeros((0,), np.float32) for _ in group.frames]
        detect, covered = [], self.state.segments_with_boxes()
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
                self.state.detected(message, boxes[i], scores[i])
            else:
                # Between detections: boxes around the latest keypoints (see _carry_pose_boxes), or the
                # last detector boxes when only segmentation runs. Detection covered this segment.
                boxes[i], scores[i] = self.state.carried(message)
        images = [group.frames[i].arrays["image"] for i in active]
        staged = self.streams.upload(images)
        return PreparedGroup(group, staged, boxes, scores, skipped)

    def _stale(self, group: Group) -> dict[int, str]:
        """Live: the frames older than the staleness budget, which are skipped instead of computed."""
        if not self.live:
            return {}
        now = time.time()
        return {i: "stale" for i, m in enumerate(group.frames) if now - m.capture > self.cfg.stale_after}

    def _needs_detection(self, message: Message, covered: set[tuple[str, int]]) -> bool:
        """Every k-th frame, and the first frame of a source's segment that has no boxes to carry."""
        k = self.cfg.detect_every
        return k == 1 or (message.source, message.segment) not in covered or int(message.frame) % k == 0

    def compute(self, prepared: PreparedGroup) -> list[Message]:
        """Run the models on a prepared group; returns the outgoing messages in arrival order."""
        return self.finish(self.launch(prepared))

    @torch.inference_mode()
    def launch(self, prepared: PreparedGroup) -> LaunchedGroup:
        """Crop and forward a prepared group; its pose decoding may still run on the pose-decoding thread."""
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
                launched.results[i] = ModelOutputs(
                    boxes=boxes[slot],
                    scores=scores[slot],
                    track_ids=np.full(len(boxes[slot]), -1, np.int64),
                )
            if self.pose_model is not None and frames:
                launched.pose = self._launch_pose(frames, crop_boxes)
            messages = [group.frames[i] for i in active]
            results = [launched.results[i] for i in active]
            if self.seg_model is not None and frames:
                self._run_seg(frames, messages, results, boxes)
            for task, model in self.dense_models.items():
                if frames:
                    forward = self._forward_fields
                    run_dense(task, model, forward, frames, messages, results, self.cfg, self.state)
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

    # --- boxes --------------------------------------------------------------------------------------

    def _carry_pose_boxes(self, group: Group, active: list[int], results: dict[int, ModelOutputs]) -> None:
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
            self.state.carry(group.frames[i], boxes, result.scores)

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
            smoother = self.state.crop_smoother(message)
            smoothed = smoother(frame_boxes, message.timestamp).astype(np.float32)
            if len(smoothed):
                # A smoothed box that lags a person leaving the frame may lie outside it, and
                # crop_and_warp refuses such boxes: that person is cropped from the detector's box.
                index = torch.zeros(len(smoothed), dtype=torch.long)
                size = [tuple(frame.shape[:2])]
                inside = valid_box_mask(torch.from_numpy(smoothed), None, size, index).cpu().numpy()
                smoothed = np.where(inside[:, None], smoothed, frame_boxes)
            crop_boxes.append(np.ascontiguousarray(smoothed, np.float32))
        return crop_boxes

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

    # --- pose ---------------------------------------------------------------------------------------

    def _launch_pose(self, frames: list[torch.Tensor], boxes: list[np.ndarray]) -> PendingPose:
        """Crop every person, forward the crops chunk by chunk and queue each chunk's pose decoding."""
        from models.preprocess import crop_and_warp

        counts = [len(b) for b in boxes]
        if sum(counts) == 0:
            return PendingPose(counts, np.zeros((0, 2, 3), np.float32), [])
        all_boxes = torch.from_numpy(np.concatenate(boxes)).to(self.device)
        frame_index = torch.repeat_interleave(torch.arange(len(frames)), torch.tensor(counts)).to(self.device)
        prep = self.inputs["pose"]  # the checkpoint's input size and normalisation
        batch = crop_and_warp(frames, all_boxes, frame_index, input_size=prep.input_size, normalisation=prep)
        # Heatmaps are decoded chunk by chunk as the forwards produce them: with 308 keypoints they are
        # large (24 crops at 256x192 are 91 MB), and joining them first cost a full extra copy. With a
        # pose-decoding thread, chunk k is decoded while chunk k + 1 is forwarded.
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
        """Keypoints and scores of one chunk: on the pose-decoding thread when there is one, else here."""
        input_size = self.inputs["pose"].input_size
        if self.pose_decoding is not None:
            return self.pose_decoding.submit(_decode_pose_chunk, heatmaps, crop_to_frame, input_size)
        future = Future()
        future.set_result(_decode_pose_chunk(heatmaps, crop_to_frame, input_size))
        return future

    # --- segmentation -------------------------------------------------------------------------------

    def _run_seg(self, frames, messages: list[Message], results: list[ModelOutputs], boxes) -> None:
        """Segmentation of the whole frames, or of the person crops pasted back (``--seg-mode person``)."""
        forward, cfg, states = self._forward_fields, self.cfg, self.state
        if cfg.seg_mode == "person":
            run_person_seg(self.seg_model, forward, frames, messages, boxes, results, cfg, states)
        else:
            run_frame_seg(self.seg_model, forward, frames, messages, results, cfg, states)

    # --- forwards -----------------------------------------------------------------------------------

    def _forward_chunks(self, model, pixel_values: torch.Tensor):
        """Yield ``(first row, output)`` per chunk of the model's main output (heatmaps or logits)."""
        for start, out in self._output_chunks(model, pixel_values):
            yield start, out.heatmaps if getattr(out, "heatmaps", None) is not None else out.logits

    def _forward_fields(self, model, pixel_values: torch.Tensor, names: tuple[str, ...]) -> dict:
        """The named output fields for every row (those the model has), joined over the chunks."""
        parts: dict[str, list[torch.Tensor]] = {}
        for _, out in self._output_chunks(model, pixel_values):
            for name in names:
                if getattr(out, name, None) is not None:
                    parts.setdefault(name, []).append(getattr(out, name))
        return {name: torch.cat(values) for name, values in parts.items()}

    def _output_chunks(self, model, pixel_values: torch.Tensor):
        """Yield ``(first row, output)`` per chunk of at most the largest static batch size, each chunk
        padded to a static size for the forward and every output field cut back to its rows."""
        import dataclasses

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
            fields = {f.name: getattr(out, f.name) for f in dataclasses.fields(out)}
            yield start, dataclasses.replace(
                out, **{name: value[:count] for name, value in fields.items() if value is not None}
            )

    # --- outgoing messages --------------------------------------------------------------------------

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


def _decode_pose_chunk(heatmaps: torch.Tensor, crop_to_frame: torch.Tensor, input_size) -> tuple:
    from models.postprocess import decode_pose_heatmaps

    with torch.inference_mode():  # per thread: the pose-decoding thread needs its own
        return decode_pose_heatmaps(heatmaps, crop_to_frame, input_size)  # it takes any float dtype


def _numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().float().cpu().numpy() if value.is_floating_point() else value.cpu().numpy()
    return np.asarray(value)
