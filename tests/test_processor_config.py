"""Preprocessing read from a checkpoint's preprocessor_config.json, as transformers' processor writes it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import Sapiens2ImageProcessor
from transformers.image_utils import PILImageResampling

from models import Sapiens2Config, build_sapiens2, load_sapiens2, save_sapiens2
from models.loading import load_preprocessing
from models.processor_config import Preprocessing, release_preprocessing

torch.set_num_threads(2)
REPO_ROOT = Path(__file__).resolve().parents[1]
TASKS = ["pose", "seg", "normal", "pointmap", "matting"]

# Processor settings as a checkpoint may carry them: the release's, and each field changed.
PROCESSORS = {
    "release": {},
    "padded_small": dict(size={"height": 512, "width": 384}, do_pad=True),
    "unpadded": dict(do_pad=False, resample=PILImageResampling.BICUBIC),
    "own_normalisation": dict(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3], rescale_factor=1 / 128),
    "no_rescale": dict(do_rescale=False, image_mean=[120.0, 110.0, 100.0], image_std=[60.0, 55.0, 50.0]),
    "no_normalize": dict(do_normalize=False, size={"height": 256, "width": 192}),
}
RESAMPLE_NAMES = {
    PILImageResampling.NEAREST: "nearest",
    PILImageResampling.BILINEAR: "bilinear",
    PILImageResampling.BICUBIC: "bicubic",
}


def write_checkpoint(directory: Path, task: str, processor: dict | None) -> None:
    """A tiny checkpoint in the Hub layout, with the processor's own save_pretrained output when given."""
    torch.manual_seed(0)
    config = Sapiens2Config.from_arch("tiny", task=task, image_size=(64, 48))
    save_sapiens2(build_sapiens2(config), directory)
    if processor is not None:
        Sapiens2ImageProcessor(**processor).save_pretrained(directory)


def expected_from(processor: Sapiens2ImageProcessor) -> dict:
    """The fields the processor, read back by transformers, applies."""
    return dict(
        input_size=(processor.size["height"], processor.size["width"]),
        do_pad=bool(processor.do_pad),
        image_mean=tuple(float(v) for v in processor.image_mean),
        image_std=tuple(float(v) for v in processor.image_std),
        do_normalize=bool(processor.do_normalize),
        do_rescale=bool(processor.do_rescale),
        rescale_factor=float(processor.rescale_factor),
        resample=RESAMPLE_NAMES[PILImageResampling(processor.resample)],
    )


def fields_of(preprocessing: Preprocessing) -> dict:
    return {name: getattr(preprocessing, name) for name in expected_from(Sapiens2ImageProcessor())}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("variant", sorted(PROCESSORS))
def test_preprocessor_config_is_read_as_transformers_reads_it(tmp_path, task, variant):
    write_checkpoint(tmp_path, task, PROCESSORS[variant])
    reference = Sapiens2ImageProcessor.from_pretrained(tmp_path)

    preprocessing = load_preprocessing(tmp_path)
    assert fields_of(preprocessing) == expected_from(reference)
    assert preprocessing.source == str(tmp_path / "preprocessor_config.json")


@pytest.mark.parametrize("variant", sorted(PROCESSORS))
def test_normalisation_equals_the_processors(tmp_path, variant):
    """``normalise`` on 0..255 pixels gives the processor's pixel values (resizing switched off)."""
    write_checkpoint(tmp_path, "normal", PROCESSORS[variant])
    reference = Sapiens2ImageProcessor.from_pretrained(tmp_path)
    preprocessing = load_preprocessing(tmp_path)

    image = torch.from_numpy(np.random.default_rng(1).integers(0, 256, (3, 20, 16), dtype=np.uint8))
    theirs = reference(image, do_resize=False, return_tensors="pt")["pixel_values"]
    ours = preprocessing.normalise(image[None].float())
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("task", TASKS)
def test_release_defaults_apply_without_a_preprocessor_config(tmp_path, task):
    write_checkpoint(tmp_path, task, processor=None)
    preprocessing = load_preprocessing(tmp_path)
    assert preprocessing == release_preprocessing(task)
    assert preprocessing.source == "release defaults"
    assert preprocessing.input_size == (1024, 768)
    # Normals and pointmaps keep the frame's aspect and pad it; the others stretch it.
    assert preprocessing.do_pad is (task in ("normal", "pointmap"))
    # The defaults are the processor's own, but for the per-task padding.
    defaults = expected_from(Sapiens2ImageProcessor())
    assert fields_of(preprocessing) == dict(defaults, do_pad=preprocessing.do_pad)


