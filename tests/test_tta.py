"""Flip test-time augmentation: one 2B forward, equal to the two-call flip path."""

from __future__ import annotations

import pytest
import torch

from models import Sapiens2Config, build_sapiens2, flip_tta, load_sapiens2, save_sapiens2
from models.meta import pose_meta, seg_meta

torch.set_num_threads(2)


def tiny(task: str, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_sapiens2(Sapiens2Config.from_arch("tiny", task=task, image_size=(64, 48), **overrides))


def pixels(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 3, 64, 48, generator=torch.Generator().manual_seed(1))


def count_forwards(model: torch.nn.Module) -> list[int]:
    """Batch sizes of every call of the model."""
    calls: list[int] = []
    model.register_forward_pre_hook(lambda _module, args: calls.append(args[0].shape[0]))
    return calls


def two_call_reference(model, x, field, flip_back):
    with torch.no_grad():
        original = getattr(model(x), field)
        flipped = getattr(model(x.flip(-1)), field)
    return (original + flip_back(flipped)) / 2


def negate_x(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    t[:, 0] = -t[:, 0]
    return t


@pytest.mark.parametrize(
    ("task", "field", "flip_back"),
    [
        ("pose", "heatmaps", lambda t: t[:, torch.from_numpy(pose_meta().flip_indices)].flip(-1)),
        ("seg", "logits", lambda t: t[:, torch.from_numpy(seg_meta().flip_indices)].flip(-1)),
        ("normal", "normals", lambda t: negate_x(t.flip(-1))),
        ("pointmap", "pointmaps", lambda t: negate_x(t.flip(-1))),
        ("matting", "alphas", lambda t: t.flip(-1)),
        ("matting", "foregrounds", lambda t: t.flip(-1)),
    ],
)
def test_flip_tta_is_one_batch_and_equals_two_calls(task, field, flip_back):
    model = tiny(task)
    x = pixels(batch=3)
    expected = two_call_reference(model, x, field, flip_back)
    calls = count_forwards(model)
    out = flip_tta(model, x)
    assert calls == [6]
    assert type(out).__name__ == type(model(x)).__name__
    torch.testing.assert_close(getattr(out, field), expected, atol=1e-5, rtol=1e-5)


def test_pointmap_scale_is_averaged():
    model = tiny("pointmap")
    x = pixels()
    with torch.no_grad():
        expected = (model(x).scales + model(x.flip(-1)).scales) / 2
    torch.testing.assert_close(flip_tta(model, x).scales, expected, atol=1e-5, rtol=1e-5)


def test_symmetric_input_gives_mirror_symmetric_pose():
    """A left-right symmetric image yields heatmaps whose mirror, with sides swapped, is themselves."""
    model = tiny("pose")
    half = torch.randn(1, 3, 64, 24, generator=torch.Generator().manual_seed(2))
    x = torch.cat([half, half.flip(-1)], dim=-1)
    heatmaps = flip_tta(model, x).heatmaps
    mirrored = heatmaps[:, torch.from_numpy(pose_meta().flip_indices)].flip(-1)
    torch.testing.assert_close(heatmaps, mirrored, atol=1e-5, rtol=1e-5)


def test_pose_flip_pairs_from_config(tmp_path):
    """A pose model with its own keypoint layout uses config.flip_pairs, also after a save/load."""
    model = tiny("pose", num_labels=4, flip_pairs=[[0, 1], [2, 3]])
    save_sapiens2(model, tmp_path)
    model = load_sapiens2(tmp_path)
    x = pixels()
    perm = torch.tensor([1, 0, 3, 2])
    expected = two_call_reference(model, x, "heatmaps", lambda t: t[:, perm].flip(-1))
    torch.testing.assert_close(flip_tta(model, x).heatmaps, expected, atol=1e-5, rtol=1e-5)


def test_flip_tta_matches_transformers_two_call_pose_path(tmp_path):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    model = tiny("pose")
    save_sapiens2(model, tmp_path)
    theirs = transformers.Sapiens2ForPoseEstimation.from_pretrained(tmp_path).eval()
    x = pixels()
    flip_pairs = torch.from_numpy(pose_meta().flip_pairs)
    with torch.no_grad():
        expected = (theirs(x).heatmaps + theirs(x.flip(-1), flip_pairs=flip_pairs).heatmaps) / 2
    torch.testing.assert_close(flip_tta(model, x).heatmaps, expected, atol=1e-4, rtol=0)


def test_unknown_layouts_are_refused():
    with pytest.raises(ValueError, match="flip pairs"):
        flip_tta(tiny("pose", num_labels=5), pixels())
    with pytest.raises(ValueError, match="left/right class pairs"):
        flip_tta(tiny("seg", num_labels=7), pixels())
    with pytest.raises(ValueError, match="flip TTA needs"):
        flip_tta(tiny("model"), pixels())
