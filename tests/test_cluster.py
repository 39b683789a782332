"""Runs over a real local Ray cluster (2 CPUs, no GPU, so CPU shard actors) with the tiny checkpoints:
the same JSONL as one host, files of a killed shard run again elsewhere, outputs only under final names
when complete, and the one-line error without Ray."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pipeline_fixtures import (
    INPUT_SIZE,
    http_json,
    read_jsonl,
    save_tiny_model,
    two_people,
    write_boxes,
    write_test_clip,
)
from rtsp_server import RtspServerProcess, free_port, server_unavailable_reason

from stream.cluster import run_cluster
from stream.config import build_config
from stream.front.cli import main

ray = pytest.importorskip("ray")

SIZE = "x".join(str(v) for v in INPUT_SIZE)
NAMES = ("a", "b", "c", "d")


@pytest.fixture(scope="module")
def cluster():
    # A small cluster: the machine is shared, and the tests need only two CPU shards.
    # "camera": the custom resource of camera-side nodes (``--decode-on camera``); here the one node has it.
    ray.init(num_cpus=2, resources={"camera": 1}, object_store_memory=200 * 1024 * 1024,
             include_dashboard=False, log_to_driver=False)  # fmt: skip
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def material(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cluster")
    clips = [write_test_clip(root / f"{n}.mp4", 10, (80, 64), fps=25, seed=i) for i, n in enumerate(NAMES)]
    return {
        "pose": save_tiny_model(root / "pose_tiny", "pose"),
        "boxes": write_boxes(root / "boxes.jsonl", two_people(100)),
        "clips": clips,
        "long": write_test_clip(root / "long.mp4", 100, (80, 64), fps=25, seed=9),
        # Far longer than the short clips on any machine, however loaded: still at work when they end.
        "longer": write_test_clip(root / "longer.mp4", 1500, (80, 64), fps=25, seed=8),
    }


def _args(material, out: Path, sources, *extra) -> list[str]:
    return [
        "run", *map(str, sources), "--out", str(out), "--pose-model", str(material["pose"]),
        "--detector", f"boxes:{material['boxes']}", "--input-size", SIZE, "--max-wait-ms", "2",
        "--workers", "inproc", "--no-progress", *extra,
    ]  # fmt: skip


def _outputs(out: Path) -> dict[str, bytes]:
    """Every file under ``out`` (the side directory included) and its bytes."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_four_files_over_two_shards_give_the_single_host_jsonl(cluster, material, tmp_path, capsys) -> None:
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert main(_args(material, single, material["clips"])) == 0
    capsys.readouterr()
    assert main(_args(material, sharded, material["clips"], "--ray", "auto", "--shards", "2")) == 0
    printed = capsys.readouterr().out
    for name in NAMES:
        assert (sharded / f"{name}.jsonl").read_bytes() == (single / f"{name}.jsonl").read_bytes()
        assert (sharded / f"{name}.mp4").stat().st_size > 0
    # The summary says which shard wrote each source; both shards took part.
    shards = {line.split("[")[1].split(" on ")[0] for line in printed.splitlines() if "[shard-" in line}
    assert shards == {"shard-1", "shard-2"}
    assert "cluster: 2 shards, 0 lost" in printed
    assert not [p for p in sharded.rglob("*") if p.is_file() and ".partial" in p.parts]


def test_a_shard_killed_mid_run_still_gives_complete_exact_outputs(cluster, material, tmp_path, capsys):
    sources = [material["long"], *material["clips"][:3]]
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert main(_args(material, single, sources)) == 0
    capsys.readouterr()
    killer = threading.Thread(target=_kill_first_busy_shard, args=(sharded,), daemon=True)
    killer.start()
    assert main(_args(material, sharded, sources, "--ray", "auto", "--shards", "2")) == 0
    killer.join(30)
    printed = capsys.readouterr().out
    assert "1 lost and replaced" in printed, printed
    for source in sources:
        name = Path(source).stem
        assert (sharded / f"{name}.jsonl").read_bytes() == (single / f"{name}.jsonl").read_bytes()
    assert not (sharded / ".partial").exists() or not _outputs(sharded / ".partial")


