"""Sapiens2 vision transformer and its task heads, for inference.

Module and parameter names follow the official release's checkpoint keys one to one
(``backbone.blocks.N.attn.wq``, fused SwiGLU ``ffn.w12``, ``backbone.storage_tokens``,
``decode_head.deconv_layers.K``, ``decode_head.conv_pose``, ...), so a checkpoint loads with a strict
``load_state_dict`` and no renaming. Outputs use transformers' field names (``heatmaps``, ``logits``,
``normals``, ``pointmaps``/``scales``, ``alphas``/``foregrounds``, ``last_hidden_state``/``pooler_output``,
``feature_maps``).

Backbone: patch embedding, CLS + register (storage) tokens, 2-D rotary embedding on patch tokens only,
RMSNorm everywhere (QK-norm optional), grouped-query attention with a per-layer key/value head count,
SwiGLU (fused gate+up projection) or plain MLP, layer scale on the attention branch, final RMSNorm.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.config import HEAD_TASKS, Sapiens2Config
from models.processor_config import release_preprocessing

_ACTIVATIONS = {
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "gelu": nn.GELU,
    "relu": nn.ReLU,
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
}


def make_activation(name: str) -> nn.Module:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; expected one of {sorted(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


# ---------------------------------------------------------------------------- outputs


@dataclass
class Sapiens2ModelOutput:
    last_hidden_state: torch.Tensor  # (B, 1 + R + h*w, C), after the final norm
    pooler_output: torch.Tensor  # (B, C): the CLS token


@dataclass
class Sapiens2BackboneOutput:
    feature_maps: tuple[torch.Tensor, ...]  # each (B, C, h, w), or (B, h*w, C) without reshape
    cls_tokens: tuple[torch.Tensor, ...] | None = None  # each (B, C) when config.return_class_token


@dataclass
class Sapiens2PoseOutput:
    heatmaps: torch.Tensor  # (B, K, H/4, W/4) for the official head


@dataclass
class Sapiens2SegmentationOutput:
    logits: torch.Tensor  # (B, C, H, W) for the official head


@dataclass
class Sapiens2NormalOutput:
    normals: torch.Tensor  # (B, 3, H, W), not unit length


@dataclass
class Sapiens2PointmapOutput:
    pointmaps: torch.Tensor  # (B, 3, H, W)
    scales: torch.Tensor | None = None  # (B, 1) canonical / actual focal length, when the head has it


@dataclass
class Sapiens2MattingOutput:
    alphas: torch.Tensor  # (B, 1, H, W) in [0, 1]
    foregrounds: torch.Tensor  # (B, 3, H, W) pre-multiplied RGB in [0, 1]


# ---------------------------------------------------------------------------- backbone


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


class LayerScale(nn.Module):
    """Per-channel scale of a residual branch, stored as ``gamma.weight``.

    Scales in place: its input is always the fresh output of the attention projection.
    """

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul_(self.weight)


class PatchEmbed(nn.Module):
    def __init__(self, config: Sapiens2Config) -> None:
        super().__init__()
        self.projection = nn.Conv2d(
            config.num_channels, config.hidden_size, kernel_size=config.patch_size, stride=config.patch_size
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # (B, 3, H, W) -> (B, C, h, w) -> (B, h*w, C)
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


def rope_cos_sin(
    grid_hw: tuple[int, int],
    head_dim: int,
    theta: float,
    num_prefix: int,
    device: torch.device,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary tables for ``num_prefix`` unrotated tokens followed by an ``h x w`` patch grid.

    Patch centres are normalised to [-1, 1]; a quarter of the head dimension encodes y, a quarter x,
    and the halves are tiled as ``rotate_half`` expects. Prefix rows are cos=1, sin=0, which leaves the
    CLS and register tokens unchanged without splitting and concatenating the sequence. The sine table
    carries rotate_half's sign (first half negated), so the rotation needs no negation pass.
    Returns (cos, signed_sin), each (num_prefix + h*w, head_dim).
    """
    grid_h, grid_w = grid_hw
    inv_freq = 1.0 / theta ** torch.arange(0, 1, 4 / head_dim, dtype=torch.float32, device=device)  # (D/4,)
    ys = torch.arange(0.5, grid_h, dtype=torch.float32, device=device) / grid_h
    xs = torch.arange(0.5, grid_w, dtype=torch.float32, device=device) / grid_w
    coords = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1).flatten(0, 1) * 2.0 - 1.0  # (h*w, 2)
    angles = (2 * math.pi * coords[:, :, None] * inv_freq[None, None, :]).flatten(1, 2)  # (h*w, D/2)
    cos = angles.cos().tile(2)  # (h*w, D)
    sin = angles.sin()
    signed_sin = torch.cat([-sin, sin], dim=-1)
    cos = torch.cat([cos.new_ones(num_prefix, head_dim), cos], dim=0)
    signed_sin = torch.cat([signed_sin.new_zeros(num_prefix, head_dim), signed_sin], dim=0)
    return cos.to(dtype), signed_sin.to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """x (B, heads, N, D) rotated by the (N, D) tables: x*cos + rotate_half(x)*sin."""
    x1, x2 = x.chunk(2, dim=-1)
    swapped = torch.cat((x2, x1), dim=-1)
    return (x * cos).addcmul_(swapped, signed_sin)


