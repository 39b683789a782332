"""A cold start that costs little: only the inference worker loads torch; the decode, track and render
workers (and the fork server they come from) start without it. Checked on the real processes of a run
by the libraries mapped into each."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from pipeline_fixtures import INPUT_SIZE, save_tiny_model, write_boxes, write_test_clip


def _torch_by_process(pid: int) -> dict[str, bool]:
    """For every live process below ``pid``: its name, and whether it has torch's library mapped."""
    found = {}
    for process in psutil.Process(pid).children(recursive=True):
        try:
            found[f"{process.name()}:{process.pid}"] = any(
                "libtorch" in Path(m.path).name for m in process.memory_maps()
            )
        except (psutil.NoSuchProcess, psutil.ZombieProcess):
            pass  # a short-lived helper process that has already ended
    return found


def test_only_the_inference_worker_loads_torch(tmp_path: Path) -> None:
    frames = 300
    clip = write_test_clip(tmp_path / "long.mp4", frames, (96, 64), fps=25)
    boxes = write_boxes(tmp_path / "boxes.jsonl", {i: [[10, 8, 50, 60, 0.9]] for i in range(frames)})
    out = tmp_path / "out"
    model = save_tiny_model(tmp_path / "pose", "pose")
    command = [sys.executable, "-m", "stream", "run", str(clip), "--out", str(out), "--task", "pose",
               "--pose-model", str(model), "--detector", f"boxes:{boxes}",
               "--input-size", "x".join(map(str, INPUT_SIZE)), "--no-progress"]
    run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                           start_new_session=True, env=dict(os.environ, OMP_NUM_THREADS="1"))
    try:
        deadline = time.monotonic() + 240
        while not (out / "long.jsonl").exists() or not (out / "long.jsonl").read_text().count("\n") >= 5:
            assert run.poll() is None and time.monotonic() < deadline, run.stderr.read()
            time.sleep(0.1)
        found = _torch_by_process(run.pid)
    finally:
        os.killpg(run.pid, signal.SIGINT)
        run.communicate(timeout=120)
    workers = {key.split(":")[0]: torch for key, torch in found.items() if key.startswith("sapiens-")}
    assert workers == {"sapiens-infer": True, "sapiens-decode": False, "sapiens-track": False,
                       "sapiens-render": False}
    # The fork server (and multiprocessing's resource tracker) hold no torch either.
    assert not any(torch for key, torch in found.items() if not key.startswith("sapiens-"))
