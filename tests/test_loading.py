"""Checkpoint files: config round trip, strict keys, shards, pickle refusal, Hub cache, dtypes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from models import Sapiens2Config, build_sapiens2, load_sapiens2, save_sapiens2

torch.set_num_threads(2)
REPO_ROOT = Path(__file__).resolve().parents[1]


def tiny(task: str = "pose", **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_sapiens2(Sapiens2Config.from_arch("tiny", task=task, image_size=(64, 48), **overrides))


def pixels() -> torch.Tensor:
    return torch.randn(2, 3, 64, 48, generator=torch.Generator().manual_seed(3))


def test_save_writes_official_key_names(tmp_path):
    save_sapiens2(tiny("pose"), tmp_path)
    keys = set(load_file(tmp_path / "model.safetensors"))
    for key in (
        "backbone.blocks.0.attn.wq.weight",
        "backbone.blocks.1.ffn.w12.weight",
        "backbone.storage_tokens",
        "backbone.patch_embed.projection.weight",
        "decode_head.deconv_layers.3.weight",
        "decode_head.conv_pose.weight",
    ):
        assert key in keys
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["Sapiens2ForPoseEstimation"]
    assert config["model_type"] == "sapiens2"
    assert len(config["id2label"]) == 308


def test_round_trip_keeps_outputs_and_unknown_fields(tmp_path):
    model = tiny("seg")
    save_sapiens2(model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["some_future_field"] = {"kept": True}
    config["head_config"]["future_head_field"] = 3
    (tmp_path / "config.json").write_text(json.dumps(config))

    loaded = load_sapiens2(tmp_path)
    assert loaded.task == "seg"
    x = pixels()
    torch.testing.assert_close(loaded(x).logits, model(x).logits, atol=0, rtol=0)
    save_sapiens2(loaded, tmp_path / "again")
    written = json.loads((tmp_path / "again" / "config.json").read_text())
    assert written["some_future_field"] == {"kept": True}
    assert written["head_config"]["future_head_field"] == 3


def test_sharded_checkpoint_round_trip(tmp_path):
    model = tiny("pointmap")
    save_sapiens2(model, tmp_path, max_shard_size=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    loaded = load_sapiens2(tmp_path)
    x = pixels()
    torch.testing.assert_close(loaded(x).pointmaps, model(x).pointmaps, atol=0, rtol=0)


def test_missing_and_unexpected_keys_are_named(tmp_path):
    save_sapiens2(tiny("pose"), tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    del state["backbone.blocks.1.attn.wk.weight"]
    state["decode_head.extra.weight"] = torch.zeros(2)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ValueError) as err:
        load_sapiens2(tmp_path)
    message = str(err.value)
    assert "missing keys: backbone.blocks.1.attn.wk.weight" in message
    assert "unexpected keys: decode_head.extra.weight" in message


def test_shape_mismatch_is_named(tmp_path):
    save_sapiens2(tiny("pose"), tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["num_key_value_heads_per_layer"] = [4, 4]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"shape mismatch: backbone\.blocks\.1\.attn\.wk\.bias"):
        load_sapiens2(tmp_path)


def test_rope_periods_are_checked_not_just_ignored(tmp_path):
    model = tiny("model")
    save_sapiens2(model, tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    head_dim = model.config.head_dim
    periods = 100.0 ** torch.arange(0, 1, 4 / head_dim, dtype=torch.float32)
    save_file({**state, "rope_embed.periods": periods}, tmp_path / "model.safetensors")
    load_sapiens2(tmp_path)
    save_file({**state, "rope_embed.periods": periods * 2}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="rope_embed.periods does not match"):
        load_sapiens2(tmp_path)


def test_pickle_checkpoints_are_refused(tmp_path):
    save_sapiens2(tiny("pose"), tmp_path)
    (tmp_path / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="refusing to load .*pytorch_model.bin.*only safetensors"):
        load_sapiens2(tmp_path)
    with pytest.raises(ValueError, match="refusing to load"):
        load_sapiens2(tmp_path / "pytorch_model.bin")


def test_bad_paths_and_configs_have_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint directory"):
        load_sapiens2(tmp_path / "does" / "not" / "exist")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_sapiens2(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vit"}))
    with pytest.raises(ValueError, match="not a Sapiens2 config"):
        load_sapiens2(tmp_path)
    with pytest.raises(ValueError, match="not a positive multiple of the patch size"):
        tiny("pose")(torch.zeros(1, 3, 60, 48))
    with pytest.raises(ValueError, match="unknown Sapiens2 size"):
        Sapiens2Config.from_arch("3b", task="pose")


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


def test_hub_id_resolves_from_hf_home_cache_offline(tmp_path):
    model = tiny("seg")
    save_sapiens2(model, tmp_path / "checkpoint")
    _fill_hub_cache(tmp_path / "hf_home", "example/sapiens2-seg-tiny", tmp_path / "checkpoint")
    script = (
        "import torch; from models import load_sapiens2; "
        "m = load_sapiens2('example/sapiens2-seg-tiny'); "
        "print(m.task, sum(p.numel() for p in m.parameters())); "
        "load_sapiens2('example/not-cached')"
    )
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    expected = f"seg {sum(p.numel() for p in model.parameters())}"
    assert result.stdout.strip() == expected, result.stderr
    assert "FileNotFoundError: example/not-cached is not in the Hugging Face cache" in result.stderr


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_loads_and_tracks_fp32(tmp_path, dtype):
    model = tiny("seg")
    save_sapiens2(model, tmp_path)
    half = load_sapiens2(tmp_path, dtype=dtype)
    assert all(p.dtype == dtype for p in half.parameters())
    x = pixels()
    logits = half(x).logits
    assert logits.dtype == dtype
    reference = model(x).logits
    error = (logits.float() - reference).abs().max() / reference.abs().max()
    assert error < 0.05
    save_sapiens2(half, tmp_path / "half")
    assert json.loads((tmp_path / "half" / "config.json").read_text())["dtype"] == str(dtype).split(".")[-1]
    stored = load_sapiens2(tmp_path / "half", dtype=None)  # keeps the file's dtype
    assert all(p.dtype == dtype for p in stored.parameters())


def test_loaded_parameters_own_aligned_memory_and_loading_stays_light(tmp_path):
    save_sapiens2(tiny("pose"), tmp_path)
    model = load_sapiens2(tmp_path)
    for name, param in model.named_parameters():
        assert isinstance(param, torch.nn.Parameter) and not param.requires_grad, name
        assert param.is_contiguous() and param.data_ptr() % 64 == 0, name  # not a view into the file map
    assert all(p.device.type == "cpu" for p in model.parameters())
    # A worker loads its model on every start: loading must not pull in torch's compiler stack (sympy).
    script = (
        "import sys; from models import load_sapiens2; "
        f"load_sapiens2({str(tmp_path)!r}); print('sympy' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.strip() == "False", result.stderr


def test_official_architecture_sizes():
    """The 0.4b pose model has the released parameter count (built on the meta device, no memory)."""
    with torch.device("meta"):
        model = build_sapiens2(Sapiens2Config.from_arch("0.4b", task="pose"))
    backbone = sum(p.numel() for p in model.backbone.parameters())
    assert abs(backbone / 1e9 - 0.398) < 0.01
    assert model.decode_head.conv_pose.out_channels == 308
    kv = [block.attn.num_kv_heads for block in model.backbone.blocks]
    assert kv == [16] * 8 + [8] * 8 + [16] * 8
