"""The message envelope: round trips, zero-copy views and refusal of malformed messages."""

from __future__ import annotations

from fractions import Fraction

import msgpack
import numpy as np
import pytest

from stream.media.frames import DecodedFrame, FrameResult
from stream.runtime.messages import (
    EOS,
    PROTOCOL_VERSION,
    RESULTS,
    ProtocolError,
    control_message,
    follow_up,
    frame_message,
    pack,
    result_arrays,
    to_decoded_frame,
    to_frame_result,
    unpack,
)


def _frame(index: int = 7) -> DecodedFrame:
    image = np.random.default_rng(index).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    return DecodedFrame(
        image,
        index,
        pts=index / 25,
        time_base=Fraction(1, 12800),
        capture_time=123.5,
        segment=2,
        pts_raw=index * 512,
    )


def test_frame_message_round_trip_keeps_pixels_and_timing() -> None:
    frame = _frame()
    parts = pack(frame_message("cam", 41, frame, session="s1", meta={"rate": [25, 1]}))
    assert len(parts) == 2  # header + one pixel buffer
    message = unpack(parts)
    assert (message.kind, message.source, message.seq, message.session) == ("frame", "cam", 41, "s1")
    back = to_decoded_frame(message)
    np.testing.assert_array_equal(back.image, frame.image)
    assert (back.index, back.pts, back.pts_raw, back.time_base, back.segment) == (
        7,
        7 / 25,
        3584,
        Fraction(1, 12800),
        2,
    )
    assert back.capture_time == 123.5
    assert message.meta == {"rate": [25, 1]}


def test_received_arrays_view_the_buffers_without_copying() -> None:
    frame = _frame()
    header, pixels = pack(frame_message("cam", 0, frame))
    buffer = bytearray(pixels)
    message = unpack([header, buffer])
    image = message.arrays["image"]
    buffer[0] = (buffer[0] + 1) % 256  # a change to the buffer shows through: no copy was made
    assert image[0, 0, 0] == buffer[0]


def test_results_round_trip_with_affines() -> None:
    rng = np.random.default_rng(0)
    result = FrameResult(
        boxes=rng.uniform(0, 50, (3, 4)).astype(np.float32),
        scores=np.array([0.9, 0.8, 0.4], np.float32),
        track_ids=np.array([4, -1, 9], np.int64),
        keypoints=rng.uniform(0, 50, (3, 308, 2)).astype(np.float32),
        keypoint_scores=rng.uniform(0, 1, (3, 308)).astype(np.float32),
        seg_labels=rng.integers(0, 29, (48, 64)).astype(np.uint8),
    )
    crops = rng.normal(size=(3, 2, 3)).astype(np.float32)
    source = unpack(pack(frame_message("cam", 5, _frame(5))))
    message = unpack(pack(follow_up(source, RESULTS, result_arrays(result, crops)).stamp("infer")))
    back = to_frame_result(message)
    for name in ("boxes", "scores", "track_ids", "keypoints", "keypoint_scores", "seg_labels"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name))
        assert getattr(back, name).dtype == getattr(result, name).dtype
    np.testing.assert_array_equal(message.arrays["crop_to_frame"], crops)
    assert (message.seq, message.frame, message.pts_raw) == (5, 5, 5 * 512)
    assert "infer" in message.stamps


def test_empty_results_and_control_messages() -> None:
    source = unpack(pack(frame_message("cam", 3, _frame(3))))
    back = to_frame_result(unpack(pack(follow_up(source, RESULTS, result_arrays(FrameResult.empty())))))
    assert back.num_persons == 0 and back.keypoints is None
    eos = unpack(pack(control_message(EOS, "cam", 12, final=True)))
    assert (eos.kind, eos.seq, eos.meta["final"], eos.arrays) == ("eos", 12, True, {})
    assert eos.is_control


def test_malformed_messages_are_refused() -> None:
    header, pixels = pack(frame_message("cam", 0, _frame()))
    with pytest.raises(ProtocolError, match="parts arrived"):
        unpack([header])
    with pytest.raises(ProtocolError, match="do not fill shape"):
        unpack([header, bytes(pixels)[:-3]])
    wrong_version = msgpack.packb({"v": PROTOCOL_VERSION + 1, "kind": "frame"})
    with pytest.raises(ProtocolError, match="protocol version"):
        unpack([wrong_version])
    with pytest.raises(ProtocolError, match="kind"):
        unpack([msgpack.packb({"v": PROTOCOL_VERSION, "kind": "nonsense"})])
    with pytest.raises(ProtocolError, match="msgpack"):
        unpack([b"\xc1"])
