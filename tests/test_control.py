"""The control API of a single-host live run: cameras are added and removed while the others go on,
sharing the one GPU worker. Real RTSP cameras, the real command with its default process workers, real
HTTP requests, a real SIGINT at the end."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import av
import psutil
import pytest
from pipeline_fixtures import http_json, results_so_far, save_tiny_model, stop_run, wait_while_running
from rtsp_server import RtspServerProcess, free_port, server_unavailable_reason

pytestmark = pytest.mark.needs_system(what="RTSP test server", missing=server_unavailable_reason())


def _stages(run: subprocess.Popen, role: str) -> int:
    return sum(1 for p in psutil.Process(run.pid).children(recursive=True) if p.name() == f"sapiens-{role}")


def _check_closed(jsonl: Path) -> int:
    """A source's files are closed: every JSONL line whole, the video playable with one frame per
    result line. Returns the number of result lines."""
    text = jsonl.read_text()
    assert text.endswith("\n")
    written = [line for line in map(json.loads, text.splitlines()) if not line.get("skipped")]
    with av.open(str(jsonl.with_suffix(".mp4"))) as container:
        assert sum(1 for _ in container.decode(video=0)) == len(written)
    return len(written)


def test_the_control_api_adds_and_removes_cameras_while_the_others_run(tmp_path: Path) -> None:
    tiny_pose = save_tiny_model(tmp_path / "tiny_pose", "pose")
    boxes = tmp_path / "boxes.jsonl"
    boxes.write_text(
        "".join(json.dumps({"frame": i, "boxes": [[40, 30, 120, 100, 0.9]]}) + "\n" for i in range(9000))
    )
    out, port = tmp_path / "out", free_port()
    api = f"http://127.0.0.1:{port}/sources"
    stderr_path = tmp_path / "stderr.txt"
    grows = {}  # source -> result lines it must exceed

    def growing() -> bool:
        return all(len(results_so_far(out / f"{name}.jsonl")) > count for name, count in grows.items())

    with contextlib.ExitStack() as cameras:
        a, b = (cameras.enter_context(RtspServerProcess(fps=10, width=160, height=120)) for _ in range(2))
        c = cameras.enter_context(
            RtspServerProcess(fps=10, width=160, height=120, user="u", password="s3cret")
        )
        command = [sys.executable, "-m", "stream", "run", f"a={a.url}", f"b={b.url}",
                   "--out", str(out), "--mode", "live", "--pose-model", str(tiny_pose), "--detector",
                   f"boxes:{boxes}", "--input-size", "64x48", "--device", "cpu", "--no-progress",
                   "--control", f"127.0.0.1:{port}"]  # fmt: skip
        with stderr_path.open("w") as log:
            run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
                                   env=dict(os.environ, OMP_NUM_THREADS="1"))  # fmt: skip
        try:
            first = lambda: all(len(results_so_far(out / f"{n}.jsonl")) >= 15 for n in "ab")  # noqa: E731
            wait_while_running(run, first, "first results")
            assert f"control: {api}" in stderr_path.read_text()
            status, listed = http_json("GET", api)
            assert status == 200 and {row["name"]: row["state"] for row in listed} == {
                "a": "running",
                "b": "running",
            }
            # Bad requests change nothing.
            assert http_json("POST", api, b"not json")[0] == 400
            assert http_json("POST", api, {"name": "c"})[0] == 400  # no url
            assert http_json("POST", api, {"name": "../c", "url": c.url})[0] == 400
            assert http_json("POST", api, {"name": "c", "url": str(tmp_path / "missing.mp4")})[0] == 400
            assert http_json("POST", api, {"name": "a", "url": c.url})[0] == 409  # the name is in use
            assert http_json("DELETE", f"{api}/nobody")[0] == 404
            assert http_json("GET", f"{api}/a")[0] == 404

            # Add a camera: it writes results, the others go on.
            grows.update({n: len(results_so_far(out / f"{n}.jsonl")) for n in "ab"})
            status, added = http_json("POST", api, {"name": "c", "url": c.url})
            assert status == 201 and added["name"] == "c" and added["state"] == "running"
            assert "s3cret" not in json.dumps(added)
            added = lambda: len(results_so_far(out / "c.jsonl")) >= 15  # noqa: E731
            wait_while_running(run, added, "results of the added camera")
            wait_while_running(run, growing, "results of the other cameras")
            assert _stages(run, "infer") == 1 and _stages(run, "decode") == 3  # one GPU worker for all
            listed = http_json("GET", api)[1]
            assert [row["state"] for row in listed] == ["running"] * 3 and "s3cret" not in json.dumps(listed)

            # Remove one: its chain drains and its workers leave, the others go on.
            grows = {n: len(results_so_far(out / f"{n}.jsonl")) for n in "bc"}
            status, removing = http_json("DELETE", f"{api}/a")
            assert status == 202 and removing["state"] in ("stopping", "removed")
            assert http_json("DELETE", f"{api}/a")[0] == 404  # already on its way out
            state = lambda: {r["name"]: r["state"] for r in http_json("GET", api)[1]}  # noqa: E731
            wait_while_running(run, lambda: state()["a"] == "removed", "the removed camera to drain", 60)
            assert state() == {"a": "removed", "b": "running", "c": "running"}
            a_lines = _check_closed(out / "a.jsonl")  # closed while the run goes on
            assert a_lines >= 15
            wait_while_running(run, growing, "results of the remaining cameras")
            wait_while_running(
                run,
                lambda: _stages(run, "decode") == 2 and _stages(run, "render") == 2,
                "a's workers to leave",
            )

            # A removed name can be added again: new files named by their start time; the first stay.
            assert http_json("POST", api, {"name": "a", "url": a.url})[0] == 201
            again = lambda: sorted(out.glob("a_*.jsonl"))  # noqa: E731
            added_again = lambda: again() and len(results_so_far(again()[0])) >= 10  # noqa: E731
            wait_while_running(run, added_again, "results of the camera added again")
            assert _check_closed(out / "a.jsonl") == a_lines
        finally:
            stop_run(run)
    stderr = stderr_path.read_text()
    assert run.returncode == 0, stderr[-3000:]
    assert "Traceback" not in stderr and "s3cret" not in stderr
    for jsonl in [out / "a.jsonl", *again(), out / "b.jsonl", out / "c.jsonl"]:
        assert _check_closed(jsonl) >= 10, jsonl
