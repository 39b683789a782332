"""Live runs of days keep bounded files: ``--segment-time`` rotates a source's outputs into parts named
by their UTC start time; together they account for every frame, and each part plays on its own."""

from __future__ import annotations

import re
from pathlib import Path

import av
from pipeline_fixtures import (
    INPUT_SIZE,
    read_jsonl,
    save_tiny_model,
    write_boxes,
    write_test_clip,
)

from stream.front.cli import main

PART = re.compile(r"^walk_\d{8}T\d{6}Z$")


def test_live_outputs_rotate_into_playable_parts(tmp_path: Path) -> None:
    frames = 150  # six seconds of a 25 fps file read at its own pace in live mode
    clip = write_test_clip(tmp_path / "walk.mp4", frames, (96, 64), fps=25)
    boxes = write_boxes(tmp_path / "boxes.jsonl", {i: [[10, 8, 50, 60, 0.9]] for i in range(frames)})
    out = tmp_path / "out"
    argv = ["run", str(clip), "--out", str(out), "--mode", "live", "--segment-time", "2",
            "--task", "pose", "--pose-model", str(save_tiny_model(tmp_path / "pose", "pose")),
            "--detector", f"boxes:{boxes}", "--input-size", "x".join(map(str, INPUT_SIZE)),
            "--workers", "inproc", "--no-progress"]
    assert main(argv) == 0
    parts = sorted(p.stem for p in out.glob("*.jsonl"))
    assert len(parts) >= 2, parts
    assert all(PART.match(stem) for stem in parts), parts
    assert not (out / "walk.jsonl").exists()
    lines = [line for stem in parts for line in read_jsonl(out / f"{stem}.jsonl")]
    assert [line["frame"] for line in lines] == list(range(len(lines)))
    for stem in parts:
        written = [line for line in read_jsonl(out / f"{stem}.jsonl") if not line.get("skipped")]
        if not written:
            continue
        with av.open(str(out / f"{stem}.mp4")) as container:
            assert sum(1 for _ in container.decode(video=0)) == len(written)
