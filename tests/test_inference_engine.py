"""The GPU worker's engine on CPU: pose decoding on its own thread gives exactly the inline results.

On CPU each chunk's heatmaps are decoded on a thread beside the next chunk's forward (the default there),
and the worker finishes each group after computing the next; on CUDA heatmaps are decoded inline. Both
run here on real frame messages, with a tiny checkpoint, several persons per frame and chunks smaller
than a group, so several decodes are pending at once. Per-source state is kept per segment, so a group
finished late never disturbs the next segment's.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from pipeline_fixtures import INPUT_SIZE, engine_config, run_groups, save_tiny_model, write_boxes

import models.postprocess
from stream.config import PipelineConfig
from stream.engine import Group, InferenceEngine
from stream.media.frames import DecodedFrame
from stream.runtime.messages import EOS, RESULTS, SKIP, control_message, frame_message
from stream.runtime.ring import INFER_READER, READERS, RENDER_READER, FrameRing, resolve

NUM_FRAMES, SIZE = 6, (96, 128)  # frames (height, width)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("engine")
    boxes = {
        i: [[4.0 + i, 6.0, 40.0 + i, 90.0, 0.9], [50.0, 10.0, 80.0, 70.0, 0.8], [90.0, 5.0, 120.0, 95.0, 0.7]]
        for i in range(NUM_FRAMES)
    }
    boxes[2] = []  # a frame without persons inside a group
    rng = np.random.default_rng(0)
    return {
        "model": save_tiny_model(work / "pose", "pose"),
        "boxes": write_boxes(work / "boxes.jsonl", boxes),
        "images": [rng.integers(0, 256, (*SIZE, 3), dtype=np.uint8) for _ in range(NUM_FRAMES)],
    }


def config(setup: dict, **overrides) -> PipelineConfig:
    # Chunks of 4 crops: 15 crops make 4 chunks.
    return engine_config(setup["model"], setup["boxes"], INPUT_SIZE, max_batch=4, **overrides)


def frames(setup: dict, indices: range, segment: int = 0) -> list:
    return [
        frame_message("clip", i, DecodedFrame(setup["images"][i], i, i / 30, None, 0.0, segment))
        for i in indices
    ]


def run(setup: dict, monkeypatch, pose_decoding_thread: bool, flip: bool) -> tuple[list, set[str]]:
    """Results of one group holding every frame, and the names of the threads that decoded heatmaps."""
    cfg = config(setup, flip=flip)
    group = Group()
    for message in frames(setup, range(NUM_FRAMES)):
        group.messages.append(message)
        group.frames.append(message)
    decoding_threads = set()
    decode = models.postprocess.decode_pose_heatmaps

    def recording_decode(*args, **kwargs):
        decoding_threads.add(threading.current_thread().name)
        return decode(*args, **kwargs)

    engine = InferenceEngine(cfg, pose_decoding_thread=pose_decoding_thread)
    with monkeypatch.context() as patch, engine:
        patch.setattr(models.postprocess, "decode_pose_heatmaps", recording_decode)
        messages = engine.compute(engine.prepare(group))
    assert [m.kind for m in messages] == [RESULTS] * NUM_FRAMES
    return messages, decoding_threads


@pytest.mark.parametrize("flip", [False, True])
def test_pose_decoding_thread_gives_the_inline_results(setup: dict, monkeypatch, flip: bool) -> None:
    inline, inline_threads = run(setup, monkeypatch, pose_decoding_thread=False, flip=flip)
    threaded, threaded_threads = run(setup, monkeypatch, pose_decoding_thread=True, flip=flip)
    assert inline_threads == {threading.current_thread().name}
    assert len(threaded_threads) == 1 and threaded_threads.pop().startswith("pose-decode")
    assert [m.arrays["keypoints"].shape[0] for m in threaded] == [3, 3, 0, 3, 3, 3]
    for a, b in zip(inline, threaded, strict=True):
        assert a.frame == b.frame
        for name in ("keypoints", "keypoint_scores", "boxes", "crop_to_frame"):
            np.testing.assert_array_equal(a.arrays[name], b.arrays[name])


def test_engine_decodes_poses_on_a_thread_on_cpu_by_default(setup: dict) -> None:
    engine = InferenceEngine(config(setup))
    assert engine.pose_decoding is not None
    assert engine.scheduler().finish is not None  # the worker finishes each group after the next
    engine.close()
    with InferenceEngine(config(setup, detect_every=2)) as carrying:
        # Boxes carried from keypoints are needed before the group after next: no late finishing.
        assert carrying.scheduler().finish is None
    with pytest.raises(RuntimeError):  # closed: no new work is taken
        engine.pose_decoding.submit(print)


def test_a_new_segment_starts_afresh_when_groups_finish_late(setup: dict) -> None:
    """Segment 1 begins in the group holding segment 0's eos. That eos leaves only after the next group
    was computed, yet segment 1's crops (smoothed crop boxes) equal those of a run that saw only it."""
    end = control_message(EOS, "clip", 3, final=False)
    end.segment = 0  # as the decoder sends it: the segment that ends
    groups = [frames(setup, range(0, 2)), [*frames(setup, range(2, 3)), end, *frames(setup, range(3, 4), 1)]]
    groups.append(frames(setup, range(4, 6), segment=1))
    with InferenceEngine(config(setup)) as engine:
        both = [m for m in run_groups(engine, groups) if m.kind == RESULTS]
        assert engine.state.crop_smoothers["clip"][0] == 1 and engine.state.last_boxes["clip"][0] == 1
    with InferenceEngine(config(setup)) as engine:
        alone = [m for m in run_groups(engine, [frames(setup, range(3, 6), segment=1)]) if m.kind == RESULTS]
    assert [m.frame for m in both] == list(range(NUM_FRAMES))
    for a, b in zip(both[3:], alone, strict=True):
        # The crops are what earlier state would change; keypoints also depend on the batch they were
        # forwarded in (other batch sizes round differently).
        np.testing.assert_array_equal(a.arrays["crop_to_frame"], b.arrays["crop_to_frame"])
    # Within a segment the state does carry: frame 1 is cropped from a box smoothed with frame 0's.
    with InferenceEngine(config(setup)) as engine:
        (first,) = [m for m in run_groups(engine, [frames(setup, range(1, 2))]) if m.kind == RESULTS]
    assert not np.allclose(both[1].arrays["crop_to_frame"], first.arrays["crop_to_frame"], atol=0.01)


