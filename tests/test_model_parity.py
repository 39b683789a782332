"""Our Sapiens2 against transformers' on identical weights, both directions through the file format."""

from __future__ import annotations

import re

import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    Sapiens2Backbone,
    Sapiens2ForImageMatting,
    Sapiens2ForNormalEstimation,
    Sapiens2ForPointmapEstimation,
    Sapiens2ForPoseEstimation,
    Sapiens2ForSemanticSegmentation,
    Sapiens2Model,
)

from models import Sapiens2Config, build_sapiens2, load_sapiens2, save_sapiens2  # noqa: E402

transformers.logging.set_verbosity_error()
torch.set_num_threads(2)
TOLERANCE = 1e-4

HF_CLASSES = {
    "pose": Sapiens2ForPoseEstimation,
    "seg": Sapiens2ForSemanticSegmentation,
    "normal": Sapiens2ForNormalEstimation,
    "pointmap": Sapiens2ForPointmapEstimation,
    "matting": Sapiens2ForImageMatting,
    "model": Sapiens2Model,
    "backbone": Sapiens2Backbone,
}
OUTPUT_FIELDS = {
    "pose": ["heatmaps"],
    "seg": ["logits"],
    "normal": ["normals"],
    "pointmap": ["pointmaps", "scales"],
    "matting": ["alphas", "foregrounds"],
    "model": ["last_hidden_state", "pooler_output"],
    "backbone": ["feature_maps", "cls_tokens"],
}

# Backbone variants: hidden size, heads (so head_dim), GQA layout, QK-norm, registers, biases.
BACKBONES = [
    dict(
        hidden_size=32,
        num_attention_heads=4,
        intermediate_size=64,
        num_hidden_layers=3,
        num_key_value_heads_per_layer=[4, 2, 1],
        num_register_tokens=2,
    ),
    dict(
        hidden_size=48,
        num_attention_heads=2,
        intermediate_size=80,
        num_hidden_layers=2,
        num_first_full_attention_layers=1,
        num_last_full_attention_layers=0,
        num_key_value_attention_heads=1,
        num_register_tokens=0,
        use_qk_norm=False,
        key_bias=False,
        rope_theta=10.0,
    ),
    dict(
        hidden_size=64,
        num_attention_heads=8,
        intermediate_size=96,
        num_hidden_layers=3,
        num_first_full_attention_layers=1,
        num_last_full_attention_layers=1,
        num_key_value_attention_heads=4,
        num_register_tokens=4,
        query_bias=False,
        proj_bias=False,
        layerscale_value=0.5,
    ),
]

# Heads: transposed-conv (pose, seg, one normal) and pixel-shuffle layouts, scale branch on and off.
HEADS = {
    "pose": [
        dict(upsample_out_channels=[16, 16], conv_out_channels=[16, 8, 8], num_labels=308),
        dict(upsample_out_channels=[24], conv_out_channels=[12], num_labels=17),
        dict(upsample_out_channels=[16, 8], conv_out_channels=[], num_labels=5),
    ],
    "seg": [
        dict(upsample_out_channels=[16, 16, 8, 8], conv_out_channels=[8, 8], num_labels=29),
        dict(upsample_out_channels=[16, 8], conv_out_channels=[8], num_labels=4),
        dict(upsample_out_channels=[8, 8, 8], conv_out_channels=[], num_labels=29),
    ],
    "normal": [
        dict(
            use_pixel_shuffle=True,
            upsample_out_channels=[16, 8],
            upsample_kernel_sizes=[3, 3],
            conv_out_channels=[8, 8, 4],
            conv_kernel_sizes=[3, 3, 3],
            num_labels=3,
        ),
        dict(upsample_out_channels=[16, 8], conv_out_channels=[8], num_labels=3),
        dict(
            use_pixel_shuffle=True,
            upsample_out_channels=[8, 8, 8, 8],
            upsample_kernel_sizes=[3, 1, 3, 3],
            conv_out_channels=[4],
            conv_kernel_sizes=[1],
            num_labels=3,
        ),
    ],
    "pointmap": [
        dict(
            use_pixel_shuffle=True,
            upsample_out_channels=[16, 8],
            upsample_kernel_sizes=[3, 3],
            conv_out_channels=[8],
            conv_kernel_sizes=[3],
            scale_conv_out_channels=[16],
            scale_final_hidden_sizes=[16, 8],
            num_labels=3,
        ),
        dict(
            use_pixel_shuffle=True,
            upsample_out_channels=[16, 8],
            upsample_kernel_sizes=[3, 3],
            conv_out_channels=[8, 4],
            conv_kernel_sizes=[3, 3],
            num_labels=3,
        ),
        dict(
            use_pixel_shuffle=True,
            upsample_out_channels=[8],
            upsample_kernel_sizes=[3],
            conv_out_channels=[8],
            conv_kernel_sizes=[3],
            scale_conv_out_channels=[8, 8],
            scale_conv_kernel_sizes=[3, 1],
            scale_final_hidden_sizes=[8, 4],
            num_labels=3,
        ),
    ],
    "matting": [
        dict(
            use_pixel_shuffle=True,
            upsample_out_channels=[16, 8],
            upsample_kernel_sizes=[3, 3],
            conv_out_channels=[8, 4],
            conv_kernel_sizes=[3, 3],
            num_labels=4,
        ),
        dict(upsample_out_channels=[16, 8], conv_out_channels=[8], num_labels=4),
        dict(
            use_pixel_shuffle=True,
            upsample_out_channels=[8, 8, 8],
            upsample_kernel_sizes=[3, 3, 3],
            conv_out_channels=[],
            num_labels=4,
        ),
    ],
}
# (config image size, input size, batch): non-square, batch > 1, inputs other than the configured size.
SHAPES = [((64, 48), (64, 48), 2), ((32, 64), (32, 64), 3), ((128, 96), (48, 80), 2)]


