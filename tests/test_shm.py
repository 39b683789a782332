"""The shared-memory frame ring: slot reuse only after every reader released it, messages by reference."""

from __future__ import annotations

import multiprocessing
import os

import numpy as np
import pytest
import zmq

from stream.runtime.messages import FRAME, Message
from stream.runtime.ring import INFER_READER, READERS, RENDER_READER, FrameRing, RingError, release, resolve
from stream.runtime.transport import make_socket, recv_message, send_message


@pytest.fixture
def ring():
    ring = FrameRing.create(slot_bytes=4 * 6 * 3, slots=3, readers=READERS)
    yield ring
    ring.close()


def image(value: int) -> np.ndarray:
    return np.full((4, 6, 3), value, np.uint8)


def test_slot_is_reused_only_after_every_reader_released_it(ring):
    slots = [ring.put(image(v)) for v in (1, 2, 3)]
    assert sorted(slots) == [0, 1, 2]
    assert ring.put(image(4)) is None  # all held: the caller must send inline, nothing is overwritten
    ring.release(slots[0], INFER_READER)
    assert ring.put(image(4)) is None  # the render stage still holds slot 0
    ring.release(slots[0], RENDER_READER)
    assert ring.put(image(4)) == slots[0]
    assert ring.view(slots[0], (4, 6, 3)).max() == 4
    assert ring.view(slots[1], (4, 6, 3)).max() == 2  # the held frames are untouched
    assert ring.in_use() == 3


def test_reader_views_are_read_only_and_share_the_writers_pixels(ring):
    slot = ring.put(image(7))
    reader = FrameRing.attach(ring.name)
    view = reader.view(slot, (4, 6, 3))
    assert not view.flags.writeable
    np.testing.assert_array_equal(view, image(7))


def test_frames_too_large_for_a_slot_are_not_taken(ring):
    assert ring.put(np.zeros((8, 8, 3), np.uint8)) is None
    assert ring.in_use() == 0


def test_bad_sizes_and_names_are_refused():
    with pytest.raises(ValueError, match="positive"):
        FrameRing.create(slot_bytes=0, slots=2, readers=2)
    with pytest.raises(RingError, match="not a frame ring"):
        FrameRing.attach("no-such-ring")
    with pytest.raises(RingError, match="gone"):
        FrameRing.attach("ss-ring-000000000000-2x2x16")


def test_writer_close_removes_the_ring_file():
    ring = FrameRing.create(slot_bytes=16, slots=2, readers=2)
    path = ring.path
    assert os.path.exists(path)
    ring.close()
    assert not os.path.exists(path)


def _reader_process(endpoint: str, reader: int) -> None:
    """Receive slot references over ZeroMQ, check the pixels, release each slot."""
    context = zmq.Context()
    inbox = make_socket(context, zmq.PULL, endpoint, bind=True, hwm=8)
    try:
        for _ in range(10):
            message = recv_message(inbox)
            resolve(message)
            assert int(message.arrays["image"][0, 0, 0]) == message.frame
            release(message, reader)
            assert message.slot is None and "image" not in message.arrays
    finally:
        inbox.close(linger=0)
        context.term()


def test_slot_references_cross_processes_over_ipc(ring, tmp_path):
    endpoint = f"ipc://{tmp_path}/frames"
    reader = multiprocessing.get_context("spawn").Process(target=_reader_process, args=(endpoint, 0))
    reader.start()
    context = zmq.Context()
    outbox = make_socket(context, zmq.PUSH, endpoint, bind=False, hwm=8)
    try:
        sent = 0
        while sent < 10:
            slot = ring.put(image(sent))
            if slot is None:
                # The second reader (index 1) is this test: release what the first reader is done with.
                for s in range(ring.slots):
                    if not ring.flags[s, 0]:
                        ring.release(s, 1)
                continue
            reference = [ring.name, slot, [4, 6, 3]]
            message = Message(kind=FRAME, source="cam", seq=sent, frame=sent, slot=reference)
            send_message(outbox, message)
            sent += 1
        reader.join(30)
        assert reader.exitcode == 0
        assert not ring.flags[:, 0].any()  # the other process released every slot it was given
    finally:
        outbox.close(linger=0)
        context.term()
        if reader.is_alive():
            reader.terminate()
