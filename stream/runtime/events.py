"""Events (worker -> coordinator) and commands (coordinator -> workers): typed, versioned records.

Data travels in the message envelope (``stream.runtime.messages``); everything a stage tells the
coordinator, and everything the coordinator tells the stages, is one of the records below, packed as a
msgpack map ``{"v": EVENTS_VERSION, "type": <record type>, <field>: <value>, ...}`` by ``pack`` and
read back by ``unpack``, which refuses another version or an unknown type.

Events name the ``worker`` that sent them (``decode[clip]``, ``infer[all]``, ...), its ``generation``
(how many times that worker was restarted; the coordinator ignores what an older one still sends) and
the ``time``. Commands (on the ``control`` link): ``Stop`` (sources end, the pipeline drains to EOS),
``Finish`` (every sink has its final EOS: senders may disconnect) and ``Abort`` (stop now, close
outputs); each to every worker, or only to the ``workers`` it names.
"""

from __future__ import annotations

import dataclasses
import time as _time
from dataclasses import dataclass, field

import msgpack

EVENTS_VERSION = 1


class EventError(ValueError):
    """Bytes that are not a record of this version."""


@dataclass
class Event:
    """What every event carries: the worker that sent it, its generation and when (``time.time()``)."""

    worker: str = ""
    generation: int = 0
    time: float = field(default_factory=_time.time)


@dataclass
class Ready(Event):
    """The stage is set up; the GPU worker also names its device, precision and flip-TTA."""

    device: str | None = None
    dtype: str | None = None
    flip: bool | None = None


@dataclass
class Progress(Event):
    """One source position reached the sinks (``skipped``: as a ``"skipped": true`` line)."""

    source: str = ""
    frame: int | None = None
    skipped: bool = False
    latency: float = 0.0  # seconds from capture to written
    stamps: dict[str, float] = field(default_factory=dict)
    top_id: int = 0  # the highest track id written so far (0: none); a restarted tracker counts on


@dataclass
class Drop(Event):
    """``count`` frames of ``source`` were dropped for ``cause`` (live mode)."""

    source: str = ""
    cause: str = "behind"
    count: int = 1
    frame: int | None = None


@dataclass
class FrameIn(Event):
    """A live source handed one frame (or its skip marker) to the pipeline."""

    source: str = ""


@dataclass
class Reconnect(Event):
    """A live source reconnected."""

    source: str = ""


@dataclass
class Done(Event):
    """The stage finished ``source`` (None: all its sources); ``frames``: the frames it handled."""

    stage: str = ""
    source: str | None = None
    frames: int = 0
    boxes_dropped: int = 0  # the GPU worker: detector boxes beyond the per-frame limit


@dataclass
class SinkClosed(Event):
    """A source's sinks are closed: what was written, and whether its final EOS arrived (``complete``)."""

    source: str = ""
    frames: int = 0  # video frames
    lines: int = 0  # JSONL lines, skipped ones included
    skipped: int = 0
    outputs: dict[str, str] = field(default_factory=dict)
    complete: bool = False
    error: str = ""  # why the sinks stopped early (a full disk), one line; "" when they did not


@dataclass
class Error(Event):
    """The stage failed: a one-line ``message`` for the user and the traceback; ``status``: the exit
    status it calls for (2: the user can act on it, such as a full disk; 1: a failed stage)."""

    message: str = ""
    detail: str = ""
    status: int = 1


@dataclass
class StopRequested(Event):
    """The worker's process got a stop signal (SIGINT, SIGTERM, SIGHUP): the ``count``-th. The run stops
    as if the coordinator had got it: drain on the first, abort on the second."""

    count: int = 1


@dataclass
class Usage(Event):
    """The CPU seconds a worker process used (sent last, by process workers only)."""

    user_s: float = 0.0
    system_s: float = 0.0


@dataclass
class Command:
    """A command from the coordinator to every stage, or only to the ``workers`` named (their
    ``WorkerSpec.instance``: label and generation)."""

    workers: list[str] = field(default_factory=list)


@dataclass
class Stop(Command):
    """Sources end; the pipeline drains to EOS (named workers: a source removed through the control API
    stops its decoder alone)."""


@dataclass
class Finish(Command):
    """Every sink has its final EOS: senders may now disconnect without losing data (named workers: a
    removed source's, once its sinks are closed)."""


@dataclass
class Abort(Command):
    """Stop at once and close the outputs (named workers: those a live run replaces)."""


Record = Event | Command

_TYPES: dict[str, type] = {
    "ready": Ready,
    "progress": Progress,
    "drop": Drop,
    "frame_in": FrameIn,
    "reconnect": Reconnect,
    "done": Done,
    "sink_closed": SinkClosed,
    "error": Error,
    "stop_requested": StopRequested,
    "usage": Usage,
    "stop": Stop,
    "finish": Finish,
    "abort": Abort,
}
_NAMES = {cls: name for name, cls in _TYPES.items()}


def pack(record: Record) -> bytes:
    """The wire form of ``record``."""
    body = {"v": EVENTS_VERSION, "type": _NAMES[type(record)], **dataclasses.asdict(record)}
    return msgpack.packb(body, use_bin_type=True)


def unpack(data: bytes) -> Record:
    """The record ``data`` holds; raises EventError for another version, an unknown type or field."""
    try:
        body = msgpack.unpackb(data, raw=False)
    except (msgpack.UnpackException, ValueError) as exc:
        raise EventError(f"record is not msgpack: {exc}") from exc
    if not isinstance(body, dict) or body.get("v") != EVENTS_VERSION:
        version = body.get("v") if isinstance(body, dict) else None
        raise EventError(f"record version {version!r} is not {EVENTS_VERSION}")
    cls = _TYPES.get(body.pop("type", None))
    if cls is None:
        raise EventError("unknown record type")
    body.pop("v")
    try:
        return cls(**body)
    except TypeError as exc:
        raise EventError(f"{cls.__name__}: {exc}") from exc
