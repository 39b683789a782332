"""An HTTP server answering from a background thread: what the preview, the metrics endpoint and the control
API each serve from. Requests get threads of their own (a slow viewer never holds up another), and the
port can be bound again at once after a run ends."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class BackgroundHTTPServer:
    """Serves ``handler`` on ``(host, port)`` (0: any free port) until ``close``; binding errors are the
    ``OSError`` of the bind, for the caller to word."""

    def __init__(self, host: str, port: int, handler: type[BaseHTTPRequestHandler], name: str) -> None:
        self._server = _Server((host, port), handler)
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)
        self._thread.start()

    def url(self, path: str) -> str:
        """``http://HOST:PORT/path`` where it listens (an IPv6 address in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/{path}"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5.0)
