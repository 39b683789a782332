"""Per-source outputs: annotated H.264 video, JSONL results, lossless label maps and dense maps.

Every sink is a context manager whose ``close()`` is idempotent, so a run stopped by an exception or a
signal still leaves complete files: the video's encoder is flushed and its trailer written, every JSONL
line is flushed as it is written, and every label map is a finished PNG.
"""

from __future__ import annotations

import ctypes
import errno
import json
import math
import os
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from types import TracebackType

import av
import cv2
import numpy as np

from stream.edges.redact import redact
from stream.media.color import i420_to_frame, rgb_to_yuv420p_frame
from stream.media.frames import DecodedFrame, ModelOutputs
from stream.runtime.errors import OutputError, first_line

_NVENC = "h264_nvenc"
_X264 = "libx264"
_NVENC_PRESETS = {f"p{i}" for i in range(1, 8)}


def output_error(exc: OSError, path: str | Path) -> OutputError:
    """``exc`` as one line that names the file: ``cannot write out/a.mp4: No space left on device``."""
    error = OutputError(f"cannot write {path}: {exc.strerror or first_line(exc)}")
    error.errno = exc.errno  # ENOSPC stays recognisable
    return error


def write_file(path: Path, data: bytes | np.ndarray) -> None:
    """Write ``data`` as the whole file ``path``, or raise ``OutputError`` and leave no partial file."""
    try:
        with path.open("wb") as f:
            f.write(memoryview(data).cast("B"))
    except OSError as exc:
        path.unlink(missing_ok=True)
        raise output_error(exc, path) from None


class _Sink:
    """Context manager plumbing shared by the sinks."""

    def close(self) -> None:  # pragma: no cover - every sink overrides it
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------------------
# Video


@lru_cache(maxsize=1)
def nvenc_usable() -> bool:
    """True when FFmpeg has h264_nvenc and a GPU encoder actually opens (an H100 has none)."""
    if _NVENC not in av.codecs_available:
        return False
    try:
        context = av.CodecContext.create(_NVENC, "w")
        context.width, context.height = 256, 256
        context.pix_fmt = "yuv420p"
        context.time_base = Fraction(1, 30)
        context.framerate = Fraction(30)
        context.open()
    except Exception:  # no device, no driver, no free session: all mean "use the CPU encoder"
        return False
    return True


def pick_video_codec(codec: str = "auto") -> str:
    """``"auto"``: h264_nvenc if it opens here, else libx264. Any other name must be an FFmpeg encoder."""
    if codec == "auto":
        return _NVENC if nvenc_usable() else _X264
    if codec not in av.codecs_available:
        raise ValueError(f"video codec {codec!r} is not available in this FFmpeg build")
    return codec


def _encoder_options(codec: str, crf: int, preset: str, low_latency: bool = False) -> dict[str, str]:
    if codec == _X264:
        # No frame delay in the encoder: viewers of a stream see frames as they are made, and a live
        # recording's frames reach the file with the fragment they belong to.
        return {"crf": str(crf), "preset": preset, **({"tune": "zerolatency"} if low_latency else {})}
    if codec == _NVENC:
        # nvenc has its own preset names (p1 fastest .. p7 best); constant quality is "cq".
        return {"preset": preset if preset in _NVENC_PRESETS else "p4", "rc": "vbr", "cq": str(crf)}
    return {}


# Space kept allocated past the end of a video file: the mp4's index and the encoder's delayed frames,
# both written when the file is closed, must fit in it. Generous: 1 MiB is an hour's index at 30 fps.
RESERVE_BYTES = 1 << 20
RESERVE_PER_FRAME = 64  # index bytes per frame (sample size, time, offset and sync entries, padded)
RESERVE_PACKETS = 64  # delayed frames the encoder may still hold (lookahead, B-frames, frame threads)
_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 0x01, 0x02


