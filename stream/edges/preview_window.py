"""``PreviewWindow`` (``--show``): an OpenCV window per source, drawn by a process of its own, so a slow
or closed window never holds up the pipeline."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable

import cv2
import numpy as np

from stream.edges.preview import check_image
from stream.edges.redact import redact

log = logging.getLogger(__name__)


def display_available() -> bool:
    """Whether a GUI window can open (an X11/Wayland display on Linux; assumed elsewhere)."""
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


class PreviewWindow:
    """``--show``: one OpenCV window per source, drawn at most ``max_fps`` times a second.

    The windows live in a child process that imports OpenCV and nothing of PyAV: PyAV's wheels carry a
    private libxcb, and once it is loaded OpenCV's Qt windows hang in the same process (PyAV issues
    #978/#1050). Frames go over a ZeroMQ PUSH socket with a high-water mark of two; ``publish()``
    drops a frame rather than wait when the window falls behind. Pressing q or Esc in a window
    (or closing the process) calls ``on_quit``.
    """

    def __init__(self, max_fps: float = 30.0, on_quit: Callable[[], None] | None = None,
                 title: str = "sapiens-stream") -> None:
        import zmq

        if not display_available():
            raise RuntimeError("--show needs a display (DISPLAY/WAYLAND_DISPLAY is not set); "
                               "use --serve 127.0.0.1:PORT for a browser preview instead")
        if not max_fps > 0:
            raise ValueError(f"max_fps must be positive, got {max_fps}")
        self.on_quit = on_quit
        self.error: str | None = None
        self.frames_sent = 0
        self.frames_dropped = 0
        self._closing = False
        self._lock = threading.Lock()
        self._dir = tempfile.mkdtemp(prefix="sapiens-show-")
        endpoint = f"ipc://{self._dir}/frames"
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.SNDHWM, 2)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(endpoint)
        code = (f"from stream.edges.preview_window import _window_process; "
                f"_window_process({endpoint!r}, {max_fps!r}, {title!r})")
        self._process = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
        self._watcher = threading.Thread(target=self._watch, name="preview-window", daemon=True)
        self._watcher.start()

    def publish(self, source: str, image_rgb: np.ndarray, stats: dict | None = None) -> None:
        import zmq

        check_image(image_rgb)
        header = json.dumps({"source": redact(source), "shape": list(image_rgb.shape)}).encode()
        with self._lock:
            if self._closing or self._process.poll() is not None:
                return
            try:
                self._socket.send_multipart([header, np.ascontiguousarray(image_rgb)], flags=zmq.NOBLOCK,
                                            copy=False)
                self.frames_sent += 1
            except zmq.Again:
                self.frames_dropped += 1  # the window is behind: it shows the next one instead

    def _watch(self) -> None:
        _, stderr = self._process.communicate()
        if self._process.returncode not in (0, None) and not self._closing:
            last = (stderr or "").strip().splitlines()
            self.error = f"preview window exited ({last[-1] if last else self._process.returncode})"
            log.error("%s", self.error)
        if not self._closing and self.on_quit is not None:
            self.on_quit()

    def close(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            self._socket.close(linger=0)
            self._context.term()
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self._process.kill()
        self._watcher.join(timeout=5.0)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> PreviewWindow:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _window_process(endpoint: str, max_fps: float, title: str) -> None:
    """Child process of ``PreviewWindow``: receive frames, show the newest of each source."""
    import signal

    import zmq

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    context = zmq.Context()
    socket = context.socket(zmq.PULL)
    socket.setsockopt(zmq.RCVHWM, 2)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(endpoint)
    wait_ms = max(1, math.floor(1000 / max_fps))
    windows: set[str] = set()
    parent = os.getppid()
    try:
        while os.getppid() == parent:  # orphaned: the pipeline is gone
            latest: dict[str, np.ndarray] = {}
            while socket.poll(0 if latest else wait_ms, zmq.POLLIN):
                header, pixels = socket.recv_multipart()
                meta = json.loads(header)
                latest[meta["source"]] = np.frombuffer(pixels, np.uint8).reshape(meta["shape"])
            for name, image in latest.items():
                window = f"{title}: {name}"
                if window not in windows:
                    cv2.namedWindow(window, cv2.WINDOW_NORMAL | cv2.WINDOW_KEEPRATIO)
                    windows.add(window)
                cv2.imshow(window, cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                return
    finally:
        socket.close(linger=0)
        context.term()
