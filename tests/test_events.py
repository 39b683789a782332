"""Events and commands: typed records that survive the wire, and refusal of what is not one."""

from __future__ import annotations

import msgpack
import pytest

from stream.runtime.events import (
    EVENTS_VERSION,
    Abort,
    Done,
    EventError,
    Progress,
    SinkClosed,
    Stop,
    pack,
    unpack,
)


def test_records_round_trip_with_their_type_and_fields() -> None:
    progress = Progress(worker="render[cam]", source="cam", frame=7, latency=0.25, stamps={"decode": 1.5})
    back = unpack(pack(progress))
    assert isinstance(back, Progress) and back == progress
    closed = unpack(pack(SinkClosed(source="cam", frames=3, lines=4, skipped=1, outputs={"jsonl": "x"})))
    assert isinstance(closed, SinkClosed)
    assert (closed.lines, closed.outputs, closed.complete) == (4, {"jsonl": "x"}, False)
    # A stage's end and a sink's closing are different records, not the same one with more keys.
    assert not isinstance(unpack(pack(Done(stage="decode", source="cam", frames=9))), SinkClosed)
    assert isinstance(unpack(pack(Abort())), Abort) and isinstance(unpack(pack(Stop())), Stop)


def test_other_versions_unknown_types_and_fields_are_refused() -> None:
    with pytest.raises(EventError, match="version"):
        unpack(msgpack.packb({"v": EVENTS_VERSION + 1, "type": "stop"}))
    with pytest.raises(EventError, match="unknown record type"):
        unpack(msgpack.packb({"v": EVENTS_VERSION, "type": "shutdown"}))
    with pytest.raises(EventError, match="Progress"):
        unpack(msgpack.packb({"v": EVENTS_VERSION, "type": "progress", "colour": "red"}))
    with pytest.raises(EventError, match="msgpack"):
        unpack(b"\xc1")
