"""Exports of a real run's JSONL, each loaded by the library made for it and checked against the JSONL:
COCO keypoints (pycocotools), COCO results of the 17 body points (COCOeval), CVAT for video 1.1 (an
XML parser, against the structure CVAT documents)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
from pipeline_fixtures import (
    INPUT_SIZE,
    read_jsonl,
    save_tiny_model,
    two_people,
    write_boxes,
    write_test_clip,
)
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from models.meta import pose_meta, raw_meta
from stream.front.cli import main

SIZE = "x".join(str(v) for v in INPUT_SIZE)
FRAMES = 12


@pytest.fixture(scope="module")
def run_out(tmp_path_factory) -> Path:
    """One run through the CLI with every export; two persons, nobody on every fourth frame."""
    root = tmp_path_factory.mktemp("exports")
    model = save_tiny_model(root / "pose", "pose")
    clip = write_test_clip(root / "walk.mp4", FRAMES, (96, 64), fps=25)
    boxes = write_boxes(root / "boxes.jsonl", two_people(FRAMES))
    out = root / "out"
    argv = ["run", str(clip), "--out", str(out), "--pose-model", str(model), "--detector", f"boxes:{boxes}",
            "--input-size", SIZE, "--no-smooth", "--workers", "inproc", "--no-progress",
            "--export", "coco,coco17,cvat-video"]  # fmt: skip
    assert main(argv) == 0
    return out


def _lines(out: Path) -> list[dict]:
    return read_jsonl(out / "walk.jsonl")


def _median_score(lines: list[dict]) -> float:
    """A threshold that leaves some keypoints above it and some below (the tiny model is untrained)."""
    scores = [k[2] for line in lines for p in line["persons"] for k in p["keypoints"]]
    return float(np.median(scores))


def _export(*argv: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["export", *argv]) == 0


def test_run_writes_every_export_next_to_the_jsonl(run_out: Path, tmp_path: Path) -> None:
    for name in ("walk.coco.json", "walk.coco17.json", "walk.cvat.xml"):
        assert (run_out / name).stat().st_size > 0
    # The export command writes the same results as run --export.
    _export(str(run_out / "walk.jsonl"), "--format", "coco17", "--out", str(tmp_path / "again.json"))
    _export(str(run_out / "walk.jsonl"), "--format", "cvat-video", "--out", str(tmp_path))  # a directory
    assert ET.parse(tmp_path / "walk.cvat.xml").getroot().findtext("version") == "1.1"
    assert json.loads((tmp_path / "again.json").read_text()) == json.loads(
        (run_out / "walk.coco17.json").read_text()
    )


def test_coco_keypoints_load_in_pycocotools_and_match_the_jsonl(run_out: Path, tmp_path: Path) -> None:
    lines = _lines(run_out)
    threshold = _median_score(lines)
    path = tmp_path / "walk.coco.json"
    _export(str(run_out / "walk.jsonl"), "--format", "coco", "--out", str(path), "--keypoint-threshold",
            str(threshold))  # fmt: skip
    coco = COCO(str(path))
    meta = pose_meta()
    (category,) = coco.loadCats(coco.getCatIds())
    assert category["keypoints"] == list(meta.names) and len(category["keypoints"]) == 308
    assert np.array_equal(np.asarray(category["skeleton"]) - 1, meta.skeleton)
    assert coco.dataset["videos"] == [{"id": 1, "name": "walk", "width": 96, "height": 64}]
    assert sorted(coco.getImgIds()) == [line["frame"] + 1 for line in lines]
    visibilities = set()
    for line in lines:
        (image,) = coco.loadImgs(line["frame"] + 1)
        assert image["frame_id"] == line["frame"] and image["video_id"] == 1
        assert (image["width"], image["height"]) == (line["width"], line["height"])
        assert image["file_name"] == f"walk/{line['frame']:06d}.png"
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image["id"]))
        assert len(annotations) == len(line["persons"])
        for annotation, person in zip(annotations, line["persons"], strict=True):
            x1, y1, x2, y2 = person["bbox"]
            assert annotation["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=0.011)
            assert annotation["area"] == pytest.approx((x2 - x1) * (y2 - y1), abs=0.05)
            assert annotation["score"] == person["score"] and annotation["track_id"] == person["id"]
            keypoints = np.asarray(person["keypoints"])
            flat = np.asarray(annotation["keypoints"]).reshape(308, 3)
            visible = keypoints[:, 2] >= threshold
            assert np.array_equal(flat[:, 2], np.where(visible, 2, 0))
            assert np.array_equal(flat[visible, :2], keypoints[visible, :2])
            assert not flat[~visible, :2].any()  # COCO: x = y = 0 when not labelled
            assert annotation["keypoint_scores"] == keypoints[:, 2].tolist()
            assert annotation["num_keypoints"] == int(visible.sum())
            visibilities |= set(flat[:, 2].tolist())
    assert visibilities == {0, 2}
    assert {a["track_id"] for a in coco.dataset["annotations"]} >= {1, 2}


def _ground_truth(coco_path: Path, out: Path) -> Path:
    """COCO person keypoint ground truth with the 17 body points of the same results, all labelled."""
    data = json.loads(coco_path.read_text())
    subset = pose_meta().coco17_index
    meta17 = raw_meta()["coco17"]
    for annotation in data["annotations"]:
        points = np.asarray(annotation["keypoints"], dtype=np.float64).reshape(308, 3)[subset]
        points[:, 2] = 2
        annotation["keypoints"] = points.ravel().tolist()
        annotation["num_keypoints"] = 17
    data["categories"] = [
        {"id": 1, "name": "person", "keypoints": meta17["names"], "skeleton": meta17["skeleton"]}
    ]
    out.write_text(json.dumps(data))
    return out


def _average_precision(ground_truth: Path, results: list[dict]) -> float:
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO(str(ground_truth))
        evaluation = COCOeval(truth, truth.loadRes(results), "keypoints")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0])


def test_coco17_results_score_with_cocoeval(run_out: Path, tmp_path: Path) -> None:
    lines = _lines(run_out)
    _export(str(run_out / "walk.jsonl"), "--format", "coco", "--out", str(tmp_path / "all.json"),
            "--keypoint-threshold", "0")  # fmt: skip
    truth = _ground_truth(tmp_path / "all.json", tmp_path / "truth.json")
    results = json.loads((run_out / "walk.coco17.json").read_text())
    persons = [(line, p) for line in lines for p in line["persons"]]
    assert len(results) == len(persons)
    subset = pose_meta().coco17_index
    for result, (line, person) in zip(results, persons, strict=True):
        assert result["image_id"] == line["frame"] + 1 and result["category_id"] == 1
        assert result["score"] == person["score"]
        assert result["keypoints"] == np.asarray(person["keypoints"])[subset].ravel().tolist()
    assert _average_precision(truth, results) == pytest.approx(1.0)
    # Points moved by a fifth of the person's size: the same results score lower.
    rng = np.random.default_rng(0)
    moved = []
    for result in results:
        scale = np.sqrt(next(a["area"] for a in json.loads(truth.read_text())["annotations"]
                             if a["image_id"] == result["image_id"]))  # fmt: skip
        points = np.asarray(result["keypoints"]).reshape(17, 3)
        points[:, :2] += rng.normal(0, 0.2 * scale, (17, 2))
        moved.append({**result, "keypoints": points.ravel().tolist()})
    assert _average_precision(truth, moved) < 0.5


def _skeleton_shapes(track: ET.Element) -> dict[int, ET.Element]:
    return {int(shape.get("frame")): shape for shape in track.findall("skeleton")}


def test_cvat_video_follows_the_documented_structure(run_out: Path, tmp_path: Path) -> None:
    lines = _lines(run_out)
    threshold = _median_score(lines)
    path = tmp_path / "walk.xml"
    _export(str(run_out / "walk.jsonl"), "--format", "cvat-video", "--out", str(path), "--keypoint-threshold",
            str(threshold))  # fmt: skip
    root = ET.parse(path).getroot()
    assert root.tag == "annotations" and root.findtext("version") == "1.1"
    task = root.find("meta/task")
    assert task.findtext("mode") == "interpolation" and task.findtext("name") == "walk"
    assert int(task.findtext("size")) == FRAMES
    assert (task.findtext("original_size/width"), task.findtext("original_size/height")) == ("96", "64")
    assert (task.findtext("segments/segment/start"), task.findtext("segments/segment/stop")) == ("0", "11")
    labels = task.findall("labels/label")
    skeleton_label = [label for label in labels if label.findtext("type") == "skeleton"]
    assert [label.findtext("name") for label in skeleton_label] == ["person"]
    points = [label.findtext("name") for label in labels if label.findtext("parent") == "person"]
    assert all(label.findtext("type") == "points" for label in labels if label.findtext("parent"))
    names = pose_meta().names
    coco17 = [names[k] for k in pose_meta().coco17_index]
    feet = ["left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel"]
    hands = [n for n in names if "finger" in n or "thumb" in n]
    assert len(hands) == 40 and sorted(points) == sorted(coco17 + feet + hands)
    svg = ET.fromstring(f"<svg>{skeleton_label[0].findtext('svg')}</svg>")
    nodes = {c.get("data-node-id"): c.get("data-label-name") for c in svg.findall("circle")}
    assert sorted(nodes.values()) == sorted(points)
    edges = [(nodes[e.get("data-node-from")], nodes[e.get("data-node-to")]) for e in svg.findall("line")]
    assert ("left_wrist", "left_elbow") in edges or ("left_elbow", "left_wrist") in edges
    assert len(edges) == len(pose_meta().skeleton)

    # One track per person id, shapes exactly where the JSONL has the person, outside right after.
    ids = sorted({p["id"] for line in lines for p in line["persons"] if p["id"] >= 0})
    untracked = sum(p["id"] < 0 for line in lines for p in line["persons"])
    tracks = root.findall("track")
    assert len(tracks) == len(ids) + untracked and len(ids) >= 2
    assert [t.get("id") for t in tracks] == [str(i) for i in range(len(tracks))]
    assert all(t.get("label") == "person" for t in tracks)
    index = {name: k for k, name in enumerate(names)}
    for track, person_id in zip(tracks, ids, strict=False):
        shapes = _skeleton_shapes(track)
        present = {line["frame"]: p for line in lines for p in line["persons"] if p["id"] == person_id}
        ends = {f + 1 for f in present if f + 1 not in present and f + 1 < FRAMES}
        assert set(shapes) == set(present) | ends
        for frame, shape in shapes.items():
            assert shape.get("keyframe") == "1"
            for point in shape.findall("points"):
                x, y, score = present.get(frame, present.get(frame - 1))["keypoints"][
                    index[point.get("label")]
                ]
                assert point.get("points") == f"{x:.2f},{y:.2f}" and point.get("keyframe") == "1"
                expected = "1" if frame in ends or score < threshold else "0"
                assert point.get("outside") == expected and point.get("occluded") == "0"
        assert ends  # nobody on every fourth frame: each track is paused with outside shapes


def test_skipped_frames_are_left_to_interpolation(run_out: Path, tmp_path: Path) -> None:
    """A live run's skipped line: no COCO image, and no CVAT shape (CVAT interpolates over it)."""
    lines = _lines(run_out)
    skipped_frame = 1
    assert lines[skipped_frame]["persons"] and lines[skipped_frame + 1]["persons"]
    edited = [
        {k: line[k] for k in ("source", "frame", "pts", "width", "height")} | {"skipped": True}
        if line["frame"] == skipped_frame else line
        for line in lines
    ]  # fmt: skip
    results = tmp_path / "live.jsonl"
    results.write_text("".join(json.dumps(line) + "\n" for line in edited))
    _export(str(results), "--format", "coco")
    _export(str(results), "--format", "cvat-video")
    coco = COCO(str(tmp_path / "live.coco.json"))
    assert skipped_frame + 1 not in coco.getImgIds() and len(coco.getImgIds()) == FRAMES - 1
    root = ET.parse(tmp_path / "live.cvat.xml").getroot()
    assert root.findtext("meta/task/size") == str(FRAMES)
    spanning = 0
    for track in root.findall("track"):
        shapes = _skeleton_shapes(track)
        assert skipped_frame not in shapes
        spanning += skipped_frame - 1 in shapes and skipped_frame + 1 in shapes
    assert spanning  # a person seen before and after the skipped frame keeps one unbroken track


