"""Detectors: boxes:FILE parsing, YOLO through make_detector with an untrained model, missing weights."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from models.boxes import load_boxes_file
from models.detector import DetectorError, make_detector

# The COCO class list of every trained YOLO detector, with "person" moved off index 0 so the test
# proves the person class is found by name, not assumed to be 0.
_NAMES = ["bicycle", "car", "person"] + [f"thing{i}" for i in range(77)]
_PERSON = 2


def _write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_boxes_file_gives_each_frame_its_boxes_and_nothing_for_absent_frames(tmp_path):
    path = _write_lines(
        tmp_path / "boxes.jsonl",
        [
            json.dumps({"frame": 0, "boxes": [[10, 20, 110, 220, 0.9], [5.5, 6.5, 7.5, 8.5, 0.25]]}),
            "",
            json.dumps({"frame": 3, "boxes": [[1, 2, 3, 4]]}),
            json.dumps({"frame": 4, "boxes": []}),
        ],
    )
    detector = make_detector(f"boxes:{path}")
    images = [np.zeros((240, 320, 3), np.uint8)] * 4
    out = detector(images, [0, 1, 3, 4])

    assert len(out) == 4
    boxes, scores = out[0]
    assert boxes.dtype == np.float32 and scores.dtype == np.float32
    np.testing.assert_allclose(boxes, [[10, 20, 110, 220], [5.5, 6.5, 7.5, 8.5]])
    np.testing.assert_allclose(scores, [0.9, 0.25])
    assert out[1][0].shape == (0, 4) and out[1][1].shape == (0,)  # frame 1 is not in the file
    np.testing.assert_allclose(out[2][0], [[1, 2, 3, 4]])
    np.testing.assert_allclose(out[2][1], [1.0])  # a box without score counts as certain
    assert out[3][0].shape == (0, 4)


@pytest.mark.parametrize(
    "bad_line, message",
    [
        ('{"frame": 2, "boxes": [[1, 2, 3]]}', "box 0"),
        ('{"frame": "2", "boxes": []}', "'frame' must be"),
        ('{"frame": 2, "boxes": [[1, 2, 3, 4, 0.5]]', "not valid JSON"),
        ('{"boxes": []}', "expected an object"),
        ('{"frame": 2, "boxes": [[10, 2, 3, 4, 0.5]]}', "x2 < x1"),
        ('{"frame": 0, "boxes": []}', "already given on line 1"),
    ],
)
def test_malformed_boxes_line_names_file_and_line(tmp_path, bad_line, message):
    path = _write_lines(tmp_path / "boxes.jsonl", ['{"frame": 0, "boxes": []}', bad_line])
    with pytest.raises(DetectorError) as info:
        load_boxes_file(path)
    text = str(info.value)
    assert f"{path}:2" in text and message in text and "\n" not in text


def test_missing_boxes_file_is_a_clear_error(tmp_path):
    with pytest.raises(DetectorError, match="boxes file not found"):
        make_detector(f"boxes:{tmp_path / 'nope.jsonl'}")


@pytest.fixture(scope="module")
def untrained_yolo_path(tmp_path_factory):
    from ultralytics import YOLO

    torch.manual_seed(0)
    model = YOLO("yolo11n.yaml")  # architecture only: random weights, nothing downloaded
    model.model.names = dict(enumerate(_NAMES))
    # An untrained head gives every class the same score, so class 0 wins every tie. Raising one class
    # per output level makes the persons come from one level and other classes from the others.
    head = model.model.model[-1]
    with torch.no_grad():
        for level, branch in enumerate(head.cv3):
            branch[-1].bias[[_PERSON, 0, 1][level]] += 1.0
    path = tmp_path_factory.mktemp("yolo") / "untrained.pt"
    model.save(str(path))
    return path


def _sorted_rows(boxes: np.ndarray) -> np.ndarray:
    return boxes[np.lexsort(boxes.T[::-1])]


def _test_images():
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 256, (240, 320, 3), dtype=np.uint8),
        rng.integers(0, 256, (240, 320, 3), dtype=np.uint8),
        rng.integers(0, 256, (180, 400, 3), dtype=np.uint8),  # another size in the same batch
    ]


def test_yolo_from_local_path_returns_person_boxes_per_image(untrained_yolo_path):
    from ultralytics import YOLO

    torch.set_num_threads(2)
    # An untrained model's scores are tiny, so conf 0 lets boxes through to exercise NMS and the scaling
    # back to image pixels; trained accuracy cannot be checked without trained weights.
    detector = make_detector(str(untrained_yolo_path), conf=0.0, iou=0.5, max_det=100, imgsz=160)
    images = _test_images()
    out = detector(images, [0, 1, 2])

    assert len(out) == 3
    for image, (boxes, scores) in zip(images, out, strict=True):
        height, width = image.shape[:2]
        assert boxes.dtype == np.float32 and scores.dtype == np.float32
        assert boxes.ndim == 2 and boxes.shape[1] == 4 and scores.shape == (boxes.shape[0],)
        assert boxes.shape[0] >= 5
        assert (boxes[:, [0, 2]] >= 0).all() and (boxes[:, [0, 2]] <= width).all()
        assert (boxes[:, [1, 3]] >= 0).all() and (boxes[:, [1, 3]] <= height).all()
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()

    # Persons only: the model's own predict over every class, kept to the person class, gives the same
    # boxes (ultralytics' NMS is per class, so other classes do not change the person boxes).
    reference = YOLO(str(untrained_yolo_path))
    for image, (boxes, _) in zip(images, out, strict=True):
        bgr = np.ascontiguousarray(image[..., ::-1])
        ref = reference.predict([bgr], conf=0.0, iou=0.5, max_det=300, imgsz=160, verbose=False)[0]
        classes = ref.boxes.cls.int().numpy()
        assert set(classes.tolist()) - {_PERSON}, "the reference should see other classes too"
        person_boxes = ref.boxes.xyxy.numpy()[classes == _PERSON]
        np.testing.assert_allclose(_sorted_rows(boxes), _sorted_rows(person_boxes), atol=1e-3)

    # A mixed-size batch gives what one image at a time gives.
    single = detector(images[2:], [2])[0]
    np.testing.assert_allclose(_sorted_rows(single[0]), _sorted_rows(out[2][0]), atol=1e-2)

    # max_det and conf are plumbed through.
    few = make_detector(str(untrained_yolo_path), conf=0.0, max_det=3, imgsz=160)(images[:1], [0])[0]
    assert few[0].shape == (3, 4)
    above_all = make_detector(str(untrained_yolo_path), conf=float(out[0][1].max()) * 1.01, imgsz=160)
    assert above_all(images[:1], [0])[0][0].shape == (0, 4)


def test_yolo_name_not_cached_fails_fast_with_the_fix(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("YOLO_OFFLINE", "1")
    with pytest.raises(DetectorError) as info:
        make_detector("yolo11x.pt")
    text = str(info.value)
    assert "'yolo11x.pt' are not cached" in text and "--detector PATH" in text and "boxes:FILE" in text
    # Failing fast: refused on the offline setting itself, before any probe or download is tried.
    assert "offline mode is set" in text


def test_unknown_yolo_name_fails_fast_even_when_online_is_allowed(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("YOLO_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(DetectorError, match="not a name ultralytics publishes.*--detector PATH"):
        make_detector("my-own-detector.pt")


def test_missing_yolo_path_and_model_definition_are_rejected(tmp_path):
    with pytest.raises(DetectorError, match="weights file not found"):
        make_detector(str(tmp_path / "missing.pt"))
    with pytest.raises(DetectorError, match="model definition"):
        make_detector("yolo11n.yaml")


def _omp_threads_after(statement: str, env: dict[str, str]) -> str:
    code = f"import os\n{statement}\nprint(os.environ.get('OMP_NUM_THREADS'))"
    clean = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    done = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.split()[-1]


def test_importing_ultralytics_leaves_the_workers_thread_count_alone():
    """ultralytics sets OMP_NUM_THREADS=1 on import; processes started later (the pipeline's workers)
    would inherit it and run the model's forward on one core. Our import keeps the environment as it was."""
    assert _omp_threads_after("import ultralytics", {}) == "1"  # the side effect this guards against
    ours = "from models.detector import import_ultralytics\nimport_ultralytics()\nimport ultralytics"
    assert _omp_threads_after(ours, {}) == "None"
    assert _omp_threads_after(ours, {"OMP_NUM_THREADS": "3"}) == "3"
