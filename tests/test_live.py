"""LiveSource against real servers: GStreamer's RTSP server (started, killed, frozen and restarted by the
tests), a local HTTP server, sockets that never answer. No v4l2 device exists on the test machines: the
webcam path is covered up to the device open (spec parsing, the exact FFmpeg options, missing-device
errors, and PyAV's v4l2 demuxer rejecting a non-camera file).
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import logging
import random
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import av
import numpy as np
import pytest

from stream.edges.live import LiveSource, SourceError
from stream.edges.live_open import LiveOptions, is_live_spec, is_webcam_spec, open_args, webcam_device
from stream.edges.metrics import SourceStats
from stream.media.synth import moving_squares, write_clip

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rtsp_server import RtspServerProcess, free_port, server_unavailable_reason  # noqa: E402
from system_deps import command_missing  # noqa: E402

_RTSP_MISSING = server_unavailable_reason()
needs_rtsp = pytest.mark.needs_system(what="RTSP test server", missing=_RTSP_MISSING)

PASSWORD = "hunter2-not-in-logs"


class FrameLog:
    """Consumes a LiveSource in a thread and records (arrival time, index, segment, size) per frame."""

    def __init__(self, source: LiveSource) -> None:
        self.source = source
        self.records: list[tuple[float, int, int, tuple[int, int]]] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for frame in self.source:
                self.records.append((time.monotonic(), frame.index, frame.segment, frame.image.shape[:2]))
        except BaseException as exc:  # surfaced by the test
            self.error = exc

    def wait_for(self, predicate, timeout: float) -> float:
        """Time at which a record satisfying ``predicate`` arrived; fails after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for record in list(self.records):
                if predicate(record):
                    return record[0]
            time.sleep(0.02)
        raise AssertionError(f"no matching frame within {timeout} s; state {self.source.state}")

    def stop(self) -> None:
        self.source.close()
        self.thread.join(timeout=3)
        assert not self.thread.is_alive(), "iterator did not stop after close()"


# -- specs and options (pure) -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "live", "webcam"),
    [
        ("0", True, True),
        ("12", True, True),
        ("/dev/video2", True, True),
        ("rtsp://cam.local/stream", True, False),
        ("rtsps://u:p@cam/x", True, False),
        ("http://127.0.0.1:8080/live.m3u8", True, False),
        ("https://example.org/stream.ts", True, False),
        ("clip.mp4", False, False),
        ("/data/frames/", False, False),
        ("/dev/video", False, False),
        ("file:///tmp/a.mp4", False, False),
    ],
)
def test_spec_classification(spec: str, live: bool, webcam: bool) -> None:
    assert is_live_spec(spec) is live
    assert is_webcam_spec(spec) is webcam


def test_webcam_open_args_linux_and_macos() -> None:
    options = LiveOptions(width=1280, height=720, fps=30, pixel_format="mjpeg")
    linux = open_args("0", options, platform="linux")
    assert (linux.file, linux.format) == ("/dev/video0", "v4l2")
    assert linux.options == {"video_size": "1280x720", "framerate": "30", "input_format": "mjpeg"}
    assert open_args("/dev/video3", LiveOptions(), platform="linux").file == "/dev/video3"
    assert open_args("/dev/video3", LiveOptions(), platform="linux").options == {}
    mac = open_args("1", LiveOptions(fps=29.97), platform="darwin")
    assert (mac.file, mac.format, mac.options) == ("1", "avfoundation", {"framerate": "29.97"})
    with pytest.raises(ValueError, match="on macOS give the camera index"):
        webcam_device("/dev/video0", platform="darwin")
    with pytest.raises(ValueError, match="not win32"):
        webcam_device("0", platform="win32")


def test_missing_webcam_is_a_one_line_error_naming_the_device() -> None:
    index = next(i for i in range(10, 64) if not Path(f"/dev/video{i}").exists())
    with pytest.raises(FileNotFoundError) as info:
        LiveSource(str(index))
    message = str(info.value)
    assert f"/dev/video{index}" in message and "\n" not in message


def test_v4l2_demuxer_takes_the_webcam_options() -> None:
    # The real PyAV/FFmpeg v4l2 input with our options; /dev/null is not a camera, so V4L2's first ioctl
    # fails - proving the options were accepted and the device itself was probed.
    args = open_args("0", LiveOptions(width=640, height=480, fps=30), platform="linux")
    with pytest.raises(OSError, match="Inappropriate ioctl"):
        av.open("/dev/null", format=args.format, options=dict(args.options), timeout=2.0)


