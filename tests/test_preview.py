"""Browser preview checked in headless Chromium (screenshot colours), the MJPEG stream read by a raw HTTP
client, and the OpenCV window drawn into a virtual X server (Xvfb) whose framebuffer the test reads back."""

from __future__ import annotations

import json
import os
import select
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import av  # noqa: F401 - loaded first, as in the pipeline: the --show window must still draw (PyAV #978)
import cv2
import numpy as np
import pytest

from stream.edges.preview import PreviewServer
from stream.edges.preview_window import PreviewWindow

sys.path.insert(0, str(Path(__file__).resolve().parent))
from system_deps import command_missing  # noqa: E402

RED = (230, 30, 30)
BLUE = (30, 40, 220)
GREEN = (20, 200, 60)


def solid(color: tuple[int, int, int], size: tuple[int, int] = (160, 120)) -> np.ndarray:
    image = np.empty((size[1], size[0], 3), np.uint8)
    image[...] = color
    return image


def color_fraction(image_rgb: np.ndarray, color: tuple[int, int, int], tolerance: int = 40) -> float:
    """Share of pixels within ``tolerance`` of ``color`` in every channel."""
    close = np.abs(image_rgb.astype(np.int16) - np.array(color, np.int16)).max(axis=-1) <= tolerance
    return float(close.mean())


class Feeder:
    """Publishes frames to a preview at ~20 fps from a thread, like a render stage would."""

    def __init__(self, preview, frames: dict[str, np.ndarray], stats: dict | None = None) -> None:
        self.preview, self.frames, self.stats = preview, frames, stats
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, image in list(self.frames.items()):
                self.preview.publish(name, image, self.stats)
            time.sleep(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def read_mjpeg_parts(url: str, count: int, timeout: float = 10.0) -> list[np.ndarray]:
    """The first ``count`` JPEG parts of a multipart MJPEG response, decoded to RGB."""
    parts = []
    with urllib.request.urlopen(url, timeout=timeout) as response:
        content_type = response.headers["Content-Type"]
        assert content_type.startswith("multipart/x-mixed-replace; boundary=")
        boundary = content_type.split("boundary=", 1)[1].encode()
        while len(parts) < count:
            line = response.readline().strip()
            if line != b"--" + boundary:
                continue
            headers = {}
            while (line := response.readline().strip()) != b"":
                key, _, value = line.decode().partition(":")
                headers[key.lower()] = value.strip()
            assert headers["content-type"] == "image/jpeg"
            jpeg = response.read(int(headers["content-length"]))
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            parts.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    return parts


def test_binds_loopback_by_default_and_rejects_bad_input() -> None:
    with PreviewServer(port=0) as preview:
        assert preview.host == "127.0.0.1" and preview.url.startswith("http://127.0.0.1:")
        with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
            preview.publish("cam", np.zeros((4, 4), np.uint8))
        with pytest.raises(ValueError, match=r"\(H, W, 3\) uint8"):
            preview.publish("cam", np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError, match="jpeg_quality"):
        PreviewServer(port=0, jpeg_quality=0)


def test_port_in_use_is_a_clear_error() -> None:
    with PreviewServer(port=0) as preview:
        with pytest.raises(OSError, match=f"cannot serve the preview on 127.0.0.1:{preview.port}"):
            PreviewServer(port=preview.port)


def test_mjpeg_stream_follows_the_newest_frame_and_redacts_names() -> None:
    with PreviewServer(port=0) as preview:
        base = preview.url.rstrip("/")
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(base + "/stream/nothing.mjpg", timeout=5)
        assert missing.value.code == 404

        name = "rtsp://admin:topsecret@10.1.1.1/live"
        stats = {"fps_in": 25.0, "latency_p50": float("nan")}
        preview.publish(name, solid(RED), stats)  # the source exists from its first frame on
        feeder = Feeder(preview, {name: solid(RED)}, stats)
        try:
            sources = json.loads(urllib.request.urlopen(base + "/sources.json", timeout=5).read())
            assert [s["name"] for s in sources] == ["rtsp://***@10.1.1.1/live"]
            assert sources[0]["stats"] == {"fps_in": 25.0, "latency_p50": None}
            page = urllib.request.urlopen(base + "/", timeout=5).read().decode()
            assert "topsecret" not in page and "topsecret" not in json.dumps(sources)
            stream_url = base + sources[0]["stream"]

            first = read_mjpeg_parts(stream_url, 2)
            assert all(color_fraction(image, RED) > 0.95 for image in first)
            feeder.stop()  # no red frame is published after the green one
            preview.publish(name, solid(GREEN), stats)
            feeder = Feeder(preview, {name: solid(GREEN)}, stats)
            later = read_mjpeg_parts(stream_url, 2)
            assert all(color_fraction(image, GREEN) > 0.95 for image in later)
            still = urllib.request.urlopen(base + sources[0]["frame"], timeout=5).read()
            still_rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(still, np.uint8), cv2.IMREAD_COLOR),
                                     cv2.COLOR_BGR2RGB)
            assert color_fraction(still_rgb, GREEN) > 0.95
        finally:
            feeder.stop()