class Attention(nn.Module):
    """Multi-head or grouped-query self-attention with QK RMSNorm and 2-D RoPE on patch tokens."""

    def __init__(self, config: Sapiens2Config, num_kv_heads: int) -> None:
        super().__init__()
        dim, head_dim = config.hidden_size, config.head_dim
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.wq = nn.Linear(dim, self.num_heads * head_dim, bias=config.query_bias)
        self.wk = nn.Linear(dim, num_kv_heads * head_dim, bias=config.key_bias)
        self.wv = nn.Linear(dim, num_kv_heads * head_dim, bias=config.value_bias)
        self.proj = nn.Linear(self.num_heads * head_dim, dim, bias=config.proj_bias)
        if config.use_qk_norm:
            self.q_norm = RMSNorm(head_dim, config.rms_norm_eps)
            self.k_norm = RMSNorm(head_dim, config.rms_norm_eps)
        else:
            self.q_norm = nn.Identity()
            self.k_norm = nn.Identity()
        self.gamma = LayerScale(dim, config.layerscale_value)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        # (B, N, C) -> (B, heads, N, D)
        q = self.wq(x).view(batch, tokens, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(batch, tokens, self.num_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(batch, tokens, self.num_kv_heads, self.head_dim).transpose(1, 2)
        q = apply_rope(self.q_norm(q), cos, sin)
        k = apply_rope(self.k_norm(k), cos, sin)
        # SDPA broadcasts the key/value groups itself; the repeated heads are never materialised.
        out = F.scaled_dot_product_attention(q, k, v, enable_gqa=self.num_kv_heads != self.num_heads)
        out = out.transpose(1, 2).reshape(batch, tokens, self.num_heads * self.head_dim)
        return self.gamma(self.proj(out))


class FeedForward(nn.Module):
    """SwiGLU with the gate and up projections fused in ``w12`` (gate first), or a plain MLP.

    The plain MLP stores its up projection in ``w12`` too, as transformers' ``save_pretrained`` writes it.
    """

    def __init__(self, config: Sapiens2Config) -> None:
        super().__init__()
        self.gated = config.use_gated_mlp
        hidden, inner = config.hidden_size, config.intermediate_size
        self.w12 = nn.Linear(hidden, 2 * inner if self.gated else inner, bias=config.mlp_bias)
        self.w3 = nn.Linear(inner, hidden, bias=config.mlp_bias)
        self.act = make_activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.gated:
            return self.w3(self.act(self.w12(x)))
        if x.device.type == "cpu":
            # On CPU two half-width GEMMs over row slices of the fused weight (views, no copy) run
            # faster than one full-width GEMM, and give contiguous gate/up for the elementwise ops.
            inner = self.w3.in_features
            weight, bias = self.w12.weight, self.w12.bias
            gate = F.linear(x, weight[:inner], None if bias is None else bias[:inner])
            up = F.linear(x, weight[inner:], None if bias is None else bias[inner:])
        else:
            gate, up = self.w12(x).chunk(2, dim=-1)
        return self.w3(self.act(gate).mul_(up))  # in place: one large temporary fewer per block


class Block(nn.Module):
    def __init__(self, config: Sapiens2Config, num_kv_heads: int) -> None:
        super().__init__()
        self.ln1 = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.attn = Attention(config, num_kv_heads)
        self.ln2 = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.ffn = FeedForward(config)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        # The residual is added into each branch's fresh output, so x itself is never modified
        # (the backbone keeps every stage's tokens).
        x = self.attn(self.ln1(x), cos, sin).add_(x)
        return self.ffn(self.ln2(x)).add_(x)


class Sapiens2ViT(nn.Module):
    """The Sapiens2 transformer; parameter names are the release's ``backbone.*`` keys."""

    def __init__(self, config: Sapiens2Config) -> None:
        super().__init__()
        self.config = config
        dim = config.hidden_size
        self.patch_embed = PatchEmbed(config)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.storage_tokens = nn.Parameter(torch.zeros(1, config.num_register_tokens, dim))
        self.blocks = nn.ModuleList(Block(config, n) for n in config.num_key_value_heads_per_layer)
        self.ln1 = RMSNorm(dim, config.rms_norm_eps)
        self._rope_cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

    def grid_size(self, pixel_values: torch.Tensor) -> tuple[int, int]:
        """Patch grid (h, w) of an input, after checking its shape."""
        if pixel_values.ndim != 4:
            raise ValueError(f"pixel_values must be (B, C, H, W), got shape {tuple(pixel_values.shape)}")
        _, channels, height, width = pixel_values.shape
        patch_h, patch_w = self.config.patch_size
        if channels != self.config.num_channels:
            raise ValueError(
                f"pixel_values has {channels} channels, the model expects {self.config.num_channels}"
            )
        if height % patch_h or width % patch_w or height == 0 or width == 0:
            raise ValueError(
                f"input size {height}x{width} is not a positive multiple of "
                f"the patch size {patch_h}x{patch_w}"
            )
        return height // patch_h, width // patch_w

    def rope(
        self, grid_hw: tuple[int, int], device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """RoPE tables for a patch grid, cached per grid, device and dtype outside compiled graphs."""
        config = self.config
        args = (grid_hw, config.head_dim, config.rope_theta, config.num_prefix_tokens, device, dtype)
        if torch.compiler.is_compiling():
            return rope_cos_sin(*args)
        # Tables made in inference mode cannot be used where autograd records, so they are kept apart.
        key = (grid_hw, device, dtype, torch.is_inference_mode_enabled())
        if key not in self._rope_cache:
            self._rope_cache[key] = rope_cos_sin(*args)
        return self._rope_cache[key]

    def embed(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """(B, 3, H, W) -> tokens (B, 1 + R + h*w, C) and the patch grid."""
        grid_hw = self.grid_size(pixel_values)
        pixel_values = pixel_values.to(self.patch_embed.projection.weight.dtype)
        patches = self.patch_embed(pixel_values)
        batch = patches.shape[0]
        prefix = torch.cat(
            [self.cls_token.expand(batch, -1, -1), self.storage_tokens.expand(batch, -1, -1)], dim=1
        )
        return torch.cat([prefix.to(patches.dtype), patches], dim=1), grid_hw

    def forward_features(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Normalised tokens after the last block, (B, 1 + R + h*w, C), and the patch grid."""
        x, grid_hw = self.embed(pixel_values)
        cos, sin = self.rope(grid_hw, x.device, x.dtype)
        for block in self.blocks:
            x = block(x, cos, sin)
        return self.ln1(x), grid_hw

    def forward_stages(self, pixel_values: torch.Tensor) -> tuple[list[torch.Tensor], tuple[int, int]]:
        """Un-normalised tokens of every stage: the embedding ("stem") then each block's output."""
        x, grid_hw = self.embed(pixel_values)
        cos, sin = self.rope(grid_hw, x.device, x.dtype)
        stages = [x]
        for block in self.blocks:
            x = block(x, cos, sin)
            stages.append(x)
        return stages, grid_hw

    def to_feature_map(self, tokens: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
        """Patch tokens (B, 1 + R + h*w, C) -> (B, C, h, w), contiguous in channels-last order.

        Dropping the prefix tokens costs one small copy; the exactly channels-last result keeps the
        head's (transposed) convolutions on their fast path (about 2x faster on CPU than a strided view).
        """
        patches = tokens[:, self.config.num_prefix_tokens :].contiguous()
        return patches.unflatten(1, grid_hw).permute(0, 3, 1, 2)


class Sapiens2Model(Sapiens2ViT):
    """The bare transformer (``Sapiens2Model``): normalised tokens and the CLS embedding."""

    task = "model"

    def forward(self, pixel_values: torch.Tensor) -> Sapiens2ModelOutput:
        tokens, _ = self.forward_features(pixel_values)
        return Sapiens2ModelOutput(last_hidden_state=tokens, pooler_output=tokens[:, 0])


class Sapiens2Backbone(Sapiens2ViT):
    """Feature maps of the stages in ``config.out_indices`` (0 = embedding, i = after block i)."""

    task = "backbone"

    def forward(self, pixel_values: torch.Tensor) -> Sapiens2BackboneOutput:
        stages, grid_hw = self.forward_stages(pixel_values)
        feature_maps, cls_tokens = [], []
        for index in self.config.out_indices:
            hidden = stages[index]
            if self.config.normalize_backbone_outputs:
                hidden = self.ln1(hidden)
            cls_tokens.append(hidden[:, 0])
            if self.config.reshape_hidden_states:
                feature_maps.append(self.to_feature_map(hidden, grid_hw).contiguous())
            else:
                feature_maps.append(hidden[:, self.config.num_prefix_tokens :])
        return Sapiens2BackboneOutput(
            feature_maps=tuple(feature_maps),
            cls_tokens=tuple(cls_tokens) if self.config.return_class_token else None,
        )


# ---------------------------------------------------------------------------- heads


class InstanceNorm(nn.Module):
    """Per-sample, per-channel normalisation over H and W, no affine (``nn.InstanceNorm2d`` defaults).

    Group norm with one group per channel is the same normalisation, and its kernel keeps the input's
    memory format: the head stays channels-last from layer to layer, where ``nn.InstanceNorm2d`` would
    return a contiguous NCHW tensor and push the next (transposed) convolution off its fast path. On CPU
    it is also 3 to 4 times faster on the head's channels-last maps than a ``var_mean`` over H and W.
    """

    def __init__(self, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling():
            # Compiled graphs keep the var_mean form, which the compiler fuses: the traced group norm of
            # the pointmap head's channels-last maps failed at run time (a view of mismatched strides).
            var, mean = torch.var_mean(x, dim=(2, 3), correction=0, keepdim=True)
            return (x - mean) * torch.rsqrt(var + self.eps)
        return F.group_norm(x, x.shape[1], eps=self.eps)


# The head's convolutions are followed by SiLU whatever the config's ``hidden_act`` is, as transformers
# builds them; ``hidden_act`` reaches the backbone MLP and the pointmap scale MLP only.
HEAD_CONV_ACTIVATION = "silu"


def _conv_norm_act(conv: nn.Module, pixel_shuffle: bool = False) -> list[nn.Module]:
    """conv [-> pixel shuffle] -> InstanceNorm (no affine) -> SiLU, as flat modules."""
    layers = [conv] + ([nn.PixelShuffle(2)] if pixel_shuffle else [])
    return layers + [InstanceNorm(), make_activation(HEAD_CONV_ACTIVATION)]


def _upsample_block(in_ch: int, out_ch: int, kernel: int, pixel_shuffle: bool) -> list[nn.Module]:
    """x2 upsampling: a transposed conv (stride 2) or a conv to 4x channels followed by pixel shuffle."""
    if pixel_shuffle:
        conv = nn.Conv2d(in_ch, out_ch * 4, kernel, padding=(kernel - 1) // 2)
    else:
        conv = nn.ConvTranspose2d(in_ch, out_ch, kernel, stride=2, padding=1, bias=False)
    return _conv_norm_act(conv, pixel_shuffle)


_PREDICTOR_NAMES = {
    "pose": "conv_pose",
    "seg": "conv_seg",
    "normal": "conv_normal",
    "pointmap": "conv_pointmap",
    "matting": "conv_matting",
}


class Sapiens2DecodeHead(nn.Module):
    """Upsampling decoder on the (B, C, h, w) patch feature map.

    Layout per the release: pose/seg keep their upsample layers in one flat ``deconv_layers``
    sequence; normal/pointmap/matting keep one ``upsample_blocks.N`` sequence per block. Then
    ``conv_layers`` (flat), then a 1x1 predictor (``conv_pose``, ``conv_seg``, ...). With pixel shuffle an
    ``input_conv`` (3x3) comes first. The pointmap head adds the scale branch (``scale_conv_layers``,
    stride-2 convs, then the ``scale_final_layer`` MLP).
    """

    def __init__(self, config: Sapiens2Config) -> None:
        super().__init__()
        head = config.head_config
        pixel_shuffle = bool(head.use_pixel_shuffle)
        dim = config.hidden_size
        self.input_conv = (
            nn.Sequential(*_conv_norm_act(nn.Conv2d(dim, dim, 3, padding=1)))
            if pixel_shuffle
            else nn.Identity()
        )
        in_channels = [dim] + head.upsample_out_channels[:-1]
        blocks = [
            _upsample_block(i, o, k, pixel_shuffle)
            for i, o, k in zip(
                in_channels, head.upsample_out_channels, head.upsample_kernel_sizes, strict=True
            )
        ]
        if config.task in ("pose", "seg"):
            self.upsample_name = "deconv_layers"
            upsample = nn.Sequential(*[layer for block in blocks for layer in block])
        else:
            self.upsample_name = "upsample_blocks"
            upsample = nn.Sequential(*[nn.Sequential(*block) for block in blocks])
        self.add_module(self.upsample_name, upsample)

        channels = head.upsample_out_channels[-1]
        convs = []
        for out_ch, kernel in zip(head.conv_out_channels, head.conv_kernel_sizes, strict=True):
            padding = (kernel - 1) // 2 if pixel_shuffle else 0
            convs += _conv_norm_act(nn.Conv2d(channels, out_ch, kernel, padding=padding))
            channels = out_ch
        self.conv_layers = nn.Sequential(*convs)
        self.predictor_name = _PREDICTOR_NAMES[config.task]
        self.add_module(self.predictor_name, nn.Conv2d(channels, config.num_labels, 1))

        self.has_scale_branch = config.task == "pointmap" and head.has_scale_branch
        if self.has_scale_branch:
            channels, scale_convs = dim, []
            for out_ch, kernel in zip(
                head.scale_conv_out_channels, head.scale_conv_kernel_sizes, strict=True
            ):
                conv = nn.Conv2d(channels, out_ch, kernel, stride=2, padding=(kernel - 1) // 2)
                scale_convs += _conv_norm_act(conv)
                channels = out_ch
            self.scale_conv_layers = nn.Sequential(*scale_convs)
            hidden1, hidden2 = head.scale_final_hidden_sizes
            self.scale_final_layer = nn.Sequential(
                nn.Flatten(),
                nn.Linear(head.scale_final_input_size, hidden1),
                make_activation(config.hidden_act),
                nn.Linear(hidden1, hidden2),
                make_activation(config.hidden_act),
                nn.Linear(hidden2, 1),
            )

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        x = self.input_conv(feature_map)
        x = getattr(self, self.upsample_name)(x)
        x = self.conv_layers(x)
        return self._predict(x)

    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        """The 1x1 predictor, (B, C, H, W) -> (B, K, H, W) contiguous in NCHW.

        The head runs channels-last; a 1x1 convolution there returns channels-last maps, which every
        consumer (argmax and DARK over each heatmap, per-class upsampling) then copies to NCHW. Written
        as W @ X over the channels-last features, the product comes out NCHW directly.
        """
        predictor = getattr(self, self.predictor_name)
        if x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
            return predictor(x)
        batch, channels, height, width = x.shape
        weight = predictor.weight.view(-1, channels)  # (K, C)
        features = x.flatten(2)  # (B, C, H*W), a view of the channels-last memory
        if predictor.bias is not None:
            # The bias rides in the product as one more input channel of ones: adding it afterwards
            # was a second full pass over the K maps, as slow on CPU as the product itself.
            weight = torch.cat([weight, predictor.bias[:, None]], dim=1)  # (K, C + 1)
            features = torch.cat([features, features.new_ones(batch, 1, height * width)], dim=1)
        out = torch.matmul(weight, features)  # (K, C [+ 1]) @ (B, C [+ 1], H*W)
        return out.view(batch, -1, height, width)

    def forward_scale(self, feature_map: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, 1); the flattened size must match the configured image size."""
        x = self.scale_conv_layers(feature_map)
        expected = self.scale_final_layer[1].in_features
        if x[0].numel() != expected:
            raise ValueError(
                f"the pointmap scale branch needs inputs of the configured image size; got a {x.shape[1]}x"
                f"{x.shape[2]}x{x.shape[3]} feature ({x[0].numel()} values), expected {expected}"
            )
        return self.scale_final_layer(x)


class Sapiens2ForTask(nn.Module):
    """Backbone + decode head for pose, segmentation, normals, pointmap or matting."""

    def __init__(self, config: Sapiens2Config) -> None:
        super().__init__()
        if config.task not in HEAD_TASKS:
            raise ValueError(f"task {config.task!r} has no decode head")
        self.config = config
        self.task = config.task
        self.backbone = Sapiens2ViT(config)
        self.decode_head = Sapiens2DecodeHead(config)

    def forward(self, pixel_values: torch.Tensor):
        tokens, grid_hw = self.backbone.forward_features(pixel_values)
        feature_map = self.backbone.to_feature_map(tokens, grid_hw)
        out = self.decode_head(feature_map)
        if self.task == "pose":
            return Sapiens2PoseOutput(heatmaps=out)
        if self.task == "seg":
            return Sapiens2SegmentationOutput(logits=out)
        if self.task == "normal":
            return Sapiens2NormalOutput(normals=out)
        if self.task == "pointmap":
            scales = (
                self.decode_head.forward_scale(feature_map) if self.decode_head.has_scale_branch else None
            )
            return Sapiens2PointmapOutput(pointmaps=out, scales=scales)
        matting = out.sigmoid()
        return Sapiens2MattingOutput(alphas=matting[:, 3:], foregrounds=matting[:, :3])


# ---------------------------------------------------------------------------- construction


@torch.no_grad()
def init_weights(model: nn.Module, std: float = 0.02) -> None:
    """Random initialisation in the spirit of the release (for tests and benchmarks, not training)."""
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, Sapiens2ViT):
            nn.init.trunc_normal_(module.cls_token, std=std)
            nn.init.trunc_normal_(module.storage_tokens, std=std)
        elif isinstance(module, Sapiens2DecodeHead):
            for sub in module.modules():
                if isinstance(sub, (nn.Conv2d, nn.ConvTranspose2d)):
                    nn.init.kaiming_normal_(sub.weight, mode="fan_out", nonlinearity="relu")


def build_sapiens2(
    config: Sapiens2Config,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    init: bool = True,
) -> nn.Module:
    """A randomly initialised model for ``config.task``, in eval mode, with ``.config``, ``.task`` and
    ``.preprocessing`` (the release's input preparation for the task).

    ``init=False`` skips the random initialisation, for a model whose weights are loaded next.
    """
    if config.task == "model":
        model: nn.Module = Sapiens2Model(config)
    elif config.task == "backbone":
        model = Sapiens2Backbone(config)
    else:
        model = Sapiens2ForTask(config)
    if init:
        init_weights(model)
    model.to(device=device, dtype=dtype)
    model.preprocessing = release_preprocessing(config.task)
    return model.eval().requires_grad_(False)
