"""Normals, pointmaps (depth) and matting end to end through the CLI, against transformers.

Tiny random checkpoints in the Hub format run through ``sapiens-stream run``; transformers' image
processor, model and ``post_process_*`` on the same frames give the reference. The frames are PNGs (no
codec in between) 64 px high and 32 wide: for the 64x48 input the aspect-keeping resize of normals
and pointmaps is the identity and 8 px of padding sit on either side, so the padding and its removal
are exercised without resampling differences; matting stretches them to 48 px wide.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pipeline_fixtures import (
    INPUT_SIZE,
    read_jsonl,
    read_video,
    save_tiny_model,
    two_people,
    write_boxes,
    write_image_folder,
    write_test_clip,
)
from rtsp_server import RtspServerProcess, server_unavailable_reason
from transformers import Sapiens2ForImageMatting, Sapiens2ForNormalEstimation, Sapiens2ForPointmapEstimation
from transformers.models.sapiens2.image_processing_sapiens2 import Sapiens2ImageProcessor

import stream
from stream.drawing.dense import Background, composite, depth_to_rgb, normals_to_rgb, parse_color
from stream.edges.map_sinks import (
    encode_alpha,
    encode_depth,
    encode_normals,
    read_alpha,
    read_depth,
    read_label_map,
    read_normals,
)
from stream.front.cli import main

SIZE = "x".join(str(v) for v in INPUT_SIZE)
FRAME_WH = (32, 64)
NUM_FRAMES = 5
HF_CLASSES = {
    "normal": Sapiens2ForNormalEstimation,
    "pointmap": Sapiens2ForPointmapEstimation,
    "matting": Sapiens2ForImageMatting,
}


@pytest.fixture(scope="module")
def material(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dense")
    models = {task: save_tiny_model(root / f"{task}_tiny", task, seed=i) for i, task in enumerate(HF_CLASSES)}
    _metric_scale(models["pointmap"])
    models["pose"] = save_tiny_model(root / "pose_tiny", "pose")
    models["seg"] = save_tiny_model(root / "seg_tiny", "seg")
    boxes = {i: [[2.0, 4.0, 30.0, 60.0, 0.9]] for i in range(40)}
    return {
        **models,
        "folder": write_image_folder(root / "stills", NUM_FRAMES, FRAME_WH),
        "boxes": write_boxes(root / "boxes.jsonl", boxes),
        "people": write_boxes(root / "people.jsonl", two_people(40)),
        "root": root,
    }


def _metric_scale(directory: Path) -> None:
    """A random scale branch gives scales near 1e-5, so pointmaps of kilometres; a constant scale of 0.05
    puts the random scene within a few metres, where depth in millimetres is a meaningful check."""
    from models import load_sapiens2, save_sapiens2

    model = load_sapiens2(str(directory))
    final = model.decode_head.scale_final_layer[-1]
    with torch.no_grad():
        final.weight.zero_()
        final.bias.fill_(0.05)
    save_sapiens2(model, directory)


def _run(
    material, out: Path, source: Path, *extra: str, detector: str = "boxes", size: str | None = SIZE
) -> None:
    argv = ["run", str(source), "--out", str(out), "--detector", f"boxes:{material[detector]}",
            "--workers", "inproc", "--no-progress", "--max-wait-ms", "2"]
    argv += ["--input-size", size] if size is not None else []  # None: each checkpoint's own
    for task in ("pose", "seg", *HF_CLASSES):
        argv += [f"--{task}-model", str(material[task])]
    assert main([*argv, *extra]) == 0


def _frames(folder: Path) -> list[np.ndarray]:
    return [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in sorted(folder.glob("*.png"))]


def _reference(material, task: str, frame: np.ndarray) -> dict[str, torch.Tensor]:
    """transformers' processor (the checkpoint's preprocessor_config.json, else as the release configures
    it for ``task``), model and post-processing."""
    if (material[task] / "preprocessor_config.json").is_file():
        processor = Sapiens2ImageProcessor.from_pretrained(material[task])
    else:
        processor = Sapiens2ImageProcessor(
            size={"height": INPUT_SIZE[0], "width": INPUT_SIZE[1]}, do_pad=task in ("normal", "pointmap")
        )
    model = HF_CLASSES[task].from_pretrained(material[task]).eval()
    pixel_values = processor(torch.from_numpy(frame).permute(2, 0, 1), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        outputs = model(pixel_values)
    size = [frame.shape[:2]]
    if task == "normal":
        return processor.post_process_normal_estimation(outputs, source_sizes=size)[0]
    if task == "pointmap":
        return processor.post_process_pointmap_estimation(outputs, source_sizes=size)[0]
    return processor.post_process_image_matting(outputs, target_sizes=size)[0]


def _encoded_reference(material, task: str, frame: np.ndarray) -> np.ndarray:
    ref = _reference(material, task, frame)
    if task == "normal":
        return encode_normals(ref["normals"].permute(1, 2, 0).numpy())
    if task == "pointmap":
        return encode_depth(ref["pointmap"].permute(1, 2, 0).numpy())
    return encode_alpha(ref["alpha"][0].numpy())


def _saved(out: Path, name: str, task: str, frame: int) -> np.ndarray:
    image = cv2.imread(str(out / f"{name}_{task}" / f"{frame:06d}.png"), cv2.IMREAD_UNCHANGED)
    assert image is not None and image.dtype == np.uint16
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB) if image.ndim == 3 else image


def _assert_within_one_step(saved: np.ndarray, reference: np.ndarray) -> None:
    """Equal up to the rounding of the last 16-bit step (float sums of a batched forward differ)."""
    assert saved.shape == reference.shape
    difference = np.abs(saved.astype(np.int64) - reference.astype(np.int64))
    assert difference.max() <= 1


def _assert_same_colours(decoded: np.ndarray, drawn: np.ndarray) -> None:
    """A video frame shows ``drawn``: the random maps are pixel noise, which 4:2:0 H.264 at this size
    smears, so the comparison is of the mean colour of each channel."""
    means = decoded.reshape(-1, 3).mean(axis=0), drawn.reshape(-1, 3).astype(float).mean(axis=0)
    np.testing.assert_allclose(*means, atol=6)


@pytest.mark.parametrize("task", list(HF_CLASSES))
def test_dense_task_files_equal_transformers(material, tmp_path, task) -> None:
    out = tmp_path / "out"
    _run(material, out, material["folder"], "--task", task, "--no-smooth", "--no-flip", "--save-pointmap")
    frames = _frames(material["folder"])
    assert len(read_jsonl(out / "stills.jsonl")) == NUM_FRAMES
    assert len(list((out / f"stills_{task}").glob("*.png"))) == NUM_FRAMES
    for index, frame in enumerate(frames):
        saved = _saved(out, "stills", task, index)
        _assert_within_one_step(saved, _encoded_reference(material, task, frame))
        if task == "pointmap":
            assert (saved > 0).any()  # the random model puts some of the scene in front of the camera
            pointmap = np.load(out / "stills_pointmap" / f"{index:06d}.npy")
            reference = _reference(material, task, frame)["pointmap"].permute(1, 2, 0).numpy()
            assert pointmap.dtype == np.float16 and pointmap.shape == (*frame.shape[:2], 3)
            np.testing.assert_allclose(pointmap, reference, rtol=1e-3, atol=1e-3)
    frames_out, _, _, _ = read_video(out / "stills.mp4")
    assert len(frames_out) == NUM_FRAMES and frames_out[0].shape[:2] == (64, 32)


def test_frame_segmentation_equals_transformers(material, tmp_path) -> None:
    """Full-frame segmentation stretches the frame (no ``do_pad``), as the release's processor does."""
    from transformers import Sapiens2ForSemanticSegmentation

    out = tmp_path / "out"
    _run(material, out, material["folder"], "--task", "seg", "--no-smooth", "--no-flip")
    processor = Sapiens2ImageProcessor(size={"height": INPUT_SIZE[0], "width": INPUT_SIZE[1]})
    model = Sapiens2ForSemanticSegmentation.from_pretrained(material["seg"]).eval()
    for index, frame in enumerate(_frames(material["folder"])):
        inputs = processor(torch.from_numpy(frame).permute(2, 0, 1), return_tensors="pt")
        with torch.no_grad():
            outputs = model(inputs["pixel_values"])
        reference = processor.post_process_semantic_segmentation(outputs, target_sizes=[frame.shape[:2]])[0]
        saved = read_label_map(out / "stills_seg" / f"{index:06d}.png")
        np.testing.assert_array_equal(saved, reference.numpy())


