"""ZeroMQ plumbing shared by every stage: endpoints, sockets with explicit limits, send/receive.

Which sockets a run has, who binds them and their limits is the table in ``stream.runtime.topology``;
this module makes them:

- every socket gets explicit send and receive high-water marks (messages, not bytes) and a linger
  (``make_socket`` refuses 0, which ZeroMQ reads as unbounded);
- endpoints come from ``Endpoints``: ``inproc://`` (threads of one process, one shared context),
  ``ipc://`` (processes on one host; the default) or ``tcp://`` (loopback unless CURVE is set up).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket as pysocket
import tempfile
import uuid
from dataclasses import dataclass, field

import zmq

from stream.runtime.curve import CurveError, CurveKeys, secure
from stream.runtime.messages import Message, pack, unpack

# Parts smaller than this are copied into libzmq (cheaper than tracking a zero-copy buffer).
COPY_THRESHOLD = 64 * 1024
DEFAULT_LINGER_MS = 2000
TRANSPORTS = ("inproc", "ipc", "tcp")


class TransportError(RuntimeError):
    """A socket could not be set up or a peer stopped answering."""


@dataclass
class Endpoints:
    """Where every named endpoint of one run lives.

    ``transport`` picks the scheme; ``names`` fixes endpoints explicitly (e.g. a GPU worker on another
    host); otherwise names are derived: ``inproc://<run>-<name>``, ``ipc://<dir>/<name>`` or a free
    loopback port per name.
    """

    transport: str = "ipc"
    host: str = "127.0.0.1"
    names: dict[str, str] = field(default_factory=dict)
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    ipc_dir: str | None = None

    def __post_init__(self) -> None:
        if self.transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {self.transport!r}")
        if self.transport == "tcp" and not _is_loopback(self.host) and CurveKeys.from_env() is None:
            # Off loopback every link is CURVE (stream.runtime.curve): without the run's keys, refuse.
            raise ValueError(
                f"tcp transport on {self.host} would expose frames to the network; "
                "bind 127.0.0.1, or run with CURVE keys (links off loopback are CURVE-only)"
            )

    def endpoint(self, name: str) -> str:
        """The endpoint for ``name`` (created on first use, then stable for this run)."""
        if name in self.names:
            return self.names[name]
        if self.transport == "ipc" and self.ipc_dir is None:
            # Short directory: unix socket paths are limited to about 107 bytes.
            self.ipc_dir = tempfile.mkdtemp(prefix="ss-")
        if self.transport == "tcp":
            address = f"tcp://{self.host}:{_free_port(self.host)}"
        else:
            address = self.derived(name)
        self.names[name] = address
        return address

    @property
    def derivable(self) -> bool:
        """Can a worker work out the endpoint of a name it was not given (``derived``)? Not for tcp,
        whose ports are picked free by the coordinator."""
        return self.transport == "inproc" or (self.transport == "ipc" and self.ipc_dir is not None)

    def derived(self, name: str) -> str:
        """The endpoint ``endpoint(name)`` gives on inproc or ipc, worked out from the run's id or
        directory alone: a worker of a run with a control API finds a source added after it started."""
        if name in self.names:
            return self.names[name]
        if not self.derivable:
            raise ValueError(f"the endpoint of {name!r} is picked by the coordinator ({self.transport})")
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        if self.transport == "inproc":
            return f"inproc://{self.run_id}-{safe}"
        return f"ipc://{self.ipc_dir}/{safe}"

    def pattern(self, name: str) -> str:
        """What the endpoint for ``name`` will look like, without creating it (for ``--print-topology``)."""
        if name in self.names:
            return self.names[name]
        if self.transport == "inproc":
            return f"inproc://<run>-{name}"
        if self.transport == "ipc":
            return f"ipc://<run dir>/{name}"
        return f"tcp://{self.host}:<free port>"

    def cleanup(self) -> None:
        """Remove the ipc socket directory (after every worker has closed its sockets)."""
        if self.ipc_dir and os.path.isdir(self.ipc_dir):
            shutil.rmtree(self.ipc_dir, ignore_errors=True)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _free_port(host: str) -> int:
    with pysocket.socket(pysocket.AF_INET, pysocket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def make_socket(
    context: zmq.Context,
    socket_type: int,
    endpoint: str,
    *,
    bind: bool,
    hwm: int,
    linger_ms: int = DEFAULT_LINGER_MS,
    subscribe: bytes | None = None,
    curve: CurveKeys | None = None,
) -> zmq.Socket:
    """A socket of ``socket_type`` with send/receive HWM ``hwm`` and ``linger_ms``, bound or connected.
    A ``tcp://`` endpoint off loopback gets CURVE (``curve``, else the run's keys) or is refused."""
    if hwm <= 0:
        raise ValueError(f"high-water mark must be positive (0 means unbounded in ZeroMQ), got {hwm}")
    sock = context.socket(socket_type)
    sock.setsockopt(zmq.SNDHWM, hwm)
    sock.setsockopt(zmq.RCVHWM, hwm)
    sock.setsockopt(zmq.LINGER, linger_ms)
    if socket_type == zmq.SUB:
        sock.setsockopt(zmq.SUBSCRIBE, subscribe or b"")
    try:
        secure(sock, endpoint, bind=bind, keys=curve)
    except CurveError as exc:
        sock.close(linger=0)
        raise TransportError(str(exc)) from None
    try:
        if bind:
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)
    except zmq.ZMQError as exc:
        sock.close(linger=0)
        action = "bind" if bind else "connect"
        raise TransportError(f"cannot {action} {endpoint}: {exc}") from exc
    return sock


def send_message(
    sock: zmq.Socket, message: Message, flags: int = 0, copy_threshold: int = COPY_THRESHOLD
) -> None:
    """Send ``message`` as one multipart message; large parts go zero-copy."""
    parts = pack(message)
    last = len(parts) - 1
    for i, part in enumerate(parts):
        more = zmq.SNDMORE if i < last else 0
        copy = (
            len(part) < copy_threshold if not isinstance(part, memoryview) else part.nbytes < copy_threshold
        )
        sock.send(part, flags | more, copy=copy)


def recv_message(sock: zmq.Socket, flags: int = 0) -> Message:
    """Receive one envelope; payload arrays view the received frames without copying."""
    return unpack(sock.recv_multipart(flags, copy=False))


def close_sender(sock: zmq.Socket, finished: bool) -> None:
    """Close a sending socket: after a normal end, wait until every queued message has left (the
    receiver is alive and draining); otherwise drop what is still queued.

    Leaving is not arriving: libzmq drops what a receiver at its high-water mark had not yet read from
    the kernel when the sender disconnects. Stages therefore close their senders only once the
    coordinator says every sink is finished (``StageLink.wait_for_finish``).
    """
    sock.close(linger=-1 if finished else 0)


class Stopped(Exception):
    """Raised by a blocking send/receive when the stage was told to abort."""


def send_until(sock: zmq.Socket, message: Message, should_abort, poll_ms: int = 100) -> None:
    """Block until ``sock`` accepts ``message`` (backpressure), checking ``should_abort`` meanwhile."""
    while not sock.poll(poll_ms, zmq.POLLOUT):
        if should_abort():
            raise Stopped()
    send_message(sock, message)