def test_keys_missing_from_the_file_take_the_processors_defaults(tmp_path):
    """A file naming only some fields: the rest as transformers fills them (do_pad off, even for normals)."""
    write_checkpoint(tmp_path, "normal", processor=None)
    partial = {"image_processor_type": "Sapiens2ImageProcessor", "size": {"height": 128, "width": 96}}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(partial))
    reference = Sapiens2ImageProcessor.from_pretrained(tmp_path)
    assert fields_of(load_preprocessing(tmp_path)) == expected_from(reference)
    assert load_preprocessing(tmp_path).do_pad is False


@pytest.mark.parametrize("with_file", [True, False])
def test_a_given_input_size_overrides_the_size_only(tmp_path, with_file):
    write_checkpoint(tmp_path, "pointmap", PROCESSORS["padded_small"] if with_file else None)
    plain = load_preprocessing(tmp_path)
    sized = load_preprocessing(tmp_path, input_size=(320, 240))
    assert sized.input_size == (320, 240)
    assert fields_of(sized) == dict(fields_of(plain), input_size=(320, 240))


def test_the_loaded_model_carries_its_preprocessing(tmp_path):
    write_checkpoint(tmp_path, "seg", PROCESSORS["padded_small"])
    model = load_sapiens2(tmp_path)
    assert model.preprocessing == load_preprocessing(tmp_path)
    assert model.preprocessing.input_size == (512, 384) and model.preprocessing.do_pad
    # Without a file, the task's release defaults; a task given picks another task's.
    (tmp_path / "preprocessor_config.json").unlink()
    assert load_sapiens2(tmp_path).preprocessing == release_preprocessing("seg")
    assert load_preprocessing(tmp_path, task="normal") == release_preprocessing("normal")


def test_a_built_model_has_the_release_preprocessing_of_its_task():
    model = build_sapiens2(Sapiens2Config.from_arch("tiny", task="pointmap", image_size=(64, 48)))
    assert model.preprocessing == release_preprocessing("pointmap")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"size": {"shortest_edge": 512}}), "size"),
        (json.dumps({"size": {"height": 0, "width": 48}}), "size"),
        (json.dumps({"do_resize": False}), "do_resize"),
        (json.dumps({"do_center_crop": True}), "do_center_crop"),
        (json.dumps({"image_mean": [0.5, 0.5]}), "image_mean"),
        (json.dumps({"image_std": [0.5, 0.0, 0.5]}), "image_std"),
        (json.dumps({"resample": 9}), "resample"),
        (json.dumps({"do_pad": "yes"}), "do_pad"),
        (json.dumps({"image_processor_type": "ViTImageProcessor"}), "ViTImageProcessor"),
    ],
)
def test_unusable_preprocessor_configs_are_refused_with_the_field_named(tmp_path, content, message):
    write_checkpoint(tmp_path, "normal", processor=None)
    (tmp_path / "preprocessor_config.json").write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        load_preprocessing(tmp_path)
    assert "preprocessor_config.json" in str(err.value)


def test_bad_input_size_and_missing_checkpoint_are_refused(tmp_path):
    write_checkpoint(tmp_path, "pose", processor=None)
    with pytest.raises(ValueError, match="input_size"):
        load_preprocessing(tmp_path, input_size=(0, 48))
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        load_preprocessing(tmp_path / "missing")


