"""A live run outlives its stages: whichever worker process is killed (an OOM kill, a segfault in a
codec), it is restarted with the workers of its source(s), the cameras go on, the restart is counted in
the metrics, and the files written before stay playable and are not overwritten. Two real
RTSP cameras, the real command with its default process workers, real SIGKILLs."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import psutil
import pytest
from pipeline_fixtures import results_so_far, save_tiny_model, stop_run, wait_while_running
from rtsp_server import RtspServerProcess, free_port, server_unavailable_reason

pytestmark = pytest.mark.needs_system(what="RTSP test server", missing=server_unavailable_reason())

SOURCES = ("a", "b")
RESTARTS = re.compile(r'sapiens_stream_stage_restarts_total\{source="(\w+)",stage="(\w+)"\} (\S+)')
DIED = re.compile(r"stage (\w+)\[([\w,]+)\] died \(killed by SIGKILL\); restarting")


@pytest.fixture(scope="module")
def tiny_pose(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny_pose"), "pose")


def _files(out: Path, name: str) -> list[Path]:
    """A source's JSONL files: the first, then the ones reopened after restarts (named by start time)."""
    return sorted(out.glob(f"{name}.jsonl")) + sorted(out.glob(f"{name}_*.jsonl"))


def _rings() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("ss-ring-*")}


def _restarts(metrics_port: int) -> dict[tuple[str, str], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
    return {(m[1], m[2]): float(m[3]) for m in RESTARTS.finditer(text)}


@dataclass
class LiveRun:
    process: subprocess.Popen
    out: Path
    stderr: Path
    metrics_port: int

    def restart_line(self) -> tuple[str, set[str]]:
        """The stage that died and the sources restarted with it, from the run's stderr."""
        wait_while_running(self.process, lambda: DIED.search(self.stderr.read_text()), "restart line")
        stage, names = DIED.search(self.stderr.read_text()).groups()
        return stage, set(SOURCES) if names == "all" else set(names.split(","))

    def kill(self, role: str) -> None:
        """SIGKILL one worker process of ``role`` (workers name themselves ``sapiens-<role>``)."""
        children = psutil.Process(self.process.pid).children(recursive=True)
        next(p for p in children if p.name() == f"sapiens-{role}").kill()


@contextlib.contextmanager
def _live_run(tmp_path: Path, tiny_pose: Path) -> Iterator[LiveRun]:
    """Two RTSP cameras through the real command, once both have results; stopped with SIGINT at the
    end (whatever is left of its process group is killed)."""
    boxes = tmp_path / "boxes.jsonl"
    box = [40, 30, 120, 100, 0.9]
    boxes.write_text("".join(json.dumps({"frame": i, "boxes": [box]}) + "\n" for i in range(9000)))
    out, metrics_port = tmp_path / "out", free_port()
    stderr_path = tmp_path / "stderr.txt"
    with contextlib.ExitStack() as cameras:
        urls = [cameras.enter_context(RtspServerProcess(mount="/cam", fps=15, width=160, height=120)).url
                for _ in SOURCES]
        named = [f"{name}={url}" for name, url in zip(SOURCES, urls, strict=True)]
        command = [sys.executable, "-m", "stream", "run", *named,
                   "--out", str(out), "--mode", "live", "--pose-model", str(tiny_pose), "--detector",
                   f"boxes:{boxes}", "--input-size", "64x48", "--device", "cpu", "--no-progress",
                   "--metrics", f"127.0.0.1:{metrics_port}"]
        with stderr_path.open("w") as log:
            run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
                                   env=dict(os.environ, OMP_NUM_THREADS="1"))
        try:
            first = lambda: all(len(results_so_far(out / f"{n}.jsonl")) >= 30 for n in SOURCES)  # noqa: E731
            wait_while_running(run, first, "first results")
            yield LiveRun(run, out, stderr_path, metrics_port)
        finally:
            stop_run(run)


def _check_outputs(out: Path, restarted: set[str], killed_render: bool) -> None:
    """Every file plays and holds a frame per result (a killed render's file: up to its last fragment);
    a restarted source's new file has ids above those of its first."""
    for name in SOURCES:
        files = _files(out, name)
        assert len(files) == (2 if name in restarted else 1), files
        ids = []
        for jsonl in files:
            written = results_so_far(jsonl)
            with av.open(str(jsonl.with_suffix(".mp4"))) as container:
                frames = sum(1 for _ in container.decode(video=0))
            if killed_render and jsonl.stem == name:
                assert frames > 0  # killed while writing: playable up to its last fragment
            else:
                assert frames == len(written)  # closed by its worker, asked to leave, or at the end
            ids.append({p["id"] for line in written for p in line["persons"] if p["id"] is not None})
        # A restarted tracker never hands out an id that was already written for this source.
        if len(ids) == 2 and ids[0] and ids[1]:
            assert min(ids[1]) > max(ids[0])


@pytest.mark.parametrize("role", ["decode", "infer", "track", "render"])
def test_a_killed_stage_is_restarted_and_the_cameras_go_on(tmp_path: Path, tiny_pose: Path, role: str):
    rings_before = _rings()
    with _live_run(tmp_path, tiny_pose) as live:
        live.kill(role)
        stage, restarted = live.restart_line()
        assert stage == role and restarted
        out, run = live.out, live.process
        kept = set(SOURCES) - restarted
        kept_lines = {n: len(results_so_far(out / f"{n}.jsonl")) for n in kept}
        # Every restarted source writes a new file; the sources that were not restarted go on in theirs.

        def reopened() -> bool:
            files = {n: _files(out, n) for n in restarted}
            return all(len(files[n]) == 2 and len(results_so_far(files[n][1])) >= 15 for n in restarted)

        def kept_going() -> bool:
            return all(len(results_so_far(out / f"{n}.jsonl")) >= kept_lines[n] + 15 for n in kept)

        wait_while_running(run, reopened, "results after the restart")
        wait_while_running(run, kept_going, "results of the other source")
        assert _restarts(live.metrics_port) == {(n, role): 1.0 for n in restarted}
    stderr = live.stderr.read_text()
    assert run.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr
    _check_outputs(out, restarted, killed_render=role == "render")
    assert _rings() <= rings_before


def test_a_stop_while_a_restart_waits_still_drains_every_source(tmp_path: Path, tiny_pose: Path) -> None:
    rings_before = _rings()
    with _live_run(tmp_path, tiny_pose) as live:
        live.kill("infer")
        live.restart_line()
        os.killpg(live.process.pid, signal.SIGTERM)  # `docker stop` during the backoff
        live.process.wait(timeout=90)
    stderr = live.stderr.read_text()
    assert live.process.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr and "error" not in stderr
    for name in SOURCES:
        for jsonl in _files(live.out, name):
            if not results_so_far(jsonl):
                continue  # the restarted workers were stopped before their first frame
            with av.open(str(jsonl.with_suffix(".mp4"))) as container:
                assert sum(1 for _ in container.decode(video=0)) == len(results_so_far(jsonl))
    assert _rings() <= rings_before
