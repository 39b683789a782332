"""``--control HOST:PORT``: a small HTTP API to list, add and remove live sources while a run goes on.

    GET    /sources          -> 200 [{"name", "url", "state", "shard"}, ...]   (URLs without credentials)
    POST   /sources          <- {"name": "door", "url": "rtsp://..."}  -> 201 the new source
    DELETE /sources/NAME     -> 202 the source, now "stopping" (it drains and closes its files)

A source's ``state``: ``running``, ``stopping`` (removed or the run stops; draining), ``removed`` (its
files are closed), ``ended`` (it ended by itself). ``shard``: where it runs on a Ray cluster (null on
one host). Bad requests are 400 with ``{"error": "..."}``, an unknown name 404, a name in use 409, a run
that cannot take the request now (it is stopping) 503. The server binds loopback only: the API starts
and stops camera pipelines, and has no authentication of its own.

The sources are a ``ControlledSources``: the single-host coordinator (``stream.pipeline.coordinator``)
or the Ray driver (``stream.cluster.driver``). Requests are served from threads of the server.
"""

from __future__ import annotations

import json
from http.server import BaseHTTPRequestHandler
from typing import Protocol

from stream.config import ConfigError, parse_host_port
from stream.edges.http_thread import BackgroundHTTPServer
from stream.runtime.curve import is_remote

MAX_BODY = 64 * 1024


class Conflict(Exception):
    """A source of that name is already running."""


class Unavailable(Exception):
    """The run cannot take the request now (it is stopping, or did not answer in time)."""


class ControlledSources(Protocol):
    def list_sources(self) -> list[dict]: ...

    def add_source(self, name: str, url: str) -> dict: ...  # ValueError: bad input; Conflict: name in use

    def remove_source(self, name: str) -> dict: ...  # KeyError: no such source


def check_control_address(value: str) -> tuple[str, int]:
    host, port = parse_host_port(value, "control")
    if is_remote(f"tcp://{host}:{port}"):
        raise ConfigError(f"control must bind a loopback address (127.0.0.1:PORT), got {value!r}")
    return host, port


class ControlServer:
    """Serves the API for ``sources`` from a background thread until ``close``."""

    def __init__(self, sources: ControlledSources, address: str) -> None:
        host, port = check_control_address(address)
        handler = _handler(sources)
        try:
            self._http = BackgroundHTTPServer(host, port, handler, "control-http")
        except OSError as exc:
            raise ConfigError(f"cannot serve the control API on {address}: {exc.strerror or exc}") from None
        self.url = self._http.url("sources")

    def close(self) -> None:
        self._http.close()


def _handler(sources: ControlledSources) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.rstrip("/") != "/sources":
                return self._reply(404, {"error": "only /sources is served here"})
            try:
                self._reply(200, sources.list_sources())
            except Unavailable as exc:
                self._reply(503, {"error": str(exc)})

        def do_POST(self) -> None:  # noqa: N802
            if self.path.rstrip("/") != "/sources":
                return self._reply(404, {"error": "POST /sources adds a source"})
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if not 0 < length <= MAX_BODY:
                    raise ValueError("send a JSON object {\"name\", \"url\"}")
                body = json.loads(self.rfile.read(length))
                if not isinstance(body, dict) or not isinstance(body.get("url"), str):
                    raise ValueError("send a JSON object {\"name\", \"url\"}")
                name = body.get("name")
                if name is not None and (not isinstance(name, str) or not _safe_name(name)):
                    raise ValueError("name must be letters, digits, '-', '_' or '.'")
                self._reply(201, sources.add_source(name, body["url"]))
            except Conflict as exc:
                self._reply(409, {"error": str(exc)})
            except Unavailable as exc:
                self._reply(503, {"error": str(exc)})
            except (ValueError, ConfigError) as exc:  # json.JSONDecodeError is a ValueError
                self._reply(400, {"error": str(exc).splitlines()[0]})

        def do_DELETE(self) -> None:  # noqa: N802
            prefix = "/sources/"
            if not self.path.startswith(prefix):
                return self._reply(404, {"error": "DELETE /sources/NAME removes a source"})
            try:
                self._reply(202, sources.remove_source(self.path[len(prefix) :]))
            except KeyError:
                self._reply(404, {"error": "no such source"})
            except Unavailable as exc:
                self._reply(503, {"error": str(exc)})

        def _reply(self, status: int, payload) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
            pass  # requests carry URLs with credentials: never logged

    return Handler


def _safe_name(name: str) -> bool:
    return bool(name) and all(c.isalnum() or c in "-_." for c in name) and not name.startswith(".")
