"""Frame sources: video files, image folders and single images (PyAV); live streams are in ``live``.

``probe_source`` checks a spec up front (so bad input fails before any worker starts) and tells the
pipeline what it is: a name for the outputs, frame rate, time base and, where known, the frame count.
``open_source`` then yields ``DecodedFrame``s; containers are always closed, also when the consumer
stops early.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from fractions import Fraction
from pathlib import Path
from urllib.parse import urlsplit

import av
import numpy as np

from stream.edges.live import LiveSource
from stream.edges.live_open import LiveOptions, is_live_spec, open_args
from stream.edges.redact import MASK, redact
from stream.edges.timeline import Timeline
from stream.media.color import RgbDecoder, frame_to_rgb, opencv_decodes
from stream.media.frames import I420, DecodedFrame, SourceError, SourceInfo
from stream.runtime.errors import first_line

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# ``frame_buffer(height, width, with_i420)``: a writable (height, width, 3) uint8 array to decode the
# next frame into (e.g. a shared-memory frame slot), or None to let the source allocate one;
# ``with_i420`` tells that the frame will also carry its yuv420p planes (``DecodedFrame.extra[I420]``).
FrameBuffer = Callable[[int, int, bool], "np.ndarray | None"]
# ``NAME=SOURCE``: the user names a source (its output files) instead of deriving a name from it.
_NAMED = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9_.\-]{0,63})=(?P<spec>.+)", re.DOTALL)


def is_live(spec: str) -> bool:
    """True for webcams and network streams (handled by ``stream.edges.live``)."""
    return is_live_spec(spec)


def probe_source(spec: str) -> SourceInfo:
    """Validate ``spec`` (``SOURCE`` or ``NAME=SOURCE``) and describe it; raises SourceError with a
    one-line reason. Messages and names never carry a secret of the spec (``stream.edges.redact``)."""
    given_name, spec = split_name(spec)
    info = _probe(spec)
    return dataclasses.replace(info, name=given_name) if given_name else info


def _probe(spec: str) -> SourceInfo:
    if is_live(spec):
        _check_live_url(spec)
        return SourceInfo(spec, _live_name(spec), "live", None, None, None)
    path = Path(spec)
    if not path.exists():
        hint = " (not a file, nor a URL of a known scheme: rtsp://, http://, ...)" if _url_like(spec) else ""
        raise SourceError(f"source not found: {redact(spec)}{hint}")
    if path.is_dir():
        images = list_images(path)
        if not images:
            raise SourceError(f"image folder has no images ({', '.join(IMAGE_SUFFIXES)}): {spec}")
        height, width = _read_image(images[0]).shape[:2]
        return SourceInfo(spec, path.resolve().name, "folder", None, None, len(images), width, height)
    if path.suffix.lower() in IMAGE_SUFFIXES:
        height, width = _read_image(path).shape[:2]
        return SourceInfo(spec, path.stem, "image", None, None, 1, width, height)
    return _probe_video(path)


def split_name(spec: str) -> tuple[str | None, str]:
    """``"door=rtsp://..."`` -> (``"door"``, ``"rtsp://..."``); a spec without a name -> (None, spec).

    A name is letters, digits, ``-``, ``_`` and ``.`` (it becomes a file name); an existing file whose
    own name has an ``=`` stays a file.
    """
    match = _NAMED.match(spec)
    if match is None or Path(spec).exists():
        return None, spec
    return match["name"], match["spec"]


def _check_live_url(spec: str) -> None:
    """Refuse, before any worker starts, a live spec FFmpeg could never open (no host, brackets that
    make no IPv6 address, a port that is no number): one line, secrets masked."""
    try:
        parts = urlsplit(spec)
        parts.port  # noqa: B018 - parsing the port is the check
        open_args(spec, LiveOptions())
    except ValueError:
        # The parser's own message can quote a piece of the password: it is not repeated.
        raise SourceError(
            f"not a usable source URL: {redact(spec)} (its host or port cannot be read; in a password, "
            "percent-encode characters such as @ : # / ? as %40 %3A %23 %2F %3F)"
        ) from None


def _url_like(spec: str) -> bool:
    return bool(re.match(r"[A-Za-z][A-Za-z0-9+.\-]*(?::/|//)", spec)) or "@" in spec


def _probe_video(path: Path) -> SourceInfo:
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise SourceError(f"no video stream in {path}")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            frames = int(stream.frames) or None
            estimated = frames is None and rate is not None and container.duration is not None
            if estimated:
                # Containers such as Matroska store no frame count, only the duration (microseconds).
                frames = round(container.duration / 1_000_000 * float(rate)) or None
            return SourceInfo(
                str(path),
                path.stem,
                "file",
                Fraction(rate) if rate else None,
                Fraction(stream.time_base) if stream.time_base else None,
                frames,
                stream.codec_context.width,
                stream.codec_context.height,
                frames_estimated=estimated and frames is not None,
            )
    except (av.FFmpegError, OSError) as exc:
        raise SourceError(f"cannot read {path}: not a video PyAV can decode ({first_line(exc)})") from exc


def missing_frames(info: SourceInfo, decoded: int) -> int:
    """How many frames the container announced but did not deliver (0 when it delivered them all).

    A frame count in the header must be met exactly; one estimated from the duration may be off by a
    frame or two of rounding and start offsets.
    """
    if info.kind != "file" or info.num_frames is None:
        return 0
    slack = max(2, info.num_frames // 50) if info.frames_estimated else 0
    shortfall = info.num_frames - decoded
    return shortfall if shortfall > slack else 0


def _live_name(spec: str) -> str:
    """An output name for a live source, from the parts of its URL that carry no secret.

    The URL is redacted first; the name is its last path segment without ``***`` or ``=``
    (``rtsp://***@cam/Streaming/101`` -> ``101``, ``.../user=***&password=***&channel=1`` -> the segment
    before it), else its host; query and fragment never count.
    """
    if spec.isdigit():
        return f"cam{spec}"
    safe = redact(spec)
    rest = safe.rsplit(f"{MASK}@", 1)[-1] if f"{MASK}@" in safe else re.sub(r"^[A-Za-z][\w+.-]*:/*", "", safe)
    host, _, path = re.split(r"[?#]", rest, maxsplit=1)[0].partition("/")
    for part in [*reversed(path.split("/")), host]:
        cleaned = _clean_name(part)
        if cleaned and MASK not in part and "=" not in part and MASK not in redact(cleaned):
            return cleaned
    return "live"


def _clean_name(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text).strip("._")


def unique_names(infos: list[SourceInfo]) -> list[str]:
    """Output names for the sources: their own names, with ``_2``, ``_3``... where two collide."""
    names: list[str] = []
    for info in infos:
        name, n = info.name, 2
        while name in names:
            name = f"{info.name}_{n}"
            n += 1
        names.append(name)
    return names


def list_images(folder: Path) -> list[Path]:
    """The folder's images, in name order (the frame order)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_image(path: Path) -> np.ndarray:
    try:
        with av.open(str(path)) as container:
            for frame in container.decode(video=0):
                return frame_to_rgb(frame)
    except (av.FFmpegError, OSError) as exc:
        raise SourceError(f"cannot read image {path}: {first_line(exc)}") from exc
    raise SourceError(f"cannot read image {path}: no picture in it")


