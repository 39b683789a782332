"""Run configuration: one dataclass, filled from YAML (``--config``) and then from the command line.

YAML keys are the long option names with ``-`` or ``_`` (``max_batch`` or ``max-batch``); an unknown
key, a wrong type or an impossible value is a ``ConfigError`` with a one-line message.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

TASKS = ("pose", "seg", "normal", "pointmap", "matting")
DENSE_TASKS = ("normal", "pointmap", "matting")  # full-frame maps, one per frame
SEG_MODES = ("frame", "person")
MODES = ("auto", "offline", "live")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
WORKER_MODES = ("inproc", "ipc", "tcp")

DEFAULT_POSE_MODEL = "facebook/sapiens2-pose-0.4b"
DEFAULT_SEG_MODEL = "facebook/sapiens2-seg-0.4b"
DEFAULT_NORMAL_MODEL = "facebook/sapiens2-normal-0.4b"
DEFAULT_POINTMAP_MODEL = "facebook/sapiens2-pointmap-0.4b"
DEFAULT_MATTING_MODEL = "facebook/sapiens2-matting-1b"
DEFAULT_DETECTOR = "yolo11n.pt"


class ConfigError(ValueError):
    """A configuration that cannot run (one-line message naming the option)."""


@dataclass
class PipelineConfig:
    """Everything one run needs. ``sources`` and ``out`` are required; the rest has defaults."""

    sources: list[str] = field(default_factory=list)
    out: str | None = "out"  # None: no files (the Python API's results are its only output)
    task: tuple[str, ...] = ("pose",)
    pose_model: str = DEFAULT_POSE_MODEL
    seg_model: str = DEFAULT_SEG_MODEL
    normal_model: str = DEFAULT_NORMAL_MODEL
    pointmap_model: str = DEFAULT_POINTMAP_MODEL
    matting_model: str = DEFAULT_MATTING_MODEL
    seg_mode: str = "frame"  # frame: the whole frame stretched to the input; person: crops pasted back
    view: tuple[str, ...] | None = None  # what the video shows; None = every task that runs
    background: str = "blur"  # matting's video: blur, a colour, an image or a video file
    save_pointmap: bool = False  # also write each frame's pointmap as float16 .npy
    detector: str = DEFAULT_DETECTOR
    device: str = "auto"  # "auto" = cuda when available, else cpu
    precision: str = "auto"  # auto = bf16 on GPU, fp32 on CPU
    flip: bool | None = None  # None = on offline, off live
    # Model input (H, W) of every model; None: each checkpoint's own (its preprocessor_config.json, else
    # the release's 1024x768).
    input_size: tuple[int, int] | None = None
    smooth: bool = True
    # Camera motion compensation for handheld and panning video: each decoder estimates the frame-to-frame
    # motion (sparse optical flow) and the tracker moves its tracks by it. Off by default: a fixed camera
    # gains nothing from it and pays a few milliseconds of CPU per frame.
    camera_motion: bool = False
    mode: str = "auto"  # auto = live for webcams/streams, offline for files and folders
    max_batch: int = 8  # persons (crops) per model forward
    max_wait_ms: float = 10.0  # how long the GPU worker waits to fill a group of frames
    detect_every: int = 1
    conf: float = 0.25
    iou: float = 0.45
    max_persons: int = 20
    detector_imgsz: int = 640
    keypoint_threshold: float = 0.3
    seg_alpha: float = 0.5
    draw_boxes: bool = True
    codec: str = "auto"
    crf: int = 20
    preset: str = "veryfast"
    folder_fps: float = 25.0  # frame rate of videos made from image folders
    show: bool = False
    serve: str | None = None  # HOST:PORT of the browser preview
    metrics: str | None = None  # HOST:PORT of the Prometheus endpoint
    stale_after: float = 0.5
    rtsp_transport: str = "tcp"
    stall_timeout: float = 5.0  # live: no frame for this long means the connection is dead; reconnect
    webcam_size: str | None = None  # WxH requested from a webcam (V4L2 video_size)
    webcam_fps: float | None = None  # frame rate requested from a webcam
    webcam_format: str | None = None  # pixel format requested from a webcam (e.g. mjpeg, yuyv422)
    workers: str = "ipc"
    queue_frames: int = 4  # high-water mark of frame queues (messages)
    progress: bool = True
    segment_time: float | None = None  # live: start new output files every this many seconds
    label_maps: bool | None = None  # write segmentation label maps; None = offline yes, live no
    publish: str | None = None  # stream each source's video to this URL or playlist ({name}: the source)
    banner: str | None = None  # text stamped on every output frame (the demo's untrained warning)
    random_weights: bool = False  # build models with random weights (command line only, never YAML)
    allow_remote: bool = False  # let --serve / --metrics bind an address other machines can reach
    max_viewers: int = 4  # browser preview: MJPEG streams served at once; more get HTTP 503
    ray: str | None = None  # run on a Ray cluster: local, auto, ray://HOST:PORT or HOST:PORT
    shards: int | None = None  # shard actors of a Ray run (default: one per GPU, 1 without GPUs)
    control: str | None = None  # HOST:PORT (loopback) of the HTTP API that adds and removes live sources
    decode_on: str | None = None  # Ray: decoders run on nodes with this custom resource (camera-side hosts)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check and normalise every field (one-line ConfigError naming the option), then the
        combinations: a network surface off loopback needs ``allow_remote``."""
        for name in _CHECKS:  # in the order of the fields
            setattr(self, name, check_field(name, getattr(self, name)))
        if self.view is not None:
            self.view = _parse_view(self.view, self.task)
        for name in ("serve", "metrics"):
            address = getattr(self, name)
            if address is not None and not self.allow_remote and not is_loopback(parse_host_port(address)[0]):
                raise ConfigError(
                    f"{name} address {address} is not a loopback address and would be reachable from other "
                    f"machines; add --allow-remote if that is intended"
                )
        if self.decode_on is not None and self.ray is None:
            raise ConfigError("decode_on places decoders on the nodes of a Ray cluster; add --ray ADDRESS")
        if self.control is not None and self.ray is None and self.workers == "tcp":
            # A source added at run time gets endpoints its running GPU worker must work out by itself.
            raise ConfigError("control: sources added at run time need --workers ipc or inproc, not tcp")

    @property
    def group_frames(self) -> int:
        """Frames the GPU worker collects into one group at most: as many as ``max_batch`` crops per
        forward, so a group of one-person frames fills one forward. The engine cuts a group's crops into
        forwards of at most ``max_batch``."""
        return self.max_batch

    @property
    def pose(self) -> bool:
        return "pose" in self.task

    @property
    def seg(self) -> bool:
        return "seg" in self.task

    @property
    def dense_tasks(self) -> tuple[str, ...]:
        """The full-frame map tasks that run (normal, pointmap, matting), in that order."""
        return tuple(t for t in DENSE_TASKS if t in self.task)

    @property
    def viewed(self) -> tuple[str, ...]:
        """The tasks the video shows (``view``, by default every task that runs)."""
        return self.task if self.view is None else self.view

    def task_model(self, task: str) -> str:
        """The Hub id or directory of ``task``'s checkpoint."""
        return getattr(self, f"{task}_model")

    def replace(self, **changes) -> PipelineConfig:
        return dataclasses.replace(self, **changes)


