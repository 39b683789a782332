"""The render stage's outputs: a frame with nothing to draw is encoded as received, without a copy, and
from the source's own yuv420p planes when the decoder passed them on."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
from pipeline_fixtures import read_jsonl, read_video

from stream.config import build_config
from stream.edges.sinks import VideoSink
from stream.edges.sources import SourceInfo
from stream.media.color import rgb_to_i420
from stream.media.frames import I420, DecodedFrame, ModelOutputs
from stream.media.synth import moving_squares
from stream.runtime.messages import RESULTS, follow_up, frame_message, result_arrays
from stream.runtime.stage import SourcePlan, WorkerSpec
from stream.stages.render import SourceOutputs


def _outputs(tmp_path, **options) -> SourceOutputs:
    cfg = build_config(
        {"sources": ["clip.mp4"], "out": str(tmp_path), "codec": "libx264", "crf": 0, **options}
    )
    info = SourceInfo("clip.mp4", "clip", "file", Fraction(30), Fraction(1, 30), 3, 96, 64)
    plan = SourcePlan("clip", info, live=False)
    return SourceOutputs(WorkerSpec("render", cfg, {}, [plan]), plan)


def _messages(index: int, image: np.ndarray, result: ModelOutputs, i420: np.ndarray | None = None):
    image.flags.writeable = False  # as received: a read-only view of a message buffer or ring slot
    frame = DecodedFrame(image, index, index / 30, Fraction(1, 30), 0.0, pts_raw=index)
    frame_msg = frame_message("clip", index, frame, meta={"rate": [30, 1]})
    if i420 is not None:  # as ``shm.resolve`` gives a slot that holds the source's planes
        frame_msg.arrays[I420] = i420
        frame_msg.meta[I420] = True
    return frame_msg, follow_up(frame_msg, RESULTS, result_arrays(result))


def _decoded_planes(path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray() for frame in container.decode(video=0)]


def _person() -> ModelOutputs:
    return ModelOutputs(
        boxes=np.array([[10, 10, 60, 50]], np.float32),
        scores=np.array([0.9], np.float32),
        track_ids=np.array([1], np.int64),
    )


def test_frames_with_nothing_to_draw_are_encoded_as_received(tmp_path):
    images = list(moving_squares(3, (96, 64)))
    outputs = _outputs(tmp_path)
    try:
        written = [
            outputs.write(*_messages(i, image, ModelOutputs.empty())) for i, image in enumerate(images)
        ]
    finally:
        outputs.close()
    assert all(out is image for out, image in zip(written, images, strict=True))  # no copy made
    frames, pts, _, _ = read_video(tmp_path / "clip.mp4")
    assert pts == [0, 1, 2] and len(read_jsonl(tmp_path / "clip.jsonl")) == 3
    assert np.abs(frames[2].astype(int) - images[2].astype(int)).mean() < 2


def test_a_background_only_label_map_draws_nothing_and_body_parts_are_drawn(tmp_path):
    images = list(moving_squares(2, (96, 64)))
    background, body = ModelOutputs.empty(), ModelOutputs.empty()
    background.seg_labels = np.zeros((64, 96), np.uint8)
    body.seg_labels = np.zeros((64, 96), np.uint8)
    body.seg_labels[10:30, 20:40] = 5
    outputs = _outputs(tmp_path)
    try:
        untouched = outputs.write(*_messages(0, images[0], background))
        drawn = outputs.write(*_messages(1, images[1], body))
    finally:
        outputs.close()
    assert untouched is images[0]
    assert drawn is not images[1] and not np.array_equal(drawn[10:30, 20:40], images[1][10:30, 20:40])
    assert len(list((tmp_path / "clip_seg").iterdir())) == 2  # label maps are written either way


def test_frames_with_a_person_or_a_banner_are_drawn_on_a_copy(tmp_path):
    images = list(moving_squares(2, (96, 64)))
    originals = [image.copy() for image in images]
    outputs = _outputs(tmp_path, banner="UNTRAINED")
    try:
        drawn = [
            outputs.write(*_messages(0, images[0], _person())),
            outputs.write(*_messages(1, images[1], ModelOutputs.empty())),
        ]
    finally:
        outputs.close()
    for out, image, original in zip(drawn, images, originals, strict=True):
        assert out is not image and not np.array_equal(out, original)
        np.testing.assert_array_equal(image, original)  # the received pixels are left as they were


def test_undrawn_frames_are_encoded_from_the_sources_planes_and_drawn_ones_from_rgb(tmp_path):
    images = list(moving_squares(3, (96, 64)))
    # Planes that differ from what converting the RGB would give, so the test sees which was encoded.
    planes = [np.clip(rgb_to_i420(image).astype(int) + 7, 0, 255).astype(np.uint8) for image in images]
    outputs = _outputs(tmp_path)  # crf 0: lossless, the planes come back exactly
    try:
        outputs.write(*_messages(0, images[0], ModelOutputs.empty(), planes[0]))
        drawn = outputs.write(*_messages(1, images[1], _person(), planes[1]))
        outputs.write(*_messages(2, images[2], ModelOutputs.empty(), planes[2]))
    finally:
        outputs.close()
    decoded = _decoded_planes(tmp_path / "clip.mp4")
    np.testing.assert_array_equal(decoded[0], planes[0])
    np.testing.assert_array_equal(decoded[2], planes[2])
    np.testing.assert_array_equal(decoded[1], rgb_to_i420(drawn))  # drawn on: encoded from its RGB


def test_video_sink_takes_only_planes_of_its_encoded_size(tmp_path):
    with VideoSink(tmp_path / "odd.mp4", 65, 49, Fraction(30), codec="libx264") as sink:
        sink.write_i420(np.zeros((75, 66), np.uint8))  # 66x50: the padded size
        with pytest.raises(ValueError, match=r"\(75, 66\) uint8 I420"):
            sink.write_i420(np.zeros((73, 65), np.uint8))
    assert len(_decoded_planes(tmp_path / "odd.mp4")) == 1
