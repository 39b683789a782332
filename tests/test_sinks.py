"""Sinks: real H.264 encodes decoded back, JSONL read back line by line, label maps read back equal."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from fractions import Fraction

import av
import numpy as np
import pytest
from pipeline_fixtures import read_video

from stream.edges.map_sinks import LabelMapSink, read_label_map
from stream.edges.sinks import JsonlSink, VideoSink, jsonl_record, pick_video_codec
from stream.media.frames import DecodedFrame, ModelOutputs
from stream.media.synth import moving_squares, write_clip


def test_reencoding_a_clip_keeps_frame_count_pts_time_base_and_rate(tmp_path):
    source = tmp_path / "source.mp4"
    write_clip(source, moving_squares(24, (96, 64)), fps=Fraction(25))
    src_frames, src_pts, src_rate, src_time_base = read_video(source)

    out = tmp_path / "out.mp4"
    with av.open(str(source)) as container:
        stream = container.streams.video[0]
        with VideoSink(out, 96, 64, stream.average_rate, stream.time_base, codec="libx264") as sink:
            for frame in container.decode(stream):
                sink.write(frame.to_ndarray(format="rgb24"), frame.pts)

    frames, pts, rate, time_base = read_video(out)
    assert len(frames) == len(src_frames) == 24
    assert time_base == src_time_base and pts == src_pts and rate == src_rate == 25
    assert frames[0].shape == (64, 96, 3)
    # Lossy, but the picture is the same picture.
    assert np.abs(frames[5].astype(int) - src_frames[5].astype(int)).mean() < 6


def test_irregular_pts_and_small_time_base_survive_exactly(tmp_path):
    # Variable frame rate, a late start and a time base far below mp4's usual 1/10000: all kept exactly.
    time_base = Fraction(1, 30)
    given = [5, 6, 7, 9, 10, 14, 15, 16]
    out = tmp_path / "vfr.mp4"
    with VideoSink(out, 64, 48, Fraction(30), time_base, codec="libx264") as sink:
        for image, pts in zip(moving_squares(len(given), (64, 48)), given, strict=True):
            sink.write(image, pts)
    _, pts, _, out_time_base = read_video(out)
    assert out_time_base == time_base and pts == given


def test_ntsc_time_base_keeps_the_times(tmp_path):
    # 1001/30000 has no exact mp4 timescale of its own: written as 1/30000 with pts * 1001.
    out = tmp_path / "ntsc.mp4"
    with VideoSink(out, 64, 48, Fraction(30000, 1001), Fraction(1001, 30000), codec="libx264") as sink:
        for i, image in enumerate(moving_squares(6, (64, 48))):
            sink.write(image, i)
    _, pts, rate, time_base = read_video(out)
    assert time_base == Fraction(1, 30000) and pts == [i * 1001 for i in range(6)]
    assert rate == Fraction(30000, 1001)


def test_missing_and_restarting_pts_still_give_increasing_timestamps(tmp_path):
    out = tmp_path / "restart.mp4"
    with VideoSink(out, 64, 48, Fraction(10), codec="libx264") as sink:  # time base 1/10
        images = list(moving_squares(6, (64, 48)))
        sink.write(images[0], None)
        sink.write(images[1], None)
        sink.write(images[2], 7)
        sink.write(images[3], 0)  # the source's clock restarted (reconnect)
        sink.write(images[4], 1)
        sink.write(images[5], None)
    _, pts, _, time_base = read_video(out)
    assert time_base == Fraction(1, 10) and pts == [0, 1, 7, 8, 9, 10]


def test_odd_size_is_padded_by_one_pixel_and_other_sizes_are_resized(tmp_path):
    out = tmp_path / "odd.mp4"
    image = np.zeros((49, 65, 3), np.uint8)
    image[:, -1] = (255, 255, 255)  # the last column, copied into the padding
    with VideoSink(out, 65, 49, Fraction(30), codec="libx264", crf=0) as sink:
        assert sink.encoded_size == (66, 50)
        sink.write(image)
        sink.write(np.zeros((100, 130, 3), np.uint8))  # another size: resized to 65x49
    frames, pts, _, _ = read_video(out)
    assert len(frames) == 2 and frames[0].shape == (50, 66, 3)
    assert frames[0][:, -2:].mean() > 200 and frames[0][:, :-3].mean() < 30


def test_close_is_idempotent_and_writing_after_close_is_an_error(tmp_path):
    sink = VideoSink(tmp_path / "a.mp4", 32, 32, 29.97, codec="libx264")
    assert sink.frame_rate == Fraction(2997, 100) and sink.time_base == Fraction(1, 2997)
    sink.write(np.zeros((32, 32, 3), np.uint8))
    sink.close()
    sink.close()
    with pytest.raises(ValueError, match="closed"):
        sink.write(np.zeros((32, 32, 3), np.uint8))
    assert len(read_video(tmp_path / "a.mp4")[0]) == 1


def test_bad_input_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="video size"):
        VideoSink(tmp_path / "a.mp4", 0, 32, 30)
    with pytest.raises(ValueError, match="not available"):
        VideoSink(tmp_path / "a.mp4", 32, 32, 30, codec="no_such_codec")
    with VideoSink(tmp_path / "b.mp4", 32, 32, 30, codec="libx264") as sink:
        with pytest.raises(ValueError, match="uint8 RGB"):
            sink.write(np.zeros((32, 32), np.uint8))


def test_auto_codec_falls_back_to_libx264_without_a_gpu_encoder():
    import torch

    codec = pick_video_codec("auto")
    assert codec in ("h264_nvenc", "libx264")
    if not torch.cuda.is_available():
        assert codec == "libx264"


def test_interrupted_run_leaves_a_playable_file(tmp_path):
    # A run stopped by KeyboardInterrupt inside the with-block still flushes and writes the trailer.
    script = textwrap.dedent(
        f"""
        import numpy as np
        from stream.edges.sinks import VideoSink
        with VideoSink({str(tmp_path / "cut.mp4")!r}, 64, 48, 30, codec="libx264") as sink:
            for i in range(12):
                sink.write(np.full((48, 64, 3), i * 20, np.uint8), i)
            raise KeyboardInterrupt
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode != 0 and b"KeyboardInterrupt" in done.stderr
    _, pts, _, _ = read_video(tmp_path / "cut.mp4")
    assert pts == list(range(12))


