"""The soak benchmark's short version, through its command line: two RTSP cameras for a minute, the
flaky one killed and restored twice, the real ``python -m stream run`` with process workers.

Only what must hold on any machine is asserted (the report is complete, every outage ends in a
reconnect, the other camera keeps writing meanwhile, the frame rings in /dev/shm do not grow and are gone
after the run); RSS growth and frame age are the benchmark's figures, not pass/fail criteria here.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rtsp_server import server_unavailable_reason  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.needs_system(what="RTSP test server", missing=server_unavailable_reason())

KEYS = {
    "benchmark", "machine", "config", "exit_status", "measured_s", "rss", "frame_age_ms", "frames",
    "drops_by_cause", "reconnects", "outages", "shm", "outputs",
}


@pytest.fixture(scope="module")
def soak_report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    out = tmp_path_factory.mktemp("soak") / "soak.json"
    command = [sys.executable, "benchmarks/soak.py", "--duration", "60", "--outage-every", "20",
               "--out", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "target <" in done.stdout  # the short table follows the JSON
    return json.loads(out.read_text())


def test_report_has_every_figure(soak_report: dict) -> None:
    assert KEYS <= set(soak_report)
    assert soak_report["exit_status"] == 0
    rss = soak_report["rss"]
    assert {"processes", "total", "target_pct", "within_target", "series_mb"} <= set(rss)
    roles = {label.split("[")[0] for label in rss["processes"]}
    # The run's tree: the coordinator and its stage workers, each camera's decoder among them.
    assert {"coordinator", "decode:steady", "decode:flaky"} <= roles
    assert len(rss["processes"]) >= 4
    for figures in rss["processes"].values():
        assert {"start_mb", "end_mb", "max_mb", "growth_pct"} <= set(figures)
        assert figures["start_mb"] > 0
    for name in ("steady", "flaky", "all"):
        age = soak_report["frame_age_ms"][name]
        assert age["frames"] > 0 and age["p50"] is not None and age["p99"] >= age["p50"]
    for name in ("steady", "flaky"):
        assert soak_report["frames"][name]["out_total"] > 0
        assert isinstance(soak_report["drops_by_cause"][name], dict)
    assert {"run_bytes_start", "run_bytes_end", "run_bytes_max", "run_bytes_left_after_exit",
            "series_bytes"} <= set(soak_report["shm"])


def test_flaky_camera_reconnects_after_every_outage(soak_report: dict) -> None:
    outages = soak_report["outages"]
    assert len(outages) == 2  # at 20 s and 40 s, each down for 10 s
    for outage in outages:
        assert outage["reconnected_after_s"] is not None, outage
    assert soak_report["reconnects"]["flaky"] >= len(outages)


def test_steady_camera_keeps_writing_during_outages(soak_report: dict) -> None:
    for outage in soak_report["outages"]:
        assert outage["steady_frames_out_during"] > 0, outage


def test_frame_rings_do_not_grow_and_are_removed(soak_report: dict) -> None:
    shm = soak_report["shm"]
    series = [size for _, size in shm["series_bytes"]]
    assert series[0] > 0, "the run's frame rings were found in /dev/shm"
    assert max(series) <= series[0]
    assert shm["run_bytes_end"] <= shm["run_bytes_start"]
    assert shm["run_bytes_left_after_exit"] == 0
