"""Previews of the annotated video, kept off the inference path.

``PreviewServer`` (``--serve 127.0.0.1:PORT``): a small page with one MJPEG stream per source and live
stats, served by the standard library's threading HTTP server. ``publish()`` only swaps a reference to
the newest frame; JPEG encoding happens in the HTTP threads, once per new frame, and only while someone
watches. A slow browser just misses frames: nothing ever waits for it.

``PreviewWindow`` (``--show``) is in ``stream.edges.preview_window``.
"""

from __future__ import annotations

import html
import json
import logging
import math
import re
import threading
import time
from http.server import BaseHTTPRequestHandler
from urllib.parse import unquote

import cv2
import numpy as np

from stream.edges.http_thread import BackgroundHTTPServer
from stream.edges.redact import redact

log = logging.getLogger(__name__)

_BOUNDARY = "sapiens-frame"


def check_image(image: np.ndarray) -> None:
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3
            and image.dtype == np.uint8):
        shape = getattr(image, "shape", None)
        raise ValueError(f"preview images must be (H, W, 3) uint8 RGB arrays, got {shape} "
                         f"{getattr(image, 'dtype', type(image).__name__)}")


class _Slot:
    """The newest frame of one source and its JPEG, encoded at most once per frame."""

    def __init__(self, name: str, slot_id: str) -> None:
        self.name = name
        self.id = slot_id
        self.cond = threading.Condition()
        self.image: np.ndarray | None = None
        self.stats: dict = {}
        self.version = 0
        self._jpeg: bytes | None = None
        self._jpeg_version = -1
        self._encode_lock = threading.Lock()

    def jpeg(self, quality: int) -> tuple[int, bytes | None]:
        """(version, JPEG bytes) of the newest frame; encodes outside the publish path."""
        with self._encode_lock:
            with self.cond:
                version, image = self.version, self.image
            if image is None:
                return version, None
            if self._jpeg_version != version:
                ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                                          [cv2.IMWRITE_JPEG_QUALITY, quality])
                if not ok:
                    raise RuntimeError(f"JPEG encoding failed for preview of {self.name}")
                self._jpeg, self._jpeg_version = buffer.tobytes(), version
            return version, self._jpeg


class PreviewServer:
    """Browser preview on ``http://host:port/``: MJPEG per source plus live stats (port 0: any free port).

    Binds 127.0.0.1 unless told otherwise. Routes: ``/`` (page), ``/sources.json`` (names, stream paths,
    stats), ``/stream/<id>.mjpg`` (multipart MJPEG), ``/frame/<id>.jpg`` (newest frame). At most
    ``max_viewers`` MJPEG streams are served at once (each holds a thread and encodes JPEGs); one more
    gets HTTP 503 with ``Retry-After``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 8080, jpeg_quality: int = 80,
                 max_fps: float = 30.0, max_viewers: int = 4) -> None:
        if not 1 <= jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100, got {jpeg_quality}")
        if not max_fps > 0:
            raise ValueError(f"max_fps must be positive, got {max_fps}")
        if max_viewers < 1:
            raise ValueError(f"max_viewers must be >= 1, got {max_viewers}")
        self.jpeg_quality = int(jpeg_quality)
        self.min_interval = 1.0 / max_fps
        self.max_viewers = int(max_viewers)
        self._viewer_slots = threading.BoundedSemaphore(self.max_viewers)
        self._lock = threading.Lock()
        self._slots: dict[str, _Slot] = {}
        self._closing = threading.Event()
        try:
            self._http = BackgroundHTTPServer(host, port, _make_handler(self), "preview-http")
        except OSError as exc:
            raise OSError(f"cannot serve the preview on {host}:{port}: {exc.strerror or exc}") from None
        self.host, self.port = self._http.host, self._http.port
        self.url = self._http.url("")

    def publish(self, source: str, image_rgb: np.ndarray, stats: dict | None = None) -> None:
        """Make ``image_rgb`` the newest frame of ``source``. Never blocks on viewers; do not mutate the
        array afterwards (it is shared, not copied)."""
        check_image(image_rgb)
        slot = self._slot(source)
        with slot.cond:
            slot.image = image_rgb
            if stats is not None:
                slot.stats = stats
            slot.version += 1
            slot.cond.notify_all()

    def sources(self) -> list[dict]:
        with self._lock:
            slots = list(self._slots.values())
        return [{"name": s.name, "id": s.id, "stream": f"/stream/{s.id}.mjpg", "frame": f"/frame/{s.id}.jpg",
                 "stats": s.stats, "frames": s.version} for s in slots]

    def close(self) -> None:
        self._closing.set()
        with self._lock:
            slots = list(self._slots.values())
        for slot in slots:
            with slot.cond:
                slot.cond.notify_all()
        self._http.close()

    def __enter__(self) -> PreviewServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- used by the handler -----------------------------------------------------------------------
    def _slot(self, source: str) -> _Slot:
        with self._lock:
            slot = self._slots.get(source)
            if slot is None:
                base = re.sub(r"[^A-Za-z0-9_-]+", "_", redact(source)).strip("_")[:48] or "source"
                slot_id, n = base, 1
                while any(s.id == slot_id for s in self._slots.values()):
                    n += 1
                    slot_id = f"{base}-{n}"
                slot = self._slots[source] = _Slot(redact(source), slot_id)
            return slot

    def _slot_by_id(self, slot_id: str) -> _Slot | None:
        with self._lock:
            return next((s for s in self._slots.values() if s.id == slot_id), None)


def _make_handler(preview: PreviewServer) -> type[BaseHTTPRequestHandler]:
    def _route(pattern: str, path: str) -> _Slot | None:
        match = re.fullmatch(pattern, path)
        return preview._slot_by_id(match[1]) if match else None

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = unquote(self.path.split("?", 1)[0])
            if path in ("/", "/index.html"):
                self._send(200, "text/html; charset=utf-8", _page(preview.sources()).encode())
            elif path == "/sources.json":
                body = json.dumps(_finite(preview.sources()), default=_json_default)
                self._send(200, "application/json", body.encode())
            elif (slot := _route(r"/stream/([A-Za-z0-9_-]+)\.mjpg", path)) is not None:
                if not preview._viewer_slots.acquire(blocking=False):
                    self._busy()
                    return
                try:
                    self._stream(slot)
                finally:
                    preview._viewer_slots.release()
            elif (slot := _route(r"/frame/([A-Za-z0-9_-]+)\.jpg", path)) is not None:
                _, jpeg = slot.jpeg(preview.jpeg_quality)
                if jpeg is None:
                    self.send_error(404, "no frame yet")
                else:
                    self._send(200, "image/jpeg", jpeg)
            else:
                self.send_error(404)

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def _busy(self) -> None:
            body = f"at most {preview.max_viewers} preview streams at once; try again later\n".encode()
            self.send_response(503)
            self.send_header("Retry-After", "5")
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _stream(self, slot: _Slot) -> None:
            self.send_response(200)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={_BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            sent = 0
            try:
                while not preview._closing.is_set():
                    with slot.cond:
                        if slot.version == sent or slot.image is None:
                            slot.cond.wait(timeout=1.0)  # wakes on publish and on close
                            continue
                    started = time.monotonic()
                    sent, jpeg = slot.jpeg(preview.jpeg_quality)
                    header = (f"--{_BOUNDARY}\r\nContent-Type: image/jpeg\r\n"
                              f"Content-Length: {len(jpeg)}\r\n\r\n").encode()
                    self.wfile.write(header + jpeg + b"\r\n")
                    self.wfile.flush()
                    pause = preview.min_interval - (time.monotonic() - started)
                    if pause > 0:
                        time.sleep(pause)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the viewer went away

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
            log.debug("preview: " + format, *args)

    return Handler


def _finite(value):
    """NaN/inf -> None, recursively: browsers' JSON.parse rejects them."""
    if isinstance(value, float | np.floating):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    return str(value)


