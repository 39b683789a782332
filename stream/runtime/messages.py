"""The message envelope every stage speaks.

A message is a ZeroMQ multipart message ``[header, part_0, part_1, ...]``:

- ``header`` is a msgpack map with these keys:

  ===========  =================================================================================
  ``v``        protocol version (``PROTOCOL_VERSION``); a mismatch is refused
  ``kind``     ``frame`` (pixels), ``results`` (what the models found), ``eos`` (end of a source's
               segment or of the source), ``skip`` (a frame was dropped: reorder buffers move on)
  ``source``   source id (the output name, e.g. ``clip`` for ``clip.mp4``)
  ``session``  id of the writer's run, so a stale peer's messages are recognisable
  ``seq``      per-source message number, shared by every stage: frame, skip and eos messages each
               take one number, so a reorder buffer keyed by ``seq`` also orders control messages
  ``frame``    0-based decode index of the frame (the JSONL ``frame``), or None for control messages
  ``segment``  source segment (increments on reconnect or resolution change)
  ``pts``      presentation time in seconds (float) or None
  ``pts_raw``  presentation time in ``time_base`` units (int) or None
  ``tb``       time base as ``[num, den]`` or None
  ``capture``  wall-clock time (``time.time()``) when the frame left the decoder
  ``stamps``   ``{stage: time.time()}`` per stage passed, for latency accounting
  ``arrays``   ``[[name, dtype, shape], ...]``: one entry per payload part, in order
  ``meta``     anything else (small): e.g. the source's frame rate, ``final`` on an eos
  ``slot``     None, or ``[ring, slot, shape]`` when a frame's pixels wait in a shared-memory ring
               (``stream.runtime.ring``) instead of a payload part (``ipc`` workers on one host)
  ===========  =================================================================================

- each payload part is the raw C-ordered buffer of one numpy array. Frames carry ``image``
  ((H, W, 3) uint8 RGB); results carry ``boxes``, ``scores``, ``track_ids`` and, per task,
  ``keypoints``, ``keypoint_scores``, ``seg_labels``, the dense maps ``normals``, ``pointmap``, ``alpha``,
  ``foreground`` (see ``ModelOutputs``) and ``crop_to_frame`` ((N, 2, 3) float32: the
  affine transforms used for the crops, so every model coordinate can be mapped back).

Parts above ``copy_threshold`` bytes are sent with ``copy=False`` (zero-copy hand-off to libzmq) and
received as ``zmq.Frame`` buffers that numpy views without copying.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from fractions import Fraction

import msgpack
import numpy as np

from stream.media.frames import DecodedFrame, ModelOutputs

PROTOCOL_VERSION = 1

FRAME = "frame"
RESULTS = "results"
EOS = "eos"
SKIP = "skip"
KINDS = (FRAME, RESULTS, EOS, SKIP)

# meta of a frame (and of what follows from it): the camera's motion since the source's previous frame
# sent, a (2,3) affine matrix in full-frame pixels, row by row (with --camera-motion).
CAMERA_MOTION = "camera_motion"

# ModelOutputs fields that travel as arrays, in a fixed order.
RESULT_ARRAYS = (
    "boxes", "scores", "track_ids", "keypoints", "keypoint_scores", "seg_labels",
    "normals", "pointmap", "alpha", "foreground",
)  # fmt: skip


class ProtocolError(ValueError):
    """A multipart message that is not a valid envelope of this protocol version."""


@dataclass
class Message:
    """One unpacked envelope: header fields plus named numpy arrays (views on the received buffers)."""

    kind: str
    source: str
    seq: int
    frame: int | None = None
    segment: int = 0
    pts: float | None = None
    pts_raw: int | None = None
    time_base: Fraction | None = None
    capture: float = 0.0
    session: str = ""
    stamps: dict[str, float] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    # Pixels in a shared-memory frame ring instead of a payload part: ``[ring name, slot, shape]``
    # (see ``stream.runtime.ring``; receivers call ``shm.resolve`` to get the ``image`` array).
    slot: list | None = None

    def stamp(self, stage: str) -> Message:
        """Record that this message passed ``stage`` now (for latency accounting)."""
        self.stamps[stage] = time.time()
        return self

    @property
    def timestamp(self) -> float:
        """Seconds on the source's clock, which smoothers and trackers run on: the presentation time;
        for a recorded source without one (an image folder) the frame index at the source's rate, so
        a run is repeatable; for a live one the capture time."""
        if self.pts is not None:
            return float(self.pts)
        rate = self.meta.get("rate")
        if rate and not self.meta.get("live") and self.frame is not None:
            return self.frame * rate[1] / rate[0]
        return float(self.capture)

    @property
    def is_control(self) -> bool:
        return self.kind == EOS


def pack(message: Message) -> list:
    """The multipart parts for ``message``: the msgpack header, then one buffer per array."""
    if message.kind not in KINDS:
        raise ProtocolError(f"unknown message kind {message.kind!r}")
    specs = []
    buffers = []
    for name, array in message.arrays.items():
        array = np.ascontiguousarray(array)
        specs.append([name, array.dtype.str, list(array.shape)])
        buffers.append(array.data if array.nbytes else b"")
    tb = message.time_base
    header = {
        "v": PROTOCOL_VERSION,
        "kind": message.kind,
        "source": message.source,
        "session": message.session,
        "seq": int(message.seq),
        "frame": message.frame,
        "segment": int(message.segment),
        "pts": message.pts,
        "pts_raw": message.pts_raw,
        "tb": None if tb is None else [tb.numerator, tb.denominator],
        "capture": float(message.capture),
        "stamps": message.stamps,
        "arrays": specs,
        "meta": message.meta,
        "slot": message.slot,
    }
    return [msgpack.packb(header, use_bin_type=True), *buffers]


def unpack(parts: list) -> Message:
    """Parse multipart ``parts`` (bytes or ``zmq.Frame``) into a Message; arrays are read-only views."""
    if not parts:
        raise ProtocolError("empty multipart message")
    try:
        header = msgpack.unpackb(_as_bytes(parts[0]), raw=False)
    except (msgpack.UnpackException, ValueError) as exc:
        raise ProtocolError(f"header is not msgpack: {exc}") from exc
    if not isinstance(header, dict) or header.get("v") != PROTOCOL_VERSION:
        version = header.get("v") if isinstance(header, dict) else None
        raise ProtocolError(f"protocol version {version!r} is not {PROTOCOL_VERSION}")
    if header.get("kind") not in KINDS:
        raise ProtocolError(f"unknown message kind {header.get('kind')!r}")
    specs = header.get("arrays", [])
    if len(specs) != len(parts) - 1:
        raise ProtocolError(f"header lists {len(specs)} arrays but {len(parts) - 1} parts arrived")
    arrays = {}
    for (name, dtype, shape), part in zip(specs, parts[1:], strict=True):
        buffer = part.buffer if hasattr(part, "buffer") else part
        array = np.frombuffer(buffer, dtype=np.dtype(dtype))
        if array.size != int(np.prod(shape)):
            raise ProtocolError(f"array {name!r}: {array.size} elements do not fill shape {shape}")
        arrays[name] = array.reshape(shape)
    tb = header.get("tb")
    return Message(
        kind=header["kind"],
        source=header["source"],
        seq=header["seq"],
        frame=header.get("frame"),
        segment=header.get("segment", 0),
        pts=header.get("pts"),
        pts_raw=header.get("pts_raw"),
        time_base=None if tb is None else Fraction(tb[0], tb[1]),
        capture=header.get("capture", 0.0),
        session=header.get("session", ""),
        stamps=header.get("stamps") or {},
        meta=header.get("meta") or {},
        arrays=arrays,
        slot=header.get("slot"),
    )


def _as_bytes(part) -> bytes:
    return part.bytes if hasattr(part, "bytes") else bytes(part)


# --- conversions between pipeline types and messages -------------------------------------------------


def frame_message(
    source: str, seq: int, frame: DecodedFrame, session: str = "", meta: dict | None = None
) -> Message:
    """A ``frame`` message carrying ``frame``'s pixels and timing."""
    return Message(
        kind=FRAME,
        source=source,
        seq=seq,
        frame=frame.index,
        segment=frame.segment,
        pts=frame.pts,
        pts_raw=frame.pts_raw,
        time_base=frame.time_base,
        capture=frame.capture_time,
        session=session,
        meta=dict(meta or {}),
        arrays={"image": frame.image},
    )