def hf_config(task: str, variant: int, **overrides) -> transformers.Sapiens2Config:
    backbone = dict(BACKBONES[variant], **overrides)
    image_size, _, _ = SHAPES[variant]
    kwargs = dict(backbone, image_size=list(image_size))
    if task in HEADS:
        head = dict(HEADS[task][variant])
        kwargs["num_labels"] = head.pop("num_labels")
        kwargs["head_config"] = head
    if task == "backbone":
        kwargs["out_indices"] = [0, 1, backbone["num_hidden_layers"]][: variant + 1]
        kwargs["return_class_token"] = True
        kwargs["reshape_hidden_states"] = variant != 1
        kwargs["normalize_backbone_outputs"] = variant != 2
    return transformers.Sapiens2Config(**kwargs)


@torch.no_grad()
def randomize(model: torch.nn.Module, seed: int) -> None:
    """Perturb every parameter, norms and layer scales included, so a misplaced one shows."""
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.add_(0.05 * torch.randn(param.shape, generator=generator))


def outputs_of(out, task: str) -> dict[str, torch.Tensor]:
    values = {}
    for name in OUTPUT_FIELDS[task]:
        value = getattr(out, name)
        if isinstance(value, tuple):
            values.update({f"{name}[{i}]": v for i, v in enumerate(value)})
        elif value is not None:
            values[name] = value
    return values


def assert_same_outputs(ours, theirs, task: str) -> None:
    ours, theirs = outputs_of(ours, task), outputs_of(theirs, task)
    assert ours.keys() == theirs.keys()
    for name in ours:
        assert ours[name].shape == theirs[name].shape, name
        diff = (ours[name] - theirs[name]).abs().max().item()
        assert diff <= TOLERANCE, f"{name}: max abs difference {diff:.3g}"


def inputs(variant: int, task: str) -> torch.Tensor:
    image_size, input_size, batch = SHAPES[variant]
    if task == "pointmap":  # the scale MLP is sized for the configured image
        input_size = image_size
    generator = torch.Generator().manual_seed(100 + variant)
    return torch.randn(batch, 3, *input_size, generator=generator)


CASES = [(task, variant) for task in HF_CLASSES for variant in range(3)]


@pytest.mark.parametrize(("task", "variant"), CASES)
def test_transformers_checkpoint_loads_into_ours(tmp_path, task, variant):
    torch.manual_seed(variant)
    theirs = HF_CLASSES[task](hf_config(task, variant)).eval()
    randomize(theirs, seed=variant)
    theirs.save_pretrained(tmp_path)

    ours = load_sapiens2(tmp_path)
    assert ours.task == task
    pixel_values = inputs(variant, task)
    with torch.no_grad():
        assert_same_outputs(ours(pixel_values), theirs(pixel_values), task)