@pytest.mark.parametrize("stale", [True, False], ids=["stale", "computed"])
def test_every_ring_slot_the_engine_reads_is_given_back(setup: dict, stale: bool) -> None:
    """Live frames skipped as stale release their ring slots as computed ones do; otherwise a camera's
    ring fills up for good and every later frame travels inline."""
    shape = (*SIZE, 3)
    ring = FrameRing.create(int(np.prod(shape)), NUM_FRAMES, READERS)
    try:
        messages = frames(setup, range(NUM_FRAMES))
        for message in messages:
            slot, view = ring.claim(shape)
            view[...] = message.arrays.pop("image")
            ring.commit(slot)
            message.slot = [ring.name, slot, list(shape)]
            message.capture = time.time() - (3600.0 if stale else 0.0)
            resolve(message)
        assert ring.flags[:, INFER_READER].all()
        with InferenceEngine(config(setup, stale_after=60.0), live=True) as engine:
            out = run_groups(engine, [messages[:4], messages[4:]])
        assert [m.kind for m in out] == [SKIP if stale else RESULTS] * NUM_FRAMES
        assert not ring.flags[:, INFER_READER].any()  # every slot given back by the GPU worker
        assert ring.flags[:, RENDER_READER].all()  # the render stage's hold is its own to release
    finally:
        ring.close()