FIELD_NAMES = {f.name for f in dataclasses.fields(PipelineConfig)}
# Options a config file may not turn on: a file copied between machines must never swap real models
# for random ones unnoticed.
COMMAND_LINE_ONLY = ("random_weights",)


def check_field(name: str, value):
    """``value`` checked (and normalised) for the option ``name``; ConfigError naming it otherwise."""
    return _CHECKS[name](name, value)


def _choice(name: str, value, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _choices(*choices: str):
    return lambda name, value: _choice(name, value, choices)


def _boolean(name: str, value) -> bool:
    # YAML 1.1 spellings (yes/on) are already booleans from the parser; strings and numbers are not.
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


def _string(name: str, value) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r}")
    return value


def _text(name: str, value) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
    return value


def _path(name: str, value) -> str:
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return _text(name, value)


def _integer(low: int, high: int | None = None):
    def check(name: str, value) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < low or (high and value > high):
            if low == 1 and high is None:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
            span = f"in [{low}, {high}]" if high is not None else f">= {low}"
            raise ConfigError(f"{name} must be an integer {span}, got {value!r}")
        return value

    return check


def _number(low: float, high: float | None = None, *, above: bool = False):
    """A finite number >= low (> low with ``above``), and <= high when given."""

    def check(name: str, value) -> float:
        number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if number and (value > low if above else value >= low) and (high is None or value <= high):
            return value
        if high is not None:
            raise ConfigError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
        if above and low == 0:
            raise ConfigError(f"{name} must be a positive number, got {value!r}")
        raise ConfigError(f"{name} must be a non-negative number, got {value!r}")

    return check


