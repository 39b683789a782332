"""``--publish``: each source's annotated video is streamed on while the run goes on, to a real RTSP
server in record mode (GStreamer's), to an RTMP receiver (FFmpeg listening) and as HLS in a directory;
what was published is decoded again. A server that is not there never stops the run."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import av
import pytest
from pipeline_fixtures import INPUT_SIZE, read_jsonl, save_tiny_model, write_boxes, write_test_clip
from rtsp_server import RtspServerProcess, free_port, server_unavailable_reason

from stream.front.cli import main

FRAMES = 40


@pytest.fixture(scope="module")
def material(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("publish")
    return {
        "pose": save_tiny_model(root / "pose", "pose"),
        "clip": write_test_clip(root / "walk.mp4", FRAMES, (96, 64), fps=25),
        "clip_b": write_test_clip(root / "run.mp4", FRAMES, (80, 64), fps=25, seed=1),
        "boxes": write_boxes(root / "boxes.jsonl", {i: [[10, 8, 50, 60, 0.9]] for i in range(FRAMES)}),
    }


def _argv(material, out: Path, publish: str, *sources: Path) -> list[str]:
    return ["run", *map(str, sources or [material["clip"]]), "--out", str(out), "--task", "pose",
            "--pose-model", str(material["pose"]), "--detector", f"boxes:{material['boxes']}",
            "--input-size", "x".join(map(str, INPUT_SIZE)), "--workers", "inproc", "--no-progress",
            "--publish", publish]


def _frames(target: str) -> int:
    with av.open(target) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.mark.needs_system(what="RTSP test server", missing=server_unavailable_reason())
def test_rtsp_publish_to_a_recording_server(material, tmp_path: Path) -> None:
    recorded = tmp_path / "recorded.ts"
    with RtspServerProcess(mount="/live/walk", record=str(recorded)) as server:
        url = f"rtsp://127.0.0.1:{server.port}/live/{{name}}"
        assert main(_argv(material, tmp_path / "out", url)) == 0
    assert _frames(str(recorded)) == FRAMES


def test_rtmp_publish_to_a_listening_receiver(material, tmp_path: Path) -> None:
    port = free_port()
    url = f"rtmp://127.0.0.1:{port}/live/walk"
    received: list[int] = []

    def receive() -> None:
        count = 0
        with av.open(url, options={"listen": "1", "timeout": "60"}) as container:
            try:
                for _ in container.decode(video=0):
                    count += 1
            except av.error.OSError:
                pass  # the publisher hung up: RTMP has no end-of-stream of its own
        received.append(count)

    receiver = threading.Thread(target=receive, daemon=True)
    receiver.start()
    assert main(_argv(material, tmp_path / "out", url.replace("walk", "{name}"))) == 0
    receiver.join(timeout=60)
    assert received == [FRAMES]


def test_hls_publish_of_two_sources_plays_back(material, tmp_path: Path) -> None:
    hls = tmp_path / "hls"
    argv = _argv(material, tmp_path / "out", str(hls / "{name}.m3u8"), material["clip"], material["clip_b"])
    assert main(argv) == 0
    for name in ("walk", "run"):
        playlist = (hls / f"{name}.m3u8").read_text()
        assert "#EXTM3U" in playlist and ".ts" in playlist
        assert _frames(str(hls / f"{name}.m3u8")) == FRAMES


def test_an_absent_server_never_stops_the_run(material, tmp_path: Path, caplog) -> None:
    out = tmp_path / "out"
    assert main(_argv(material, out, f"rtsp://127.0.0.1:{free_port()}/live/{{name}}")) == 0
    assert len(read_jsonl(out / "walk.jsonl")) == FRAMES
    assert _frames(str(out / "walk.mp4")) == FRAMES
    assert any("cannot publish to" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("target", "message"),
    [("ftp://example/x", "cannot publish to 'ftp://example/x'"), ("rtsp://127.0.0.1:1/live", "{name}")],
)
def test_unusable_targets_are_refused_up_front(material, tmp_path: Path, target, message) -> None:
    command = [sys.executable, "-m", "stream", *_argv(material, tmp_path / "out", target, material["clip"],
                                                      material["clip_b"])]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("sapiens-stream: error:") and message in line
