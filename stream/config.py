"""Run configuration: one dataclass, filled from YAML (``--config``) and then from the command line.

YAML keys are the long option names with ``-`` or ``_`` (``max_batch`` or ``max-batch``); an unknown
key, a wrong type or an impossible value is a ``ConfigError`` with a one-line message.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

TASKS = ("pose", "seg")
MODES = ("auto", "offline", "live")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
WORKER_MODES = ("inproc", "ipc", "tcp")

DEFAULT_POSE_MODEL = "facebook/sapiens2-pose-0.4b"
DEFAULT_SEG_MODEL = "facebook/sapiens2-seg-0.4b"
DEFAULT_DETECTOR = "yolo11n.pt"


class ConfigError(ValueError):
    """A configuration that cannot run (one-line message naming the option)."""


@dataclass
class PipelineConfig:
    """Everything one run needs. ``sources`` and ``out`` are required; the rest has defaults."""

    sources: list[str] = field(default_factory=list)
    out: str = "out"
    task: tuple[str, ...] = ("pose",)
    pose_model: str = DEFAULT_POSE_MODEL
    seg_model: str = DEFAULT_SEG_MODEL
    detector: str = DEFAULT_DETECTOR
    device: str = "auto"  # "auto" = cuda when available, else cpu
    precision: str = "auto"  # auto = bf16 on GPU, fp32 on CPU
    flip: bool | None = None  # None = on offline, off live
    input_size: tuple[int, int] = (1024, 768)  # model input (H, W)
    smooth: bool = True
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
    random_weights: bool = False  # build models with random weights (demo fallback only)
    ray: str | None = None  # run on a Ray cluster: local, auto, ray://HOST:PORT or HOST:PORT
    shards: int | None = None  # shard actors of a Ray run (default: one per GPU, 1 without GPUs)
    control: str | None = None  # HOST:PORT (loopback) of the HTTP API that adds and removes live sources

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        self.task = _parse_task(self.task)
        self.input_size = parse_size(self.input_size)
        _choice("mode", self.mode, MODES)
        _choice("precision", self.precision, PRECISIONS)
        _choice("workers", self.workers, WORKER_MODES)
        _choice("rtsp_transport", self.rtsp_transport, ("tcp", "udp"))
        for name in ("max_batch", "detect_every", "max_persons", "queue_frames", "detector_imgsz"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ConfigError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("max_wait_ms", "stale_after", "folder_fps"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"{name} must be a non-negative number, got {value!r}")
        for name in ("conf", "iou", "keypoint_threshold", "seg_alpha"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                raise ConfigError(f"{name} must be a number in [0, 1], got {value!r}")
        for name in ("serve", "metrics"):
            if getattr(self, name) is not None:
                parse_host_port(getattr(self, name), name)
        for name in ("stall_timeout", "webcam_fps", "segment_time"):
            value = getattr(self, name)
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if value is not None and not (number and value > 0):
                raise ConfigError(f"{name} must be a positive number, got {value!r}")
        if self.segment_time is not None and self.segment_time < 1:
            # Parts are named by their start second: shorter parts would share names.
            raise ConfigError(f"segment_time must be at least 1 second, got {self.segment_time!r}")
        if self.webcam_size is not None:
            parse_webcam_size(self.webcam_size)
        _check_cluster(self.ray, self.shards, self.control)
        if not isinstance(self.sources, list) or not all(isinstance(s, str) for s in self.sources):
            raise ConfigError("sources must be a list of paths or URLs")

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

    def replace(self, **changes) -> PipelineConfig:
        return dataclasses.replace(self, **changes)


FIELD_NAMES = {f.name for f in dataclasses.fields(PipelineConfig)}


def _choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def _check_cluster(address, shards, control) -> None:
    if address is not None:
        special = address in ("local", "auto") or str(address).startswith("ray://")
        if not isinstance(address, str) or not (special or ":" in address):
            raise ConfigError(f"ray must be local, auto, ray://HOST:PORT or HOST:PORT, got {address!r}")
    if shards is not None and (isinstance(shards, bool) or not isinstance(shards, int) or shards < 1):
        raise ConfigError(f"shards must be a positive integer, got {shards!r}")
    if control is not None:
        parse_host_port(control, "control")
        if address is None:
            raise ConfigError("control: the control API serves runs on Ray for now; add --ray local")


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
        raise ConfigError(f"task must be pose, seg or pose,seg, got {value!r}")
    return tuple(t for t in TASKS if t in tasks)


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
    """``"127.0.0.1:9100"`` or ``"[::1]:9100"`` -> (host, port). The host is required: nothing is
    exposed on an address the user did not name."""
    host, _, port = str(value).strip().rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{name} must be HOST:PORT like 127.0.0.1:8080, got {value!r}")
    return host, int(port)


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
        values[name] = value
    return values


def build_config(values: dict) -> PipelineConfig:
    """A validated PipelineConfig from a dict of fields (YAML values merged with command-line ones)."""
    unknown = set(values) - FIELD_NAMES
    if unknown:
        raise ConfigError(f"unknown option {sorted(unknown)[0]!r}")
    if "sources" in values and isinstance(values["sources"], str):
        values = {**values, "sources": [values["sources"]]}
    if "out" in values:
        values = {**values, "out": str(values["out"])}
    try:
        return PipelineConfig(**values)
    except TypeError as exc:
        raise ConfigError(str(exc)) from None