def control_message(kind: str, source: str, seq: int, session: str = "", **meta) -> Message:
    """An ``eos`` or ``skip`` message (no payload)."""
    return Message(kind=kind, source=source, seq=seq, session=session, capture=time.time(), meta=meta)


def follow_up(message: Message, kind: str, arrays: dict[str, np.ndarray] | None = None, **meta) -> Message:
    """A message for the same source position as ``message`` (same seq, frame, timing), of ``kind``."""
    return Message(
        kind=kind,
        source=message.source,
        seq=message.seq,
        frame=message.frame,
        segment=message.segment,
        pts=message.pts,
        pts_raw=message.pts_raw,
        time_base=message.time_base,
        capture=message.capture,
        session=message.session,
        stamps=dict(message.stamps),
        meta={**message.meta, **meta},
        arrays=dict(arrays or {}),
    )


def to_decoded_frame(message: Message) -> DecodedFrame:
    """The DecodedFrame a ``frame`` message carries (the image is a read-only view of the buffer)."""
    image = message.arrays.get("image")
    if image is None:
        image = np.zeros((int(message.meta.get("height", 0)), int(message.meta.get("width", 0)), 3), np.uint8)
    return DecodedFrame(
        image=image,
        index=int(message.frame if message.frame is not None else -1),
        pts=message.pts,
        time_base=message.time_base,
        capture_time=message.capture,
        segment=message.segment,
        pts_raw=message.pts_raw,
    )


def result_arrays(result: ModelOutputs, crop_to_frame: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The payload arrays of a ``results`` message for ``result`` (fields that are None are left out)."""
    arrays = {}
    for name in RESULT_ARRAYS:
        value = getattr(result, name)
        if value is not None:
            arrays[name] = np.asarray(value)
    if crop_to_frame is not None:
        arrays["crop_to_frame"] = np.asarray(crop_to_frame, np.float32)
    return arrays


def to_frame_result(message: Message) -> ModelOutputs:
    """The ModelOutputs a ``results`` message carries."""
    arrays = message.arrays
    empty = ModelOutputs.empty()
    return ModelOutputs(
        boxes=arrays.get("boxes", empty.boxes),
        scores=arrays.get("scores", empty.scores),
        track_ids=arrays.get("track_ids", np.full(len(arrays.get("boxes", empty.boxes)), -1, np.int64)),
        keypoints=arrays.get("keypoints"),
        keypoint_scores=arrays.get("keypoint_scores"),
        seg_labels=arrays.get("seg_labels"),
        normals=arrays.get("normals"),
        pointmap=arrays.get("pointmap"),
        alpha=arrays.get("alpha"),
        foreground=arrays.get("foreground"),
    )
