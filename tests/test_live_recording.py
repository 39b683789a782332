"""Live recordings from a real RTSP camera, through the real command with its default process workers:
they play at the camera's speed (its timestamps, not a nominal rate), a run killed with SIGKILL (an OOM
kill, a power loss) still leaves a playable file up to its last fragment, and ``--segment-time`` rotates
the outputs into parts that together account for every frame."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest
from pipeline_fixtures import save_tiny_model
from rtsp_server import RtspServerProcess, server_unavailable_reason

pytestmark = pytest.mark.needs_system(what="RTSP test server", missing=server_unavailable_reason())

CAMERA_FPS = 30  # not the 25 fps a recording falls back to without the camera's timing


@pytest.fixture(scope="module")
def tiny_pose(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny_pose"), "pose")


def _start(
    tmp_path: Path, camera: RtspServerProcess, tiny_pose: Path, *extra: str
) -> tuple[subprocess.Popen, Path]:
    boxes = tmp_path / "boxes.jsonl"
    boxes.write_text("".join(json.dumps({"frame": i, "boxes": [[40, 30, 120, 200, 0.9]]}) + "\n"
                             for i in range(3000)))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "stream", "run", camera.url,
               "--out", str(out), "--mode", "live", "--pose-model", str(tiny_pose), "--detector",
               f"boxes:{boxes}", "--input-size", "64x48", "--device", "cpu", "--no-progress", *extra]
    log = (tmp_path / "stderr.txt").open("w")
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
                           env=dict(os.environ, OMP_NUM_THREADS="1"))
    return run, out


def _written_lines(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _wait_for_lines(run: subprocess.Popen, path: Path, count: int, timeout: float = 120) -> list[dict]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert run.poll() is None, "the pipeline exited early"
        lines = [line for line in _written_lines(path) if not line.get("skipped")]
        if len(lines) >= count:
            return lines
        time.sleep(0.1)
    raise AssertionError(f"fewer than {count} results in {timeout} s")


def _video_times(path: Path) -> list[float]:
    with av.open(str(path)) as container:
        return [frame.time for frame in container.decode(video=0)]


def test_recording_plays_at_the_cameras_speed(tmp_path: Path, tiny_pose: Path) -> None:
    with RtspServerProcess(mount="/cam", fps=CAMERA_FPS, width=160, height=120) as camera:
        run, out = _start(tmp_path, camera, tiny_pose)
        try:
            _wait_for_lines(run, out / "cam.jsonl", 90)
        finally:
            run.send_signal(signal.SIGINT)
            assert run.wait(timeout=60) == 0, (tmp_path / "stderr.txt").read_text()[-2000:]
    written = [line for line in _written_lines(out / "cam.jsonl") if not line.get("skipped")]
    video = _video_times(out / "cam.mp4")
    assert len(video) == len(written)
    # Frame for frame, the video's clock advances as the camera's did.
    camera_span = written[-1]["pts"] - written[0]["pts"]
    assert video[-1] - video[0] == pytest.approx(camera_span, abs=1.5 / CAMERA_FPS)


def test_sigkill_leaves_a_playable_recording(tmp_path: Path, tiny_pose: Path) -> None:
    with RtspServerProcess(mount="/cam", fps=CAMERA_FPS, width=160, height=120) as camera:
        run, out = _start(tmp_path, camera, tiny_pose)
        try:
            _wait_for_lines(run, out / "cam.jsonl", 100)
        finally:
            os.killpg(run.pid, signal.SIGKILL)  # the whole process group, no chance to clean up
            run.wait(timeout=30)
    frames = _video_times(out / "cam.mp4")
    # At most the last fragment (one keyframe interval, 1 s) is lost: the encoder holds nothing back.
    assert len(frames) >= 100 - CAMERA_FPS - 2
    assert all(b > a for a, b in zip(frames[:-1], frames[1:], strict=True))


PART = re.compile(r"^cam_\d{8}T\d{6}Z$")


def test_segment_time_rotates_into_playable_parts(tmp_path: Path, tiny_pose: Path) -> None:
    with RtspServerProcess(mount="/cam", fps=CAMERA_FPS, width=160, height=120) as camera:
        run, out = _start(tmp_path, camera, tiny_pose, "--segment-time", "1")
        try:
            deadline = time.monotonic() + 120
            while len(list(out.glob("cam_*.jsonl"))) < 3:
                assert run.poll() is None and time.monotonic() < deadline, "fewer than 3 parts in time"
                time.sleep(0.1)
        finally:
            run.send_signal(signal.SIGINT)
            assert run.wait(timeout=60) == 0, (tmp_path / "stderr.txt").read_text()[-2000:]
    parts = sorted(p.stem for p in out.glob("*.jsonl"))
    assert all(PART.match(stem) for stem in parts), parts
    assert not (out / "cam.jsonl").exists()
    lines = [line for stem in parts for line in _written_lines(out / f"{stem}.jsonl")]
    assert [line["frame"] for line in lines] == list(range(len(lines)))
    for stem in parts:
        written = [line for line in _written_lines(out / f"{stem}.jsonl") if not line.get("skipped")]
        if written:
            assert len(_video_times(out / f"{stem}.mp4")) == len(written)