def _page(sources: list[dict]) -> str:
    """The preview page: streams known now are in the HTML; the script adds later ones and the stats."""
    figures = "\n".join(
        f'<figure id="src-{s["id"]}"><img src="{s["stream"]}" alt="{html.escape(s["name"])}">'
        f'<figcaption>{html.escape(s["name"])}</figcaption><pre class="stats"></pre></figure>'
        for s in sources
    )
    return _PAGE_TEMPLATE.replace("{figures}", figures)


_PAGE_TEMPLATE = """<!doctype html>
<html><head><meta charset="utf-8"><title>sapiens-stream preview</title>
<style>
body { background: #111; color: #ddd; font: 14px sans-serif; margin: 12px; }
main { display: flex; flex-wrap: wrap; gap: 12px; }
figure { margin: 0; max-width: 640px; }
img { display: block; max-width: 640px; background: #000; }
pre { margin: 4px 0; font-size: 12px; white-space: pre-wrap; }
</style></head>
<body><main id="sources">
{figures}
</main>
<script>
function fmt(stats) {
  const ms = v => (v === null || v === undefined) ? "-" : (v * 1000).toFixed(0) + " ms";
  const num = v => (typeof v === "number" && !Number.isInteger(v)) ? v.toFixed(1) : String(v);
  const known = {fps_in: v => "in " + num(v) + " fps", fps_out: v => "out " + num(v) + " fps",
                 drops: v => "drops " + v, latency_p50: v => "p50 " + ms(v), latency_p95: v => "p95 " + ms(v),
                 reconnects: v => "reconnects " + v, state: v => "[" + v + "]"};
  return Object.entries(stats)
    .filter(([k, v]) => typeof v !== "object" || v === null)
    .map(([k, v]) => known[k] ? known[k](v) : k + " " + num(v)).join("  ");
}
async function refresh() {
  try {
    const sources = await (await fetch("/sources.json", {cache: "no-store"})).json();
    const main = document.getElementById("sources");
    for (const s of sources) {
      let fig = document.getElementById("src-" + s.id);
      if (!fig) {
        fig = document.createElement("figure");
        fig.id = "src-" + s.id;
        const img = document.createElement("img");
        img.src = s.stream;
        img.alt = s.name;
        const caption = document.createElement("figcaption");
        caption.textContent = s.name;
        const pre = document.createElement("pre");
        pre.className = "stats";
        fig.append(img, caption, pre);
        main.append(fig);
      }
      fig.querySelector("pre").textContent = fmt(s.stats || {});
    }
  } catch (e) { /* server restarting: try again */ }
}
refresh();
setInterval(refresh, 1000);
</script></body></html>
"""