def _fill_hub_cache(cache: Path, repo_id: str, source: Path) -> None:
    """Lay out a Hub cache entry (refs/main -> snapshot) as huggingface_hub writes it."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for file in source.iterdir():
        (snapshot / file.name).write_bytes(file.read_bytes())
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)


def test_hub_id_reads_the_preprocessor_config_of_its_snapshot_offline(tmp_path):
    write_checkpoint(tmp_path / "checkpoint", "normal", PROCESSORS["padded_small"])
    _fill_hub_cache(tmp_path / "hf_home", "example/sapiens2-normal-tiny", tmp_path / "checkpoint")
    script = (
        "from models import load_sapiens2; from models.loading import load_preprocessing; "
        "p = load_preprocessing('example/sapiens2-normal-tiny'); "
        "m = load_sapiens2('example/sapiens2-normal-tiny'); "
        "print(p.input_size, p.do_pad, m.preprocessing == p)"
    )
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip() == "(512, 384) True True", result.stderr


# --- the pipeline follows the checkpoint's preprocessing ------------------------------------------------
# Person crops (pose, ``--seg-mode person``) are cut at the checkpoint's size and normalised with its
# mean/std, as the processor's box crops are; ``--input-size`` overrides the size only when given.

# Odd on purpose: ImageNet's mean/std or the release's 1024x768 in their place would show at once.
ODD_POSE = dict(size={"height": 80, "width": 48}, image_mean=[0.3, 0.6, 0.1], image_std=[0.5, 0.15, 0.35])
ODD_SEG = dict(size={"height": 64, "width": 64}, image_mean=[0.7, 0.2, 0.5], image_std=[0.3, 0.45, 0.12])
FRAME_HW = (96, 128)
# Boxes whose crop windows lie inside the frame and are smaller than the inputs, so the crops are
# enlarged: there transformers' crop_and_resize and our warp sample alike (bicubic), within the grey
# level the OpenCV warp rounds to. (Shrinking, we average the footprint where the reference takes one
# tap; at a frame's edge, bicubic overshoots below 0, which we clamp.)
BOXES = [[28.0, 27.0, 52.0, 69.0, 0.9], [76.0, 27.0, 100.0, 69.0, 0.8]]


def _frames(count: int) -> list[np.ndarray]:
    """Smooth frames within 40..210: bicubic enlarging then never overshoots 0..255 (which our warp
    clamps and the reference keeps)."""
    import cv2

    rng = np.random.default_rng(5)
    frames = []
    for _ in range(count):
        coarse = rng.integers(40, 211, (FRAME_HW[0] // 8, FRAME_HW[1] // 8, 3)).astype(np.uint8)
        frames.append(cv2.resize(coarse, FRAME_HW[::-1], interpolation=cv2.INTER_LINEAR))
    return frames


def _engine_outputs(tmp_path: Path, models: dict[str, Path], input_size=None, **options):
    """The GPU worker's engine on two frames: its results and the inputs each model was given."""
    from pipeline_fixtures import engine_config, write_boxes

    from stream.engine import Group, InferenceEngine
    from stream.media.frames import DecodedFrame
    from stream.runtime.messages import frame_message, to_frame_result

    frames = _frames(2)
    boxes = write_boxes(tmp_path / "boxes.jsonl", {i: BOXES for i in range(len(frames))})
    cfg = engine_config(
        models.get("pose", tmp_path), boxes, input_size, task=tuple(models), smooth=False,
        seg_model=str(models.get("seg", tmp_path)), seg_mode="person", **options,
    )  # fmt: skip
    group = Group()
    for i, image in enumerate(frames):
        message = frame_message("clip", i, DecodedFrame(image, i, i / 30, None, 0.0))
        group.messages.append(message)
        group.frames.append(message)
    inputs: dict[str, list[torch.Tensor]] = {}
    with InferenceEngine(cfg) as engine:
        for task, model in (("pose", engine.pose_model), ("seg", engine.seg_model)):
            if model is not None:
                hook = lambda module, args, task=task: inputs.setdefault(task, []).append(args[0].clone())  # noqa: E731
                model.register_forward_pre_hook(hook)
        messages = engine.compute(engine.prepare(group))
        preprocessing = engine.inputs
    # Each forward is padded to a static batch size: the first rows are the crops, frame by frame.
    crops = {task: torch.cat(chunks)[: len(BOXES) * len(frames)] for task, chunks in inputs.items()}
    return frames, [to_frame_result(m) for m in messages], crops, preprocessing


def _processor_crops(processor: Sapiens2ImageProcessor, frames: list[np.ndarray], **kwargs) -> torch.Tensor:
    xywh = [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2, _ in BOXES]
    images = [torch.from_numpy(frame).permute(2, 0, 1) for frame in frames]
    return processor(images, boxes=[xywh] * len(frames), return_tensors="pt", **kwargs)["pixel_values"]


