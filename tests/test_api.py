"""The Python API (``stream.Pipeline``, ``stream.run``) through real runs: tiny checkpoints, generated
clips, ``boxes:`` detections, real worker processes and sockets.

Runs compared value for value use ``max_batch=1``: every crop then has a forward of its own, so two runs
compute exactly the same numbers whatever the timing (batches of different make-up differ in the last
bits of their sums).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from pipeline_fixtures import (
    INPUT_SIZE,
    read_jsonl,
    read_video,
    save_tiny_model,
    two_people,
    write_boxes,
    write_test_clip,
)
from rtsp_server import RtspServerProcess, server_unavailable_reason

import stream
from stream.edges.map_sinks import read_label_map
from stream.front.cli import main
from stream.pipeline.launch import start_worker_server

SIZE = "x".join(str(v) for v in INPUT_SIZE)


@pytest.fixture(scope="module")
def material(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("api")
    return {
        "pose": save_tiny_model(root / "pose_tiny", "pose"),
        "seg": save_tiny_model(root / "seg_tiny", "seg"),
        "clip_a": write_test_clip(root / "walk.mp4", 12, (96, 64), fps=25),
        "clip_b": write_test_clip(root / "run.mp4", 9, (80, 64), fps=30, seed=1),
        "long": write_test_clip(root / "long.mp4", 100, (96, 64), fps=25, seed=2),
        "boxes": write_boxes(root / "boxes.jsonl", two_people(100)),
    }


def _options(material, **overrides) -> dict:
    """The API's keyword options for the tiny models and the shared boxes (threads unless overridden)."""
    options = {
        "task": "pose,seg",
        "pose_model": str(material["pose"]),
        "seg_model": str(material["seg"]),
        "detector": f"boxes:{material['boxes']}",
        "input_size": SIZE,
        "max_batch": 1,
        "max_wait_ms": 2,
        "workers": "inproc",
        "progress": False,
    }
    return {**options, **overrides}


@pytest.fixture(scope="module")
def cli_run(material, tmp_path_factory) -> Path:
    """The command line's outputs for both short clips, with the settings of ``_options``."""
    out = tmp_path_factory.mktemp("cli") / "out"
    args = [f"--{name.replace('_', '-')}={value}" for name, value in _options(material).items()]
    args = [arg for arg in args if not arg.startswith("--progress")] + ["--no-progress"]
    assert main(["run", str(material["clip_a"]), str(material["clip_b"]), "--out", str(out), *args]) == 0
    return out


def _collect(pipe) -> dict[str, list]:
    by_source: dict[str, list] = {}
    for result in pipe:
        by_source.setdefault(result.source, []).append(result)
    return by_source


