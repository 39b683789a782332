"""Reading and writing Sapiens2 checkpoints: ``config.json`` + safetensors, never pickle.

A checkpoint is a directory (or a Hub repository) holding ``config.json`` and either
``model.safetensors`` or a sharded ``model.safetensors.index.json`` with its shards, keyed with the
official release's names, and optionally the ``preprocessor_config.json`` that says how its inputs
are prepared (``models.processor_config``). Loading is strict: every key the model expects must be
present with the right shape and nothing else may be there; the error names the offending keys. The
only keys tolerated beyond the model's are the release's RoPE ``periods`` (checked against the config's
frequencies) and a ``mask_token`` when ``use_mask_token`` is set (it only matters for masked
pre-training).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from models.config import Sapiens2Config
from models.processor_config import PREPROCESSOR_NAME, Preprocessing, read_preprocessing
from models.sapiens2 import build_sapiens2

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


def _refuse_pickle(path: Path) -> None:
    raise ValueError(
        f"refusing to load {path}: pickle checkpoints can run arbitrary code; only safetensors are loaded "
        f"(convert it to model.safetensors first)"
    )


CHECKPOINT_FILES = (CONFIG_NAME, PREPROCESSOR_NAME, WEIGHTS_NAME, INDEX_NAME, "*.safetensors")


def resolve_checkpoint(
    name_or_path: str | os.PathLike, revision: str | None = None, files: tuple[str, ...] = CHECKPOINT_FILES
) -> Path:
    """A local directory holding the checkpoint: the path itself or a cached Hub snapshot.

    Hub downloads go through ``huggingface_hub`` and honour ``HF_HOME`` and ``HF_HUB_OFFLINE``; only the
    ``files`` patterns are fetched.
    """
    path = Path(name_or_path).expanduser()
    if path.is_file():
        if path.suffix in PICKLE_SUFFIXES:
            _refuse_pickle(path)
        if path.name in (WEIGHTS_NAME, INDEX_NAME, CONFIG_NAME):
            return path.parent
        raise ValueError(f"{path} is not a Sapiens2 checkpoint directory or its {WEIGHTS_NAME}")
    if path.is_dir():
        return path
    text = str(name_or_path)
    if not _HUB_ID.match(text):
        raise FileNotFoundError(
            f"no checkpoint directory at {text} (and it is not a Hub id like 'facebook/name')"
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        local = snapshot_download(
            repo_id=text,
            revision=revision,
            allow_patterns=list(files),
        )
    except LocalEntryNotFoundError as err:
        raise FileNotFoundError(
            f"{text} is not in the Hugging Face cache and cannot be downloaded (offline or unreachable): "
            f"{err}"
        ) from err
    except HfHubHTTPError as err:
        raise FileNotFoundError(f"cannot fetch {text} from the Hugging Face Hub: {err}") from err
    return Path(local)


def read_config(directory: Path, task: str | None = None) -> Sapiens2Config:
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"no {CONFIG_NAME} in {directory}")
    try:
        data = json.loads(config_path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{config_path} is not valid JSON: {err}") from err
    return Sapiens2Config.from_dict(data, task=task)


def _weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a checkpoint directory, in a stable order."""
    index_path = directory / INDEX_NAME
    if (directory / WEIGHTS_NAME).is_file():
        return [directory / WEIGHTS_NAME]
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index_path} has no weight_map")
        names = sorted(set(weight_map.values()))
        for name in names:
            if Path(name).name != name or not name.endswith(".safetensors"):
                raise ValueError(
                    f"{index_path} names a shard outside the checkpoint or not safetensors: {name!r}"
                )
            if not (directory / name).is_file():
                raise FileNotFoundError(f"shard {name} listed in {index_path} is missing")
        return [directory / name for name in names]
    pickles = sorted(p for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if pickles:
        _refuse_pickle(pickles[0])
    raise FileNotFoundError(f"no {WEIGHTS_NAME} or {INDEX_NAME} in {directory}")


def read_state_dict(directory: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) safetensors checkpoint."""
    state: dict[str, torch.Tensor] = {}
    for path in _weight_files(directory):
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            for key in handle.keys():
                if key in state:
                    raise ValueError(f"tensor {key} appears in more than one shard of {directory}")
                state[key] = handle.get_tensor(key)
    return state


def _drop_tolerated_keys(state: dict[str, torch.Tensor], config: Sapiens2Config) -> None:
    """Remove the release's RoPE periods (after checking them) and an unused mask token."""
    expected_periods = config.rope_theta ** (torch.arange(0, 1, 4 / config.head_dim, dtype=torch.float64))
    for key in [k for k in state if k.split(".")[-1] == "periods"]:
        periods = state.pop(key).double().cpu().flatten()
        if periods.shape != expected_periods.shape or not torch.allclose(
            periods, expected_periods, rtol=1e-4
        ):
            raise ValueError(
                f"checkpoint RoPE {key} does not match rope_theta={config.rope_theta} and head_dim"
            )
    if config.use_mask_token:
        for key in [k for k in state if k.split(".")[-1] == "mask_token"]:
            state.pop(key)


def check_state_dict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Raise a ValueError naming every missing, unexpected or mis-shaped key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k} {tuple(state[k].shape)} (model {tuple(expected[k].shape)})"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    problems = []
    if missing:
        problems.append(f"missing keys: {', '.join(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(unexpected)}")
    if mismatched:
        problems.append(f"shape mismatch: {', '.join(mismatched)}")
    if problems:
        raise ValueError(f"checkpoint {source} does not fit the {model.task} model: " + "; ".join(problems))


