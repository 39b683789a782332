"""The pipeline end to end through the CLI: tiny checkpoints, generated clips, ``boxes:`` detections.

Most runs use ``--workers inproc`` (every stage a thread; same stage code, same ZeroMQ messages) to keep
the suite fast; ``test_process_mode_*`` runs the real command with every stage in its own process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pipeline_fixtures import (
    INPUT_SIZE,
    read_jsonl,
    read_video,
    save_tiny_model,
    source_times,
    two_people,
    write_boxes,
    write_image_folder,
    write_test_clip,
)

from stream.edges.map_sinks import read_label_map
from stream.front.cli import main

SIZE = "x".join(str(v) for v in INPUT_SIZE)


@pytest.fixture(scope="module")
def material(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    return {
        "pose": save_tiny_model(root / "pose_tiny", "pose"),
        "seg": save_tiny_model(root / "seg_tiny", "seg"),
        "clip_a": write_test_clip(root / "walk.mp4", 12, (96, 64), fps=25),
        "clip_b": write_test_clip(root / "run.mp4", 9, (80, 64), fps=30, seed=1),
        "folder": write_image_folder(root / "stills", 5, (72, 56)),
        "boxes": write_boxes(root / "boxes.jsonl", two_people(12)),
    }


def _run_args(material, out: Path, *sources) -> list[str]:
    """``run`` on the sources with the tiny models and the shared boxes."""
    return [
        "run",
        *map(str, sources),
        "--out",
        str(out),
        "--pose-model",
        str(material["pose"]),
        "--seg-model",
        str(material["seg"]),
        "--detector",
        f"boxes:{material['boxes']}",
        "--input-size",
        SIZE,
        "--max-wait-ms",
        "2",
    ]


def _run(material, out: Path, *sources, extra=()) -> None:
    assert main([*_run_args(material, out, *sources), "--workers", "inproc", "--no-progress", *extra]) == 0


def _check_accounting(out: Path, name: str, source: Path) -> list[dict]:
    """One JSONL line per decoded frame in order, PyAV's pts, and a video with the source's frames."""
    lines = read_jsonl(out / f"{name}.jsonl")
    times = source_times(source)
    assert [line["frame"] for line in lines] == list(range(len(times)))
    assert [line["pts"] for line in lines] == pytest.approx(times, abs=1e-6)
    frames, pts, rate, time_base = read_video(out / f"{name}.mp4")
    _, src_pts, src_rate, src_time_base = read_video(source)
    assert len(frames) == len(times)
    assert (rate, time_base, pts) == (src_rate, src_time_base, src_pts)
    assert frames[0].shape[:2] == (lines[0]["height"], lines[0]["width"])
    return lines


def test_pose_on_two_clips_and_an_image_folder_in_one_run(material, tmp_path) -> None:
    out = tmp_path / "out"
    _run(material, out, material["clip_a"], material["clip_b"], material["folder"], extra=["--no-smooth"])
    given = two_people(12)
    for name, source in (("walk", material["clip_a"]), ("run", material["clip_b"])):
        lines = _check_accounting(out, name, source)
        for line in lines:
            assert line["source"] == name
            boxes = given[line["frame"]]
            # --no-smooth: boxes exactly as given; frames without persons have none.
            got = np.asarray([p["bbox"] for p in line["persons"]]).reshape(-1, 4)
            np.testing.assert_allclose(got, np.asarray([b[:4] for b in boxes]).reshape(-1, 4), atol=0.01)
            for person in line["persons"]:
                keypoints = np.asarray(person["keypoints"])
                assert keypoints.shape == (308, 3) and np.isfinite(keypoints).all()
        ids = {p["id"] for line in lines for p in line["persons"]}
        assert len(ids - {None}) >= 2  # both persons tracked at some point
    stills = read_jsonl(out / "stills.jsonl")
    assert [line["frame"] for line in stills] == list(range(5))
    assert all(line["pts"] is None and (line["width"], line["height"]) == (72, 56) for line in stills)
    frames, _, _, _ = read_video(out / "stills.mp4")
    assert len(frames) == 5


def test_pose_and_seg_with_smoothing_writes_label_maps(material, tmp_path) -> None:
    out = tmp_path / "out"
    _run(material, out, material["clip_a"], extra=["--task", "pose,seg", "--flip"])
    lines = _check_accounting(out, "walk", material["clip_a"])
    maps = sorted((out / "walk_seg").glob("*.png"))
    assert len(maps) == len(lines)
    labels = read_label_map(maps[3])
    assert labels.shape == (64, 96) and labels.dtype == np.uint8 and labels.max() < 29
    assert any("keypoints" in p for line in lines for p in line["persons"])


def test_seg_only_run(material, tmp_path) -> None:
    out = tmp_path / "out"
    _run(material, out, material["clip_b"], extra=["--task", "seg", "--no-flip"])
    lines = _check_accounting(out, "run", material["clip_b"])
    assert len(list((out / "run_seg").glob("*.png"))) == len(lines)
    assert all("keypoints" not in p for line in lines for p in line["persons"])


def test_frames_with_no_persons_anywhere(material, tmp_path) -> None:
    empty = write_boxes(tmp_path / "none.jsonl", {i: [] for i in range(12)})
    out = tmp_path / "out"
    argv = [
        "run",
        str(material["clip_a"]),
        "--out",
        str(out),
        "--pose-model",
        str(material["pose"]),
        "--detector",
        f"boxes:{empty}",
        "--input-size",
        SIZE,
        "--workers",
        "inproc",
        "--no-progress",
    ]
    assert main(argv) == 0
    lines = _check_accounting(out, "walk", material["clip_a"])
    assert all(line["persons"] == [] for line in lines)


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "stream", *args]


def test_process_mode_two_sources_and_sigint_drains_to_playable_outputs(material, tmp_path) -> None:
    """Default ipc workers (a process per stage); SIGINT mid-run leaves complete, playable outputs."""
    long_clip = write_test_clip(tmp_path / "long.mp4", 400, (96, 64), fps=25, seed=2)
    out = tmp_path / "out"
    args = _run_args(material, out, material["clip_a"], long_clip)
    proc = subprocess.Popen(
        _cli(*args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    jsonl = out / "long.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if jsonl.exists() and len(jsonl.read_text().splitlines()) >= 20:
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "interrupted" in stdout
    # The summary says what CPU each worker process used.
    (cpu_line,) = [line for line in stdout.splitlines() if line.startswith("cpu: ")]
    used = dict(item.rsplit(" ", 2)[:2] for item in cpu_line[len("cpu: ") :].split(", "))
    stages = {f"{role}[{name}]" for role in ("decode", "track", "render") for name in ("walk", "long")}
    assert set(used) == stages | {"infer[all]"}
    assert float(used["infer[all]"]) > 0
    # The short clip may or may not have finished; each output is whole and consistent.
    for name in ("walk", "long"):
        lines = read_jsonl(out / f"{name}.jsonl")
        assert [line["frame"] for line in lines] == list(range(len(lines)))
        frames, _, _, _ = read_video(out / f"{name}.mp4")
        assert len(frames) == len(lines)
    assert 20 <= len(read_jsonl(jsonl)) < 400


def test_live_mode_accounts_for_every_frame_and_marks_drops(material, tmp_path) -> None:
    """A file read in live mode decodes far faster than the models run: frames are dropped (oldest
    first), and each drop is a ``"skipped": true`` line, so the JSONL still has one line per frame."""
    long_clip = write_test_clip(tmp_path / "fast.mp4", 120, (96, 64), fps=25, seed=4)
    out = tmp_path / "out"
    _run(material, out, long_clip, extra=["--mode", "live"])
    lines = read_jsonl(out / "fast.jsonl")
    assert [line["frame"] for line in lines] == list(range(120))
    skipped = [line for line in lines if line.get("skipped")]
    kept = [line for line in lines if not line.get("skipped")]
    assert skipped, "a file read in live mode outruns the models: some frames must be dropped"
    assert kept and all("persons" in line for line in kept)
    assert all((line["width"], line["height"]) == (96, 64) for line in skipped)
    frames, _, _, _ = read_video(out / "fast.mp4")
    assert len(frames) == len(kept)


def test_demo_clip_and_shipped_boxes(tmp_path) -> None:
    from stream.front.demo import CLIP_SIZE, make_sample_clip

    clip, boxes = tmp_path / "sample.mp4", tmp_path / "boxes.jsonl"
    assert make_sample_clip(clip, boxes, 6) == 6
    frames, _, _, _ = read_video(clip)
    records = read_jsonl(boxes)
    assert len(frames) == 6 and [r["frame"] for r in records] == list(range(6))
    assert frames[0].shape[:2] == (CLIP_SIZE[1], CLIP_SIZE[0])
    for record in records:
        assert 2 <= len(record["boxes"]) <= 4  # the persons of zidane.jpg, then of bus.jpg
        for x1, y1, x2, y2, score in record["boxes"]:
            assert 0 <= x1 < x2 <= CLIP_SIZE[0] and 0 <= y1 < y2 <= CLIP_SIZE[1] and 0 < score <= 1


def test_demo_offline_runs_untrained_with_the_shipped_boxes(tmp_path) -> None:
    """``sapiens-stream demo`` with nothing cached and no network: it says loudly that the weights are
    random, stamps every frame, and takes the persons from the boxes shipped with it."""
    out = tmp_path / "out"
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "YOLO_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
        "YOLO_CONFIG_DIR": str(tmp_path / "yolo"), "OMP_NUM_THREADS": "2",
    }  # fmt: skip
    done = subprocess.run(
        _cli("demo", "--out", str(out), "--frames", "4", "--device", "cpu"),
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "could not be fetched" in done.stderr and "RANDOMLY INITIALISED" in done.stderr
    assert "outputs were made with UNTRAINED WEIGHTS" in done.stderr
    assert "YOLO unavailable" in done.stderr and "using the shipped person boxes" in done.stderr

    shipped = read_jsonl(out / "input" / "sample_boxes.jsonl")
    lines = read_jsonl(out / "sample.jsonl")
    assert [line["frame"] for line in lines] == [record["frame"] for record in shipped] == [0, 1, 2, 3]
    for line, record in zip(lines, shipped, strict=True):  # the shipped boxes' persons and scores
        assert sorted(p["score"] for p in line["persons"]) == sorted(b[4] for b in record["boxes"])
    assert lines[0]["persons"][0]["bbox"] == shipped[0]["boxes"][0][:4]  # a track's first box as given

    from stream.drawing.overlay import _BANNER_COLOR

    rendered, _, _, _ = read_video(out / "sample.mp4")
    assert len(rendered) == 4
    source, _, _, _ = read_video(out / "input" / "sample.mp4")  # the input clip is left as it was made
    assert len(source) == 4 and not any(np.array_equal(a, b) for a, b in zip(source, rendered, strict=True))
    for frame in rendered:  # the banner's band across the top of every frame
        top = frame[:4].reshape(-1, 3).astype(int)
        assert np.median(np.abs(top - _BANNER_COLOR).max(axis=1)) <= 24


def test_ipc_workers_share_frames_through_the_ring_and_match_inproc(material, tmp_path) -> None:
    """More frames than the ring has slots, so slots are reused: every result equals the inproc run's
    (pixels read from shared memory are the decoded ones) and no ring file outlives the run."""
    people = two_people(100)
    clip = write_test_clip(tmp_path / "many.mp4", len(people), (96, 64), fps=25, seed=3)
    boxes = write_boxes(tmp_path / "many.jsonl", people)
    rings_before = set(Path("/dev/shm").glob("ss-ring-*")) if Path("/dev/shm").is_dir() else set()
    results = {}
    for workers in ("inproc", "ipc"):
        out = tmp_path / workers
        assert main(
            [
                "run", str(clip), "--out", str(out), "--pose-model", str(material["pose"]),
                "--detector", f"boxes:{boxes}", "--input-size", SIZE, "--max-wait-ms", "2",
                "--workers", workers, "--no-progress",
            ]
        ) == 0  # fmt: skip
        results[workers] = _check_accounting(out, "many", clip)
    persons = [sum(len(line["persons"]) for line in results[w]) for w in ("inproc", "ipc")]
    assert persons[0] == persons[1] > len(people)
    for a, b in zip(results["inproc"], results["ipc"], strict=True):
        assert [p["bbox"] for p in a["persons"]] == [p["bbox"] for p in b["persons"]]
        # The same pixels give the same keypoints up to float noise: the runs may differ in thread
        # count and batch make-up, which changes the last bits of the sums, and random weights turn
        # that into small moves of a few keypoints. Pixels of a wrong frame or slot move nearly all.
        keypoints_a, keypoints_b = ([p["keypoints"] for p in r["persons"]] for r in (a, b))
        difference = np.abs(np.asarray(keypoints_a) - np.asarray(keypoints_b))
        assert difference.size == 0 or np.mean(difference <= 0.01) >= 0.97, (a["frame"], difference.max())
    rings_after = set(Path("/dev/shm").glob("ss-ring-*")) if Path("/dev/shm").is_dir() else set()
    assert rings_after <= rings_before


def _no_private_mounts() -> str | None:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "needs root and unshare(1) for a private /dev/shm"
    probe = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True)
    return None if probe.returncode == 0 else f"unshare --mount is refused here: {probe.stderr.strip()}"


@pytest.mark.skipif(_no_private_mounts() is not None, reason=str(_no_private_mounts()))
def test_live_run_with_dev_shm_full_sends_frames_inline(material, tmp_path) -> None:
    """/dev/shm has no room for a frame ring (a 64 kB tmpfs in a private mount namespace): the decoder
    says so and sends the pixels inside the messages; the live run still accounts for every frame and
    its results are the ones an in-process run gets from the same pixels."""
    people = two_people(60)
    clip = write_test_clip(tmp_path / "shm.mp4", len(people), (96, 64), fps=25, seed=5)
    boxes = write_boxes(tmp_path / "shm.jsonl", people)
    args = [
        "run", str(clip), "--pose-model", str(material["pose"]), "--detector", f"boxes:{boxes}",
        "--input-size", SIZE, "--max-wait-ms", "2", "--no-smooth", "--no-flip", "--no-progress",
    ]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "reference"), "--workers", "inproc"]) == 0
    reference = read_jsonl(tmp_path / "reference" / "shm.jsonl")
    script = 'mount -t tmpfs -o size=64k tmpfs /dev/shm && exec "$@"'
    command = ["unshare", "--mount", "sh", "-c", script, "sh", *_cli(*args, "--out", str(tmp_path / "out"),
               "--mode", "live", "--workers", "ipc")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert "shm: cannot reserve" in done.stderr and "frames travel inline" in done.stderr
    lines = read_jsonl(tmp_path / "out" / "shm.jsonl")
    assert [line["frame"] for line in lines] == list(range(len(people)))
    kept = [line for line in lines if not line.get("skipped")]
    frames, _, _, _ = read_video(tmp_path / "out" / "shm.mp4")
    assert kept and len(frames) == len(kept)
    for line in kept:  # the pixels that crossed the processes inline are the decoded ones
        expected = reference[line["frame"]]
        assert [p["bbox"] for p in line["persons"]] == [p["bbox"] for p in expected["persons"]]
        keypoints = np.asarray([p["keypoints"] for p in line["persons"]])
        expected_keypoints = np.asarray([p["keypoints"] for p in expected["persons"]])
        assert keypoints.size == 0 or np.mean(np.abs(keypoints - expected_keypoints) <= 0.01) >= 0.97


def test_skipped_frames_are_not_counted_as_output_with_a_latency(material, tmp_path) -> None:
    from stream.config import build_config
    from stream.pipeline.coordinator import _Coordinator
    from stream.pipeline.plan import plan_sources
    from stream.pipeline.report import ProgressDisplay
    from stream.runtime.events import Progress

    config = build_config(
        {"sources": [str(material["clip_a"])], "out": str(tmp_path), "workers": "inproc", "progress": False}
    )
    plans = plan_sources(config)
    coordinator = _Coordinator(config, plans, None)
    try:
        progress = ProgressDisplay(config, plans, coordinator.registry)
        name = plans[0].name
        coordinator._handle(Progress(source=name, latency=0.2), progress)
        coordinator._handle(Progress(source=name, latency=9.0, skipped=True), progress)
        summary = coordinator.registry.source(name).summary()
        assert summary["frames_out"] == 1
        assert summary["latency_p95"] == pytest.approx(0.2)
        assert coordinator.last_output is not None  # the skipped line still reached the sink
    finally:
        coordinator._close()


def test_segmentation_smoothing_size_keeps_aspect_and_bounds_the_work() -> None:
    from stream.engine.state import SEG_SMOOTH_MAX_SIDE, smoothing_size

    assert smoothing_size((64, 96)) == (64, 96)  # small frames are smoothed as they are
    height, width = smoothing_size((1080, 1920))
    assert max(height, width) == SEG_SMOOTH_MAX_SIDE
    assert abs(width / height - 1920 / 1080) < 0.01
