"""Sapiens2 configuration, read from and written to a checkpoint's ``config.json``.

The file format is the one the Hub checkpoints carry and transformers writes (``model_type: sapiens2``
with a nested ``head_config``). Every field the backbone and heads use is parsed into typed attributes;
every other field is kept verbatim in ``extra`` so a config written back is one transformers accepts.
The task is derived from ``architectures`` (``Sapiens2ForPoseEstimation`` -> ``"pose"``, ...).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, fields
from typing import Any

TASK_TO_ARCHITECTURE = {
    "pose": "Sapiens2ForPoseEstimation",
    "seg": "Sapiens2ForSemanticSegmentation",
    "normal": "Sapiens2ForNormalEstimation",
    "pointmap": "Sapiens2ForPointmapEstimation",
    "matting": "Sapiens2ForImageMatting",
    "model": "Sapiens2Model",
    "backbone": "Sapiens2Backbone",
}
ARCHITECTURE_TO_TASK = {arch: task for task, arch in TASK_TO_ARCHITECTURE.items()}
HEAD_TASKS = ("pose", "seg", "normal", "pointmap", "matting")

# Output channels of each task's predictor when the config does not say (no id2label).
DEFAULT_NUM_LABELS = {"pose": 308, "seg": 29, "normal": 3, "pointmap": 3, "matting": 4}


def _pair(value: int | list[int] | tuple[int, int], name: str) -> tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


def _kernel_list(sizes: list[int] | None, channels: list[int] | None, default: int, name: str) -> list[int]:
    if channels is None:
        return []
    if sizes is None:
        return [default] * len(channels)
    if len(sizes) != len(channels):
        raise ValueError(f"head_config.{name} has {len(sizes)} entries for {len(channels)} layers")
    return list(sizes)


@dataclass
class Sapiens2HeadConfig:
    """Decode-head layout (transformers' ``Sapiens2HeadConfig``); kernel lists are filled from defaults."""

    upsample_out_channels: list[int] | None = None
    upsample_kernel_sizes: list[int] | None = None
    upsample_kernel_size: int = 4
    use_pixel_shuffle: bool | None = None
    conv_out_channels: list[int] | None = None
    conv_kernel_sizes: list[int] | None = None
    conv_kernel_size: int = 1
    scale_conv_out_channels: list[int] | None = None
    scale_conv_kernel_sizes: list[int] | None = None
    scale_conv_kernel_size: int = 1
    scale_final_input_size: int | None = None
    scale_final_hidden_sizes: list[int] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.upsample_out_channels is not None:
            self.upsample_kernel_sizes = _kernel_list(
                self.upsample_kernel_sizes,
                self.upsample_out_channels,
                self.upsample_kernel_size,
                "upsample_kernel_sizes",
            )
        if self.conv_out_channels is not None:
            self.conv_kernel_sizes = _kernel_list(
                self.conv_kernel_sizes, self.conv_out_channels, self.conv_kernel_size, "conv_kernel_sizes"
            )
        if self.scale_conv_out_channels is not None:
            self.scale_conv_kernel_sizes = _kernel_list(
                self.scale_conv_kernel_sizes,
                self.scale_conv_out_channels,
                self.scale_conv_kernel_size,
                "scale_conv_kernel_sizes",
            )
            if self.scale_final_hidden_sizes is None or len(self.scale_final_hidden_sizes) != 2:
                raise ValueError(
                    "head_config.scale_final_hidden_sizes must list two sizes for the scale branch"
                )

    @property
    def has_scale_branch(self) -> bool:
        return self.scale_conv_out_channels is not None and self.scale_final_hidden_sizes is not None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sapiens2HeadConfig:
        known = {f.name for f in fields(cls)} - {"extra"}
        kwargs = {k: copy.deepcopy(v) for k, v in data.items() if k in known}
        extra = {k: copy.deepcopy(v) for k, v in data.items() if k not in known}
        return cls(**kwargs, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        out = dict(copy.deepcopy(self.extra))
        for f in fields(self):
            if f.name != "extra":
                out[f.name] = copy.deepcopy(getattr(self, f.name))
        out.setdefault("model_type", "sapiens2_head")
        return out

    def infer_scale_input_size(self, image_size: tuple[int, int], patch_size: tuple[int, int]) -> None:
        """Flattened size entering the scale MLP, from the configured image size (as transformers does)."""
        if self.scale_final_input_size is not None or not self.has_scale_branch:
            return
        height, width = image_size[0] // patch_size[0], image_size[1] // patch_size[1]
        for kernel_size in self.scale_conv_kernel_sizes:
            padding = (kernel_size - 1) // 2
            height = (height + 2 * padding - kernel_size) // 2 + 1
            width = (width + 2 * padding - kernel_size) // 2 + 1
        self.scale_final_input_size = height * width * self.scale_conv_out_channels[-1]


@dataclass
class Sapiens2Config:
    """Backbone hyper-parameters, task and head of one Sapiens2 checkpoint.

    Field names and defaults follow transformers' ``Sapiens2Config``. ``head_dim`` is
    ``hidden_size // num_attention_heads``; ``num_key_value_heads_per_layer`` is resolved from the
    first/last full-attention rule when absent.
    """

    task: str = "model"
    patch_size: tuple[int, int] = (16, 16)
    image_size: tuple[int, int] = (224, 224)
    num_channels: int = 3
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    hidden_act: str = "silu"
    rope_theta: float = 100.0
    query_bias: bool = True
    key_bias: bool = True
    value_bias: bool = True
    proj_bias: bool = True
    mlp_bias: bool = True
    layerscale_value: float = 1.0
    use_gated_mlp: bool = True
    num_register_tokens: int = 8
    rms_norm_eps: float = 1e-6
    use_qk_norm: bool = True
    use_mask_token: bool = False
    num_key_value_heads_per_layer: list[int] | None = None
    num_key_value_attention_heads: int = 8
    num_first_full_attention_layers: int = 8
    num_last_full_attention_layers: int = 8
    normalize_backbone_outputs: bool = True
    reshape_hidden_states: bool = True
    out_indices: list[int] | None = None
    return_class_token: bool = False
    flip_pairs: list[list[int]] | None = None
    num_labels: int | None = None
    head_config: Sapiens2HeadConfig | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASK_TO_ARCHITECTURE:
            raise ValueError(
                f"unknown Sapiens2 task {self.task!r}; expected one of {sorted(TASK_TO_ARCHITECTURE)}"
            )
        self.patch_size = _pair(self.patch_size, "patch_size")
        self.image_size = _pair(self.image_size, "image_size")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by "
                f"num_attention_heads {self.num_attention_heads}"
            )
        if self.head_dim % 4:
            raise ValueError(f"head_dim {self.head_dim} must be divisible by 4 for the 2-D rotary embedding")
        self._resolve_kv_heads()
        if self.out_indices is None:
            self.out_indices = [self.num_hidden_layers]
        bad = [i for i in self.out_indices if not -self.num_hidden_layers - 1 <= i <= self.num_hidden_layers]
        if bad:
            raise ValueError(f"out_indices {bad} out of range for {self.num_hidden_layers} layers")
        if self.task in HEAD_TASKS:
            self._check_head()

    def _resolve_kv_heads(self) -> None:
        if self.num_key_value_heads_per_layer is None:
            first, last = self.num_first_full_attention_layers, self.num_last_full_attention_layers
            self.num_key_value_heads_per_layer = [
                self.num_attention_heads
                if i < first or i >= self.num_hidden_layers - last
                else self.num_key_value_attention_heads
                for i in range(self.num_hidden_layers)
            ]
        kv = list(self.num_key_value_heads_per_layer)
        if len(kv) != self.num_hidden_layers:
            raise ValueError(
                f"num_key_value_heads_per_layer has {len(kv)} entries for {self.num_hidden_layers} layers"
            )
        bad = [n for n in kv if n <= 0 or self.num_attention_heads % n]
        if bad:
            raise ValueError(
                f"key/value head counts {bad} do not divide num_attention_heads {self.num_attention_heads}"
            )
        self.num_key_value_heads_per_layer = kv

    def _check_head(self) -> None:
        if self.head_config is None:
            raise ValueError(f"task {self.task!r} needs a head_config")
        if not self.head_config.upsample_out_channels:
            raise ValueError("head_config.upsample_out_channels must list at least one upsample block")
        if self.head_config.conv_out_channels is None:
            self.head_config.conv_out_channels = []
            self.head_config.conv_kernel_sizes = []
        if self.num_labels is None:
            self.num_labels = DEFAULT_NUM_LABELS[self.task]
        if self.task == "matting" and self.num_labels != 4:
            raise ValueError(
                f"matting predicts 4 channels (RGB foreground + alpha), config has {self.num_labels}"
            )
        if self.task == "pointmap":
            self.head_config.infer_scale_input_size(self.image_size, self.patch_size)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def num_prefix_tokens(self) -> int:
        """CLS token plus register (storage) tokens; RoPE skips them."""
        return 1 + self.num_register_tokens

    @property
    def architecture(self) -> str:
        return TASK_TO_ARCHITECTURE[self.task]

    # ---------------------------------------------------------------- config.json

    @classmethod
    def from_dict(cls, data: dict[str, Any], task: str | None = None) -> Sapiens2Config:
        """Parse a ``config.json`` dict; ``task`` overrides the one named by ``architectures``."""
        if data.get("model_type", "sapiens2") != "sapiens2":
            raise ValueError(f"not a Sapiens2 config: model_type is {data.get('model_type')!r}")
        data = copy.deepcopy(data)
        if task is None:
            task = _task_from_architectures(data.get("architectures"))
        known = {f.name for f in fields(cls)} - {"extra", "task", "head_config", "num_labels"}
        kwargs: dict[str, Any] = {k: data.pop(k) for k in list(data) if k in known}
        head = data.pop("head_config", None)
        if isinstance(head, dict) and task in HEAD_TASKS:
            kwargs["head_config"] = Sapiens2HeadConfig.from_dict(head)
        elif head is not None:
            data["head_config"] = head  # kept verbatim: the bare model and backbone do not use it
        if "id2label" in data:
            kwargs["num_labels"] = len(data["id2label"])
        elif "num_labels" in data:
            kwargs["num_labels"] = int(data["num_labels"])
        # Derived by transformers on load; rewritten from out_indices on save.
        data.pop("out_features", None)
        data.pop("stage_names", None)
        data.pop("architectures", None)
        return cls(task=task, **kwargs, extra=data)

    def to_dict(self) -> dict[str, Any]:
        """A ``config.json`` dict that both this package and transformers load."""
        out = dict(copy.deepcopy(self.extra))
        for f in fields(self):
            if f.name in ("extra", "task", "head_config", "num_labels", "return_class_token"):
                continue
            value = copy.deepcopy(getattr(self, f.name))
            out[f.name] = list(value) if isinstance(value, tuple) else value
        if self.return_class_token:
            out["return_class_token"] = True
        out["model_type"] = "sapiens2"
        out["architectures"] = [self.architecture]
        out["stage_names"] = ["stem"] + [f"stage{i}" for i in range(1, self.num_hidden_layers + 1)]
        out["out_features"] = [out["stage_names"][i] for i in self.out_indices]
        if self.head_config is not None:
            out["head_config"] = self.head_config.to_dict()
        if self.num_labels is not None and self.task in HEAD_TASKS:
            previous = self.extra.get("id2label", {})
            if len(previous) == self.num_labels:
                out["id2label"] = previous
            else:
                out["id2label"] = {str(i): f"LABEL_{i}" for i in range(self.num_labels)}
            out["label2id"] = {name: int(i) for i, name in out["id2label"].items()}
            out.pop("num_labels", None)
        return out

    def replace(self, **changes: Any) -> Sapiens2Config:
        """A copy with some fields changed, validated again."""
        values = {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}
        if "num_hidden_layers" in changes:
            # Per-layer lists follow the new depth unless given: re-derived from the defaults.
            values["num_key_value_heads_per_layer"] = changes.get("num_key_value_heads_per_layer")
            values["out_indices"] = changes.get("out_indices")
        values.update(changes)
        if isinstance(values.get("head_config"), dict):
            values["head_config"] = Sapiens2HeadConfig.from_dict(values["head_config"])
        return Sapiens2Config(**values)

    # ---------------------------------------------------------------- official architectures

    @classmethod
    def from_arch(cls, arch: str, task: str = "model", **overrides: Any) -> Sapiens2Config:
        """The configuration of an official size (``"0.1b"`` ... ``"5b"``) or ``"tiny"`` for tests.

        ``overrides`` replace any field, e.g. ``image_size=(512, 384)``, ``num_labels=17`` or a
        ``head_config`` dict. The tiny architecture (hidden 32, 2 layers, 4 heads, one GQA layer) keeps
        the official head layout shape and output channels so the pipeline runs unchanged on it.
        """
        if task not in TASK_TO_ARCHITECTURE:
            raise ValueError(
                f"unknown Sapiens2 task {task!r}; expected one of {sorted(TASK_TO_ARCHITECTURE)}"
            )
        if arch == "tiny":
            values = dict(_TINY_BACKBONE)
            head = _tiny_head(task)
        else:
            values = _official_backbone(arch)
            head = _official_head(arch, task)
        values["image_size"] = (1024, 768)
        if head is not None:
            values["head_config"] = head
        head_override = overrides.pop("head_config", None)
        values.update(overrides)
        if head_override is not None:
            merged = dict(values.get("head_config") or {})
            merged.update(
                head_override.to_dict() if isinstance(head_override, Sapiens2HeadConfig) else head_override
            )
            values["head_config"] = merged
        if isinstance(values.get("head_config"), dict):
            values["head_config"] = Sapiens2HeadConfig.from_dict(values["head_config"])
        return cls(task=task, **values)


def _task_from_architectures(architectures: list[str] | None) -> str:
    for arch in architectures or []:
        if arch in ARCHITECTURE_TO_TASK:
            return ARCHITECTURE_TO_TASK[arch]
    if architectures:
        raise ValueError(
            f"unknown Sapiens2 architectures {architectures}; expected one of {sorted(ARCHITECTURE_TO_TASK)}"
        )
    return "model"


_TINY_BACKBONE: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_register_tokens": 2,
    "num_key_value_heads_per_layer": [4, 2],
}


