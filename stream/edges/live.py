"""Live sources: webcams, RTSP, HTTP(S) and HLS, decoded with PyAV, that survive their cameras.

A ``LiveSource`` is an iterator of ``DecodedFrame`` that never ends on its own while retries remain:

- each connection attempt runs in its own reader thread (open, demux, decode, convert to RGB);
- a watchdog (the supervisor thread) declares a connection dead when no frame arrived for
  ``stall_timeout`` seconds, or when opening takes longer than ``open_timeout``: PyAV's own timeouts only
  bound each blocking FFmpeg call, and some calls (RTSP set-up, HLS playlist reloads) keep resetting
  them, so only a timer on *frames* catches every stall;
- a dead connection is abandoned, not closed from the watchdog: closing an ``AVFormatContext`` while
  another thread sits in ``av_read_frame`` on it frees memory under FFmpeg's feet. The abandoned reader
  drops whatever it still decodes, and closes its own container once FFmpeg returns (PyAV's interrupt
  callback bounds that to about ``stall_timeout``), while a fresh connection is already being made;
- retries wait with exponential backoff, jitter and a cap; unlimited by default;
- a reconnect or a change of resolution starts a new *segment* (``frame.segment`` += 1) so trackers and
  encoders downstream start afresh; ``frame.index`` keeps counting across segments;
- ``close()`` works from any thread and in any state and unblocks the iterator at once.

Every URL in a log line or an error message is redacted (``stream.edges.redact.redact``).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from fractions import Fraction

import av

from stream.edges.live_open import LiveOptions, open_args
from stream.edges.metrics import SourceStats
from stream.edges.redact import redact
from stream.edges.timeline import Timeline
from stream.media.color import RgbDecoder
from stream.media.frames import DecodedFrame, SourceError  # one error type for every failed source

log = logging.getLogger(__name__)

# Abandoned readers still blocked inside FFmpeg; past this many, wait for one to return before dialling
# again, so a camera that hangs every connection cannot pile up threads.
MAX_ABANDONED_READERS = 4


class _Connection:
    """One connection attempt: its reader thread and what the watchdog needs to judge it."""

    def __init__(self, number: int) -> None:
        self.number = number
        self.started = time.monotonic()
        self.last_frame = self.started
        self.opened = False
        self.frames = 0
        self.last_pts: int | None = None  # in the stream's time base
        self.error: str | None = None
        self.abandoned = False
        self.finished = threading.Event()
        self.thread: threading.Thread | None = None
        # One per connection (its reader thread): the swscale fallback keeps its scaler between frames.
        self.to_rgb = RgbDecoder()


class LiveSource:
    """Iterate ``DecodedFrame`` from a webcam or network stream; reconnects by itself until closed.

    ``stats`` (optional) is fed with ``frame_in``, source-side drops, reconnects and the state.
    """

    def __init__(
        self,
        spec: str,
        options: LiveOptions | None = None,
        name: str | None = None,
        stats: SourceStats | None = None,
    ) -> None:
        self.spec = str(spec).strip()
        self.options = options or LiveOptions()
        self.display_name = redact(name or self.spec)
        self.stats = stats
        self._open_args = open_args(self.spec, self.options)
        if self._open_args.format == "v4l2" and not os.path.exists(self._open_args.file):
            raise FileNotFoundError(f"webcam {self._open_args.file} not found: no such video device")
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._wake = threading.Event()  # a reader finished or the source was closed
        self._queue: deque[DecodedFrame] = deque()
        # What was dropped since the consumer's last frame, handed over with its next one (bounded).
        self._pending_drops: deque[dict] = deque(maxlen=1024)
        self._state = "idle"
        self._failure: str | None = None
        self._index = 0
        self._segment = 0
        self._timeline = Timeline(self.display_name)
        self._size: tuple[int, int] | None = None
        self._connection: _Connection | None = None
        self._abandoned: list[_Connection] = []
        self._supervisor: threading.Thread | None = None
        self.reconnects = 0  # connections re-established after a loss
        self.attempts = 0  # connection attempts, the first one included
        self.dropped = 0  # decoded frames dropped because the consumer was behind

    # -- public API ----------------------------------------------------------------------------
    @property
    def state(self) -> str:
        """``idle``, ``connecting``, ``streaming``, ``reconnecting``, ``closed`` or ``failed``."""
        return self._state

    @property
    def segment(self) -> int:
        return self._segment

    def start(self) -> LiveSource:
        """Start connecting (iteration starts it too)."""
        with self._cond:
            if self._supervisor is None and not self._stop.is_set():
                self._supervisor = threading.Thread(
                    target=self._supervise, name=f"live-watchdog {self.display_name}", daemon=True
                )
                self._supervisor.start()
        return self

    def __iter__(self) -> LiveSource:
        return self.start()

    def __next__(self) -> DecodedFrame:
        frame = self.read()
        if frame is None:
            raise StopIteration
        return frame

    def read(self, timeout: float | None = None) -> DecodedFrame | None:
        """The next frame; None once closed, or after ``timeout`` seconds without one.

        Raises ``SourceError`` when the source gave up (retries exhausted).
        """
        self.start()
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not self._queue:
                if self._failure is not None:
                    raise SourceError(self._failure)
                if self._stop.is_set():
                    return None
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            frame = self._queue.popleft()
            if self._pending_drops:
                frame.extra["dropped_before"] = list(self._pending_drops)
                self._pending_drops.clear()
            return frame

    def close(self, timeout: float = 2.0) -> None:
        """Stop for good, from any thread, in any state; an iterating thread stops at once."""
        with self._cond:
            self._stop.set()
            if self._connection is not None:
                self._connection.abandoned = True
            if self._state != "failed":
                self._set_state("closed")
            self._queue.clear()
            self._cond.notify_all()
        self._wake.set()
        supervisor = self._supervisor
        if supervisor is not None and supervisor is not threading.current_thread():
            supervisor.join(timeout)

    def __enter__(self) -> LiveSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"LiveSource({self.display_name!r}, state={self._state!r})"

    # -- watchdog ------------------------------------------------------------------------------
    def _set_state(self, state: str) -> None:
        self._state = state
        if self.stats is not None:
            self.stats.set_state(state)

    def _supervise(self) -> None:
        failures = 0  # consecutive attempts that delivered no frame
        try:
            while not self._stop.is_set():
                connection = self._connect()
                if connection is None:
                    break
                reason = self._watch(connection)
                if reason is None:  # closed while connected
                    break
                failures = 0 if connection.frames else failures + 1
                if self.options.max_retries is not None and failures > self.options.max_retries:
                    self._fail(f"{self.display_name}: giving up after {failures} failed attempts: {reason}")
                    break
                delay = self.options.backoff(max(failures, 1))
                with self._cond:
                    if self._stop.is_set():
                        break
                    self._set_state("reconnecting")
                log.warning("%s: %s; reconnecting in %.1f s", self.display_name, reason, delay)
                if self._stop.wait(delay):
                    break
        except Exception as exc:  # a bug here must not leave the consumer waiting forever
            self._fail(f"{self.display_name}: source watchdog failed: {redact(exc)}")
            raise

    def _connect(self) -> _Connection | None:
        """Start a reader for a new connection (after waiting for stuck abandoned readers to clear)."""
        while True:
            self._abandoned = [c for c in self._abandoned if not c.finished.is_set()]
            if len(self._abandoned) < MAX_ABANDONED_READERS:
                break
            if self._stop.wait(0.2):
                return None
        with self._cond:
            if self._stop.is_set():
                return None
            self.attempts += 1
            connection = _Connection(self.attempts)
            self._connection = connection
            if self._state in ("idle",):
                self._set_state("connecting")
        self._wake.clear()
        connection.thread = threading.Thread(
            target=self._read, args=(connection,), name=f"live-reader {self.display_name}", daemon=True
        )
        connection.thread.start()
        return connection

    def _watch(self, connection: _Connection) -> str | None:
        """Wait until ``connection`` ends or stalls; the reason it is over, or None when closed."""
        while True:
            if self._stop.is_set():
                return None
            if connection.finished.is_set():
                return connection.error or "stream ended"
            now = time.monotonic()
            if connection.opened:
                deadline = connection.last_frame + self.options.stall_timeout
                reason = f"no frame for {self.options.stall_timeout:g} s"
            else:
                deadline = connection.started + self.options.effective_open_timeout
                reason = f"no connection after {self.options.effective_open_timeout:g} s"
            if now >= deadline:
                with self._cond:
                    connection.abandoned = True
                self._abandoned.append(connection)
                return reason
            self._wake.wait(min(deadline - now, 0.25))
            self._wake.clear()

    def _fail(self, message: str) -> None:
        log.error("%s", message)
        with self._cond:
            self._failure = message
            self._set_state("failed")
            self._stop.set()
            self._cond.notify_all()

    # -- reader --------------------------------------------------------------------------------
    def _read(self, connection: _Connection) -> None:
        args = self._open_args
        timeouts = (self.options.effective_open_timeout, self.options.stall_timeout)
        try:
            container = av.open(args.file, format=args.format, options=dict(args.options), timeout=timeouts)
            with container:
                if connection.abandoned:
                    return
                if not container.streams.video:
                    connection.error = "no video stream in the source"
                    return
                stream = container.streams.video[0]
                # Slice threads only: frame threading would hold back several frames of latency.
                stream.thread_type = "SLICE"
                connection.opened = True
                connection.last_frame = time.monotonic()
                for packet in container.demux(stream):
                    for av_frame in packet.decode():
                        if not self._deliver(connection, av_frame, _frame_pts(connection, av_frame, stream)):
                            return
                    if connection.abandoned:
                        return
                connection.error = "stream ended" if self.options.reconnect_on_eof else None
                if not self.options.reconnect_on_eof:
                    self._fail_quietly_at_eof()
        except Exception as exc:  # FFmpeg/network errors of every kind end this connection only
            connection.error = _collapse_whitespace(redact(f"{type(exc).__name__}: {exc}"))
        finally:
            connection.finished.set()
            if not connection.abandoned:
                self._wake.set()

    def _fail_quietly_at_eof(self) -> None:
        with self._cond:
            self._stop.set()
            self._set_state("closed")
            self._cond.notify_all()

    def _deliver(self, connection: _Connection, av_frame: av.VideoFrame, pts_raw: int | None) -> bool:
        """Hand one decoded frame to the consumer; False when this connection must stop."""
        image = connection.to_rgb(av_frame)  # OpenCV where it gives swscale's colours, else swscale
        time_base = Fraction(av_frame.time_base) if av_frame.time_base is not None else None
        pts = float(pts_raw * time_base) if pts_raw is not None and time_base else None
        size = (image.shape[1], image.shape[0])
        with self._cond:
            if connection.abandoned or self._stop.is_set():
                return False
            reconnected = connection.frames == 0 and self._index > 0
            if reconnected:
                self._timeline.restart()  # a new connection starts a new segment anyway
            jumped = self._timeline.jumped(pts)
            if reconnected:
                self._segment += 1  # a new connection: downstream must start afresh
                self.reconnects += 1
                if self.stats is not None:
                    self.stats.reconnect()
                log.info("%s: reconnected (segment %d)", self.display_name, self._segment)
            elif self._size is not None and size != self._size:
                self._segment += 1
                log.info("%s: resolution %dx%d -> %dx%d (segment %d)", self.display_name,
                         *self._size, *size, self._segment)
            elif jumped:
                self._segment += 1  # the camera's clock jumped (logged by the timeline)
                if self.stats is not None:
                    self.stats.timestamp_jump()
            self._size = size
            frame = DecodedFrame(
                image=image,
                index=self._index,
                pts=pts,
                time_base=time_base,
                capture_time=time.time(),
                segment=self._segment,
                pts_raw=pts_raw,
            )
            self._index += 1
            connection.frames += 1
            connection.last_frame = time.monotonic()
            if self._state != "streaming":
                self._set_state("streaming")
            if len(self._queue) >= self.options.queue_size:
                old = self._queue.popleft()
                self.dropped += 1
                self._pending_drops.append(
                    {"frame": old.index, "pts": old.pts, "segment": old.segment, "cause": "source_backlog"}
                )
                if self.stats is not None:
                    self.stats.drop("source_backlog")
            self._queue.append(frame)
            self._cond.notify_all()
        if self.stats is not None:
            self.stats.frame_in()
        return True


def _frame_pts(connection: _Connection, av_frame: av.VideoFrame, stream) -> int | None:
    """The frame's pts, or an estimate when it has none (RTSP's first frame arrives before the RTCP
    timing sync): one frame after the previous one, or one frame before the stream's first known pts.
    Downstream stages then always see increasing timestamps within a segment."""
    pts = av_frame.pts
    if pts is None:
        step = av_frame.duration or _frame_step(stream)
        if step and connection.last_pts is not None:
            pts = connection.last_pts + step
        elif step and stream.start_time is not None:
            pts = stream.start_time - step
    if pts is not None:
        connection.last_pts = pts
    return pts


def _frame_step(stream) -> int | None:
    rate = stream.average_rate or stream.guessed_rate
    if not rate or not stream.time_base:
        return None
    return max(1, round(1 / (Fraction(rate) * Fraction(stream.time_base))))


def _collapse_whitespace(text: str) -> str:
    """The whole text on one line (unlike ``first_line``, no line of it is left out)."""
    return " ".join(str(text).split())