def test_several_results_files_make_one_coco_dataset(run_out: Path, tmp_path: Path) -> None:
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({**line, "source": "other"}) + "\n" for line in _lines(run_out)))
    out = tmp_path / "both.json"
    _export(str(run_out / "walk.jsonl"), str(other), "--format", "coco", "--out", str(out))
    coco = COCO(str(out))
    assert [v["name"] for v in coco.dataset["videos"]] == ["walk", "other"]
    assert sorted(coco.getImgIds()) == list(range(1, 2 * FRAMES + 1))
    assert {img["video_id"] for img in coco.loadImgs(range(FRAMES + 1, 2 * FRAMES + 1))} == {2}
    assert main(["export", str(run_out / "walk.jsonl"), str(other), "--format", "cvat-video", "--out",
                 str(tmp_path / "x.xml")]) == 2  # fmt: skip


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("sapiens-stream: error: ")
    return err[0]


def test_bad_export_input_is_one_error_line(run_out: Path, tmp_path: Path, capsys) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "stream", "export", str(tmp_path / "nope.jsonl"), "--format", "coco"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"sapiens-stream: error: results file not found: {tmp_path / 'nope.jsonl'}"
    ]
    video = tmp_path / "clip.jsonl"
    video.write_bytes(b"\x00\x01 a video, not results")
    assert main(["export", str(video), "--format", "coco"]) == 2
    assert "line 1 is not JSON" in _error_line(capsys)
    assert main(["export", str(run_out / "walk.jsonl"), "--format", "yolo"]) == 2
    assert "export format must be one of coco, coco17, cvat-video, got 'yolo'" in _error_line(capsys)
    seg_only = tmp_path / "seg.jsonl"
    person = {"id": 1, "bbox": [0, 0, 4, 4], "score": 0.9}
    seg_only.write_text(json.dumps({"source": "a", "frame": 0, "width": 8, "height": 8, "persons": [person]}))
    assert main(["export", str(seg_only), "--format", "cvat-video"]) == 2
    assert "without keypoints" in _error_line(capsys)
    assert not (tmp_path / "seg.cvat.xml").exists()
    assert (
        main(
            ["export", str(run_out / "walk.jsonl"), "--format", "coco", "--out", str(run_out / "walk.jsonl")]
        )
        == 2
    )
    assert "would overwrite the results" in _error_line(capsys)
    assert len(_lines(run_out)) == FRAMES
    with pytest.raises(SystemExit) as exit_:
        main(["export", str(run_out / "walk.jsonl")])  # no --format
    assert exit_.value.code == 2
    assert "required: --format" in _error_line(capsys)


def test_run_export_is_checked_before_the_run(tmp_path: Path, capsys) -> None:
    clip = write_test_clip(tmp_path / "a.mp4", 2, (32, 32), fps=10)
    out = tmp_path / "o"
    assert main(["run", str(clip), "--out", str(out), "--export", "coco,bogus"]) == 2
    assert "got 'bogus'" in _error_line(capsys)
    assert main(["run", str(clip), "--out", str(out), "--task", "seg", "--export", "coco"]) == 2
    assert "--export needs keypoints" in _error_line(capsys)
    assert not out.exists()


def test_version() -> None:
    from importlib.metadata import version

    proc = subprocess.run(
        [sys.executable, "-m", "stream", "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and proc.stdout.strip() == f"sapiens-stream {version('sapiens-stream')}"