def load_sapiens2(
    name_or_path: str | os.PathLike,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | None = torch.float32,
    task: str | None = None,
    revision: str | None = None,
) -> nn.Module:
    """Load a Sapiens2 checkpoint (Hub id or directory) strictly, in eval mode.

    ``dtype=None`` keeps the dtype stored in the file. ``task`` overrides the task named by the
    config's ``architectures``. ``model.preprocessing`` is the checkpoint's input preparation
    (see ``load_preprocessing``).
    """
    directory = resolve_checkpoint(name_or_path, revision=revision)
    config = read_config(directory, task=task)
    state = read_state_dict(directory)
    _drop_tolerated_keys(state, config)
    if dtype is None:
        stored = {t.dtype for t in state.values() if t.is_floating_point()}
        dtype = stored.pop() if len(stored) == 1 else torch.float32
    with torch.device("meta"):
        # No random init: every parameter is overwritten below (and init on meta tensors would import
        # torch's compiler stack, a second of start-up per worker process).
        model = build_sapiens2(config, init=False).to(dtype=dtype)
    check_state_dict(model, state, str(name_or_path))
    # The file's tensors are views of a memory map at unaligned offsets; fresh copies (aligned, anonymous
    # memory) keep matrix multiplies and convolutions on fast paths. They replace the meta parameters
    # outright: allocating the meta model first (``to_empty``) goes through torch's reference ops, which
    # import sympy, a third of a second of every worker's start-up.
    weights = {name: _fresh_copy(tensor, device, dtype) for name, tensor in state.items()}
    model.load_state_dict(weights, strict=True, assign=True)
    model.preprocessing = read_preprocessing(directory, config.task)
    return model.eval().requires_grad_(False)


def load_preprocessing(
    name_or_path: str | os.PathLike,
    task: str | None = None,
    input_size: tuple[int, int] | None = None,
    revision: str | None = None,
) -> Preprocessing:
    """How a checkpoint's inputs are prepared: its ``preprocessor_config.json`` where it has one, else the
    release's defaults for its task (``task`` overrides the one its config names). A given
    ``input_size`` (height, width) overrides the size. From the Hub only the two small files are fetched.
    """
    directory = resolve_checkpoint(name_or_path, revision=revision, files=(CONFIG_NAME, PREPROCESSOR_NAME))
    if task is None and not (directory / PREPROCESSOR_NAME).is_file():
        task = read_config(directory).task  # the defaults depend on the task
    return read_preprocessing(directory, task, input_size)


def _fresh_copy(tensor: torch.Tensor, device: torch.device | str, dtype: torch.dtype) -> torch.Tensor:
    target = dtype if tensor.is_floating_point() else tensor.dtype
    return tensor.to(device=device, dtype=target, copy=True, memory_format=torch.contiguous_format)


def save_sapiens2(model: nn.Module, directory: str | os.PathLike, max_shard_size: int | None = None) -> Path:
    """Write ``config.json`` and the weights (official key names) to ``directory``.

    With ``max_shard_size`` (bytes) the weights are split into shards plus ``model.safetensors.index.json``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(dtypes) == 1 and next(iter(dtypes)) in _DTYPE_NAMES:
        config["dtype"] = _DTYPE_NAMES[next(iter(dtypes))]
    (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for stale in (WEIGHTS_NAME, INDEX_NAME):
        (directory / stale).unlink(missing_ok=True)

    metadata = {"format": "pt"}
    total = sum(t.numel() * t.element_size() for t in state.values())
    if max_shard_size is None or total <= max_shard_size:
        save_file(state, str(directory / WEIGHTS_NAME), metadata=metadata)
        return directory
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for key in sorted(state):
        nbytes = state[key].numel() * state[key].element_size()
        if shards[-1] and size + nbytes > max_shard_size:
            shards.append({})
            size = 0
        shards[-1][key] = state[key]
        size += nbytes
    width = max(5, int(math.log10(len(shards))) + 1)
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:0{width}d}-of-{len(shards):0{width}d}.safetensors"
        save_file(shard, str(directory / name), metadata=metadata)
        weight_map.update({key: name for key in shard})
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    return directory