@pytest.mark.parametrize(("task", "variant"), CASES)
def test_our_checkpoint_loads_strictly_into_transformers(tmp_path, task, variant):
    theirs_config = hf_config(task, variant)
    ours_config = Sapiens2Config.from_dict(theirs_config.to_dict(), task=task)
    torch.manual_seed(10 + variant)
    ours = build_sapiens2(ours_config)
    randomize(ours, seed=10 + variant)
    save_sapiens2(ours, tmp_path)

    theirs, info = HF_CLASSES[task].from_pretrained(tmp_path, output_loading_info=True)
    theirs.eval()
    problems = {
        k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")
    }
    assert not problems
    pixel_values = inputs(variant, task)
    with torch.no_grad():
        assert_same_outputs(ours(pixel_values), theirs(pixel_values), task)


HEAD_TASKS = ["pose", "seg", "normal", "pointmap", "matting"]
ACTIVATIONS = ["silu", "gelu", "relu", "gelu_pytorch_tanh"]


@pytest.mark.parametrize("task", HEAD_TASKS)
@pytest.mark.parametrize("hidden_act", ACTIVATIONS)
def test_heads_match_transformers_for_every_hidden_act(tmp_path, task, hidden_act):
    """transformers' head convolutions use SiLU whatever ``hidden_act`` says; only the backbone MLP and
    the pointmap scale MLP follow it. Variant 0 has a transposed-conv head for pose and seg, and a
    pixel-shuffle head (input conv, scale branch for the pointmap) for the others."""
    torch.manual_seed(30)
    theirs = HF_CLASSES[task](hf_config(task, 0, hidden_act=hidden_act)).eval()
    randomize(theirs, seed=30)
    theirs.save_pretrained(tmp_path)

    ours = load_sapiens2(tmp_path)
    assert ours.config.hidden_act == hidden_act
    pixel_values = inputs(0, task)
    with torch.no_grad():
        assert_same_outputs(ours(pixel_values), theirs(pixel_values), task)


# transformers' own save/load breaks for use_gated_mlp=False (it splits ffn.w12 as if gated), so the plain
# MLP is checked by copying our weights into a transformers model in memory under its own names.
_TO_TRANSFORMERS = [
    (r"^patch_embed\.projection\.", "embeddings.patch_embeddings."),
    (r"^cls_token$", "embeddings.cls_token"),
    (r"^storage_tokens$", "embeddings.register_tokens"),
    (r"^ln1\.", "norm."),
    (r"^blocks\.(\d+)\.", r"model.layer.\1."),
    (r"\.attn\.wq\.", ".attention.q_proj."),
    (r"\.attn\.wk\.", ".attention.k_proj."),
    (r"\.attn\.wv\.", ".attention.v_proj."),
    (r"\.attn\.proj\.", ".attention.o_proj."),
    (r"\.attn\.q_norm\.", ".attention.q_norm."),
    (r"\.attn\.k_norm\.", ".attention.k_norm."),
    (r"\.attn\.gamma\.weight$", ".layer_scale1.lambda1"),
    (r"\.ffn\.w12\.", ".mlp.up_proj."),
    (r"\.ffn\.w3\.", ".mlp.down_proj."),
    (r"\.ln1\.", ".norm1."),
    (r"\.ln2\.", ".norm2."),
]


def to_transformers_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    renamed = {}
    for key, value in state.items():
        for pattern, replacement in _TO_TRANSFORMERS:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed


@pytest.mark.parametrize("variant", range(3))
def test_plain_mlp_matches_transformers(variant):
    config = hf_config("model", variant)
    config.use_gated_mlp = False
    ours = build_sapiens2(Sapiens2Config.from_dict(config.to_dict(), task="model"))
    randomize(ours, seed=20 + variant)
    theirs = Sapiens2Model(config).eval()
    theirs.load_state_dict(to_transformers_names(ours.state_dict()), strict=True)
    pixel_values = inputs(variant, "model")
    with torch.no_grad():
        assert_same_outputs(ours(pixel_values), theirs(pixel_values), "model")


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_head_norm_equals_instance_norm_and_keeps_channels_last(compiled):
    """The head's InstanceNorm equals nn.InstanceNorm2d, eagerly (group norm) and compiled (var_mean),
    and leaves channels-last maps channels-last, so the next convolution stays on its fast path."""
    from models.sapiens2 import InstanceNorm

    torch.manual_seed(0)
    x = (torch.randn(2, 16, 20, 12) * 3 + 1).contiguous(memory_format=torch.channels_last)
    norm = InstanceNorm()
    if compiled:
        torch._dynamo.reset()
        norm = torch.compile(norm, fullgraph=True, backend="aot_eager")
    out = norm(x)
    torch.testing.assert_close(out, torch.nn.InstanceNorm2d(16)(x), atol=1e-5, rtol=1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)