def _optional(check):
    return lambda name, value: None if value is None else check(name, value)


def _segment_seconds(name: str, value) -> float:
    # Parts are named by their start second: shorter parts would share names.
    number = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not number or value < 1:
        raise ConfigError(f"{name} must be at least 1 second, got {value!r}")
    return value


def _device(name: str, value) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[a-z]+(:\d+)?", value):
        raise ConfigError(f"{name} must be auto, cpu, cuda or cuda:N, got {value!r}")
    return value


def _host_port(name: str, value) -> str:
    parse_host_port(value, name)
    return value


def _sources(name: str, value) -> list[str]:
    """A list of paths or URLs; a YAML entry ``{name: door, url: rtsp://...}`` becomes ``door=rtsp://...``."""
    if not isinstance(value, list):
        raise ConfigError(f"{name} must be a list of paths or URLs")
    specs = []
    for entry in value:
        if isinstance(entry, dict) and set(entry) <= {"name", "url"} and isinstance(entry.get("url"), str):
            label = entry.get("name")
            specs.append(f"{label}={entry['url']}" if isinstance(label, str) and label else entry["url"])
        elif isinstance(entry, str):
            specs.append(entry)
        else:
            raise ConfigError(f"{name} must be a list of paths or URLs (or {{name, url}} entries)")
    return specs


def _ray_address(name: str, value) -> str:
    special = value in ("local", "auto") or str(value).startswith("ray://")
    if not isinstance(value, str) or not (special or ":" in value):
        raise ConfigError(f"{name} must be local, auto, ray://HOST:PORT or HOST:PORT, got {value!r}")
    return value


def _resource_name(name: str, value) -> str:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.-]*", value):
        raise ConfigError(f"{name} must name a Ray resource (letters, digits, _ . -), got {value!r}")
    return value


