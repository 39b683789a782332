"""The GPU suite's dry run, through its real command line: every part runs on the CPU with tiny models and
the JSON has exactly the keys of a real run (the suite's SCHEMA), with figures in every leaf a CPU can
measure, and the summary fits one screen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.gpu_suite import CUDA_ONLY, PARTS, SCHEMA, SUMMARY_WIDTH, conform, key_paths, null_leaves

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from rtsp_server import server_unavailable_reason  # noqa: E402

RTSP_MISSING = server_unavailable_reason()
# Leaves that are null by design in a successful dry run: errors and messages of what went well, the
# compile time of eager rows, SDPA backends a CPU does not have, and what only CUDA measures.
NULL_WHEN_OK = CUDA_ONLY | {
    *(f"parts.{name}.error" for name in PARTS),
    "parts.tests.results.tests[].message",
    "parts.model.results.throughput[].error",
    "parts.model.results.throughput[].compile_s",
    "parts.model.results.attention[].error",
    *(f"parts.model.results.attention[].{key}" for key in
      ("ms_per_batch", "ms_per_batch_min", "images_per_s", "samples_ms", "mfu")),
    "parts.live.results.runs[].error",
}


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path_factory.mktemp("gpu_suite")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.gpu_suite", "--dry-run", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=500,
    )
    return done, out


@pytest.mark.needs_system(what="GStreamer RTSP server (live part)", missing=RTSP_MISSING)
def test_dry_run_writes_the_schema_keys_and_figures(dry_run):
    done, out = dry_run
    report = json.loads((out / "gpu_suite.json").read_text())
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert report["dry_run"] is True
    assert key_paths(report, SCHEMA) == key_paths(SCHEMA, SCHEMA)
    assert {name: part["status"] for name, part in report["parts"].items()} == dict.fromkeys(PARTS, "ok")
    assert null_leaves(report, SCHEMA) <= NULL_WHEN_OK

    tests = report["parts"]["tests"]["results"]
    assert tests["failed"] == 0 and tests["passed"] >= 9  # every head, crops, decoding, smoothing, codec
    skipped = [t["name"] for t in tests["tests"] if t["outcome"] == "skipped"]
    assert skipped == ["test_copy_stream_overlaps_previous_compute"]  # streams need CUDA
    model = report["parts"]["model"]["results"]
    modes = {(row["impl"], row["mode"]) for row in model["throughput"] if row["ms_per_batch"]}
    assert modes == {(impl, mode) for impl in ("ours", "transformers") for mode in ("eager", "compiled")}
    assert any(row["ms_per_batch"] for row in model["attention"] if row["impl"] == "ours")
    pipeline = report["parts"]["pipeline"]["results"]
    assert [row["flip"] for row in pipeline["versus_model_only"]] == [False, True]
    assert all(row["value"] is not None for row in report["targets"])


def test_dry_run_summary_fits_one_screen(dry_run):
    done, out = dry_run
    text = (out / "summary.txt").read_text()
    lines = text.splitlines()
    assert lines[0] == "GPU suite on CPU (dry run: tiny models)"
    assert len(lines) <= 40 and max(map(len, lines)) <= SUMMARY_WIDTH
    for name in PARTS:
        assert any(line.startswith(f"{name} ") for line in lines), name
    assert sum(line.startswith("target: ") for line in lines) == 4
    assert text.strip() in done.stdout  # also printed
    assert (out / "gpu_suite.log").stat().st_size > 0


def test_conform_fills_missing_keys_and_refuses_unknown_ones():
    part = conform({"status": "failed", "error": "boom"}, SCHEMA["parts"]["model"])
    assert part["results"]["throughput"] == [] and part["results"]["config"]["arch"] is None
    report = conform({"parts": {"model": part}}, SCHEMA)
    missing_rows = key_paths(SCHEMA, SCHEMA) - key_paths(report, SCHEMA)
    assert "parts.model.results.throughput[].mfu" in missing_rows  # no rows: a failed part shows
    with pytest.raises(KeyError, match="not_a_key"):
        conform({"not_a_key": 1}, SCHEMA)
    extra = {**report, "surprise": 1}
    assert "surprise" in key_paths(extra, SCHEMA) - key_paths(SCHEMA, SCHEMA)


def test_a_part_past_its_budget_is_stopped_and_says_so(tmp_path):
    """The part runs in its own process session: at its budget it is killed with whatever it started, and
    its entry says so; the suite would go on with the next part."""
    from benchmarks.gpu_suite import DRY, run_part

    with open(tmp_path / "log", "w") as log:
        part = run_part("live", DRY, budget=2.0, log=log, scratch=tmp_path)
    assert part["status"] == "timeout"
    assert part["error"].startswith("stopped at its budget of 2 s")
    assert part["seconds"] < 30
    conformed = conform(part, SCHEMA["parts"]["live"])
    assert conformed["results"]["runs"] == [] or conformed["results"]["runs"][0]["cameras"] == 2


def test_summary_of_a_run_where_every_part_failed():
    from benchmarks.gpu_suite import summary, targets

    failed = {"status": "crashed", "seconds": 1.0, "budget_s": 60, "error": "exit status -9, no result"}
    report = conform({"parts": dict.fromkeys(PARTS, failed), "machine": {}}, SCHEMA)
    report["targets"] = [conform(row, SCHEMA["targets"][0]) for row in targets(report["parts"])]
    assert key_paths(report, SCHEMA) <= key_paths(SCHEMA, SCHEMA)
    lines = summary(report).splitlines()
    assert [line.split()[1] for line in lines if line.split()[0] in PARTS] == ["crashed"] * len(PARTS)
    verdicts = [line for line in lines if line.startswith("target: ")]
    assert len(verdicts) == 4 and all(line.endswith("not measured") for line in verdicts)
