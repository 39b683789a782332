"""The render stage's outputs: a frame with nothing to draw is encoded as received, without a copy."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from pipeline_fixtures import read_jsonl, read_video

from stream.config import build_config
from stream.frames import DecodedFrame, FrameResult
from stream.messages import RESULTS, follow_up, frame_message, result_arrays
from stream.sources import SourceInfo
from stream.synth import moving_squares
from stream.workers.base import SourcePlan, WorkerSpec
from stream.workers.render import SourceOutputs


def _outputs(tmp_path, **options) -> SourceOutputs:
    cfg = build_config(
        {"sources": ["clip.mp4"], "out": str(tmp_path), "codec": "libx264", "crf": 0, **options}
    )
    info = SourceInfo("clip.mp4", "clip", "file", Fraction(30), Fraction(1, 30), 3, 96, 64)
    plan = SourcePlan("clip", info, live=False)
    return SourceOutputs(WorkerSpec("render", cfg, {}, [plan]), plan)


def _messages(index: int, image: np.ndarray, result: FrameResult):
    image.flags.writeable = False  # as received: a read-only view of a message buffer or ring slot
    frame = DecodedFrame(image, index, index / 30, Fraction(1, 30), 0.0, pts_raw=index)
    frame_msg = frame_message("clip", index, frame, meta={"rate": [30, 1]})
    return frame_msg, follow_up(frame_msg, RESULTS, result_arrays(result))


def _person() -> FrameResult:
    return FrameResult(
        boxes=np.array([[10, 10, 60, 50]], np.float32),
        scores=np.array([0.9], np.float32),
        track_ids=np.array([1], np.int64),
    )


def test_frames_with_nothing_to_draw_are_encoded_as_received(tmp_path):
    images = list(moving_squares(3, (96, 64)))
    outputs = _outputs(tmp_path)
    try:
        written = [outputs.write(*_messages(i, image, FrameResult.empty())) for i, image in enumerate(images)]
    finally:
        outputs.close()
    assert all(out is image for out, image in zip(written, images, strict=True))  # no copy made
    frames, pts, _, _ = read_video(tmp_path / "clip.mp4")
    assert pts == [0, 1, 2] and len(read_jsonl(tmp_path / "clip.jsonl")) == 3
    assert np.abs(frames[2].astype(int) - images[2].astype(int)).mean() < 2


def test_frames_with_a_person_or_a_banner_are_drawn_on_a_copy(tmp_path):
    images = list(moving_squares(2, (96, 64)))
    originals = [image.copy() for image in images]
    outputs = _outputs(tmp_path, banner="UNTRAINED")
    try:
        drawn = [
            outputs.write(*_messages(0, images[0], _person())),
            outputs.write(*_messages(1, images[1], FrameResult.empty())),
        ]
    finally:
        outputs.close()
    for out, image, original in zip(drawn, images, originals, strict=True):
        assert out is not image and not np.array_equal(out, original)
        np.testing.assert_array_equal(image, original)  # the received pixels are left as they were