class _DiskReserve:
    """Blocks kept allocated past the end of a file being written, so that the file can still be
    finished when the disk fills up: without its trailer (an mp4's moov) nothing of it plays.

    Linux ``fallocate`` with KEEP_SIZE allocates without changing the file's size; the writer's own
    writes then land in blocks it already has. ``keep`` tops the reserve up after every write and fails
    with ENOSPC as soon as the disk cannot hold it, while the reserve still holds the trailer. Where
    the filesystem or the system has no ``fallocate``, nothing is reserved.
    """

    def __init__(self, path: Path) -> None:
        self.end = 0  # the reserved blocks end here
        self._fd: int | None = None
        libc = ctypes.CDLL(None, use_errno=True)
        self._fallocate = getattr(libc, "fallocate64", None) or getattr(libc, "fallocate", None)
        if self._fallocate is None:
            return
        self._fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        self._fd = os.open(path, os.O_WRONLY)

    def keep(self, size: int) -> None:
        """Have ``size`` bytes allocated past the file's current end; OSError(ENOSPC) when the disk is
        too full for that."""
        if self._fd is None:
            return
        wanted = os.fstat(self._fd).st_size + size
        if wanted <= self.end:
            return
        if self._fallocate(self._fd, _FALLOC_FL_KEEP_SIZE, self.end, wanted - self.end) != 0:
            code = ctypes.get_errno()
            if code in (errno.EOPNOTSUPP, errno.ENOSYS):
                self.close()  # a filesystem without fallocate: write without a reserve
                return
            raise OSError(code, os.strerror(code))
        self.end = wanted

    def close(self) -> None:
        """Give back the blocks past the file's end (they would stay allocated on ext4 and XFS)."""
        if self._fd is None:
            return
        size = os.fstat(self._fd).st_size
        if self.end > size:
            self._fallocate(self._fd, _FALLOC_FL_KEEP_SIZE | _FALLOC_FL_PUNCH_HOLE, size, self.end - size)
        os.close(self._fd)
        self._fd = None


def _as_fraction(value: Fraction | int | float) -> Fraction:
    """Fractions and ints as they are; a float (29.97) as the nearest small fraction (2997/100)."""
    if isinstance(value, float):
        return Fraction(value).limit_denominator(1_000_000)
    return Fraction(value)


