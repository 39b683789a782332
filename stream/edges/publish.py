"""Publishing each source's annotated video as a stream, while the run goes on.

``--publish URL`` names where, with ``{name}`` standing for the source's name when there are several:

- ``rtsp://host:port/path/{name}``: RTSP ANNOUNCE/RECORD over TCP, to a server that accepts publishers
  (mediamtx, GStreamer's RTSP server in record mode);
- ``rtmp://host/app/{name}``: RTMP (FLV), to nginx-rtmp, mediamtx or a streaming service;
- ``DIR/{name}.m3u8``: HLS written to a directory: one-second segments and a rolling playlist that a
  browser plays (through hls.js, or natively in Safari) from any static web server.

A publisher never stops the run: when the server is gone it logs one line, drops frames, and tries
again every ``RETRY_S`` seconds. Timestamps are the source's own, so a viewer sees real speed.
"""

from __future__ import annotations

import logging
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from stream.edges.sinks import VideoSink
from stream.runtime.errors import first_line

log = logging.getLogger(__name__)

RETRY_S = 5.0
STREAM_TIME_BASE = Fraction(1, 90_000)
HLS_OPTIONS = {
    "hls_time": "1",
    "hls_list_size": "10",  # a rolling window: the playlist and disk use stay bounded on a live run
    "hls_flags": "delete_segments+independent_segments",
}


class PublishError(ValueError):
    """A ``--publish`` target that cannot be used."""


def stream_format(url: str) -> tuple[str, dict[str, str]]:
    """FFmpeg's muxer and its options for a publish target."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("rtsp", "rtsps"):
        return "rtsp", {"rtsp_transport": "tcp"}
    if scheme in ("rtmp", "rtmps"):
        return "flv", {}
    if not scheme and url.endswith(".m3u8"):
        return "hls", dict(HLS_OPTIONS)
    raise PublishError(f"cannot publish to {url!r}: use rtsp://..., rtmp://... or a DIR/NAME.m3u8 playlist")


def check_publish_target(template: str, sources: int) -> None:
    """Refuse, before a run, a target the run could not publish every source to."""
    stream_format(template)
    if sources > 1 and "{name}" not in template:
        raise PublishError("--publish needs {name} in the target when there are several sources")


class Publisher:
    """One source's published stream: frames in, a stream out, reopened when the server comes back."""

    def __init__(self, template: str, name: str, frame_rate: Fraction, display: str) -> None:
        self.url = template.replace("{name}", name)
        self.format, self.options = stream_format(self.url)
        self.frame_rate = frame_rate
        self.display = display  # the target as logs may show it (no secrets)
        self.sink: VideoSink | None = None
        self.size: tuple[int, int] | None = None
        self.start: float | None = None
        self.retry_at = 0.0
        self.frames = 0
        self.failures = 0

    def write(self, image: np.ndarray, seconds: float) -> None:
        """Publish one RGB frame at ``seconds`` on the source's clock (frames are dropped while the
        target is unreachable)."""
        if self.sink is None and not self._open(image):
            return
        if self.start is None:
            self.start = seconds
        try:
            self.sink.write(image, round((seconds - self.start) / STREAM_TIME_BASE))
            self.frames += 1
        except Exception as exc:  # noqa: BLE001 - any failure of the far end: retry later
            self._lost(exc)

    def new_segment(self) -> None:
        if self.sink is not None:
            self.sink.start_segment()

    def _open(self, image: np.ndarray) -> bool:
        if time.monotonic() < self.retry_at:
            return False
        if self.format == "hls":
            Path(self.url).parent.mkdir(parents=True, exist_ok=True)
        height, width = image.shape[:2]
        self.size = self.size or (width, height)  # a reconnecting source keeps its first size
        try:
            self.sink = VideoSink(self.url, *self.size, self.frame_rate, time_base=STREAM_TIME_BASE,
                                  codec="libx264", stream_format=self.format, stream_options=self.options)
        except Exception as exc:  # noqa: BLE001 - unreachable server, refused publisher, ...
            self._lost(exc)
            return False
        self.start = None  # a new stream starts at zero
        log.info("publishing to %s", self.display)
        return True

    def _lost(self, exc: BaseException) -> None:
        self.failures += 1
        log.warning("cannot publish to %s (%s); retrying every %.0f s", self.display, first_line(exc),
                    RETRY_S)
        self.close()
        self.retry_at = time.monotonic() + RETRY_S

    def close(self) -> None:
        if self.sink is not None:
            sink, self.sink = self.sink, None
            try:
                sink.close()
            except Exception:  # noqa: BLE001 - the far end is gone; nothing left to flush to
                pass
