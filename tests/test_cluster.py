"""Runs over a real local Ray cluster (2 CPUs, no GPU, so CPU shard actors) with the tiny checkpoints:
the same JSONL as one host, files of a killed shard run again elsewhere, outputs only under final names
when complete, and the one-line error without Ray."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from pipeline_fixtures import INPUT_SIZE, save_tiny_model, two_people, write_boxes, write_test_clip

from stream.front.cli import main

ray = pytest.importorskip("ray")

SIZE = "x".join(str(v) for v in INPUT_SIZE)
NAMES = ("a", "b", "c", "d")


@pytest.fixture(scope="module")
def cluster():
    # A small cluster: the machine is shared, and the tests need only two CPU shards.
    ray.init(num_cpus=2, object_store_memory=200 * 1024 * 1024, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def material(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("cluster")
    clips = [write_test_clip(root / f"{n}.mp4", 10, (80, 64), fps=25, seed=i) for i, n in enumerate(NAMES)]
    return {
        "pose": save_tiny_model(root / "pose_tiny", "pose"),
        "boxes": write_boxes(root / "boxes.jsonl", two_people(60)),
        "clips": clips,
        "long": write_test_clip(root / "long.mp4", 60, (80, 64), fps=25, seed=9),
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