class VideoSink(_Sink):
    """Encodes RGB frames to H.264 (mp4 or any container PyAV writes), keeping the source's timestamps.

    Timestamps: ``write(image, pts)`` takes pts in ``time_base`` units (default ``1 / frame_rate``), so a
    source's own pts go straight through: N frames in give N frames out with the same times. In mp4 the
    track timescale is the time base's denominator, so a time base ``1/D`` (every mp4 or MPEG-TS source)
    is kept exactly, pts for pts; a time base ``n/D`` is written as ``1/D`` with pts multiplied by ``n``
    (same times). ``pts=None`` continues one frame duration after the previous frame. A pts that does not
    increase (a live source that reconnected and restarted its clock) is shifted to follow the previous
    frame, and so is every later one of that run, so the file stays valid.

    Sizes: yuv420p needs even sizes, so an odd width or height is padded by one pixel at the right or
    bottom, a copy of the last column or row (``encoded_size`` tells the result). A frame whose size
    differs from ``(width, height)`` (a live source that changed resolution) is resized to it.

    Streams: with ``stream_format`` (``rtsp``, ``flv``, ``hls``) ``path`` is a URL or playlist published to
    as it is written (see ``stream.edges.publish``), encoded for low latency.

    Pixels: every encoder is given BT.601 limited-range yuv420p, untagged (swscale's default for RGB),
    converted by ``stream.media.color.rgb_to_yuv420p_frame``; images are only read, so read-only views (a
    shared-memory frame slot) go in without a copy.

    A full disk: a file keeps room for its trailer reserved (``_DiskReserve``), so a write that finds
    the disk full raises ``OutputError`` (ENOSPC, naming the file) while ``close()`` can still finish a
    playable file of every frame written before.
    """

    def __init__(
        self,
        path: str | Path,
        width: int,
        height: int,
        frame_rate: Fraction | int | float,
        time_base: Fraction | None = None,
        codec: str = "auto",
        crf: int = 20,
        preset: str = "veryfast",
        fragmented: bool = False,
        keyframe_s: float = 1.0,
        stream_format: str | None = None,
        stream_options: dict[str, str] | None = None,
    ):
        if width < 1 or height < 1:
            raise ValueError(f"video size must be positive, got {width}x{height}")
        frame_rate = _as_fraction(frame_rate)
        if frame_rate <= 0:
            raise ValueError(f"frame rate must be positive, got {frame_rate}")
        source_time_base = _as_fraction(time_base) if time_base is not None else 1 / frame_rate
        if source_time_base <= 0:
            raise ValueError(f"time base must be positive, got {source_time_base}")

        self.path = Path(path)
        self.width, self.height = int(width), int(height)
        self.encoded_size = (self.width + self.width % 2, self.height + self.height % 2)
        self.frame_rate = frame_rate
        self.codec = pick_video_codec(codec)
        self.frames_written = 0
        # Output pts are source pts times this, in units of 1/denominator (exact for any n/D time base).
        self._pts_scale = source_time_base.numerator
        self.time_base = Fraction(1, source_time_base.denominator)
        self._frame_step = max(1, round(1 / (frame_rate * self.time_base)))
        self._pts_offset = 0
        self._last_pts: int | None = None
        self._resync = False
        self._closed = False

        container_options = dict(stream_options or {})
        if stream_format is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if stream_format is None and self.path.suffix.lower() in (".mp4", ".mov", ".m4v"):
            # mp4 otherwise rounds time bases below 1/10000 up and writes the start offset in ms.
            timescale = str(self.time_base.denominator)
            container_options = {"video_track_timescale": timescale, "movie_timescale": timescale}
            if fragmented:
                container_options["movflags"] = "frag_keyframe+empty_moov+default_base_moof"
                container_options["flush_packets"] = "1"  # each fragment reaches the file at once
        target = str(path) if stream_format is not None else str(self.path)  # a URL stays as given
        self._container = av.open(target, mode="w", format=stream_format, options=container_options)
        self._reserve: _DiskReserve | None = None
        self._reserving = stream_format is None  # a file: reserved once FFmpeg has created it
        self._largest_packet = 0
        try:
            self._stream = self._container.add_stream(self.codec, rate=frame_rate)
            self._stream.width, self._stream.height = self.encoded_size
            self._stream.pix_fmt = "yuv420p"
            self._stream.time_base = self.time_base
            self._stream.codec_context.time_base = self.time_base
            streaming = stream_format is not None
            # A fragmented (live) recording: no frames held back in the encoder's lookahead either, so a
            # killed process loses at most the last fragment.
            low_latency = streaming or fragmented
            self._stream.options = _encoder_options(self.codec, crf, preset, low_latency=low_latency)
            if fragmented or streaming:
                # Fragments and stream viewers both start at keyframes: one a second.
                self._stream.codec_context.gop_size = max(1, round(float(frame_rate) * keyframe_s))
        except Exception:
            self._close_file()
            raise

    def _keep_reserve(self) -> None:
        if self._reserve is None:
            if not (self._reserving and self.path.exists()):
                return  # FFmpeg opens the file with the encoder's first packet
            self._reserve = _DiskReserve(self.path)
        index = RESERVE_PER_FRAME * self.frames_written
        size = RESERVE_BYTES + index + RESERVE_PACKETS * self._largest_packet
        try:
            self._reserve.keep(size)
        except OSError as exc:
            raise output_error(exc, self.path) from None

    def _prepare(self, image: np.ndarray) -> np.ndarray:
        if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            raise ValueError(f"VideoSink expects (H, W, 3) uint8 RGB images, got {image.shape} {image.dtype}")
        if image.shape[:2] != (self.height, self.width):
            image = cv2.resize(image, (self.width, self.height), interpolation=cv2.INTER_AREA)
        pad_right = self.encoded_size[0] - self.width
        pad_bottom = self.encoded_size[1] - self.height
        if pad_right or pad_bottom:
            image = cv2.copyMakeBorder(image, 0, pad_bottom, 0, pad_right, cv2.BORDER_REPLICATE)
        return image

    def start_segment(self) -> None:
        """The next frame starts a new segment of the source: it follows the previous frame by one frame
        interval, and later frames keep their spacing from it."""
        self._resync = True

    def _output_pts(self, pts: int | None) -> int:
        if pts is None:
            out = 0 if self._last_pts is None else self._last_pts + self._frame_step
        else:
            out = int(pts) * self._pts_scale + self._pts_offset
            if self._resync and self._last_pts is not None:
                follow = self._last_pts + self._frame_step
                self._pts_offset += follow - out
                out = follow
            elif self._last_pts is not None and out <= self._last_pts:
                follow = self._last_pts + self._frame_step
                self._pts_offset += follow - out
                out = follow
        self._last_pts = out
        self._resync = False
        return out

    def write(self, image: np.ndarray, pts: int | None = None) -> None:
        """Encode one RGB frame ``(height, width, 3)`` uint8 at ``pts`` (time_base units) or the next slot."""
        if self._closed:
            raise ValueError(f"VideoSink {self.path} is closed")
        self._encode(rgb_to_yuv420p_frame(self._prepare(image)), pts)

    def write_i420(self, yuv: np.ndarray, pts: int | None = None) -> None:
        """Encode one BT.601 limited-range I420 picture ``(height * 3 // 2, width)`` uint8 of exactly
        ``encoded_size`` (a decoded source's own planes): no colour conversion at all."""
        if self._closed:
            raise ValueError(f"VideoSink {self.path} is closed")
        width, height = self.encoded_size
        expected = (height * 3 // 2, width)
        if yuv.shape != expected or yuv.dtype != np.uint8:
            raise ValueError(f"VideoSink expects {expected} uint8 I420 planes, got {yuv.shape} {yuv.dtype}")
        self._encode(i420_to_frame(yuv), pts)

    def _encode(self, frame: av.VideoFrame, pts: int | None) -> None:
        # Before the frame: when the disk cannot hold another frame and the trailer, the file ends with
        # the frames before this one.
        self._keep_reserve()
        frame.pts = self._output_pts(pts)
        frame.time_base = self.time_base
        try:
            for packet in self._stream.encode(frame):
                self._largest_packet = max(self._largest_packet, packet.size)
                self._container.mux(packet)
        except OSError as exc:
            raise output_error(exc, self.path) from None
        self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder and write the trailer; safe to call more than once. Raises ``OutputError``
        when the file could not be finished."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.frames_written:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
        except OSError as exc:
            self._close_file(quiet=True)
            raise output_error(exc, self.path) from None
        self._close_file()

    def _close_file(self, quiet: bool = False) -> None:
        """Write the trailer and close the file, then give back the reserve."""
        try:
            self._container.close()
        except OSError as exc:
            if not quiet:
                raise output_error(exc, self.path) from None
        finally:
            if self._reserve is not None:
                self._reserve.close()


# ---------------------------------------------------------------------------------------------------------
# JSONL


class JsonlSink(_Sink):
    """One JSON object per line, each written to the file at once, so a killed process keeps every line
    written; the file only ever ends with a whole line: a line the disk cannot hold is taken back, and
    ``write`` raises ``OutputError`` (naming the file)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Unbuffered: nothing is left in a buffer that closing would try to write to a full disk again.
        self._file = self.path.open("wb", buffering=0)
        self._size = 0
        self.lines_written = 0

    def write(self, record: dict) -> None:
        if self._file.closed:
            raise ValueError(f"JsonlSink {self.path} is closed")
        # allow_nan=False: NaN is not JSON; jsonl_record already turns non-finite numbers into null.
        # ensure_ascii (the default): one byte per character, so sizes are exact.
        line = memoryview((json.dumps(record, separators=(",", ":"), allow_nan=False) + "\n").encode())
        written = 0
        try:
            while written < len(line):  # a write may take part of the line (the disk's last blocks)
                written += self._file.write(line[written:])
        except OSError as exc:
            self._file.truncate(self._size)  # the part of the line that fit
            raise output_error(exc, self.path) from None
        self._size += len(line)
        self.lines_written += 1

    def close(self) -> None:
        self._file.close()


def _rounded(values: np.ndarray, decimals: int) -> list:
    """Nested lists of Python floats rounded to ``decimals``; NaN and infinities become None."""
    values = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(values)
    rounded = np.round(values, decimals).tolist()
    if finite.all():
        return rounded
    flat_rounded = np.asarray(rounded, dtype=object).ravel()
    flat_rounded[~finite.ravel()] = None
    return flat_rounded.reshape(values.shape).tolist()


def _rounded_scalar(value: float | None, decimals: int) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), decimals)


def _check_result(result: ModelOutputs) -> None:
    num = result.boxes.shape[0]
    if result.boxes.shape != (num, 4) or result.scores.shape != (num,) or result.track_ids.shape != (num,):
        raise ValueError(
            f"ModelOutputs arrays disagree: boxes {result.boxes.shape}, scores {result.scores.shape}, "
            f"track_ids {result.track_ids.shape}"
        )
    if result.keypoints is not None:
        if result.keypoint_scores is None:
            raise ValueError("ModelOutputs has keypoints but no keypoint_scores")
        kpts, kscores = result.keypoints.shape, result.keypoint_scores.shape
        if len(kpts) != 3 or kpts[0] != num or kpts[2] != 2 or kscores != kpts[:2]:
            raise ValueError(f"ModelOutputs keypoints {kpts} / scores {kscores} do not fit {num} persons")


def jsonl_record(
    source: str, frame: DecodedFrame, result: ModelOutputs | None, skipped: bool = False
) -> dict:
    """One JSONL line (docs/architecture.md, "Outputs"), in source-frame pixels (see ``frame_record``)."""
    return frame_record(source, frame.index, frame.pts, frame.width, frame.height, result, skipped)


def frame_record(
    source: str,
    index: int,
    pts: float | None,
    width: int,
    height: int,
    result: ModelOutputs | None,
    skipped: bool = False,
) -> dict:
    """The JSONL record of frame ``index`` of ``source`` (the Python API's ``ModelOutputs.to_dict`` too).

    ``{"source", "frame", "pts", "width", "height", "persons": [{"id", "bbox", "score", "keypoints"}]}``;
    a frame dropped in live mode gives ``{..., "skipped": true}`` without persons. Pixels are rounded to
    2 decimals, scores to 4, pts (seconds) to 6; non-finite numbers become null. Persons carry
    ``keypoints`` only when pose ran (seg-only runs have none); ``id`` is null until the person's track
    is confirmed (the tracker's -1).
    """
    record: dict = {
        "source": redact(source),  # a name, never a URL's secret, even when given one
        "frame": int(index),
        "pts": _rounded_scalar(pts, 6),
        "width": int(width),
        "height": int(height),
    }
    if skipped:
        record["skipped"] = True
        return record
    persons: list[dict] = []
    if result is not None and result.num_persons:
        _check_result(result)
        boxes = _rounded(result.boxes, 2)
        scores = _rounded(result.scores, 4)
        ids = [None if i < 0 else i for i in result.track_ids.astype(np.int64).tolist()]
        keypoints = None
        if result.keypoints is not None:
            xys = np.asarray(result.keypoints, dtype=np.float64)
            kscores = np.asarray(result.keypoint_scores, dtype=np.float64)
            # [[x, y, score], ...] per person, with pixels and scores rounded differently.
            keypoints = [
                [[x, y, s] for (x, y), s in zip(person_xy, person_s, strict=True)]
                for person_xy, person_s in zip(_rounded(xys, 2), _rounded(kscores, 4), strict=True)
            ]
        for i in range(result.num_persons):
            person = {"id": ids[i], "bbox": boxes[i], "score": scores[i]}
            if keypoints is not None:
                person["keypoints"] = keypoints[i]
            persons.append(person)
    record["persons"] = persons
    return record