def _result_with_pose():
    keypoints = np.zeros((2, 308, 2), np.float32)
    keypoints[0, :, 0] = np.arange(308) + 0.123456
    keypoints[1, :, 1] = 7.004
    keypoint_scores = np.full((2, 308), 0.87654321, np.float32)
    keypoint_scores[1, 3] = np.nan
    return ModelOutputs(
        boxes=np.array([[1.111, 2.222, 30.333, 40.444], [5, 6, 7, 8]], np.float32),
        scores=np.array([0.987654, 0.5], np.float32),
        track_ids=np.array([4, -1], np.int64),
        keypoints=keypoints,
        keypoint_scores=keypoint_scores,
    )


def _frame(index, pts=None):
    return DecodedFrame(
        image=np.zeros((48, 64, 3), np.uint8),
        index=index,
        pts=pts,
        time_base=Fraction(1, 30),
        capture_time=0.0,
    )


def test_jsonl_record_follows_the_design_schema():
    record = jsonl_record("cam0", _frame(3, pts=0.1), _result_with_pose())
    assert list(record) == ["source", "frame", "pts", "width", "height", "persons"]
    assert record["source"] == "cam0" and record["frame"] == 3 and record["pts"] == 0.1
    assert (record["width"], record["height"]) == (64, 48)
    first, second = record["persons"]
    assert list(first) == ["id", "bbox", "score", "keypoints"]
    assert first["id"] == 4 and second["id"] is None
    assert first["bbox"] == [1.11, 2.22, 30.33, 40.44] and first["score"] == 0.9877
    assert len(first["keypoints"]) == 308 and first["keypoints"][2] == [2.12, 0.0, 0.8765]
    assert second["keypoints"][3] == [0.0, 7.0, None]  # NaN score becomes null, not invalid JSON
    json.dumps(record, allow_nan=False)


def test_jsonl_record_for_skipped_empty_and_seg_only_frames():
    skipped = jsonl_record("cam0", _frame(7, pts=None), None, skipped=True)
    assert skipped == {"source": "cam0", "frame": 7, "pts": None, "width": 64, "height": 48, "skipped": True}
    empty = jsonl_record("cam0", _frame(8), ModelOutputs.empty())
    assert empty["persons"] == [] and "skipped" not in empty
    seg_only = _result_with_pose()
    seg_only.keypoints = seg_only.keypoint_scores = None
    persons = jsonl_record("cam0", _frame(9), seg_only)["persons"]
    assert [list(p) for p in persons] == [["id", "bbox", "score"]] * 2


def test_jsonl_record_rejects_inconsistent_results():
    result = _result_with_pose()
    result.scores = result.scores[:1]
    with pytest.raises(ValueError, match="disagree"):
        jsonl_record("cam0", _frame(0), result)


def test_jsonl_sink_writes_one_flushed_line_per_record(tmp_path):
    path = tmp_path / "sub" / "out.jsonl"
    records = [jsonl_record("a", _frame(i, pts=i / 30), _result_with_pose()) for i in range(3)]
    sink = JsonlSink(path)
    sink.write(records[0])
    sink.write(records[1])
    # Flushed per line: readable in full before close, as after a killed process.
    assert [json.loads(line) for line in path.read_text().splitlines()] == records[:2]
    sink.write(records[2])
    sink.close()
    sink.close()
    lines = path.read_text().split("\n")
    assert lines[-1] == "" and [json.loads(line) for line in lines[:-1]] == records
    with pytest.raises(ValueError, match="closed"):
        sink.write(records[0])


def test_label_maps_read_back_equal(tmp_path):
    rng = np.random.default_rng(0)
    maps = {i: rng.integers(0, 29, (37, 53), dtype=np.uint8) for i in (0, 1, 1234)}
    with LabelMapSink(tmp_path / "clip_seg") as sink:
        for index, labels in maps.items():
            sink.write(index, labels)
        with pytest.raises(ValueError, match="uint8"):
            sink.write(5, maps[0].astype(np.int32))
    assert sorted(p.name for p in (tmp_path / "clip_seg").iterdir()) == [
        "000000.png",
        "000001.png",
        "001234.png",
    ]
    for index, labels in maps.items():
        np.testing.assert_array_equal(read_label_map(tmp_path / "clip_seg" / f"{index:06d}.png"), labels)