def _tiny_head(task: str) -> dict[str, Any] | None:
    if task in ("pose", "seg"):
        upsample = [16, 16] if task == "pose" else [16, 16, 8, 8]
        return {"upsample_out_channels": upsample, "conv_out_channels": [8], "conv_kernel_sizes": [1]}
    if task in ("normal", "pointmap", "matting"):
        head: dict[str, Any] = {
            "use_pixel_shuffle": True,
            "upsample_out_channels": [16, 16, 8, 8],
            "upsample_kernel_sizes": [3, 3, 3, 3],
            "conv_out_channels": [8],
            "conv_kernel_sizes": [3],
        }
        if task == "pointmap":
            head.update(
                scale_conv_out_channels=[8], scale_conv_kernel_sizes=[1], scale_final_hidden_sizes=[16, 8]
            )
        return head
    return None


def _official_backbone(arch: str) -> dict[str, Any]:
    from models.meta import raw_meta

    archs = raw_meta()["model_sizes"]["archs"]
    if arch not in archs:
        raise ValueError(f"unknown Sapiens2 size {arch!r}; expected 'tiny' or one of {sorted(archs)}")
    spec = archs[arch]
    return {
        "hidden_size": spec["hidden_size"],
        "intermediate_size": spec["intermediate_size"],
        "num_hidden_layers": spec["num_hidden_layers"],
        "num_attention_heads": spec["num_attention_heads"],
        "num_key_value_heads_per_layer": list(spec["num_key_value_heads_per_layer"]),
        "num_register_tokens": 8,
    }


