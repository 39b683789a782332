"""What orchestrators do to a run: docker stop, systemd and Kubernetes send SIGTERM to the whole process
group, a terminal sends SIGHUP when it closes, an OOM killer sends SIGKILL to one process. The real
command with its default process workers, real signals; outputs must stay playable and nothing may be
left in /dev/shm."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import av
import psutil
import pytest
from pipeline_fixtures import (
    INPUT_SIZE,
    read_jsonl,
    save_tiny_model,
    write_boxes,
    write_test_clip,
)

FRAMES = 400


@pytest.fixture(scope="module")
def material(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("signals")
    return {
        "pose": save_tiny_model(root / "pose", "pose"),
        "clip": write_test_clip(root / "long.mp4", FRAMES, (96, 64), fps=25, seed=2),
        "boxes": write_boxes(root / "boxes.jsonl", {i: [[10, 8, 50, 60, 0.9]] for i in range(FRAMES)}),
    }


def _rings() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("ss-ring-*")} if Path("/dev/shm").is_dir() else set()


def _start(material: dict[str, Path], out: Path) -> subprocess.Popen:
    command = [sys.executable, "-m", "stream", "run", str(material["clip"]), "--out", str(out), "--task",
               "pose", "--pose-model", str(material["pose"]), "--detector", f"boxes:{material['boxes']}",
               "--input-size", "x".join(map(str, INPUT_SIZE)), "--no-progress"]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1"))


def _wait_for_results(run: subprocess.Popen, jsonl: Path, count: int = 20, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert run.poll() is None, run.communicate()
        if jsonl.exists() and len(jsonl.read_text().splitlines()) >= count:
            return
        time.sleep(0.1)
    raise AssertionError("no results in time")


@contextlib.contextmanager
def _running(material: dict[str, Path], out: Path) -> Iterator[subprocess.Popen]:
    """The run, once its first results are written; whatever is left of its process group is killed
    on the way out."""
    run = _start(material, out)
    try:
        _wait_for_results(run, out / "long.jsonl")
        yield run
    finally:
        if _group_alive(run.pid):
            os.killpg(run.pid, signal.SIGKILL)


def _stage(run: subprocess.Popen, role: str) -> psutil.Process:
    """The worker process of ``role``: workers name themselves ``sapiens-<role>``."""
    children = psutil.Process(run.pid).children(recursive=True)
    for child in children:
        if child.name() == f"sapiens-{role}":
            return child
    raise AssertionError(f"no {role} worker among {[c.name() for c in children]}")


def _check_playable(out: Path) -> int:
    lines = read_jsonl(out / "long.jsonl")
    assert [line["frame"] for line in lines] == list(range(len(lines)))
    with av.open(str(out / "long.mp4")) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames == len(lines)
    return frames


@pytest.mark.parametrize(
    ("signum", "target"),
    [(signal.SIGTERM, "group"), (signal.SIGHUP, "group"), (signal.SIGINT, "group"),
     (signal.SIGTERM, "coordinator"), (signal.SIGTERM, "render")],
)
def test_a_stop_signal_drains_to_playable_outputs(material, tmp_path, signum, target) -> None:
    before = _rings()
    out = tmp_path / "out"
    with _running(material, out) as run:
        if target == "group":
            os.killpg(run.pid, signum)
        elif target == "coordinator":
            os.kill(run.pid, signum)
        else:
            _stage(run, target).send_signal(signum)
        stdout, stderr = run.communicate(timeout=60)
    assert run.returncode == 0, stderr[-2000:]
    assert "interrupted" in stdout
    assert "Traceback" not in stderr
    assert 20 <= _check_playable(out) < FRAMES
    assert _rings() <= before


def test_a_second_signal_aborts_and_still_closes_files(material, tmp_path) -> None:
    before = _rings()
    out = tmp_path / "out"
    with _running(material, out) as run:
        os.killpg(run.pid, signal.SIGTERM)
        time.sleep(0.05)
        os.killpg(run.pid, signal.SIGTERM)
        run.communicate(timeout=30)
    _check_playable(out)
    assert _rings() <= before


def test_a_killed_stage_ends_the_run_with_one_error_line(material, tmp_path) -> None:
    before = _rings()
    out = tmp_path / "out"
    with _running(material, out) as run:
        _stage(run, "track").kill()  # SIGKILL: no chance to say anything
        stdout, stderr = run.communicate(timeout=60)
    assert run.returncode != 0
    errors = [line for line in stderr.splitlines() if line.startswith("sapiens-stream: error:")]
    assert len(errors) == 1 and "track" in errors[0], stderr[-2000:]
    assert "Traceback" not in stderr
    _check_playable(out)
    assert _rings() <= before


def test_workers_exit_when_the_coordinator_is_gone(material, tmp_path) -> None:
    before = _rings()
    out = tmp_path / "out"
    with _running(material, out) as run:
        workers = psutil.Process(run.pid).children(recursive=True)
        run.kill()  # the coordinator alone, SIGKILL
        run.wait(timeout=10)
        _, alive = psutil.wait_procs(workers, timeout=20)
        assert not alive, f"workers still running: {[p.name() for p in alive]}"
    assert _rings() <= before


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