def _assert_same_crops(ours: torch.Tensor, theirs: torch.Tensor, std) -> None:
    """Equal shapes and, in grey levels (model inputs times std times 255), within the OpenCV warp's
    rounding: about one level."""
    assert ours.shape == theirs.shape
    levels = (ours - theirs).abs() * torch.tensor(std).view(1, 3, 1, 1) * 255
    assert levels.max() < 2.5 and levels.mean() < 0.5


def test_person_crops_and_keypoints_follow_each_checkpoints_preprocessor_config(tmp_path):
    """Pose and person-mode segmentation, each with its own size and mean/std from its file, and no
    --input-size: the crops are the processor's, and the keypoints are transformers' model and
    post-processing on the same crops."""
    from transformers import Sapiens2ForPoseEstimation

    write_checkpoint(tmp_path / "pose", "pose", ODD_POSE)
    write_checkpoint(tmp_path / "seg", "seg", ODD_SEG)
    models = {"pose": tmp_path / "pose", "seg": tmp_path / "seg"}
    frames, results, crops, preprocessing = _engine_outputs(tmp_path, models)
    assert preprocessing["pose"].input_size == (80, 48) and preprocessing["seg"].input_size == (64, 64)

    pose_processor = Sapiens2ImageProcessor.from_pretrained(models["pose"])
    seg_processor = Sapiens2ImageProcessor.from_pretrained(models["seg"])
    _assert_same_crops(crops["pose"], _processor_crops(pose_processor, frames), ODD_POSE["image_std"])
    _assert_same_crops(crops["seg"], _processor_crops(seg_processor, frames), ODD_SEG["image_std"])
    for result in results:
        assert result.seg_labels.shape == FRAME_HW

    reference = Sapiens2ForPoseEstimation.from_pretrained(models["pose"]).eval()
    with torch.no_grad():
        outputs = reference(crops["pose"])
    xywh = [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2, _ in BOXES]
    expected = pose_processor.post_process_pose_estimation(outputs, boxes=[xywh] * len(frames))
    theirs_points = np.stack([p["keypoints"].numpy() for persons in expected for p in persons])
    theirs_scores = np.stack([p["scores"].numpy() for persons in expected for p in persons])
    ours_points = np.concatenate([result.keypoints for result in results])
    np.testing.assert_allclose(np.concatenate([r.keypoint_scores for r in results]), theirs_scores, atol=1e-4)
    # The two models' float sums differ in the last bits; the random heatmaps' flat peaks make the DARK
    # refinement's Newton step amplify that for a few keypoints, never by a heatmap pixel (4 input px).
    error = np.linalg.norm(ours_points - theirs_points, axis=-1)
    assert np.median(error) < 1e-3 and (error < 0.01).mean() > 0.95 and error.max() < 4.0


def test_a_given_input_size_overrides_the_checkpoints_size_not_its_normalisation(tmp_path):
    write_checkpoint(tmp_path / "pose", "pose", ODD_POSE)
    frames, _, crops, preprocessing = _engine_outputs(tmp_path, {"pose": tmp_path / "pose"}, (64, 32))
    assert preprocessing["pose"].input_size == (64, 32)
    assert preprocessing["pose"].image_mean == tuple(ODD_POSE["image_mean"])
    processor = Sapiens2ImageProcessor.from_pretrained(tmp_path / "pose")
    theirs = _processor_crops(processor, frames, size={"height": 64, "width": 32})
    _assert_same_crops(crops["pose"], theirs, ODD_POSE["image_std"])


def test_without_a_preprocessor_config_the_engine_takes_the_release_defaults(tmp_path):
    from pipeline_fixtures import engine_config

    from stream.engine import InferenceEngine

    write_checkpoint(tmp_path / "pose", "pose", processor=None)
    write_checkpoint(tmp_path / "normal", "normal", processor=None)
    boxes = tmp_path / "boxes.jsonl"
    boxes.write_text("")
    options = dict(task=("pose", "normal"), normal_model=str(tmp_path / "normal"))
    with InferenceEngine(engine_config(tmp_path / "pose", boxes, None, **options)) as engine:
        assert engine.inputs == {task: release_preprocessing(task) for task in ("pose", "normal")}
        assert engine.inputs["pose"].input_size == (1024, 768)
    with InferenceEngine(engine_config(tmp_path / "pose", boxes, (128, 96), **options)) as engine:
        assert engine.inputs["normal"] == release_preprocessing("normal").with_input_size((128, 96))