def test_publish_never_waits_for_a_viewer_that_does_not_read() -> None:
    with PreviewServer(port=0) as preview:
        preview.publish("cam", solid(BLUE))
        # A viewer that requests the stream and then never reads: its socket buffers fill up.
        stalled = socket.create_connection((preview.host, preview.port))
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.sendall(b"GET /stream/cam.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
        # Incompressible 720p frames (600 kB JPEGs), paced like a camera so the viewer's stream thread
        # takes many of them: a few megabytes fill the socket buffers and leave it stuck writing for
        # good. A publish that waited for the viewer would then wait forever (the deadline only bounds
        # that hang).
        noise = np.random.default_rng(0).integers(0, 255, (720, 1280, 3), dtype=np.uint8)

        def publish_like_a_camera() -> None:
            for _ in range(100):
                preview.publish("cam", noise)
                time.sleep(0.02)

        publisher = threading.Thread(target=publish_like_a_camera, daemon=True)
        closer = threading.Thread(target=preview.close, daemon=True)
        try:
            publisher.start()
            publisher.join(timeout=60)
            published = not publisher.is_alive()
            closer.start()
            closer.join(timeout=30)
            closed = not closer.is_alive()
        finally:
            stalled.close()  # frees the stream thread whatever happened, so a failure cannot hang
    assert published, "publish waited on a viewer that does not read"
    assert closed, "close() must not hang on a stuck viewer"


@pytest.mark.needs_system(what="Debian package chromium", missing=command_missing("chromium"))
def test_page_in_headless_chromium_shows_every_source(tmp_path: Path) -> None:
    with PreviewServer(port=0) as preview:
        stats = {"fps_in": 30.0, "fps_out": 29.5, "drops": 2, "latency_p50": 0.04, "latency_p95": 0.09,
                 "reconnects": 1}
        frames = {"cam-red": solid(RED, (240, 160)), "cam-blue": solid(BLUE, (240, 160))}
        for name, image in frames.items():  # both sources are on the page the browser loads
            preview.publish(name, image, stats)
        feeder = Feeder(preview, frames, stats)
        try:
            shot = tmp_path / "shot.png"
            command = [
                "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=900,500",
                "--timeout=4000", preview.url,
            ]
            done = subprocess.run(command, capture_output=True, text=True, timeout=90)
        finally:
            feeder.stop()
    assert done.returncode == 0, done.stderr[-2000:]
    image = cv2.imread(str(shot), cv2.IMREAD_COLOR)
    assert image is not None and image.shape == (500, 900, 3), "the screenshot must be a readable PNG"
    rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    page_area = rgb.shape[0] * rgb.shape[1]
    for color in (RED, BLUE):  # each stream's 240x160 picture is on the page
        assert color_fraction(rgb, color) * page_area > 0.9 * 240 * 160
    assert color_fraction(rgb, (17, 17, 17), tolerance=4) > 0.4, "the dark page background"


# -- --show window ---------------------------------------------------------------------------------------
def test_window_without_a_display_is_a_clear_error(monkeypatch) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(RuntimeError, match="--show needs a display.*--serve"):
        PreviewWindow()


def _read_xwd(path: Path) -> np.ndarray:
    """Xvfb's framebuffer file (XWD, 24-bit TrueColor, 32 bits per pixel) as an RGB array."""
    data = path.read_bytes()
    fields = struct.unpack(">25I", data[:100])
    header_size, width, height = fields[0], fields[4], fields[5]
    bytes_per_line, ncolors = fields[12], fields[19]
    offset = header_size + ncolors * 12
    pixels = np.frombuffer(data, np.uint8, count=bytes_per_line * height, offset=offset)
    pixels = pixels.reshape(height, bytes_per_line)[:, : width * 4].reshape(height, width, 4)
    byte_order = fields[7]  # 0: LSBFirst -> B, G, R, pad in memory
    return pixels[..., [2, 1, 0]] if byte_order == 0 else pixels[..., [1, 2, 3]]


@pytest.mark.needs_system(what="Debian package xvfb", missing=command_missing("Xvfb"))
def test_window_draws_frames_on_a_virtual_display(tmp_path: Path, monkeypatch) -> None:
    # Xvfb picks a free display itself and writes its number once it accepts clients (-displayfd): a
    # number chosen here may belong to a server that left only its lock file behind.
    ready_r, ready_w = os.pipe()
    xvfb = subprocess.Popen(["Xvfb", "-displayfd", str(ready_w), "-screen", "0", "640x480x24", "-nolisten",
                             "tcp", "-fbdir", str(tmp_path)], pass_fds=(ready_w,),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    os.close(ready_w)
    try:
        with os.fdopen(ready_r) as ready:
            assert select.select([ready], [], [], 30)[0], "Xvfb did not start within 30 s"
            number = ready.readline().strip()
        assert number.isdigit(), f"Xvfb did not start (exit status {xvfb.poll()})"
        monkeypatch.setenv("DISPLAY", f":{number}")
        monkeypatch.setenv("QT_LOGGING_RULES", "*=false")
        window = PreviewWindow(max_fps=30)
        feeder = Feeder(window, {"cam": solid(GREEN, (320, 240))})
        deadline = time.monotonic() + 10
        screen = _read_xwd(tmp_path / "Xvfb_screen0")
        while color_fraction(screen, GREEN, tolerance=10) < 0.2 and time.monotonic() < deadline:
            time.sleep(0.1)
            screen = _read_xwd(tmp_path / "Xvfb_screen0")
        feeder.stop()
        window.close()
    finally:
        xvfb.terminate()
        xvfb.wait(timeout=10)
    assert window.error is None and window.frames_sent > 0
    assert color_fraction(screen, GREEN, tolerance=10) * screen.shape[0] * screen.shape[1] > 0.9 * 320 * 240


def test_viewers_beyond_the_cap_get_503_until_one_leaves() -> None:
    with PreviewServer(port=0, max_viewers=2) as preview:
        feeder = Feeder(preview, {"cam": solid(RED)})
        stream_url = preview.url + "stream/cam.mjpg"
        viewers = []
        try:
            viewers += [urllib.request.urlopen(stream_url, timeout=10) for _ in range(2)]
            assert viewers[0].readline().startswith(b"--"), "frames flow to the viewers"
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(stream_url, timeout=10)
            assert refused.value.code == 503 and refused.value.headers["Retry-After"] == "5"
            assert "at most 2 preview streams" in refused.value.read().decode()
            # The page, the stats and single frames are still served at the cap.
            assert urllib.request.urlopen(preview.url, timeout=10).status == 200
            assert urllib.request.urlopen(preview.url + "frame/cam.jpg", timeout=10).status == 200
            viewers.pop().close()  # one viewer leaves: the next frame written to it frees its place
            deadline = time.monotonic() + 10
            while True:
                try:
                    viewers.append(urllib.request.urlopen(stream_url, timeout=10))
                    break
                except urllib.error.HTTPError as exc:
                    assert exc.code == 503 and time.monotonic() < deadline, "the place was never freed"
                    time.sleep(0.1)
            assert viewers[-1].headers["Content-Type"].startswith("multipart/x-mixed-replace")
        finally:
            feeder.stop()
            for viewer in viewers:
                viewer.close()
    with pytest.raises(ValueError, match="max_viewers"):
        PreviewServer(port=0, max_viewers=0)
