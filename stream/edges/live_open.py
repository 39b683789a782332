"""Opening a live source: which specs are live (webcams, network streams), the webcam device each
platform names, and the FFmpeg options a connection is opened with (``LiveOptions`` -> ``OpenArgs``).
``stream.edges.live`` holds the source that reads them."""

from __future__ import annotations

import random
import re
import sys
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from stream.config import PipelineConfig, parse_webcam_size
from stream.edges.redact import redact

NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "srt", "udp")
RTSP_TRANSPORTS = ("tcp", "udp", "udp_multicast", "http")
_WEBCAM_PATH = re.compile(r"^/dev/video\d+$")


@dataclass
class LiveOptions:
    """How a live source connects and when it gives up on a connection (times in seconds).

    ``width``/``height``/``fps``/``pixel_format`` are requests to a webcam (V4L2 ``video_size``,
    ``framerate``, ``input_format``); network sources deliver what the camera sends.
    """

    rtsp_transport: str = "tcp"
    stall_timeout: float = 5.0
    open_timeout: float | None = None  # None: stall_timeout, at least 5 s (probing takes ~1 s)
    backoff_initial: float = 0.5
    # A camera that comes back is picked up within about this long plus ~1 s of set-up (first keyframe).
    backoff_max: float = 1.5
    backoff_factor: float = 2.0
    jitter: float = 0.2  # +-20 % so many cameras behind one switch do not redial in lockstep
    max_retries: int | None = None  # consecutive failed attempts before giving up; None: never
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    pixel_format: str | None = None
    queue_size: int = 2  # decoded frames kept for a slow consumer; older ones are dropped
    reconnect_on_eof: bool = True

    def __post_init__(self) -> None:
        if self.rtsp_transport not in RTSP_TRANSPORTS:
            raise ValueError(f"rtsp_transport must be one of {RTSP_TRANSPORTS}, got {self.rtsp_transport!r}")
        for name in ("stall_timeout", "backoff_initial", "backoff_max"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.open_timeout is not None and not self.open_timeout > 0:
            raise ValueError(f"open_timeout must be positive, got {self.open_timeout}")
        if self.backoff_factor < 1:
            raise ValueError(f"backoff_factor must be >= 1, got {self.backoff_factor}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"jitter must be in [0, 1), got {self.jitter}")
        if self.max_retries is not None and self.max_retries < 0:
            raise ValueError(f"max_retries must be >= 0 or None, got {self.max_retries}")
        for name in ("width", "height", "fps"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive, got {value}")
        if (self.width is None) != (self.height is None):
            raise ValueError("give both width and height, or neither")
        if self.queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {self.queue_size}")

    @property
    def effective_open_timeout(self) -> float:
        return self.open_timeout if self.open_timeout is not None else max(self.stall_timeout, 5.0)

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before retry number ``attempt`` (1-based): exponential, jittered, never above the cap."""
        if attempt < 1:
            raise ValueError(f"attempt numbers start at 1, got {attempt}")
        base = min(self.backoff_max, self.backoff_initial * self.backoff_factor ** (attempt - 1))
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return min(self.backoff_max, base * (1.0 + spread))


def is_webcam_spec(spec: str) -> bool:
    """``"0"``, ``"1"``, ... or ``/dev/videoN``."""
    spec = str(spec).strip()
    return spec.isdigit() or bool(_WEBCAM_PATH.match(spec))


def is_live_spec(spec: str) -> bool:
    """True for webcams and network streams (the sources that default to live mode)."""
    spec = str(spec).strip()
    if is_webcam_spec(spec):
        return True
    scheme = spec.split("://", 1)[0].lower() if "://" in spec else ""
    return scheme in NETWORK_SCHEMES


def webcam_device(spec: str, platform: str | None = None) -> str:
    """The capture device a webcam spec names: ``"0"`` -> ``/dev/video0`` on Linux, ``"0"`` on macOS."""
    spec = str(spec).strip()
    platform = platform or sys.platform
    if not is_webcam_spec(spec):
        raise ValueError(f"not a webcam spec: {spec!r} (expected an index like 0 or /dev/videoN)")
    if platform.startswith("linux"):
        return f"/dev/video{int(spec)}" if spec.isdigit() else spec
    if platform == "darwin":
        if not spec.isdigit():
            raise ValueError(f"{spec} is a Linux device path; on macOS give the camera index (0, 1, ...)")
        return spec
    raise ValueError(f"webcam capture is supported on Linux (v4l2) and macOS (avfoundation), not {platform}")


@dataclass(frozen=True)
class OpenArgs:
    """Exactly what ``av.open`` receives for a source."""

    file: str
    format: str | None
    options: dict[str, str] = field(default_factory=dict)


def _microseconds(seconds: float) -> str:
    return str(int(seconds * 1_000_000))


def live_options(cfg: PipelineConfig) -> LiveOptions:
    """How a run's live sources connect: transport, stall timer and what to ask of a webcam."""
    width, height = parse_webcam_size(cfg.webcam_size) if cfg.webcam_size else (None, None)
    return LiveOptions(
        rtsp_transport=cfg.rtsp_transport,
        stall_timeout=float(cfg.stall_timeout),
        width=width,
        height=height,
        fps=cfg.webcam_fps,
        pixel_format=cfg.webcam_format,
    )


def open_args(spec: str, options: LiveOptions, platform: str | None = None) -> OpenArgs:
    """Container name, format and FFmpeg options for ``spec``; raises ValueError on a malformed spec."""
    spec = str(spec).strip()
    platform = platform or sys.platform
    if is_webcam_spec(spec):
        device = webcam_device(spec, platform)
        ffmpeg_options: dict[str, str] = {}
        if options.width is not None:
            ffmpeg_options["video_size"] = f"{options.width}x{options.height}"
        if options.fps is not None:
            ffmpeg_options["framerate"] = f"{options.fps:g}"
        if options.pixel_format is not None:
            key = "input_format" if platform.startswith("linux") else "pixel_format"
            ffmpeg_options[key] = options.pixel_format
        return OpenArgs(device, "v4l2" if platform.startswith("linux") else "avfoundation", ffmpeg_options)

    parts = urlsplit(spec)
    scheme = parts.scheme.lower()
    if scheme not in NETWORK_SCHEMES:
        raise ValueError(f"not a live source: {redact(spec)} (expected a webcam index, /dev/videoN, "
                         f"or one of {', '.join(s + '://' for s in NETWORK_SCHEMES)})")
    if not parts.hostname:
        raise ValueError(f"no host in source URL {redact(spec)}")
    io_timeout = _microseconds(options.stall_timeout)
    # Low delay, and probe 0.5 s instead of FFmpeg's 5 s (cameras announce their codec parameters in the
    # SDP or in-band). Not "fflags nobuffer": it discards the probed packets, first keyframe included.
    ffmpeg_options = {"flags": "low_delay", "analyzeduration": "500000"}
    if scheme in ("rtsp", "rtsps"):
        ffmpeg_options.update(rtsp_transport=options.rtsp_transport, timeout=io_timeout, max_delay="500000")
        if options.rtsp_transport == "udp":
            ffmpeg_options["buffer_size"] = str(4 * 1024 * 1024)  # bursts of a keyframe over UDP
    elif scheme in ("http", "https", "rtmp", "rtmps", "srt"):
        ffmpeg_options["rw_timeout"] = io_timeout
    else:  # udp
        ffmpeg_options["timeout"] = io_timeout
    return OpenArgs(spec, None, ffmpeg_options)