def _official_head(arch: str, task: str) -> dict[str, Any] | None:
    from models.meta import raw_meta

    heads = raw_meta()["model_sizes"]["heads"]
    if task == "pose":
        spec = heads["pose"].get(arch) or heads["pose"]["0.4b"]
        return {
            "upsample_out_channels": list(spec["deconv_out_channels"]),
            "upsample_kernel_sizes": list(spec["deconv_kernel"]),
            "conv_out_channels": list(spec["conv_out_channels"]),
            "conv_kernel_sizes": list(spec["conv_kernel"]),
        }
    if task == "seg":
        spec = heads["seg"]["_all_sizes"]
        return {
            "upsample_out_channels": list(spec["deconv_out_channels"]),
            "upsample_kernel_sizes": list(spec["deconv_kernel"]),
            "conv_out_channels": list(spec["conv_out_channels"]),
            "conv_kernel_sizes": list(spec["conv_kernel"]),
        }
    if task in ("normal", "pointmap", "matting"):
        # Matting has no published head layout; it shares the normal head's shape.
        table = heads["pointmap" if task == "pointmap" else "normal"]
        spec = table["5b"] if arch == "5b" else table["0.4b|0.8b|1b"]
        channels = list(spec["pixelshuffle_upsample_channels"])
        head = {
            "use_pixel_shuffle": True,
            "upsample_out_channels": channels,
            "upsample_kernel_sizes": [3] * len(channels),
            "conv_out_channels": list(spec["conv_out_channels"]),
            "conv_kernel_sizes": list(spec["conv_kernel"]),
        }
        if task == "pointmap":
            common = table.get("_common", {})
            final = common["scale_final_layer"]
            head.update(
                scale_conv_out_channels=list(common["scale_conv_out_channels"]),
                scale_conv_kernel_sizes=list(common["scale_conv_kernel"]),
                scale_final_hidden_sizes=list(final[1:3]),
            )
        return head
    return None
