"""Each source has its own timeline: a clock that jumps (two recordings joined, an HLS discontinuity, a
camera clock reset) starts a new segment for that source only, and no other source notices."""

from __future__ import annotations

from pathlib import Path

import pytest
from pipeline_fixtures import (
    INPUT_SIZE,
    read_jsonl,
    read_video,
    save_tiny_model,
    source_times,
    two_people,
    write_boxes,
    write_test_clip,
)

from stream.edges.timeline import Timeline
from stream.front.cli import main


def _segments(times: list[float], interval: float | None = 0.04) -> list[int]:
    timeline, segment, out = Timeline("cam", interval), 0, []
    for t in times:
        segment += timeline.jumped(t)
        out.append(segment)
    return out


def test_backward_and_far_forward_steps_start_segments() -> None:
    steady = [i * 0.04 for i in range(10)]
    assert _segments(steady) == [0] * 10
    assert _segments(steady + [0.0, 0.04]) == [0] * 10 + [1, 1]  # clock reset
    assert _segments(steady + [3600.0, 3600.04]) == [0] * 10 + [1, 1]  # clock set forward an hour


def test_small_gaps_and_variable_rates_are_no_jump() -> None:
    # Lost frames (a few intervals), a repeated timestamp and variable frame intervals keep the segment.
    times = [0.0, 0.033, 0.07, 0.1, 0.1, 0.3, 0.333, 0.4]
    assert _segments(times, interval=None) == [0] * len(times)
    assert _segments([0.0, None, 0.04, None, 0.08]) == [0] * 5


def test_timestamps_that_start_after_untimed_frames_start_a_segment() -> None:
    # An RTSP camera's first frames can arrive before its timing: they are timed by the capture clock
    # downstream, so the first camera timestamp switches clocks.
    assert _segments([None, None, 0.1, 0.14, 0.18]) == [0, 0, 1, 1, 1]
    assert _segments([0.0, None, 0.08]) == [0, 0, 0]  # a gap in a timed stream is no switch


def test_time_going_back_within_a_segment_restarts_tracks_instead_of_failing() -> None:
    import numpy as np

    from stream.media.frames import ModelOutputs
    from stream.runtime.messages import RESULTS, Message, result_arrays
    from stream.stages.track import SourceTracking

    tracking = SourceTracking(frame_rate=25.0, smooth=True, keypoint_threshold=0.3)
    boxes, scores = np.array([[10, 10, 50, 90]], np.float32), np.array([0.9], np.float32)
    outputs = ModelOutputs(boxes=boxes, scores=scores, track_ids=np.full(1, -1, np.int64))

    def track(seconds: float) -> Message:
        message = Message(RESULTS, "cam", 0, frame=0, pts=seconds, arrays=result_arrays(outputs))
        return tracking(message)

    for seconds in (1e9, 1e9 + 0.04, 0.08, 0.12):  # capture-clock times, then the camera's own
        track(seconds)
    assert tracking.last_time == 0.12


def _joined_ts(tmp_path: Path, frames: int) -> Path:
    """Two MPEG-TS recordings joined byte for byte: the second one's timestamps start again."""
    parts = [write_test_clip(tmp_path / f"part{i}.ts", frames, (96, 64), fps=25, seed=i) for i in (0, 1)]
    joined = tmp_path / "joined.ts"
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    return joined


def test_a_clock_jump_in_one_source_leaves_the_other_untouched(tmp_path: Path) -> None:
    frames = 15
    joined = _joined_ts(tmp_path, frames)
    times = source_times(joined)
    assert len(times) == 2 * frames and times[frames] < times[frames - 1], "the joined file must jump back"
    steady = write_test_clip(tmp_path / "steady.mp4", 2 * frames, (80, 64), fps=30, seed=3)
    boxes = write_boxes(tmp_path / "boxes.jsonl", two_people(2 * frames))
    out = tmp_path / "out"
    argv = ["run", str(joined), str(steady), "--out", str(out), "--task", "pose",
            "--pose-model", str(save_tiny_model(tmp_path / "pose", "pose")), "--detector", f"boxes:{boxes}",
            "--input-size", "x".join(map(str, INPUT_SIZE)), "--workers", "inproc", "--no-progress"]
    assert main(argv) == 0
    for name, source in (("joined", joined), ("steady", steady)):
        lines = read_jsonl(out / f"{name}.jsonl")
        expected = source_times(source)
        assert [line["frame"] for line in lines] == list(range(len(expected)))
        # JSONL keeps PyAV's pts as decoded, the jump included.
        assert [line["pts"] for line in lines] == pytest.approx(expected, abs=1e-6)
        # Persons keep being tracked after the jump: a new segment, not an error.
        assert any(p["id"] is not None and p["id"] >= 0 for line in lines[frames:] for p in line["persons"])
        video, pts, _, _ = read_video(out / f"{name}.mp4")
        assert len(video) == len(expected)
        assert all(b > a for a, b in zip(pts[:-1], pts[1:], strict=True)), "video pts must increase"


def test_image_folders_are_timed_by_index_and_rate_not_the_wall_clock() -> None:
    from stream.runtime.messages import Message

    def timestamp(frame: int, capture: float, live: bool) -> float:
        meta = {"rate": [10, 1], "live": live}
        return Message("frame", "stills", frame, frame=frame, capture=capture, meta=meta).timestamp

    assert timestamp(7, capture=1.7e9, live=False) == pytest.approx(0.7)
    assert timestamp(7, capture=1.7e9 + 5, live=False) == pytest.approx(0.7)  # the same on any run
    assert timestamp(7, capture=1.7e9, live=True) == 1.7e9  # a live source without pts: capture time