def test_network_open_args() -> None:
    tcp = open_args("rtsp://u:p@10.0.0.5:554/h264", LiveOptions(stall_timeout=3))
    assert tcp.format is None and tcp.file == "rtsp://u:p@10.0.0.5:554/h264"
    assert tcp.options["rtsp_transport"] == "tcp" and tcp.options["timeout"] == "3000000"
    udp = open_args("rtsp://10.0.0.5/h264", LiveOptions(rtsp_transport="udp"))
    assert udp.options["rtsp_transport"] == "udp" and int(udp.options["buffer_size"]) >= 1 << 20
    hls = open_args("https://cdn.example/live/index.m3u8", LiveOptions(stall_timeout=2.5))
    assert hls.options["rw_timeout"] == "2500000" and "rtsp_transport" not in hls.options


def test_bad_specs_and_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match=r"not a live source: ftp://\*\*\*@host/x"):
        open_args("ftp://user:pw@host/x", LiveOptions())
    with pytest.raises(ValueError, match="no host"):
        open_args("rtsp:///stream", LiveOptions())
    with pytest.raises(ValueError, match="rtsp_transport"):
        LiveOptions(rtsp_transport="sctp")
    with pytest.raises(ValueError, match="stall_timeout"):
        LiveOptions(stall_timeout=0)
    with pytest.raises(ValueError, match="both width and height"):
        LiveOptions(width=640)
    with pytest.raises(ValueError, match="max_retries"):
        LiveOptions(max_retries=-1)


def test_backoff_grows_exponentially_with_jitter_under_the_cap() -> None:
    options = LiveOptions(backoff_initial=0.5, backoff_max=4.0, backoff_factor=2.0, jitter=0.2)
    rng = random.Random(1)
    delays = [[options.backoff(attempt, rng) for attempt in range(1, 9)] for _ in range(50)]
    delays = np.array(delays)
    assert delays.max() <= 4.0
    nominal = np.minimum(4.0, 0.5 * 2.0 ** np.arange(8))
    assert np.all(delays >= nominal * 0.8 - 1e-9) and np.all(delays <= nominal * 1.2 + 1e-9)
    assert np.median(delays[:, 2]) > np.median(delays[:, 1]) > np.median(delays[:, 0])
    assert len(np.unique(delays[:, 0].round(6))) > 40, "jitter must spread retries of many cameras"
    with pytest.raises(ValueError, match="start at 1"):
        options.backoff(0)


# -- RTSP --------------------------------------------------------------------------------------------
@needs_rtsp
@pytest.mark.parametrize("transport", ["tcp", "udp"])
def test_rtsp_stream_decodes_in_order(transport: str) -> None:
    with RtspServerProcess(width=320, height=240) as server:
        # A queue deep enough that no frame is dropped: the RTP jitter buffer can hand the first frames
        # over in one burst, and a busy machine may not consume them before the next arrive. The
        # drop policy itself is tested below (every dropped frame is reported once).
        options = LiveOptions(rtsp_transport=transport, queue_size=64)
        with LiveSource(server.url, options) as source:
            frames = [frame for _, frame in zip(range(20), source, strict=False)]
            assert source.state == "streaming"
    assert [f.index for f in frames] == list(range(20))
    assert all(f.image.shape == (240, 320, 3) and f.image.dtype == np.uint8 for f in frames)
    assert all(f.segment == 0 for f in frames)
    pts = [f.pts for f in frames]  # RTSP's first frame has no pts of its own: estimated, never None
    assert all(b > a for a, b in zip(pts, pts[1:], strict=False))
    assert np.median(np.diff(pts)) == pytest.approx(1 / 30, abs=2e-3)
    assert frames[-1].capture_time >= frames[0].capture_time
    assert source.state == "closed"


