"""CURVE on ZeroMQ links that leave the host.

A ``tcp://`` endpoint that is not loopback carries frames and results over the network: such a link is
encrypted and authenticated with CURVE, or refused. The keys are made per run by whoever starts the run
(``CurveKeys.generate``) and handed to every process of the run (Ray actors get them in their
environment, ``CurveKeys.to_env`` / ``from_env``); nothing is stored on disk. The binding side (the
receiver of a data link, see ``stream.runtime.transport``) is the CURVE server and admits only clients
that present the run's client key, checked by a ZAP authenticator on its context: a peer without the
keys cannot connect, read or inject messages.

``secure`` is what the transport calls on every socket before it binds or connects.
"""

from __future__ import annotations

import ipaddress
import os
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

import zmq
from zmq.auth.thread import ThreadAuthenticator

# "server_public,server_secret,client_public,client_secret" (Z85; its alphabet has ':' but no ',')
ENV_VAR = "SAPIENS_STREAM_CURVE"
ZAP_DOMAIN = "sapiens-stream"


class CurveError(RuntimeError):
    """A link off loopback without CURVE keys, or a ZeroMQ built without CURVE (one-line message)."""


@dataclass(frozen=True)
class CurveKeys:
    """One run's key pairs (Z85): the server's (binding sides) and the client's (connecting sides)."""

    server_public: bytes
    server_secret: bytes
    client_public: bytes
    client_secret: bytes

    @classmethod
    def generate(cls) -> CurveKeys:
        if not zmq.has("curve"):
            raise CurveError("this ZeroMQ has no CURVE support: links between hosts cannot be secured")
        server_public, server_secret = zmq.curve_keypair()
        client_public, client_secret = zmq.curve_keypair()
        return cls(server_public, server_secret, client_public, client_secret)

    def to_env(self) -> dict[str, str]:
        """The keys as an environment variable for the run's other processes."""
        parts = (self.server_public, self.server_secret, self.client_public, self.client_secret)
        return {ENV_VAR: ",".join(p.decode("ascii") for p in parts)}

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> CurveKeys | None:
        value = (os.environ if environ is None else environ).get(ENV_VAR)
        if not value:
            return None
        parts = value.split(",")
        if len(parts) != 4 or any(len(p) != 40 for p in parts):
            raise CurveError(f"{ENV_VAR} must hold four Z85 keys separated by ','")
        return cls(*(p.encode("ascii") for p in parts))


def is_remote(endpoint: str) -> bool:
    """True for a ``tcp://`` endpoint whose host is not loopback (``*`` and ``0.0.0.0`` included)."""
    if not endpoint.startswith("tcp://"):
        return False
    host = urlsplit(endpoint).hostname or ""
    if host == "localhost":
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True  # a host name, a wildcard or an interface name: it may reach the network


def secure(
    sock: zmq.Socket, endpoint: str, *, bind: bool, keys: CurveKeys | None = None, force: bool = False
) -> bool:
    """Set ``sock`` up for CURVE when ``endpoint`` leaves the host (or when ``force``), before it binds
    or connects; returns whether it did. Keys default to the run's (``from_env``); a remote endpoint
    without keys is a CurveError: plain tcp off loopback is never opened."""
    if not (force or is_remote(endpoint)):
        return False
    keys = keys or CurveKeys.from_env()
    if keys is None:
        raise CurveError(
            f"{endpoint} is not loopback: links between hosts need the run's CURVE keys ({ENV_VAR}), "
            "plain tcp is refused"
        )
    if bind:
        _authenticator(sock.context, keys.client_public)
        sock.zap_domain = ZAP_DOMAIN.encode()
        sock.curve_secretkey = keys.server_secret
        sock.curve_publickey = keys.server_public
        sock.curve_server = True
    else:
        sock.curve_serverkey = keys.server_public
        sock.curve_publickey = keys.client_public
        sock.curve_secretkey = keys.client_secret
    return True


class _RunClients:
    """ZAP credentials check: only the run's client key is admitted."""

    def __init__(self) -> None:
        self.allowed: set[bytes] = set()

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.allowed


_authenticators: dict[int, tuple[ThreadAuthenticator, _RunClients]] = {}
_lock = threading.Lock()


def _authenticator(context: zmq.Context, client_public: bytes) -> None:
    """One ZAP authenticator per context (ZeroMQ allows one handler per context), started on first use."""
    with _lock:
        entry = _authenticators.get(id(context))
        if entry is None or entry[0].context is not context:
            auth = ThreadAuthenticator(context)
            auth.start()
            clients = _RunClients()
            auth.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=clients)
            entry = _authenticators[id(context)] = (auth, clients)
        entry[1].allowed.add(client_public)


def stop_authenticator(context: zmq.Context) -> None:
    """Stop the context's authenticator (before the context is terminated)."""
    with _lock:
        entry = _authenticators.pop(id(context), None)
    if entry is not None:
        entry[0].stop()
