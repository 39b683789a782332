"""CURVE on links off loopback, with real sockets: the run's peers get through, others are refused.

The sockets bind 127.0.0.1 (nothing is opened to the network by the tests) with CURVE forced through
``secure(force=True)``, exactly as a non-loopback endpoint gets it."""

from __future__ import annotations

import socket

import pytest
import zmq

from stream.runtime.curve import CurveKeys, is_remote, secure, stop_authenticator
from stream.runtime.transport import Endpoints, TransportError, make_socket

FAILED = (
    zmq.EVENT_HANDSHAKE_FAILED_AUTH,
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
)


@pytest.fixture
def server():
    """A CURVE-secured PULL on a free loopback port, its monitor, the run's keys and a client factory."""
    keys = CurveKeys.generate()
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    pull.linger = 0
    assert secure(pull, "tcp://127.0.0.1:0", bind=True, keys=keys, force=True)
    pull.bind("tcp://127.0.0.1:0")
    monitor = pull.get_monitor_socket(zmq.EVENT_HANDSHAKE_SUCCEEDED | sum(FAILED))
    clients = []

    def client(client_keys: CurveKeys | None) -> zmq.Socket:
        push = context.socket(zmq.PUSH)
        push.linger = 0
        if client_keys is not None:
            secure(push, pull.last_endpoint.decode(), bind=False, keys=client_keys, force=True)
        push.connect(pull.last_endpoint.decode())
        clients.append(push)
        return push

    yield keys, pull, monitor, client
    for sock in clients:
        sock.close()
    pull.disable_monitor()
    monitor.close()
    pull.close()
    stop_authenticator(context)
    context.term()


def _handshake(monitor: zmq.Socket, timeout_ms: int = 10_000) -> int:
    from zmq.utils.monitor import recv_monitor_message

    assert monitor.poll(timeout_ms), "no handshake within the timeout"
    return recv_monitor_message(monitor)["event"]


def test_a_peer_with_the_run_keys_gets_through(server) -> None:
    keys, pull, monitor, client = server
    client(keys).send(b"frame")
    assert _handshake(monitor) == zmq.EVENT_HANDSHAKE_SUCCEEDED
    assert pull.poll(10_000) and pull.recv() == b"frame"


def test_a_peer_with_another_client_key_is_refused(server) -> None:
    keys, pull, monitor, client = server
    # It knows the server's public key, but its own key pair is not the run's.
    stranger = CurveKeys.generate()
    intruder = CurveKeys(
        keys.server_public, keys.server_secret, stranger.client_public, stranger.client_secret
    )
    client(intruder).send(b"injected")
    assert _handshake(monitor) == zmq.EVENT_HANDSHAKE_FAILED_AUTH
    assert not pull.poll(500)


def test_a_plain_peer_is_refused(server) -> None:
    _, pull, monitor, client = server
    client(None).send(b"injected")
    assert _handshake(monitor) in FAILED
    assert not pull.poll(500)


def test_plain_tcp_off_loopback_is_refused_before_anything_opens(monkeypatch) -> None:
    monkeypatch.delenv("SAPIENS_STREAM_CURVE", raising=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = zmq.Context()
    try:
        with pytest.raises(TransportError, match="plain tcp is refused"):
            make_socket(context, zmq.PULL, f"tcp://0.0.0.0:{port}", bind=True, hwm=4)
    finally:
        context.term()


def test_keys_travel_through_the_environment_and_loopback_stays_plain() -> None:
    keys = CurveKeys.generate()
    assert CurveKeys.from_env(keys.to_env()) == keys
    assert CurveKeys.from_env({}) is None
    local = ("tcp://127.0.0.1:5555", "tcp://localhost:1", "ipc:///tmp/x", "inproc://a")
    remote = ("tcp://10.0.0.2:5555", "tcp://*:5555", "tcp://gpu-host:1")
    assert [is_remote(e) for e in local] == [False] * len(local)
    assert [is_remote(e) for e in remote] == [True] * len(remote)


def test_endpoints_off_loopback_need_the_run_keys(monkeypatch) -> None:
    monkeypatch.delenv("SAPIENS_STREAM_CURVE", raising=False)
    with pytest.raises(ValueError, match="CURVE"):
        Endpoints(transport="tcp", host="10.0.0.2")
    monkeypatch.setenv("SAPIENS_STREAM_CURVE", CurveKeys.generate().to_env()["SAPIENS_STREAM_CURVE"])
    assert Endpoints(transport="tcp", host="10.0.0.2").host == "10.0.0.2"
