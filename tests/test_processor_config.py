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