def _files(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


def test_results_in_order_equal_the_cli_jsonl_and_write_nothing(material, cli_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where the command line's default ``out`` would go
    with stream.Pipeline([material["clip_a"], material["clip_b"]], **_options(material)) as pipe:
        results = _collect(pipe)
    assert sorted(results) == ["run", "walk"]
    for name, count in (("walk", 12), ("run", 9)):
        lines = read_jsonl(cli_run / f"{name}.jsonl")
        got = results[name]
        assert [r.frame for r in got] == list(range(count))  # each source's frames in order
        assert [r.to_dict() for r in got] == lines
        for result in got:
            assert isinstance(result, stream.FrameResult) and not result.skipped and result.image is None
            assert result.seg.shape == (result.height, result.width) and result.seg.dtype == np.uint8
            label_map = read_label_map(cli_run / f"{name}_seg/{result.frame:06d}.png")
            np.testing.assert_array_equal(result.seg, label_map)
            for person in result.persons:
                assert isinstance(person, stream.Person) and isinstance(person.score, float)
                assert person.bbox.shape == (4,) and person.bbox.dtype == np.float32
                assert person.keypoints.shape == (308, 3) and person.keypoints.dtype == np.float32
                assert person.id is None or person.id >= 0
        assert any(p.id is not None for r in got for p in r.persons)
    assert pipe.report.sources["walk"].lines == 12 and pipe.report.sources["walk"].outputs == {}
    assert list(tmp_path.iterdir()) == []  # out=None: no files


def test_out_dir_writes_what_the_cli_writes(material, cli_run, tmp_path):
    out = tmp_path / "out"
    report = stream.run([material["clip_a"], material["clip_b"]], out=out, **_options(material))
    assert report.frames == 21
    assert _files(out) == _files(cli_run)
    for name in ("walk", "run"):
        assert read_jsonl(out / f"{name}.jsonl") == read_jsonl(cli_run / f"{name}.jsonl")


def test_render_gives_the_annotated_frames(material):
    options = _options(material, task="pose")
    with stream.Pipeline(material["clip_a"], render=True, **options) as pipe:
        results = list(pipe)
    source_frames, _, _, _ = read_video(material["clip_a"])
    assert [r.frame for r in results] == list(range(12))
    for result, source in zip(results, source_frames, strict=True):
        assert result.image.shape == (64, 96, 3) and result.image.dtype == np.uint8
        difference = np.abs(result.image.astype(int) - source.astype(int))
        if result.persons:
            assert (difference.max(axis=2) > 60).sum() > 50  # boxes and skeletons drawn
        else:
            assert difference.mean() < 2  # nothing to draw: the decoded frame as it is


def _ring_files(pids: set[int]) -> set[Path]:
    """The shared-memory frame rings the processes ``pids`` have mapped (other runs on this machine
    have rings of their own)."""
    paths = set()
    for pid in pids:
        try:
            paths.update(Path(m.path) for m in psutil.Process(pid).memory_maps() if "ss-ring-" in m.path)
        except psutil.NoSuchProcess:
            pass
    return paths


def _descendants() -> set[int]:
    """This process's running descendants (a process that exits while it is looked at is not one)."""
    pids = set()
    for process in psutil.Process().children(recursive=True):
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                pids.add(process.pid)
        except psutil.NoSuchProcess:
            pass
    return pids


def test_breaking_out_of_the_loop_stops_the_workers_and_closes_the_outputs(material, tmp_path):
    start_worker_server()  # the fork server outlives runs; the workers it forks must not
    before = _descendants()
    out = tmp_path / "out"
    taken = []
    options = _options(material, task="pose", workers="ipc", max_batch=8)
    with stream.Pipeline(material["long"], out=out, **options) as pipe:
        for result in pipe:
            taken.append(result.frame)
            if len(taken) == 1:
                workers = _descendants() - before
                rings = _ring_files(workers)
                assert rings and all(path.exists() for path in rings)
            if len(taken) == 5:
                break
        assert _descendants() <= before  # stopped when the loop was left, before the block ends
    assert len(workers) == 3 + 1  # decode, track and render for the one source, and the GPU worker
    assert not any(path.exists() for path in rings)
    assert taken == list(range(5))
    lines = read_jsonl(out / "long.jsonl")
    frames, _, _, _ = read_video(out / "long.mp4")  # closed: playable
    # The frames in the pipeline when the loop was left were finished: how many depends on timing.
    assert 5 <= len(lines) <= 100 and len(frames) == len(lines)
    assert [line["frame"] for line in lines] == list(range(len(lines)))
    assert pipe.report.interrupted


def test_a_slow_consumer_offline_slows_the_run_and_loses_nothing(material, tmp_path):
    out = tmp_path / "out"
    options = _options(material, task="pose", queue_frames=1)
    results = []
    with stream.Pipeline(material["long"], out=out, **options) as pipe:
        for result in pipe:
            results.append(result)
            if len(results) == 5:
                time.sleep(1.0)  # ample time for the pipeline to run ahead, if it could
                written = len(read_jsonl(out / "long.jsonl"))
            time.sleep(0.002)
    # Backpressure: with the caller's queue full the render stage waits, so the run stayed a few
    # frames (the queues of one frame each, and the one being sent) ahead of the caller.
    assert written <= 5 + 4
    assert [r.frame for r in results] == list(range(100))
    assert not any(r.skipped for r in results)
    assert [r.to_dict() for r in results] == read_jsonl(out / "long.jsonl")
    assert pipe.report.sources["long"].drops == {}


@pytest.mark.needs_system(what="RTSP test server", missing=server_unavailable_reason())
def test_a_slow_consumer_live_gets_skipped_results_counted_as_drops(material, tmp_path):
    out = tmp_path / "out"
    results = []
    with RtspServerProcess(width=96, height=64, fps=25, duration=120) as camera:
        with stream.Pipeline(camera.url, out=out, **_options(material, task="pose")) as pipe:  # live
            for result in pipe:
                results.append(result)
                if len(results) == 1:
                    time.sleep(2.0)  # the caller stalls for 50 frames while the camera goes on
                if len(results) == 100:
                    pipe.stop()
    report = pipe.report.sources[results[0].source]
    assert report.mode == "live"
    # Every JSONL line reached the caller, in order: as its result, or as a skipped one.
    lines = read_jsonl(out / f"{report.name}.jsonl")
    assert [r.frame for r in results] == [line["frame"] for line in lines]
    missed = [r for r, line in zip(results, lines, strict=True) if r.skipped and not line.get("skipped")]
    assert len(missed) == report.drops.get("caller", 0) > 0  # not taken in time: counted drops
    for result, line in zip(results, lines, strict=True):
        assert result.skipped or result.to_dict() == line
        assert result.skipped or not line.get("skipped")
    assert any(not r.skipped for r in results[-20:])  # taking results again, the caller gets them
    assert all(r.persons == [] and r.seg is None and r.image is None for r in missed)
    record = missed[0].to_dict()
    assert record["skipped"] is True and "persons" not in record
    assert (record["width"], record["height"]) == (96, 64)


def test_stop_drains_what_is_in_the_pipeline(material, tmp_path):
    out = tmp_path / "out"
    results = []
    clip = write_test_clip(tmp_path / "longer.mp4", 300, (96, 64), fps=25, seed=3)
    with stream.Pipeline(clip, out=out, **_options(material, task="pose")) as pipe:
        for result in pipe:
            results.append(result)
            if len(results) == 5:
                pipe.stop()
    assert 5 <= len(results) < 300
    assert [r.frame for r in results] == list(range(len(results)))
    lines = read_jsonl(out / "longer.jsonl")
    assert [r.to_dict() for r in results] == lines  # everything written was also delivered
    frames, _, _, _ = read_video(out / "longer.mp4")
    assert len(frames) == len(lines)
    assert pipe.report.interrupted and pipe.report.sources["longer"].complete


def test_bad_options_are_refused_before_anything_starts(material):
    with pytest.raises(ValueError, match="unknown option 'max_batches'"):
        stream.Pipeline(material["clip_a"], max_batches=2)
    with pytest.raises(ValueError, match="source not found"):
        with stream.Pipeline("no-such-clip.mp4", **_options(material)):
            pass


def test_the_api_link_is_in_the_topology_table_only_with_a_caller(material):
    from stream.config import build_config
    from stream.runtime.topology import RunTopology

    config = build_config({"sources": [str(material["clip_a"])], "queue_frames": 3})
    with_caller = RunTopology(config, ["a", "b"], caller=True)
    (api,) = [link for link in with_caller.links if link.name == "api"]
    assert (api.sender.role, api.receiver.role, api.binds) == ("render", "caller", "receiver")
    # Bounded at both ends: a render stage's queue, and the caller's one queue for every source.
    assert api.sender.hwm.value(config, 2) == 3 and api.receiver.hwm.value(config, 2) == 6
    assert "api" in with_caller.endpoint_names()
    assert "api" not in RunTopology(config, ["a", "b"]).endpoint_names()
    assert "render PUSH hwm=3" in with_caller.describe()