@contextmanager
def open_source(
    info: SourceInfo, live_options=None, stats=None, frame_buffer: FrameBuffer | None = None
) -> Iterator[Iterator[DecodedFrame]]:
    """A context manager that yields an iterator of frames for ``info``; everything is closed on exit.

    ``frame_buffer`` (video files only): where to decode each frame, so its pixels are written once,
    straight where the consumer wants them.
    """
    if info.kind == "file":
        with av.open(info.spec) as container:
            yield _decode_video(container, frame_buffer)
    elif info.kind in ("folder", "image"):
        paths = list_images(Path(info.spec)) if info.kind == "folder" else [Path(info.spec)]
        yield _decode_images(paths)
    elif info.kind == "live":
        source = LiveSource(info.spec, live_options or LiveOptions(), stats=stats)
        try:
            yield iter(source)
        finally:
            source.close()
    else:
        raise SourceError(f"unknown source kind {info.kind!r}")


def _decode_video(
    container: av.container.InputContainer, frame_buffer: FrameBuffer | None = None
) -> Iterator[DecodedFrame]:
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"  # frame + slice threads: decode keeps up with 1080p on few cores
    time_base = Fraction(stream.time_base) if stream.time_base else None
    to_rgb = RgbDecoder()
    rate = stream.average_rate or stream.guessed_rate
    timeline = Timeline(Path(container.name).name, float(1 / rate) if rate else None)
    size = None
    segment = 0
    for index, frame in enumerate(container.decode(stream)):
        out = None
        if frame_buffer is not None:
            out = frame_buffer(frame.height, frame.width, opencv_decodes(frame))
        image, i420 = to_rgb.with_i420(frame, out)
        pts = float(frame.time) if frame.time is not None else None
        jumped = timeline.jumped(pts)
        if jumped or (size is not None and image.shape[:2] != size):
            segment += 1  # a timestamp jump or a resolution change starts a new segment, like a reconnect
        size = image.shape[:2]
        yield DecodedFrame(
            image=image,
            index=index,
            pts=pts,
            time_base=time_base,
            capture_time=time.time(),
            segment=segment,
            pts_raw=frame.pts,
            # The source's own planes when they are what a video sink encodes (BT.601 limited range):
            # a frame nothing is drawn on can then be encoded without converting it back from RGB.
            extra={I420: i420} if i420 is not None else {},
        )


def _decode_images(paths: list[Path]) -> Iterator[DecodedFrame]:
    for index, path in enumerate(paths):
        yield DecodedFrame(
            image=np.ascontiguousarray(_read_image(path)),
            index=index,
            pts=None,
            time_base=None,
            capture_time=time.time(),
            extra={"path": str(path)},
        )