def _kill_first_busy_shard(out: Path, timeout: float = 120.0) -> None:
    """Kill (``ray.kill``: the actor's process ends at once) the shard that is writing its outputs aside,
    once it has written some. Its side directory, ``.partial/<run>/<label>-<call>``, names the actor."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for jsonl in (out / ".partial").rglob("*.jsonl") if (out / ".partial").exists() else []:
            if jsonl.stat().st_size > 0:
                run_id, label = jsonl.parent.parent.name, jsonl.parent.name.rsplit("-", 1)[0]
                ray.kill(ray.get_actor(f"sapiens-stream-{run_id}-{label}"))
                return
        time.sleep(0.05)


def test_without_ray_the_option_is_one_error_line(material, tmp_path) -> None:
    # A Python without Ray: an import of it fails, as it would if the extra were not installed.
    code = (
        "import sys; sys.modules['ray'] = None; from stream.front.cli import main; "
        f"sys.exit(main({_args(material, tmp_path / 'o', material['clips'][:1], '--ray', 'local')!r}))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sapiens-stream: error: ")
    assert "pip install sapiens-stream[ray]" in lines[0]


def _lines(path: Path) -> list[dict]:
    """The complete lines of a growing JSONL file (a line still being written is left out)."""
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.split("\n")[:-1]]


def _parts(out: Path, name: str) -> list[Path]:
    return sorted(out.glob(f"{name}_*.jsonl"))


def _wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.needs_system(what="RTSP test server", missing=server_unavailable_reason())
def test_two_cameras_over_two_shards_survive_the_loss_of_one(cluster, material, tmp_path) -> None:
    out = tmp_path / "out"
    boxes = write_boxes(tmp_path / "boxes.jsonl", {i: [[10.0, 8.0, 50.0, 60.0, 0.9]] for i in range(6000)})
    north = RtspServerProcess(mount="/north", width=160, height=120, fps=30).start()
    south = RtspServerProcess(mount="/south", width=160, height=120, fps=30, pattern="smpte").start()
    config = build_config({
        "sources": [north.url, south.url], "out": str(out), "pose_model": str(material["pose"]),
        "detector": f"boxes:{boxes}", "input_size": SIZE, "workers": "inproc", "progress": False,
        "mode": "live", "ray": "auto", "shards": 2,
    })  # fmt: skip
    stop, result = threading.Event(), {}
    runner = threading.Thread(target=lambda: result.update(report=run_cluster(config, stop)), daemon=True)
    runner.start()
    try:
        running = lambda name: _parts(out, name) and len(_lines(_parts(out, name)[-1])) >= 5  # noqa: E731
        _wait_for(lambda: running("north") and running("south"), 120, "both cameras to be annotated")
        # The first camera was placed on the first shard: kill that actor's process.
        victim = next(n for n in ray.util.list_named_actors() if n.endswith("-shard-1"))
        ray.kill(ray.get_actor(victim))
        south_before = len(_lines(_parts(out, "south")[-1]))
        _wait_for(lambda: len(_parts(out, "north")) == 2 and running("north"), 60, "north on another shard")
        _wait_for(lambda: len(_lines(_parts(out, "south")[-1])) > south_before + 10, 60, "south to go on")
    finally:
        stop.set()
        runner.join(120)
        north.stop()
        south.stop()
    report = result["report"]
    assert report.lost_shards == 1
    assert report.placement == {"north": "shard-1, then shard-2", "south": "shard-2"}
    assert len(_parts(out, "south")) == 1  # never interrupted
    for part in (*_parts(out, "north"), *_parts(out, "south")):
        frames = [line["frame"] for line in _lines(part)]
        # Each segment in order. Not checked: that every index is there; a live part can lack a frame
        # index (its first ones, or one mid-stream) on one host as well.
        assert frames and frames == sorted(set(frames))


@pytest.mark.needs_system(what="RTSP test server", missing=server_unavailable_reason())
def test_the_control_api_adds_and_removes_a_camera_while_another_runs(cluster, material, tmp_path) -> None:
    out = tmp_path / "out"
    boxes = write_boxes(tmp_path / "boxes.jsonl", {i: [[10.0, 8.0, 50.0, 60.0, 0.9]] for i in range(6000)})
    yard = RtspServerProcess(mount="/yard", width=160, height=120, fps=30).start()
    door = RtspServerProcess(mount="/door", width=160, height=120, fps=30, user="u", password="s3cret")
    door.start()
    port = free_port()
    config = build_config({
        "sources": [yard.url], "out": str(out), "pose_model": str(material["pose"]),
        "detector": f"boxes:{boxes}", "input_size": SIZE, "workers": "inproc", "progress": False,
        "mode": "live", "ray": "auto", "shards": 2, "control": f"127.0.0.1:{port}",
    })  # fmt: skip
    api = f"http://127.0.0.1:{port}/sources"
    stop, result = threading.Event(), {}
    runner = threading.Thread(target=lambda: result.update(report=run_cluster(config, stop)), daemon=True)
    runner.start()
    running = lambda name: _parts(out, name) and len(_lines(_parts(out, name)[-1])) >= 5  # noqa: E731
    try:
        _wait_for(lambda: running("yard"), 120, "the first camera")
        assert http_json("POST", api, b"not json")[0] == 400
        assert http_json("POST", api, {"name": "clip", "url": str(material["clips"][0])})[0] == 400  # a file
        status, added = http_json("POST", api, {"name": "door", "url": door.url})
        assert status == 201 and added["state"] == "running"
        assert http_json("POST", api, {"name": "door", "url": door.url})[0] == 409
        _wait_for(lambda: running("door"), 120, "the added camera")
        status, listed = http_json("GET", api)
        assert status == 200 and {row["name"]: row["state"] for row in listed} == {"yard": "running",
                                                                                   "door": "running"}
        assert "s3cret" not in json.dumps(listed)
        yard_before = len(_lines(_parts(out, "yard")[-1]))
        assert http_json("DELETE", f"{api}/door")[0] == 202
        assert http_json("DELETE", f"{api}/nobody")[0] == 404
        removed = lambda: {r["name"]: r["state"] for r in http_json("GET", api)[1]}["door"] == "removed"  # noqa: E731
        _wait_for(removed, 60, "the removed camera to drain")
        door_lines = len(_lines(_parts(out, "door")[-1]))
        _wait_for(lambda: len(_lines(_parts(out, "yard")[-1])) > yard_before + 10, 60, "yard to go on")
        assert len(_lines(_parts(out, "door")[-1])) == door_lines  # nothing more after its removal
    finally:
        stop.set()
        runner.join(120)
        yard.stop()
        door.stop()
    report = result["report"]
    assert report.sources["door"].complete and report.sources["door"].lines == door_lines
    assert len(_parts(out, "yard")) == 1 and len(_parts(out, "door")) == 1


def test_a_run_on_a_cluster_started_for_it(material, tmp_path) -> None:
    # The real command in its own process: `--ray local` starts a cluster, runs, and shuts it down.
    out = tmp_path / "out"
    args = _args(material, out, material["clips"][:2], "--ray", "local", "--shards", "1")
    proc = subprocess.run(
        [sys.executable, "-m", "stream", *args],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cluster: 1 shards, 0 lost" in proc.stdout
    assert [len(read_jsonl(out / f"{name}.jsonl")) for name in ("a", "b")] == [10, 10]


@pytest.mark.parametrize(
    "option, message",
    [
        (["--ray", "nowhere"], "ray must be local, auto"),
        (["--ray", "local", "--shards", "0"], "shards must be a positive integer"),
        (["--control", "127.0.0.1:8765"], "control API adds and removes live cameras; this run has files"),
        (["--control", "127.0.0.1:8765", "--workers", "tcp"], "need --workers ipc or inproc"),
        (["--ray", "local", "--control", "0.0.0.0:8765"], "control must bind a loopback address"),
        (["--decode-on", "camera"], "decode_on places decoders on the nodes of a Ray cluster; add --ray"),
        (["--ray", "local", "--decode-on", "camera host"], "decode_on must name a Ray resource"),
    ],
)
def test_bad_cluster_options_are_one_error_line(material, tmp_path, capsys, option, message) -> None:
    assert main(_args(material, tmp_path / "o", material["clips"][:1], *option)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sapiens-stream: error: ") and message in err[0]


def test_a_stopped_run_leaves_only_finished_files_under_final_names(cluster, material, tmp_path) -> None:
    sources = [material["longer"], *material["clips"][:3]]
    names = [Path(s).stem for s in sources]
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert main(_args(material, single, sources[1:])) == 0  # the reference for the files that can finish
    config = build_config({
        "sources": [str(s) for s in sources], "out": str(sharded), "pose_model": str(material["pose"]),
        "detector": f"boxes:{material['boxes']}", "input_size": SIZE, "max_wait_ms": 2.0,
        "workers": "inproc", "progress": False, "ray": "auto", "shards": 2,
    })  # fmt: skip
    stop = threading.Event()

    def stop_at_first_output() -> None:
        _wait_for(lambda: any(sharded.glob("*.jsonl")), 120, "a finished file")
        stop.set()

    watcher = threading.Thread(target=stop_at_first_output, daemon=True)
    watcher.start()
    report = run_cluster(config, stop)
    watcher.join(10)
    assert report.interrupted
    finished = set(report.sources)
    assert finished and "longer" not in finished  # its shard was still at work
    for name in names:
        final = sorted(p.name for p in sharded.glob(f"{name}.*"))
        if name in finished:
            assert (sharded / f"{name}.jsonl").read_bytes() == (single / f"{name}.jsonl").read_bytes()
        else:
            assert final == []
    assert not (sharded / ".partial").exists()


@contextlib.contextmanager
def _camera_decoded_on_a_camera_node(material, tmp_path: Path):
    """A live Ray run of one RTSP camera whose decoder runs on the node with the ``camera`` resource
    (``--decode-on camera``). Yields the output directory and the run's result (its report once the
    context exits: the run is stopped, drained and joined)."""
    out = tmp_path / "out"
    boxes = write_boxes(tmp_path / "boxes.jsonl", {i: [[10.0, 8.0, 50.0, 60.0, 0.9]] for i in range(6000)})
    gate = RtspServerProcess(mount="/gate", width=160, height=120, fps=30).start()
    config = build_config({
        "sources": [gate.url], "out": str(out), "pose_model": str(material["pose"]),
        "detector": f"boxes:{boxes}", "input_size": SIZE, "progress": False, "mode": "live", "ray": "auto",
        "shards": 1, "decode_on": "camera",
    })  # fmt: skip
    stop, result = threading.Event(), {}
    runner = threading.Thread(target=lambda: result.update(report=run_cluster(config, stop)), daemon=True)
    runner.start()
    try:
        yield out, result
    finally:
        stop.set()
        runner.join(120)
        gate.stop()
    assert not runner.is_alive(), "the run did not drain after its stop"


def _lines_written(out: Path) -> int:
    return sum(len(_lines(part)) for part in _parts(out, "gate"))


def _decoder_processes() -> list:
    import psutil

    processes = psutil.process_iter(["cmdline"])
    return [p for p in processes if (p.info["cmdline"] or [""])[0].startswith("ray::_run_decoder")]


@pytest.mark.needs_system(what="RTSP test server", missing=server_unavailable_reason())
def test_decoders_on_camera_nodes_feed_the_shard_over_curve_links(cluster, material, tmp_path) -> None:
    import psutil
    import zmq

    intruders = zmq.Context()
    # Their messages are never delivered (the handshake fails): no socket may wait to send them at exit.
    intruders.linger = 0
    plain_sockets = []
    try:
        with _camera_decoded_on_a_camera_node(material, tmp_path) as (out, result):
            _wait_for(lambda: _lines_written(out) >= 10, 120, "the camera to be annotated")
            # The decoder is a Ray task (on the node with the resource), not a process of the shard.
            assert _decoder_processes()
            processes = [p for p in psutil.process_iter(["name", "cmdline"]) if p.info["cmdline"]]
            shard = next(p for p in processes if p.info["cmdline"][0].startswith("ray::Shard"))
            assert not any(child.name() == "sapiens-decode" for child in shard.children(recursive=True))
            node = ray.util.get_node_ip_address()
            listening = [c.laddr for c in shard.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
            links = [address for address in listening if address.ip == node]
            assert links and node != "127.0.0.1"  # every link binds the node's address: CURVE or nothing
            # A peer without the run's keys: whatever it sends to any link never reaches the run.
            for address in links:
                plain = intruders.socket(zmq.PUSH)
                plain_sockets.append(plain)  # kept: a collected socket would close with its own linger
                plain.connect(f"tcp://{address.ip}:{address.port}")
                plain.send(b"not a frame", zmq.NOBLOCK)
            before = _lines_written(out)
            _wait_for(lambda: _lines_written(out) > before + 20, 60, "the camera to go on")
    finally:
        for plain in plain_sockets:
            plain.close(linger=0)
        intruders.term()
    report = result["report"]
    assert report.sources["gate"].complete
    lines = _lines(_parts(out, "gate")[-1])
    assert all(line["source"] == "gate" for line in lines) and len(lines) == report.sources["gate"].lines


@pytest.mark.needs_system(what="RTSP test server", missing=server_unavailable_reason())
def test_a_camera_goes_on_after_its_remote_decoder_dies(cluster, material, tmp_path) -> None:
    """The camera-side host's decoder process is killed: the shard starts the source afresh (a new decoder
    task, new files) and the camera is annotated again."""
    with _camera_decoded_on_a_camera_node(material, tmp_path) as (out, result):
        _wait_for(lambda: _lines_written(out) >= 10, 120, "the camera to be annotated")
        (first,) = _decoder_processes()
        first.kill()
        _wait_for(lambda: any(p.pid != first.pid for p in _decoder_processes()), 60, "a new decoder task")
        _wait_for(lambda: len(_parts(out, "gate")) >= 2, 60, "the restarted source's new files")
        _wait_for(lambda: len(_lines(_parts(out, "gate")[-1])) >= 10, 60, "the camera to be annotated again")
    for part in _parts(out, "gate"):
        assert all(line["source"] == "gate" for line in _lines(part))
    assert "gate" in result["report"].sources