# Checkpoints that carry their own preprocessor_config.json, as the released ones do: an input size other
# than the tests' 64x48 (the models' own), odd mean/std and, for some, bicubic resampling.
OWN_SIZE = (80, 48)
OWN_PROCESSORS = {
    "seg": dict(image_mean=[0.2, 0.7, 0.4], image_std=[0.3, 0.15, 0.4]),
    "normal": dict(do_pad=True, resample=3, image_mean=[0.6, 0.3, 0.2], image_std=[0.2, 0.4, 0.25]),
    "pointmap": dict(do_pad=True, image_mean=[0.1, 0.5, 0.8], image_std=[0.35, 0.2, 0.3]),
    "matting": dict(resample=3, image_mean=[0.45, 0.45, 0.6], image_std=[0.15, 0.3, 0.2]),
}


@pytest.fixture(scope="module")
def own_material(material, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("own_preprocessing")
    size = {"height": OWN_SIZE[0], "width": OWN_SIZE[1]}
    models = {
        task: save_tiny_model(root / task, task, 7 + i, image_size=OWN_SIZE, processor=dict(size=size, **p))
        for i, (task, p) in enumerate(OWN_PROCESSORS.items())
    }
    _metric_scale(models["pointmap"])
    return {**material, **models}


def test_each_checkpoints_preprocessor_config_applies_without_input_size(own_material, tmp_path) -> None:
    """No --input-size: every full-frame task runs at its checkpoint's size with its mean/std, resampling
    and padding, and its files equal transformers' processor read from the same directory."""
    from transformers import Sapiens2ForSemanticSegmentation

    out = tmp_path / "out"
    _run(own_material, out, own_material["folder"], "--task", "seg,normal,pointmap,matting", "--no-smooth",
         "--no-flip", size=None)  # fmt: skip
    processor = Sapiens2ImageProcessor.from_pretrained(own_material["seg"])
    seg = Sapiens2ForSemanticSegmentation.from_pretrained(own_material["seg"]).eval()
    for index, frame in enumerate(_frames(own_material["folder"])):
        for task in HF_CLASSES:
            reference = _encoded_reference(own_material, task, frame)
            _assert_within_one_step(_saved(out, "stills", task, index), reference)
        inputs = processor(torch.from_numpy(frame).permute(2, 0, 1), return_tensors="pt")
        assert inputs["pixel_values"].shape[-2:] == OWN_SIZE
        with torch.no_grad():
            logits = seg(inputs["pixel_values"])
        labels = processor.post_process_semantic_segmentation(logits, target_sizes=[frame.shape[:2]])[0]
        np.testing.assert_array_equal(read_label_map(out / "stills_seg" / f"{index:06d}.png"), labels.numpy())


def test_files_read_back_with_the_documented_formulas(material, tmp_path) -> None:
    out = tmp_path / "out"
    _run(material, out, material["folder"], "--task", "normal,pointmap,matting", "--no-smooth", "--no-flip")
    frame = _frames(material["folder"])[2]
    normals = _reference(material, "normal", frame)["normals"].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(read_normals(out / "stills_normal/000002.png"), normals, atol=2 / 65535)
    alpha = _reference(material, "matting", frame)["alpha"][0].numpy()
    np.testing.assert_allclose(read_alpha(out / "stills_matting/000002.png"), alpha, atol=1 / 65535)
    z = _reference(material, "pointmap", frame)["pointmap"][2].numpy()
    depth = read_depth(out / "stills_pointmap/000002.png")
    shown = np.isfinite(depth)
    np.testing.assert_allclose(depth[shown], z[shown], atol=0.0011)
    assert (z[~shown] * 1000 < 0.5).all()  # no depth only where the scene is not in front of the camera


def test_all_tasks_in_one_run(material, tmp_path) -> None:
    """pose, seg, normal, pointmap and matting together give each task's files as its own run does;
    the video shows the composite with pose and seg, the normals and the depth side by side."""
    out, alone = tmp_path / "all", tmp_path / "alone"
    common = ("--no-smooth", "--no-flip")
    _run(material, out, material["folder"], "--task", "pose,seg,normal,pointmap,matting", *common,
         "--background", "green")  # fmt: skip
    for task in HF_CLASSES:
        _run(material, alone / task, material["folder"], "--task", task, *common)
        for index in range(NUM_FRAMES):
            together, single = _saved(out, "stills", task, index), _saved(alone / task, "stills", task, index)
            _assert_within_one_step(together, single)
    lines = read_jsonl(out / "stills.jsonl")
    assert all(len(line["persons"][0]["keypoints"]) == 308 for line in lines)
    assert read_label_map(out / "stills_seg" / "000000.png").shape == (64, 32)
    video, _, _, _ = read_video(out / "stills.mp4")
    assert len(video) == NUM_FRAMES and video[0].shape[:2] == (64, 96)  # three 32 px wide panels
    normals = read_normals(out / "stills_normal" / "000001.png")
    _assert_same_colours(video[1][:, 32:64], normals_to_rgb(normals))


@pytest.mark.parametrize(
    "render, width", [("matting", 32), ("normal,pointmap", 64), ("pose,seg", 32), ("pointmap", 32)]
)
def test_render_selects_the_video_panels(material, tmp_path, render, width) -> None:
    out = tmp_path / "out"
    _run(material, out, material["folder"], "--task", "pose,seg,normal,pointmap,matting", "--view", render,
         "--no-flip")  # fmt: skip
    video, _, _, _ = read_video(out / "stills.mp4")
    assert video[0].shape[:2] == (64, width)
    for task in HF_CLASSES:  # every task's files are written whatever the video shows
        assert len(list((out / f"stills_{task}").glob("*.png"))) == NUM_FRAMES


def test_matting_composites_over_an_image_background(material, tmp_path) -> None:
    background = np.zeros((40, 20, 3), np.uint8)
    background[:] = (10, 200, 30)
    path = tmp_path / "bg.png"
    cv2.imwrite(str(path), cv2.cvtColor(background, cv2.COLOR_RGB2BGR))
    out = tmp_path / "out"
    _run(material, out, material["folder"], "--task", "matting", "--background", str(path), "--no-flip",
         "--no-smooth")  # fmt: skip
    frame = _frames(material["folder"])[0]
    ref = _reference(material, "matting", frame)
    expected = composite(
        np.rint(ref["foreground"].permute(1, 2, 0).numpy() * 255), ref["alpha"][0].numpy(),
        np.broadcast_to(np.array([10, 200, 30], np.uint8), frame.shape),
    )  # fmt: skip
    video, _, _, _ = read_video(out / "stills.mp4")
    _assert_same_colours(video[0], expected)


def test_smoothing_steadies_the_maps_and_no_smooth_keeps_them(material, tmp_path) -> None:
    """With smoothing the maps of a static scene flicker less between frames than without; the first
    frame of a source has no history and is left as the model gave it."""
    clip = write_test_clip(tmp_path / "clip.mp4", 8, FRAME_WH, fps=25, seed=2)
    smooth, raw = tmp_path / "smooth", tmp_path / "raw"
    _run(material, smooth, clip, "--task", "normal,pointmap,matting", "--no-flip")
    _run(material, raw, clip, "--task", "normal,pointmap,matting", "--no-flip", "--no-smooth")
    for task in HF_CLASSES:
        first_smooth, first_raw = _saved(smooth, "clip", task, 0), _saved(raw, "clip", task, 0)
        _assert_within_one_step(first_smooth, first_raw)
        smoothed = [_saved(smooth, "clip", task, i).astype(float) for i in range(8)]
        given = [_saved(raw, "clip", task, i).astype(float) for i in range(8)]
        assert max(np.abs(a - b).mean() for a, b in zip(smoothed[1:], given[1:], strict=True)) > 0
        # Blending in the history makes consecutive maps closer to each other than the model's own.
        steps_smoothed = np.mean([np.abs(b - a).mean() for a, b in zip(smoothed, smoothed[1:], strict=False)])
        steps_given = np.mean([np.abs(b - a).mean() for a, b in zip(given, given[1:], strict=False)])
        assert steps_smoothed < steps_given


def test_live_mode_runs_a_dense_task_on_a_file(material, tmp_path) -> None:
    clip = write_test_clip(tmp_path / "fast.mp4", 40, (48, 64), fps=25, seed=4)
    out = tmp_path / "out"
    _run(material, out, clip, "--task", "normal,matting", "--mode", "live")
    lines = read_jsonl(out / "fast.jsonl")
    assert [line["frame"] for line in lines] == list(range(40))
    kept = [line["frame"] for line in lines if not line.get("skipped")]
    assert kept
    for task in ("normal", "matting"):
        written = sorted(int(p.stem) for p in (out / f"fast_{task}").glob("*.png"))
        assert written == kept  # one map per computed frame, none for a dropped one
    video, _, _, _ = read_video(out / "fast.mp4")
    assert len(video) == len(kept) and video[0].shape[:2] == (64, 96)  # frame+matte, normals


def test_person_seg_mode_pastes_crops_back(material, tmp_path) -> None:
    """``--seg-mode person``: labels only inside the persons' crop windows, background elsewhere."""
    clip = write_test_clip(tmp_path / "people.mp4", 6, (96, 64), fps=25, seed=5)
    out, frame_mode = tmp_path / "person", tmp_path / "frame"
    _run(material, out, clip, "--task", "seg", "--seg-mode", "person", "--no-flip", "--no-smooth",
         detector="people")  # fmt: skip
    _run(material, frame_mode, clip, "--task", "seg", "--no-flip", "--no-smooth", detector="people")
    empty = read_label_map(out / "people_seg" / "000003.png")  # two_people: nobody on every 4th frame
    assert empty.shape == (64, 96) and not empty.any()
    labels = read_label_map(out / "people_seg" / "000000.png")
    assert labels.any()
    from models.preprocess import crop_to_frame_affine

    affines = crop_to_frame_affine(torch.tensor([b[:4] for b in two_people(6)[0]]), INPUT_SIZE).numpy()
    covered = np.zeros(labels.shape, bool)
    for (a_x, _, t_x), (_, a_y, t_y) in affines:
        x0, x1 = max(0, int(np.floor(t_x))), int(np.ceil(t_x + a_x * (INPUT_SIZE[1] - 1))) + 1
        y0, y1 = max(0, int(np.floor(t_y))), int(np.ceil(t_y + a_y * (INPUT_SIZE[0] - 1))) + 1
        covered[y0:y1, x0:x1] = True
    assert (~covered).any() and not labels[~covered].any()  # nothing outside the persons' crops
    assert not np.array_equal(labels, read_label_map(frame_mode / "people_seg" / "000000.png"))


def test_bad_background_and_render_are_one_line_errors(material, tmp_path, capsys) -> None:
    argv = ["run", str(material["folder"]), "--out", str(tmp_path / "o"), "--input-size", SIZE,
            "--matting-model", str(material["matting"]), "--detector", f"boxes:{material['boxes']}"]
    assert main([*argv, "--task", "matting", "--background", "no-such-colour"]) == 2
    assert "background must be blur, a colour" in capsys.readouterr().err
    assert main([*argv, "--task", "matting", "--view", "normal"]) == 2
    assert "view 'normal' needs --task to include normal" in capsys.readouterr().err
    assert main([*argv, "--task", "seg", "--seg-mode", "crops"]) == 2
    assert "seg_mode must be one of frame, person" in capsys.readouterr().err


def test_views_and_backgrounds() -> None:
    normals = np.zeros((4, 4, 3), np.float32)
    normals[..., 2] = 1.0
    assert (normals_to_rgb(normals)[0, 0] == (128, 128, 255)).all()
    depth = np.tile(np.linspace(1.0, 5.0, 200, dtype=np.float32)[:, None], (1, 300))
    depth[0, 0] = np.nan
    rgb = depth_to_rgb(depth, legend=False)
    assert (rgb[0, 0] == 0).all() and rgb[5, 5, 0] > rgb[5, 5, 2] and rgb[195, 5, 2] > rgb[195, 5, 0]
    assert not np.array_equal(depth_to_rgb(depth), rgb)  # the legend is drawn
    assert parse_color("#00b140") == (0, 177, 64) and parse_color("1,2,3") == (1, 2, 3)
    frame = np.full((32, 48, 3), 100, np.uint8)
    assert (Background("white")(frame) == 255).all()
    assert Background("blur")(frame).shape == frame.shape
    with pytest.raises(ValueError, match="background must be"):
        parse_color("teal-ish")


def test_a_checkpoints_preprocessor_config_is_followed(material, tmp_path: Path) -> None:
    """A checkpoint that ships its own ``preprocessor_config.json`` (other mean and std, and no padding)
    is prepared as its processor says, not by the release's defaults."""
    import shutil

    model = tmp_path / "normal_own_processor"
    shutil.copytree(material["normal"], model)
    processor = Sapiens2ImageProcessor(size={"height": INPUT_SIZE[0], "width": INPUT_SIZE[1]}, do_pad=False,
                                       image_mean=[0.2, 0.4, 0.6], image_std=[0.5, 0.3, 0.2])
    processor.save_pretrained(model)
    out = tmp_path / "out"
    argv = ["run", str(material["folder"]), "--out", str(out), "--input-size", SIZE, "--task", "normal",
            "--normal-model", str(model), "--detector", f"boxes:{material['boxes']}", "--workers", "inproc",
            "--no-progress", "--no-smooth", "--no-flip"]
    assert main(argv) == 0
    frame = _frames(material["folder"])[0]
    reference_model = Sapiens2ForNormalEstimation.from_pretrained(model).eval()
    pixel_values = Sapiens2ImageProcessor.from_pretrained(model)(
        torch.from_numpy(frame).permute(2, 0, 1), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        outputs = reference_model(pixel_values)
    # Without padding there is nothing to remove: the maps are only resized to the frame.
    reference = processor.post_process_normal_estimation(outputs, target_sizes=[frame.shape[:2]])[0]
    expected = encode_normals(reference["normals"].permute(1, 2, 0).numpy())
    _assert_within_one_step(_saved(out, "stills", "normal", 0), expected)


# --- every task together, offline and live, through the command line and the Python API -----------------
ALL_TASKS = "pose,seg,normal,pointmap,matting"


def _api_options(material, **overrides) -> dict:
    options = {
        "task": ALL_TASKS,
        "detector": f"boxes:{material['boxes']}",
        "input_size": SIZE,
        "workers": "inproc",
        "progress": False,
        "max_wait_ms": 2,
        **{f"{task}_model": str(material[task]) for task in ("pose", "seg", *HF_CLASSES)},
    }
    return {**options, **overrides}


def _assert_result_maps(result: stream.FrameResult) -> None:
    """Every task's output of a computed frame, at the frame's size, in its value range."""
    h, w = result.height, result.width
    assert result.seg.shape == (h, w) and result.seg.dtype == np.uint8
    assert result.normals.shape == (h, w, 3) and result.normals.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(result.normals, axis=-1), 1.0, atol=1e-4)
    assert result.pointmap.shape == (h, w, 3) and result.pointmap.dtype == np.float32
    assert result.depth.shape == (h, w) and result.depth.dtype == np.float32
    shown = ~np.isnan(result.depth)
    assert shown.any() and (result.depth[shown] > 0).all()
    np.testing.assert_array_equal(result.depth[shown], result.pointmap[..., 2][shown])
    assert not (result.pointmap[..., 2][~shown] > 0).any()  # NaN only where nothing is in front
    assert result.alpha.shape == (h, w) and result.alpha.dtype == np.float32
    assert result.alpha.min() >= 0.0 and result.alpha.max() <= 1.0
    assert all(p.keypoints.shape == (308, 3) for p in result.persons)


def _assert_files_hold_the_maps(result: stream.FrameResult, out: Path) -> None:
    """The run's lossless files of this frame are the result's maps, quantised as documented."""
    saved = {task: _saved(out, result.source, task, result.frame) for task in HF_CLASSES}
    np.testing.assert_array_equal(saved["normal"], encode_normals(result.normals))
    np.testing.assert_array_equal(saved["pointmap"], encode_depth(result.pointmap))
    np.testing.assert_array_equal(saved["matting"], encode_alpha(result.alpha))
    depth = read_depth(out / f"{result.source}_pointmap" / f"{result.frame:06d}.png")
    stored = ~np.isnan(depth)
    np.testing.assert_allclose(depth[stored], result.depth[stored], atol=0.5 / 1000)
    # No depth in the file: none in front of the camera, or nearer than the file's half millimetre.
    assert not (result.depth[~stored] >= 0.5 / 1000).any()


def test_all_tasks_through_the_api_equal_transformers_and_the_files(material, tmp_path) -> None:
    out = tmp_path / "out"
    options = _api_options(material, out=out, smooth=False, flip=False)
    with stream.Pipeline(material["folder"], **options) as pipe:
        results = list(pipe)
    assert [r.frame for r in results] == list(range(NUM_FRAMES))
    assert [r.to_dict() for r in results] == read_jsonl(out / "stills.jsonl")
    for result, frame in zip(results, _frames(material["folder"]), strict=True):
        assert not result.skipped and len(result.persons) == 1
        _assert_result_maps(result)
        _assert_files_hold_the_maps(result, out)
        labels = read_label_map(out / "stills_seg" / f"{result.frame:06d}.png")
        np.testing.assert_array_equal(result.seg, labels)
        # The maps themselves, before any quantisation, are transformers' post-processed outputs.
        normals = _reference(material, "normal", frame)["normals"].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(result.normals, normals, atol=1e-4)
        pointmap = _reference(material, "pointmap", frame)["pointmap"].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(result.pointmap, pointmap, atol=1e-4, rtol=1e-4)
        alpha = _reference(material, "matting", frame)["alpha"][0].numpy()
        np.testing.assert_allclose(result.alpha, alpha, atol=1e-4)


MAP_FIELDS = {
    "seg": ("seg",), "normal": ("normals",), "pointmap": ("pointmap", "depth"), "matting": ("alpha",)
}  # fmt: skip


@pytest.mark.parametrize("tasks", ["normal", "pose,pointmap", "seg,matting", "pose,seg,normal"])
def test_each_result_carries_the_maps_of_the_tasks_run(material, tasks) -> None:
    """Some combinations through the API: the maps of the tasks that ran, at the frame's size, and no
    others; keypoints only with pose (person-mode segmentation where seg runs beside pose)."""
    run = tasks.split(",")
    options = _api_options(material, task=tasks, seg_mode="person" if "pose" in run else "frame")
    with stream.Pipeline(material["folder"], **options) as pipe:
        results = list(pipe)
    assert [r.frame for r in results] == list(range(NUM_FRAMES))
    for result in results:
        for task, fields in MAP_FIELDS.items():
            for name in fields:
                value = getattr(result, name)
                assert (value is not None) == (task in run), (name, tasks)
                assert value is None or value.shape[:2] == (result.height, result.width)
        assert len(result.persons) == 1
        assert (result.persons[0].keypoints is not None) == ("pose" in run)


def test_all_tasks_live_through_the_cli(material, tmp_path) -> None:
    """A file read live (as fast as it decodes, dropping what the models cannot keep up with): every
    frame has its line, and every computed one its maps, at the frame's size."""
    clip = write_test_clip(tmp_path / "clip.mp4", 12, FRAME_WH, fps=25, seed=4)
    out = tmp_path / "out"
    _run(material, out, clip, "--task", ALL_TASKS, "--mode", "live")
    lines = read_jsonl(out / "clip.jsonl")
    assert [line["frame"] for line in lines] == list(range(12))
    computed = [line for line in lines if not line.get("skipped")]
    assert computed
    for line in lines:
        for task in HF_CLASSES:
            assert (out / f"clip_{task}" / f"{line['frame']:06d}.png").exists() == (line in computed)
    for line in computed:
        assert all(len(person["keypoints"]) == 308 for person in line["persons"])
        normals = read_normals(out / "clip_normal" / f"{line['frame']:06d}.png")
        assert normals.shape == (64, 32, 3)
        np.testing.assert_allclose(np.linalg.norm(normals, axis=-1), 1.0, atol=1e-3)
        assert read_depth(out / "clip_pointmap" / f"{line['frame']:06d}.png").shape == (64, 32)
        assert read_alpha(out / "clip_matting" / f"{line['frame']:06d}.png").shape == (64, 32)
    video, _, _, _ = read_video(out / "clip.mp4")
    assert len(video) == len(computed)  # a live recording holds the computed frames
    assert video[0].shape[:2] == (64, 96)  # composite, normals and depth side by side


@pytest.mark.needs_system(what="RTSP test server", missing=server_unavailable_reason())
def test_all_tasks_live_through_the_api(material, tmp_path) -> None:
    """A camera, every task: each computed result carries every map, and the files hold the same maps."""
    out = tmp_path / "out"
    results = []
    with RtspServerProcess(width=32, height=64, fps=25, duration=60) as camera:
        with stream.Pipeline(camera.url, **_api_options(material, out=out)) as pipe:
            for result in pipe:
                results.append(result)
                if sum(not r.skipped for r in results) == 5:
                    pipe.stop()
    report = pipe.report.sources[results[0].source]
    assert report.mode == "live"
    computed = [r for r in results if not r.skipped]
    assert len(computed) >= 5
    for result in computed:
        assert (result.width, result.height) == (32, 64)
        _assert_result_maps(result)
        _assert_files_hold_the_maps(result, out)
    for result in results:
        if result.skipped:
            assert result.normals is None and result.pointmap is None and result.alpha is None
    assert any(result.persons for result in computed)
