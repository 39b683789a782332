"""Bad input through the command line: a one-line error and a non-zero exit, nothing started."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from stream.front.cli import main


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("sapiens-stream: error: ")
    return err[0]


def test_missing_file_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    # The real command, in its own process: exit status and stderr as a shell sees them.
    proc = subprocess.run(
        [sys.executable, "-m", "stream", "run", str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"sapiens-stream: error: source not found: {tmp_path / 'nope.mp4'}"
    ]
    assert not (tmp_path / "o").exists()


def test_unreadable_file(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "garbage.mp4"
    bad.write_bytes(b"\x00\x01 not a video at all " * 100)
    assert main(["run", str(bad), "--out", str(tmp_path / "o")]) == 2
    assert f"cannot read {bad}" in _error_line(capsys)


def test_unreadable_image_and_empty_folder(tmp_path: Path, capsys) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    assert main(["run", str(folder), "--out", str(tmp_path / "o")]) == 2
    assert "image folder has no images" in _error_line(capsys)
    (folder / "000.png").write_bytes(b"PNG? no")
    assert main(["run", str(folder), "--out", str(tmp_path / "o")]) == 2
    assert "cannot read image" in _error_line(capsys)


def test_malformed_config(tmp_path: Path, capsys) -> None:
    clip = tmp_path / "a.mp4"
    clip.write_bytes(b"")
    config = tmp_path / "bad.yaml"
    config.write_text("task: pose\n  max_batch: [\n")
    assert main(["run", str(clip), "--out", str(tmp_path / "o"), "--config", str(config)]) == 2
    assert "not valid YAML" in _error_line(capsys)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--pose-model", "./no/such/checkpoint"], "pose model not found: ./no/such/checkpoint"),
        (["--detector", "boxes:/no/boxes.jsonl"], "boxes file not found: /no/boxes.jsonl"),
        (["--input-size", "100x100"], "multiples of 16"),
        (["--task", "depth"], "task must be any of pose, seg, normal, pointmap, matting"),
    ],
)
def test_bad_options(tmp_path: Path, capsys, extra: list[str], message: str) -> None:
    from stream.media.synth import moving_squares, write_clip

    clip = tmp_path / "a.mp4"
    write_clip(clip, moving_squares(2, (32, 32)), fps=10)
    assert main(["run", str(clip), "--out", str(tmp_path / "o"), *extra]) == 2
    assert message in _error_line(capsys)


def test_cut_short_file_keeps_what_was_decoded_and_exits_non_zero(tmp_path: Path, capsys) -> None:
    """A Matroska file cut at 60 %: its header still announces 60 frames (by duration); the frames
    before the cut are annotated and written, then the run reports the damage on one line."""
    from pipeline_fixtures import read_jsonl, read_video, save_tiny_model, write_boxes, write_test_clip

    whole = write_test_clip(tmp_path / "whole.mkv", 60, (80, 64), fps=25)
    data = whole.read_bytes()
    cut = tmp_path / "cut.mkv"
    cut.write_bytes(data[: int(len(data) * 0.6)])
    model = save_tiny_model(tmp_path / "pose", "pose")
    boxes = write_boxes(tmp_path / "boxes.jsonl", {i: [[8.0, 8.0, 40.0, 60.0, 0.9]] for i in range(60)})
    out = tmp_path / "out"
    argv = ["run", str(cut), "--out", str(out), "--pose-model", str(model), "--detector", f"boxes:{boxes}",
            "--input-size", "64x48", "--workers", "inproc", "--no-progress"]  # fmt: skip
    assert main(argv) == 2
    line = _error_line(capsys)
    assert f"{cut}: decoding stopped after" in line and "of 60 frames" in line
    lines = read_jsonl(out / "cut.jsonl")
    frames, _, _, _ = read_video(out / "cut.mp4")
    assert 0 < len(lines) < 60 and len(frames) == len(lines)
    assert f"after {len(lines)} of 60" in line
    assert main(["run", str(whole), *argv[2:]]) == 0  # the whole file is not reported


def test_malformed_boxes_file_is_refused_before_the_run(tmp_path: Path) -> None:
    from stream.media.synth import moving_squares, write_clip

    clip = tmp_path / "clip.mp4"
    write_clip(clip, moving_squares(3, (64, 48)), fps=25)
    boxes = tmp_path / "boxes.jsonl"
    boxes.write_text('{"frame": 0, "boxes": [[10, 10, 5, 5, 0.9]]}\n')
    done = subprocess.run(
        [sys.executable, "-m", "stream", "run", str(clip), "--detector", f"boxes:{boxes}", "--out",
         str(tmp_path / "out"), "--no-progress"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"sapiens-stream: error: {boxes}:1: box 0 has x2 < x1 or y2 < y1: [10, 10, 5, 5, 0.9]"
    ]


def test_print_topology_prints_the_runs_wiring_and_starts_nothing(tmp_path: Path) -> None:
    from stream.media.synth import moving_squares, write_clip

    for name in ("left", "right"):
        write_clip(tmp_path / f"{name}.mp4", moving_squares(3, (64, 48)), fps=25)
    out = tmp_path / "o"
    # The real command, in its own process, as a user would type it.
    proc = subprocess.run(
        [sys.executable, "-m", "stream", "run", str(tmp_path / "left.mp4"), str(tmp_path / "right.mp4"),
         "--out", str(out), "--print-topology", "--workers", "tcp", "--serve", "127.0.0.1:8099"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = {}
    for line in proc.stdout.splitlines():
        rows.setdefault(line.split()[0], []).append(line)
    # Every link once, per-source links once per source, each with both ends and their buffer limits.
    links = {"events": 1, "control": 1, "frames": 1, "render_frames": 2, "results": 2, "tracked": 2}
    links["preview"] = 1  # --serve
    assert {name: len(rows.get(name, [])) for name in links} == links
    (frames,) = rows["frames"]
    assert "decode PUSH hwm=4 (queue_frames)" in frames
    assert "infer PULL hwm=8 (queue_frames*sources)" in frames and "tcp://127.0.0.1:" in frames
    assert any("track.right" in line for line in rows["results"])
    assert "coordinator PUB" in rows["control"][0] and " sender " in rows["control"][0]
    workers = proc.stdout.splitlines()[-1].split(": ")[1].split()
    assert workers.index("infer[all]") < workers.index("decode[left]")  # receivers bind first
    assert workers.index("render[left]") < workers.index("track[left]") < workers.index("infer[all]")
    assert not out.exists()  # nothing was started


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "stream", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


@pytest.fixture
def tiny_clip(tmp_path: Path) -> Path:
    from stream.media.synth import moving_squares, write_clip

    clip = tmp_path / "clip.mp4"
    write_clip(clip, moving_squares(3, (64, 48)), fps=25)
    return clip


def test_out_naming_a_file_is_one_error_line(tmp_path: Path, tiny_clip: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("not a directory")
    done = _run_cli("run", str(tiny_clip), "--out", str(taken), "--random-weights", "--no-progress")
    assert done.returncode == 2
    expected = f"sapiens-stream: error: out: {taken} exists and is not a directory"
    assert done.stderr.strip().splitlines() == [expected]


def test_a_port_in_use_is_one_error_line_and_debug_keeps_the_traceback(tmp_path: Path, tiny_clip) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        args = ["run", str(tiny_clip), "--out", str(tmp_path / "o"), "--random-weights", "--no-progress",
                "--workers", "inproc", "--metrics", f"127.0.0.1:{port}"]
        done = _run_cli(*args)
        debug = _run_cli("--debug", *args)
    (line,) = [line for line in done.stderr.splitlines() if "error" in line]
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert line == f"sapiens-stream: error: cannot serve metrics on 127.0.0.1:{port}: Address already in use"
    assert "Traceback" in debug.stderr and debug.returncode != 0


def test_a_named_source_names_its_outputs_and_records(tmp_path: Path, tiny_clip: Path) -> None:
    out = tmp_path / "out"
    boxes = tmp_path / "boxes.jsonl"
    boxes.write_text("")
    from pipeline_fixtures import save_tiny_model

    model = save_tiny_model(tmp_path / "pose", "pose")
    argv = ["run", f"door={tiny_clip}", "--out", str(out), "--pose-model", str(model), "--input-size",
            "64x48", "--detector", f"boxes:{boxes}", "--workers", "inproc", "--no-progress"]
    assert main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == ["door.jsonl", "door.mp4"]
    lines = [json.loads(line) for line in (out / "door.jsonl").read_text().splitlines()]
    assert len(lines) == 3 and {line["source"] for line in lines} == {"door"}