_CHECKS = {
    "sources": _sources,
    "out": _optional(_path),
    "task": lambda name, value: _parse_task(value),
    "pose_model": _path,
    "seg_model": _path,
    "normal_model": _path,
    "pointmap_model": _path,
    "matting_model": _path,
    "seg_mode": _choices(*SEG_MODES),
    "view": _optional(lambda name, value: _parse_view(value, TASKS)),  # against the tasks: validate()
    "background": _text,
    "save_pointmap": _boolean,
    "detector": _path,
    "device": _device,
    "precision": _choices(*PRECISIONS),
    "flip": _optional(_boolean),
    "input_size": _optional(lambda name, value: parse_size(value)),
    "smooth": _boolean,
    "camera_motion": _boolean,
    "mode": _choices(*MODES),
    "max_batch": _integer(1),
    "max_wait_ms": _number(0),
    "detect_every": _integer(1),
    "conf": _number(0, 1),
    "iou": _number(0, 1),
    "max_persons": _integer(1),
    "detector_imgsz": _integer(1),
    "keypoint_threshold": _number(0, 1),
    "seg_alpha": _number(0, 1),
    "draw_boxes": _boolean,
    "codec": _text,
    "crf": _integer(0, 51),  # x264's and NVENC's quality scale
    "preset": _text,
    "folder_fps": _number(0, above=True),
    "show": _boolean,
    "serve": _optional(_host_port),
    "metrics": _optional(_host_port),
    "stale_after": _number(0, above=True),
    "rtsp_transport": _choices("tcp", "udp"),
    "stall_timeout": _number(0, above=True),
    "webcam_size": _optional(lambda name, value: (parse_webcam_size(value), value)[1]),
    "webcam_fps": _optional(_number(0, above=True)),
    "webcam_format": _optional(_text),
    "workers": _choices(*WORKER_MODES),
    "queue_frames": _integer(1),
    "progress": _boolean,
    "segment_time": _optional(lambda name, value: _segment_seconds(name, value)),
    "label_maps": _optional(_boolean),
    "publish": _optional(_text),
    "banner": _optional(_string),
    "random_weights": _boolean,
    "allow_remote": _boolean,
    "max_viewers": _integer(1),
    "ray": _optional(_ray_address),
    "shards": _optional(_integer(1)),
    "control": _optional(_host_port),
    "decode_on": _optional(_resource_name),
}


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable only from this machine (127.0.0.0/8, ::1, localhost)."""
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name that may resolve to anything


def parse_webcam_size(value) -> tuple[int, int]:
    """``"1280x720"`` -> (1280, 720): width first, as cameras are described."""
    try:
        width, height = (int(v) for v in str(value).lower().split("x"))
    except ValueError:
        raise ConfigError(f"webcam_size must be WxH, e.g. 1280x720, got {value!r}") from None
    if width <= 0 or height <= 0:
        raise ConfigError(f"webcam_size must be positive, got {value!r}")
    return width, height


def _parse_task(value) -> tuple[str, ...]:
    parts = value.split(",") if isinstance(value, str) else list(value)
    tasks = tuple(dict.fromkeys(p.strip() for p in parts if str(p).strip()))
    if not tasks or any(t not in TASKS for t in tasks):
        raise ConfigError(f"task must be any of {', '.join(TASKS)}, comma separated, got {value!r}")
    return tuple(t for t in TASKS if t in tasks)


def _parse_view(value, tasks: tuple[str, ...]) -> tuple[str, ...]:
    """What the video shows: tasks among those that run (``pose,seg``, ``matting``, ...)."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    view = tuple(dict.fromkeys(str(p).strip() for p in parts if str(p).strip()))
    unknown = [r for r in view if r not in TASKS]
    if not view or unknown:
        raise ConfigError(f"view must be any of {', '.join(TASKS)}, comma separated, got {value!r}")
    missing = [r for r in view if r not in tasks]
    if missing:
        raise ConfigError(f"view {missing[0]!r} needs --task to include {missing[0]}")
    return tuple(t for t in TASKS if t in view)


def parse_size(value) -> tuple[int, int]:
    """``"1024x768"``, ``[1024, 768]`` or ``(1024, 768)`` -> (H, W); both multiples of 16."""
    try:
        if isinstance(value, str):
            height, width = (int(v) for v in value.lower().split("x"))
        else:
            height, width = (int(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"input size must be HxW like 1024x768, got {value!r}") from None
    if height <= 0 or width <= 0 or height % 16 or width % 16:
        raise ConfigError(
            f"input size must be positive multiples of 16 (the patch size), got {height}x{width}"
        )
    return height, width


def parse_host_port(value: str, name: str = "address") -> tuple[str, int]:
    """``"127.0.0.1:8080"`` or ``"[::1]:8080"`` -> (host without brackets, port); ports 1-65535."""
    host, _, port = str(value).rpartition(":")
    if not isinstance(value, str) or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{name} must be HOST:PORT like 127.0.0.1:8080 (port 1-65535), got {value!r}")
    return host.strip("[]") if host.startswith("[") else host, int(port)


def load_yaml(path: str | Path) -> dict:
    """Read a YAML config file into a dict of PipelineConfig fields (keys normalised, checked)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise ConfigError(f"config {path}: not valid YAML{line}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: expected a mapping of option: value, got {type(data).__name__}")
    values = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in FIELD_NAMES:
            raise ConfigError(f"config {path}: unknown option {key!r}")
        if name in COMMAND_LINE_ONLY and value is not False:
            option = "--" + name.replace("_", "-")
            raise ConfigError(f"config {path}: {key} cannot be set in a config file, only with {option}")
        try:
            values[name] = check_field(name, value)
        except ConfigError as exc:
            raise ConfigError(f"config {path}: {exc}") from None
    return values


def build_config(values: dict) -> PipelineConfig:
    """A validated PipelineConfig from a dict of fields (YAML values merged with command-line ones)."""
    unknown = set(values) - FIELD_NAMES
    if unknown:
        raise ConfigError(f"unknown option {sorted(unknown)[0]!r}")
    if "sources" in values and isinstance(values["sources"], str):
        values = {**values, "sources": [values["sources"]]}
    try:
        return PipelineConfig(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
