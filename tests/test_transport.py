"""ZeroMQ transport on real sockets, and the ordering and batching logic of the stage runtime."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
import zmq

from stream.engine.device import DeviceStreams, OverlapScheduler, padded_size, static_batch_sizes
from stream.media.frames import DecodedFrame
from stream.runtime.messages import control_message, frame_message
from stream.runtime.reorder import ReorderBuffer
from stream.runtime.transport import COPY_THRESHOLD, Endpoints, make_socket, recv_message, send_message


def _frame(index: int, size: tuple[int, int] = (720, 1280)) -> DecodedFrame:
    image = np.full((*size, 3), index % 256, np.uint8)
    return DecodedFrame(image, index, index / 30, Fraction(1, 30), 0.0, pts_raw=index)


@pytest.mark.parametrize("transport", ["inproc", "ipc", "tcp"])
def test_push_pull_round_trip_of_large_frames(transport: str) -> None:
    topology = Endpoints(transport=transport)
    endpoint = topology.endpoint("frames")
    context = zmq.Context()
    try:
        receiver = make_socket(context, zmq.PULL, endpoint, bind=True, hwm=4)
        sender = make_socket(context, zmq.PUSH, endpoint, bind=False, hwm=4)
        assert _frame(0).image.nbytes > COPY_THRESHOLD  # goes zero-copy
        for i in range(6):
            send_message(sender, frame_message("cam", i, _frame(i)))
            message = recv_message(receiver)
            assert message.seq == i
            assert message.arrays["image"].shape == (720, 1280, 3)
            assert int(message.arrays["image"][100, 100, 0]) == i
        for sock in (sender, receiver):
            assert sock.getsockopt(zmq.SNDHWM) == 4 and sock.getsockopt(zmq.RCVHWM) == 4
            sock.close(linger=0)
    finally:
        context.term()
        topology.cleanup()


def test_high_water_mark_bounds_the_queue() -> None:
    topology = Endpoints(transport="inproc")
    endpoint = topology.endpoint("bounded")
    context = zmq.Context()
    receiver = make_socket(context, zmq.PULL, endpoint, bind=True, hwm=2)
    sender = make_socket(context, zmq.PUSH, endpoint, bind=False, hwm=2)
    sent = 0
    with pytest.raises(zmq.Again):
        for sent in range(100):  # noqa: B007 - the count is checked below
            send_message(sender, control_message("skip", "cam", sent), flags=zmq.NOBLOCK)
    assert 2 <= sent <= 8  # bounded by sender + receiver HWM, never unbounded
    assert [recv_message(receiver).seq for _ in range(sent)] == list(range(sent))
    sender.close(linger=0)
    receiver.close(linger=0)
    context.term()


def test_socket_set_up_errors_are_clear() -> None:
    context = zmq.Context()
    with pytest.raises(ValueError, match="unbounded"):
        make_socket(context, zmq.PUSH, "inproc://x", bind=True, hwm=0)
    with pytest.raises(ValueError, match="expose frames"):
        Endpoints(transport="tcp", host="0.0.0.0")
    with pytest.raises(ValueError, match="transport must be"):
        Endpoints(transport="udp")
    context.term()


def test_ipc_endpoints_live_in_a_private_directory_removed_at_cleanup() -> None:
    topology = Endpoints(transport="ipc")
    a, b = topology.endpoint("infer"), topology.endpoint("render.clip 1.frames")
    assert a.startswith("ipc://") and a != b and " " not in b
    assert topology.endpoint("infer") == a  # stable per run
    directory = topology.ipc_dir
    topology.cleanup()
    assert not __import__("os").path.exists(directory)


def test_reorder_buffer_releases_in_sequence() -> None:
    buffer = ReorderBuffer()
    released = []
    for seq in (2, 0, 3, 1, 5, 4):
        released += [m.seq for m in buffer.push(control_message("skip", "cam", seq))]
    assert released == [0, 1, 2, 3, 4, 5] and len(buffer) == 0
    with pytest.raises(ValueError, match="duplicate"):
        list(buffer.push(control_message("skip", "cam", 3)))


UPLOAD_AHEAD = [("upload", 1), ("upload", 2), ("compute", 1), ("upload", 3), ("compute", 2), ("compute", 3)]
FINISH_BEHIND = [*UPLOAD_AHEAD[:5], ("finish", 10), ("compute", 3), ("finish", 20), ("finish", 30)]


@pytest.mark.parametrize(
    ("finish", "returned", "order"),
    [
        (False, [[], [10], [20]], UPLOAD_AHEAD),  # upload k+1, then compute k
        (True, [[], [], [100]], FINISH_BEHIND),  # ... then finish k-1
    ],
    ids=["upload-ahead", "finish-behind"],
)
def test_overlap_scheduler_order(finish: bool, returned: list, order: list) -> None:
    trace = []

    def stage(name, factor):
        def run(batch):
            trace.append((name, batch))
            return batch * factor

        return run

    stages = [stage("upload", 1), stage("compute", 10)] + ([stage("finish", 10)] if finish else [])
    scheduler = OverlapScheduler(*stages)
    results = []
    for batch, expected in zip((1, 2, 3), returned, strict=True):
        results.append(scheduler.submit(batch))
        assert results[-1] == expected
    assert scheduler.has_pending
    rest = scheduler.flush()
    assert sum(results, []) + rest == ([100, 200, 300] if finish else [10, 20, 30])
    assert trace == order
    assert scheduler.flush() == [] and not scheduler.has_pending


def test_device_streams_on_cpu_are_synchronous_zero_copy_views() -> None:
    streams = DeviceStreams(torch.device("cpu"))
    image = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3)
    image.flags.writeable = False  # received message buffers are read-only
    staged = streams.upload([image])
    with streams.compute(staged):
        tensor = staged.tensors[0]
        assert tensor.dtype == torch.uint8 and tuple(tensor.shape) == (2, 3, 3)
        assert tensor.data_ptr() == image.ctypes.data  # no copy on CPU
    assert staged.ready is None


def test_static_batch_sizes() -> None:
    assert static_batch_sizes(8) == [1, 2, 4, 8]
    assert static_batch_sizes(6) == [1, 2, 4, 6]
    assert static_batch_sizes(1) == [1]
    assert padded_size(3, [1, 2, 4, 8]) == 4 and padded_size(8, [1, 2, 4, 8]) == 8
    with pytest.raises(ValueError):
        padded_size(9, [1, 2, 4, 8])
    with pytest.raises(ValueError):
        static_batch_sizes(0)


def test_live_queue_turns_the_oldest_waiting_frame_into_a_skip() -> None:
    from stream.stages.decode import _LiveQueue

    queue = _LiveQueue(capacity=2)
    frames = [_frame(i, size=(4, 6)) for i in range(4)]
    assert queue.put(frames[0]) is None and queue.put(frames[1]) is None
    assert queue.put(frames[2]) == 0  # full: frame 0 is dropped, oldest first
    assert queue.put(frames[3]) == 1
    head = queue.peek(timeout=0)
    assert head == ("skip", 0, 6, 4)  # the skip keeps the dropped frame's place and size
    assert queue.pop(head)
    assert queue.peek(timeout=0) == ("skip", 1, 6, 4)
    assert not queue.pop(frames[2])  # not the head: nothing removed
    assert queue.pop(queue.peek(timeout=0))
    assert queue.peek(timeout=0) is frames[2] and queue.frames == 2