@needs_rtsp
def test_camera_outage_reconnects_fast_and_never_stalls_the_other_camera(caplog) -> None:
    caplog.set_level(logging.DEBUG)
    down = RtspServerProcess(user="alice", password=PASSWORD).start()
    healthy = RtspServerProcess(pattern="smpte").start()
    stats = SourceStats(down.url)
    try:
        flaky_log = FrameLog(LiveSource(down.url, LiveOptions(), stats=stats))  # default options
        healthy_log = FrameLog(LiveSource(healthy.url))
        flaky_log.wait_for(lambda r: True, timeout=10)
        healthy_log.wait_for(lambda r: True, timeout=10)
        time.sleep(1.5)

        down.stop()
        outage = time.monotonic()
        time.sleep(10.0)
        down.start()
        back = time.monotonic()
        flaky_log.wait_for(lambda r: r[2] == 1, timeout=60)  # bounds a hang; the soak measures the time
        time.sleep(1.0)
    finally:
        down.stop()
        healthy.stop()
    flaky_log.stop()
    healthy_log.stop()
    assert flaky_log.error is None and healthy_log.error is None

    flaky = flaky_log.source
    assert flaky.reconnects == 1 and stats.reconnects == 1
    indices = [r[1] for r in flaky_log.records]
    assert indices == sorted(indices) and len(set(indices)) == len(indices), "index counts across segments"
    assert {r[2] for r in flaky_log.records} == {0, 1}
    assert sum(r[2] == 1 for r in flaky_log.records) >= 15, "keeps streaming after the reconnect"

    # The healthy camera never waits for the dead one: it delivered frames all through the outage.
    during = [r for r in healthy_log.records if outage <= r[0] <= back]
    assert len(during) >= 30, f"the healthy camera delivered {len(during)} frames in 10 s of outage"
    assert {r[2] for r in healthy_log.records} == {0} and healthy_log.source.reconnects == 0

    assert "reconnecting in" in caplog.text and "rtsp://***@127.0.0.1" in caplog.text
    assert PASSWORD not in caplog.text and PASSWORD not in repr(flaky) and PASSWORD not in stats.name


@needs_rtsp
def test_stalled_camera_is_detected_by_the_frame_timer(caplog) -> None:
    caplog.set_level(logging.WARNING)
    server = RtspServerProcess().start()
    try:
        options = LiveOptions(stall_timeout=1.0, open_timeout=3.0, backoff_max=0.5)
        frames = FrameLog(LiveSource(server.url, options))
        frames.wait_for(lambda r: True, timeout=10)
        server.pause()  # the TCP connection stays up; not a byte arrives
        paused = time.monotonic()
        while frames.source.state == "streaming" and time.monotonic() - paused < 60:  # bounds a hang
            time.sleep(0.05)
        detected = time.monotonic() - paused
        assert frames.source.state != "streaming", "the stall was never noticed"
        time.sleep(2.0)
        server.resume()
        frames.wait_for(lambda r: r[2] >= 1, timeout=60)  # a new segment once frames flow again
    finally:
        server.stop()
    frames.stop()
    assert detected >= 0.9, f"stall declared after {detected:.2f} s, before the 1 s frame timer"
    assert "no frame for 1 s" in caplog.text


@needs_rtsp
def test_wrong_credentials_give_up_after_max_retries_with_a_redacted_error() -> None:
    with RtspServerProcess(user="bob", password="right-password") as server:
        url = server.url.replace("right-password", PASSWORD)
        source = LiveSource(url, LiveOptions(max_retries=1, backoff_initial=0.1))
        with pytest.raises(SourceError) as info:
            next(iter(source))
    message = str(info.value)
    assert "401" in message and "giving up after 2 failed attempts" in message
    assert PASSWORD not in message and "rtsp://***@127.0.0.1" in message and "\n" not in message
    assert source.state == "failed" and source.attempts == 2


# -- close() in every state ---------------------------------------------------------------------------
def _close_while_iterating(source: LiveSource, state: str) -> float:
    frames = FrameLog(source)
    deadline = time.monotonic() + 10
    while source.state != state and time.monotonic() < deadline:
        time.sleep(0.02)
    assert source.state == state
    start = time.monotonic()
    frames.stop()
    assert frames.error is None and source.state == "closed"
    return time.monotonic() - start


def test_close_while_connecting_to_a_server_that_never_answers() -> None:
    with socket.socket() as listener:  # accepts TCP in the kernel backlog, never says a word
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        url = f"rtsp://127.0.0.1:{listener.getsockname()[1]}/cam"
        source = LiveSource(url, LiveOptions(stall_timeout=120, open_timeout=120))
        assert _close_while_iterating(source, "connecting") < 60  # not waiting out the open timeout


def test_close_while_reconnecting_to_a_dead_port(caplog) -> None:
    caplog.set_level(logging.WARNING)
    options = LiveOptions(backoff_initial=120, backoff_max=120)
    source = LiveSource(f"rtsp://127.0.0.1:{free_port()}/cam", options)
    assert _close_while_iterating(source, "reconnecting") < 60  # not sleeping out the backoff
    assert "Connection refused" in caplog.text


def test_silent_server_is_abandoned_after_the_open_timeout(caplog) -> None:
    caplog.set_level(logging.WARNING)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"rtsp://127.0.0.1:{listener.getsockname()[1]}/cam"
        source = LiveSource(url, LiveOptions(open_timeout=0.5, stall_timeout=30, backoff_initial=0.1))
        source.start()
        time.sleep(2.5)
        source.close()
    assert source.attempts >= 3, "each silent attempt must be given up after open_timeout"
    assert "no connection after 0.5 s" in caplog.text


