"""Failures a user meets while a run is going: a full disk (a real, size-limited tmpfs in a private mount
namespace, so nothing stays mounted and no other process sees it), no display for ``--show``, a source
file that vanishes or is cut short while it is read. The real command, its default process workers."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest
from pipeline_fixtures import INPUT_SIZE, save_tiny_model, write_boxes, write_test_clip

FRAMES = 400
ERROR = "sapiens-stream: error: "
COMMAND = [sys.executable, "-m", "stream", "run"]
SIZE = "x".join(map(str, INPUT_SIZE))


def _no_private_mounts() -> str | None:
    if os.geteuid() != 0:
        return "a private tmpfs needs root"
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return "unshare/mount (util-linux) not installed"
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                           capture_output=True, text=True)  # fmt: skip
    return None if probe.returncode == 0 else f"cannot mount a private tmpfs: {probe.stderr.strip()}"


NO_TMPFS = _no_private_mounts()
needs_tmpfs = pytest.mark.skipif(NO_TMPFS is not None, reason=str(NO_TMPFS))


def _on_small_tmpfs(directory: Path, size: str, command: list[str], keep: Path | None = None) -> list[str]:
    """``command`` with a private ``size`` tmpfs mounted on ``directory`` (it goes away with the
    command's mount namespace); ``keep``: a folder the tmpfs's files are copied to afterwards."""
    run, folder = shlex.join(command), shlex.quote(str(directory))
    if keep is not None:
        run = f"{run}; status=$?; cp -a {folder}/. {shlex.quote(str(keep))}/; exit $status"
    else:
        run = f"exec {run}"
    mount = f"mkdir -p {folder} && mount -t tmpfs -o size={size} tmpfs {folder}"
    return ["unshare", "--mount", "sh", "-c", f"{mount} && {run}"]


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith(ERROR)]


def _decoded(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


@pytest.fixture(scope="module")
def material(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("full_disk")
    return {
        "pose": save_tiny_model(root / "pose", "pose"),
        "clip": write_test_clip(root / "long.mp4", FRAMES, (96, 64), fps=25, seed=2),
        "boxes": write_boxes(root / "boxes.jsonl", {i: [[10, 8, 50, 60, 0.9]] for i in range(FRAMES)}),
    }


def _offline(material: dict[str, Path], clip: Path, out: Path) -> list[str]:
    return COMMAND + [str(clip), "--out", str(out), "--pose-model", str(material["pose"]), "--detector",
                      f"boxes:{material['boxes']}", "--input-size", SIZE, "--no-progress"]  # fmt: skip


# -- a full disk, offline ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def offline_full_disk(material, tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path, Path]:
    """A run whose --out is a 2 MiB tmpfs: the video keeps 1 MiB reserved and the JSONL (about 10 KB a
    line with 308 keypoints) fills the rest after about a hundred of the 400 frames."""
    root = tmp_path_factory.mktemp("offline_full")
    out, kept = root / "out", root / "kept"
    kept.mkdir()
    command = _on_small_tmpfs(out, "2m", _offline(material, material["clip"], out), keep=kept)
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))  # fmt: skip
    return done, out, kept


@needs_tmpfs
def test_offline_full_disk_is_one_error_line_and_keeps_what_was_written(offline_full_disk) -> None:
    done, out, kept = offline_full_disk
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    (line,) = _errors(done.stderr)
    assert line.startswith(f"{ERROR}long: cannot write {out}/long."), line
    assert line.endswith("No space left on device")
    # Every line the JSONL holds is whole, in order; the video is finished (its index was kept room
    # for) and has a frame for each of them.
    text = (kept / "long.jsonl").read_text()
    assert text.endswith("\n")
    lines = [json.loads(line) for line in text.splitlines()]
    assert 10 < len(lines) < FRAMES
    assert [line["frame"] for line in lines] == list(range(len(lines)))
    assert _decoded(kept / "long.mp4") in (len(lines), len(lines) - 1)  # the JSONL line comes first


@needs_tmpfs
def test_offline_full_disk_exits_with_status_2(offline_full_disk) -> None:
    done, _, _ = offline_full_disk
    assert done.returncode == 2, done.stderr[-2000:]


@needs_tmpfs
def test_debug_shows_the_failed_workers_traceback(material, tmp_path) -> None:
    out = tmp_path / "out"
    debug = [*COMMAND[:3], "--debug", *_offline(material, material["clip"], out)[3:]]  # before `run`
    command = _on_small_tmpfs(out, "2m", debug)
    done = subprocess.run(command, capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, OMP_NUM_THREADS="1"))  # fmt: skip
    assert done.returncode != 0
    worker = done.stderr.split("in the worker:", 1)[1]
    # Where the write failed, in the render worker's process, not only where the run was ended.
    assert "OutputError" in worker and "stream/stages/render.py" in worker


# -- a full disk under one live source ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_one_disk_full(material, tmp_path_factory):
    """Two cameras with label maps; a 256 KiB tmpfs over one camera's label-map folder fills up early.
    Runs until the other camera has written well past that, then SIGINT."""
    from rtsp_server import RtspServerProcess, server_unavailable_reason

    if server_unavailable_reason() is not None:
        pytest.skip(f"RTSP test server: {server_unavailable_reason()}")
    root = tmp_path_factory.mktemp("live_full")
    seg = save_tiny_model(root / "seg", "seg")
    boxes = write_boxes(root / "boxes.jsonl", {i: [[40, 30, 120, 110, 0.9]] for i in range(9000)})
    out = root / "out"
    door = RtspServerProcess(user="alice", password="pa55-not-logged", mount="/door", pattern="blue").start()
    yard = RtspServerProcess(mount="/yard", pattern="red").start()
    command = COMMAND + [door.url, yard.url, "--out", str(out), "--mode", "live", "--task", "pose,seg",
                         "--pose-model", str(material["pose"]), "--seg-model", str(seg), "--label-maps",
                         "--detector", f"boxes:{boxes}", "--input-size", SIZE, "--device", "cpu"]  # fmt: skip
    stderr_path = root / "stderr.txt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    with stderr_path.open("w") as stderr:
        run = subprocess.Popen(_on_small_tmpfs(out / "door_seg", "256k", command), stdout=subprocess.PIPE,
                               stderr=stderr, text=True, env=env)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while ERROR not in stderr_path.read_text():
            assert run.poll() is None and time.monotonic() < deadline, stderr_path.read_text()[-3000:]
            time.sleep(0.2)
        yard_at_failure = _written(out / "yard.jsonl")
        while _written(out / "yard.jsonl") < yard_at_failure + 10:  # the other camera goes on
            assert run.poll() is None and time.monotonic() < deadline, stderr_path.read_text()[-3000:]
            time.sleep(0.2)
        run.send_signal(signal.SIGINT)
        try:
            stdout, _ = run.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the run did not stop within 60 s of SIGINT:\n{stderr_path.read_text()[-3000:]}")
    finally:
        if run.poll() is None:
            run.kill()
        door.stop()
        yard.stop()
    return run.returncode, stdout, stderr_path.read_text(), out, yard_at_failure


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _written(path: Path) -> int:
    """The lines of frames that were processed (live runs also write lines for skipped ones)."""
    lines = path.read_text().splitlines() if path.exists() else []
    return sum(1 for line in lines if line.endswith("}") and not json.loads(line).get("skipped"))


@needs_tmpfs
def test_live_full_disk_stops_only_that_sources_sinks(live_one_disk_full) -> None:
    status, stdout, stderr, out, yard_at_failure = live_one_disk_full
    assert "Traceback" not in stderr, stderr[-3000:]
    (line,) = _errors(stderr)
    assert line.startswith(f"{ERROR}door: cannot write {out}/door_seg/") and "No space left on device" in line
    assert "pa55-not-logged" not in stderr + stdout
    # The full camera's files are closed with what they hold: whole lines, a playable video.
    door = [json.loads(line) for line in (out / "door.jsonl").read_text().splitlines()]
    door_written = [line for line in door if not line.get("skipped")]
    assert door and _decoded(out / "door.mp4") in (len(door_written), len(door_written) - 1)
    # The other camera went on recording until the run was stopped, and its files are complete.
    yard = _written(out / "yard.jsonl")
    assert yard >= yard_at_failure + 10
    assert _decoded(out / "yard.mp4") == yard and len(list((out / "yard_seg").glob("*.png"))) == yard


@needs_tmpfs
def test_live_full_disk_exits_with_status_2(live_one_disk_full) -> None:
    status, _, stderr, _, _ = live_one_disk_full
    assert status == 2, stderr[-2000:]


def test_a_source_whose_sinks_failed_holds_the_finish_until_its_final_eos(material, tmp_path) -> None:
    """Finish lets every sender disconnect, and libzmq drops what a receiver had not yet taken in when
    its sender leaves. A live source whose disk filled has closed its files, but its frames, and at a
    stop its final EOS, still drain through its track and render stages: the coordinator must not send
    Finish before that EOS reached its render, or the EOS may be lost and the run never ends (found as
    a run that did not stop on SIGINT when the other camera drained first)."""
    from stream.config import build_config
    from stream.pipeline.coordinator import _Coordinator
    from stream.pipeline.plan import plan_sources
    from stream.pipeline.report import ProgressDisplay
    from stream.runtime.events import Done, SinkClosed

    clip = str(material["clip"])
    config = build_config({"sources": [f"door={clip}", f"yard={clip}"], "out": str(tmp_path),
                           "workers": "inproc", "progress": False})  # fmt: skip
    plans = plan_sources(config)
    coordinator = _Coordinator(config, plans, None)
    try:
        progress = ProgressDisplay(config, plans, coordinator.registry)
        full = "door: cannot write door_seg/000025.png: No space left on device"
        coordinator._handle(SinkClosed(source="door", frames=25, complete=False, error=full), progress)
        coordinator._handle(SinkClosed(source="yard", frames=90, complete=True), progress)
        coordinator._handle(Done(stage="render", source="yard", frames=90), progress)
        assert coordinator.reports["door"].error == full  # reported when it happened
        assert coordinator.awaiting_eos == {"door"}  # but its stages have not drained yet
        coordinator._handle(Done(stage="render", source="door", frames=25), progress)
        assert not coordinator.awaiting_eos
    finally:
        coordinator._close()


# -- no display, a vanishing source ------------------------------------------------------------------------


def test_show_without_a_display_is_refused_before_anything_starts(material, tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    done = subprocess.run([*_offline(material, material["clip"], out), "--show"], capture_output=True,
                          text=True, timeout=120, env=env)  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"{ERROR}--show needs a display (DISPLAY/WAYLAND_DISPLAY is not set); "
        "use --serve 127.0.0.1:PORT for a browser preview instead"
    ]
    assert not out.exists()  # nothing was started


def _start_and_wait(material, clip: Path, out: Path, count: int = 20) -> subprocess.Popen:
    run = subprocess.Popen(_offline(material, clip, out), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=dict(os.environ, OMP_NUM_THREADS="1"))  # fmt: skip
    deadline = time.monotonic() + 180
    while _lines(out / f"{clip.stem}.jsonl") < count:
        assert run.poll() is None and time.monotonic() < deadline, run.communicate()
        time.sleep(0.05)
    return run


def test_a_source_deleted_while_it_is_read_is_still_read_to_its_end(material, tmp_path: Path) -> None:
    # The run opened the file: deleting its name does not take the data away (as with any Unix
    # program), so the run goes on, writes every frame and succeeds.
    clip = shutil.copy(material["clip"], tmp_path / "gone.mp4")
    out = tmp_path / "out"
    run = _start_and_wait(material, Path(clip), out)
    os.unlink(clip)
    stdout, stderr = run.communicate(timeout=180)
    assert run.returncode == 0, stderr[-2000:]
    assert _lines(out / "gone.jsonl") == FRAMES and _decoded(out / "gone.mp4") == FRAMES


def test_a_source_cut_short_while_it_is_read_keeps_what_was_decoded(material, tmp_path: Path) -> None:
    clip = write_test_clip(tmp_path / "cut.mkv", 1500, (160, 120), fps=25, seed=5)
    out = tmp_path / "out"
    run = _start_and_wait(material, clip, out)
    os.truncate(clip, clip.stat().st_size // 2)
    stdout, stderr = run.communicate(timeout=300)
    assert run.returncode == 2 and "Traceback" not in stderr
    (line,) = _errors(stderr)
    lines = _lines(out / "cut.jsonl")
    assert line.startswith(f"{ERROR}{clip}: decoding stopped after {lines} of 1500 frames"), line
    assert 20 <= lines < 1500 and _decoded(out / "cut.mp4") == lines