def test_close_is_idempotent_and_works_before_start() -> None:
    source = LiveSource("rtsp://127.0.0.1:9/never")
    source.close()
    source.close()
    assert source.state == "closed"
    assert source.read(timeout=0.1) is None
    assert list(source) == []


# -- HTTP: resolution change inside one connection, backlog drops ---------------------------------------
@pytest.fixture(scope="module")
def http_clip(tmp_path_factory) -> str:
    """An MPEG-TS over HTTP whose resolution changes half-way (two encodes, concatenated)."""
    root = tmp_path_factory.mktemp("http")
    parts = []
    for i, size in enumerate([(160, 120), (128, 96)]):
        part = root / f"part{i}.ts"
        write_clip(part, moving_squares(12, size, seed=i), fps=30)
        parts.append(part.read_bytes())
    (root / "clip.ts").write_bytes(b"".join(parts))
    with serve_directory(root) as base:
        yield f"{base}/clip.ts"


@contextlib.contextmanager
def serve_directory(root: Path, tls: ssl.SSLContext | None = None):
    """A local HTTP(S) server for the files of ``root``; yields its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def hls_playlist(tmp_path_factory) -> str:
    """An HLS playlist of three 0.5 s MPEG-TS segments over HTTP."""
    root = tmp_path_factory.mktemp("hls")
    options = {"hls_time": "0.5", "hls_list_size": "0", "hls_playlist_type": "vod"}
    with av.open(str(root / "index.m3u8"), "w", format="hls", options=options) as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 160, 120, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": "15"}
        for image in moving_squares(45, (160, 120)):
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    with serve_directory(root) as base:
        yield f"{base}/index.m3u8"


@pytest.mark.needs_system(what="openssl", missing=command_missing("openssl"))
def test_https_source_with_a_self_signed_certificate(tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    write_clip(tmp_path / "clip.ts", moving_squares(10, (160, 120)), fps=30)
    with serve_directory(tmp_path, tls) as base:
        options = LiveOptions(queue_size=64, reconnect_on_eof=False, max_retries=0)
        frames = list(LiveSource(f"{base}/clip.ts", options))
    assert [f.index for f in frames] == list(range(10))
    assert frames[0].image.shape == (120, 160, 3)


def test_hls_source_reads_every_segment(hls_playlist: str) -> None:
    source = LiveSource(hls_playlist, LiveOptions(queue_size=64, reconnect_on_eof=False))
    frames = list(source)
    assert [f.index for f in frames] == list(range(45))
    assert all(f.image.shape == (120, 160, 3) and f.segment == 0 for f in frames)
    assert np.allclose(np.diff([f.pts for f in frames]), 1 / 30, atol=1e-3)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args) -> None:  # noqa: A002
        pass


def test_resolution_change_starts_a_new_segment(http_clip: str) -> None:
    source = LiveSource(http_clip, LiveOptions(queue_size=64, reconnect_on_eof=False))
    frames = list(source)
    assert [f.index for f in frames] == list(range(24))
    assert [f.image.shape[:2] for f in frames] == [(120, 160)] * 12 + [(96, 128)] * 12
    assert [f.segment for f in frames] == [0] * 12 + [1] * 12
    assert source.reconnects == 0 and source.state == "closed"


def test_http_source_reconnects_at_end_of_stream(http_clip: str) -> None:
    with LiveSource(http_clip, LiveOptions(queue_size=64, backoff_initial=0.05)) as source:
        frames = [frame for _, frame in zip(range(30), source, strict=False)]
    # 24 frames in two segments, then the stream ends and comes back: a third segment.
    assert [f.segment for f in frames[22:30]] == [1, 1, 2, 2, 2, 2, 2, 2]
    assert source.reconnects >= 1


def test_slow_consumer_drops_oldest_frames_and_reports_them(http_clip: str) -> None:
    stats = SourceStats("http-cam")
    source = LiveSource(http_clip, LiveOptions(queue_size=2, reconnect_on_eof=False), stats=stats)
    kept, reported = [], []
    for frame in source:
        kept.append(frame.index)
        reported += [d["frame"] for d in frame.extra.get("dropped_before", [])]
        assert all(d["cause"] == "source_backlog" for d in frame.extra.get("dropped_before", []))
        time.sleep(0.05)  # the decoder is far faster than this consumer
    assert source.dropped > 0 and source.dropped == stats.drops_by_cause["source_backlog"]
    assert kept == sorted(kept) and kept[-1] == 23, "the newest frames survive"
    assert sorted(kept + reported) == list(range(24)), "every dropped frame is reported once"
    assert stats.frames_in == 24
