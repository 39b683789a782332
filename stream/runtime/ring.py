"""A shared-memory ring of frame slots, so decoded pixels cross process boundaries on one host once.

The decoder writes each frame into a free slot (decoding straight into it where the source allows:
``claim`` a slot, fill it, ``commit`` it) and sends only the slot reference (``ring``, ``slot``,
shape) in the message; the GPU worker and the render stage map the same memory and read the pixels in
place. Each slot has one "in use" byte per reader. The writer sets every reader's byte when it fills
the slot; each reader clears its own byte once it is done with the frame; the writer reuses a slot only
when all its bytes are clear. Every byte has a single writer at any time, so no lock is needed.

Rings never outlive their run: a ring's name carries the process ids of the run's coordinator and of
its writer. The coordinator removes its rings when it ends, and a dead writer's rings when it restarts
that writer (live runs); every run first removes the rings of runs whose coordinator is gone (killed
with SIGKILL, a power loss), so nothing accumulates in ``/dev/shm``. A reader drops its mapping of a
removed ring with ``forget_removed_rings``.

Layout of the file (``/dev/shm`` where it exists)::

    [flags: slots x readers uint8, padded to 4 KiB][slot 0 pixels][slot 1 pixels]...

When every slot is in use the writer gets ``None`` (the ring never blocks and never overwrites a frame
a reader still holds): an offline decoder waits for a slot, a live one sends the pixels inline.
"""

from __future__ import annotations

import mmap
import os
import tempfile
import uuid

import numpy as np

from stream.media.frames import I420

HEADER_ALIGN = 4096
PREFIX = "ss-ring-"  # ss-ring-<coordinator pid>-<writer pid>-<id>-<slots>x<readers>x<slot bytes>
_attached: dict[str, FrameRing] = {}  # rings this process has mapped, by name (readers reuse them)


class RingError(RuntimeError):
    """A frame ring that cannot be created or mapped (one-line reason)."""


def _header_bytes(slots: int, readers: int) -> int:
    """The flags (one byte per slot and reader), rounded up to ``HEADER_ALIGN`` so slots start aligned."""
    return -(-slots * readers // HEADER_ALIGN) * HEADER_ALIGN


def _directory() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


class FrameRing:
    """``slots`` frame slots of ``slot_bytes`` each, shared by one writer and ``readers`` readers."""

    def __init__(self, path: str, slots: int, readers: int, slot_bytes: int, owner: bool) -> None:
        self.path = path
        self.name = os.path.basename(path)
        self.slots = slots
        self.readers = readers
        self.slot_bytes = slot_bytes
        self.owner = owner
        self.header = _header_bytes(slots, readers)
        size = self.header + slots * slot_bytes
        fd = os.open(path, os.O_RDWR)
        try:
            self.map = mmap.mmap(fd, size)
        finally:
            os.close(fd)
        self.flags = np.frombuffer(self.map, np.uint8, slots * readers).reshape(slots, readers)
        self.next = 0
        self.claimed: set[int] = set()  # slots the writer is filling (flags still clear)

    @classmethod
    def create(cls, slot_bytes: int, slots: int, readers: int, run_pid: int | None = None) -> FrameRing:
        """A new ring file of the run whose coordinator is ``run_pid`` (default: this process); memory
        is reserved up front, so a full tmpfs fails here, not on a write."""
        if slot_bytes <= 0 or slots <= 0 or readers <= 0:
            raise ValueError(f"frame ring needs positive sizes, got {slot_bytes=} {slots=} {readers=}")
        header = _header_bytes(slots, readers)
        run_pid = os.getpid() if run_pid is None else run_pid
        name = f"{PREFIX}{run_pid}-{os.getpid()}-{uuid.uuid4().hex[:8]}-{slots}x{readers}x{slot_bytes}"
        path = os.path.join(_directory(), name)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.posix_fallocate(fd, 0, header + slots * slot_bytes)
        except OSError as exc:
            os.close(fd)
            os.unlink(path)
            raise RingError(f"cannot reserve {slots} frame slots of {slot_bytes} bytes: {exc}") from exc
        os.close(fd)
        return cls(path, slots, readers, slot_bytes, owner=True)

    @classmethod
    def attach(cls, name: str) -> FrameRing:
        """Map the ring ``name`` (once per process; later calls return the same mapping)."""
        ring = _attached.get(name)
        if ring is not None:
            return ring
        try:
            slots, readers, slot_bytes = (int(v) for v in name.rsplit("-", 1)[1].split("x"))
        except ValueError as exc:
            raise RingError(f"not a frame ring name: {name!r}") from exc
        path = os.path.join(_directory(), name)
        try:
            ring = cls(path, slots, readers, slot_bytes, owner=False)
        except FileNotFoundError as exc:
            raise RingError(f"frame ring {name} is gone (its writer has exited)") from exc
        _attached[name] = ring
        return ring

    # --- writer ---------------------------------------------------------------------------------------

    def put(self, image: np.ndarray) -> int | None:
        """Copy ``image`` into a free slot and mark it held by every reader; None when all are in use."""
        claim = self.claim(image.shape, image.dtype)
        if claim is None:
            return None
        slot, pixels = claim
        pixels[...] = image
        self.commit(slot)
        return slot

    def fits(self, shape, dtype=np.uint8) -> bool:
        """Whether an array of ``shape`` and ``dtype`` fits one slot."""
        return int(np.prod(shape)) * np.dtype(dtype).itemsize <= self.slot_bytes

    def claim(self, shape, dtype=np.uint8) -> tuple[int, np.ndarray] | None:
        """A free slot and a writable ``shape`` array on it, for the writer to fill before ``commit``;
        None when every slot is in use or the array would not fit a slot."""
        if not self.fits(shape, dtype):
            return None
        held = self.flags.any(axis=1)
        for step in range(self.slots):
            slot = (self.next + step) % self.slots
            if not held[slot] and slot not in self.claimed:
                self.claimed.add(slot)
                self.next = (slot + 1) % self.slots
                return slot, self.view(slot, shape, dtype, writable=True)
        return None

    def commit(self, slot: int) -> None:
        """The claimed ``slot`` is filled: every reader now holds it until it releases it."""
        if slot not in self.claimed:
            raise ValueError(f"slot {slot} was not claimed")
        self.claimed.discard(slot)
        self.flags[slot] = 1

    def unclaim(self, slot: int) -> None:
        """Give a claimed slot back unused."""
        self.claimed.discard(slot)

    def in_use(self) -> int:
        """Slots some reader still holds."""
        return int(self.flags.any(axis=1).sum())

    # --- readers --------------------------------------------------------------------------------------

    def view(self, slot: int, shape, dtype=np.uint8, writable: bool = False, offset: int = 0) -> np.ndarray:
        """The bytes of ``slot`` from ``offset`` on as an array of ``shape`` (read-only for readers)."""
        if not 0 <= slot < self.slots:
            raise ValueError(f"slot {slot} is outside the ring's {self.slots} slots")
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        if offset < 0 or offset + count * dtype.itemsize > self.slot_bytes:
            raise ValueError(f"{count} x {dtype} at byte {offset} do not fit a {self.slot_bytes}-byte slot")
        start = self.header + slot * self.slot_bytes + offset
        array = np.frombuffer(self.map, dtype, count, start).reshape(shape)
        array.flags.writeable = writable
        return array

    def release(self, slot: int, reader: int) -> None:
        """``reader`` is done with ``slot``: once every reader is, the writer may reuse it."""
        if not 0 <= reader < self.readers:
            raise ValueError(f"reader {reader} is outside the ring's {self.readers} readers")
        self.flags[slot, reader] = 0

    def close(self) -> None:
        """Unmap (and, for the writer, remove the file; readers' mappings stay valid until they close)."""
        _attached.pop(self.name, None)
        del self.flags
        try:
            self.map.close()
        except BufferError:
            pass  # arrays still view it; the mapping goes when they do
        if self.owner:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass


# --- messages that carry a slot reference --------------------------------------------------------------

INFER_READER = 0  # reader index of the GPU worker
RENDER_READER = 1  # reader index of the render stage
READERS = 2


def remove_rings(run_pid: int, writer_pid: int | None = None) -> int:
    """Remove every ring of the run whose coordinator is ``run_pid`` (only those written by
    ``writer_pid`` when given); returns how many."""
    return sum(
        _remove(path)
        for path, run, writer in _ring_files()
        if run == run_pid and writer_pid in (None, writer)
    )


def remove_stale_rings() -> int:
    """Remove the rings of runs whose coordinator no longer exists; returns how many."""
    return sum(_remove(path) for path, run, _ in _ring_files() if not process_alive(run))


def forget_removed_rings() -> int:
    """Unmap the rings this process reads whose file is gone (their writer died and was replaced), so
    their memory is freed; returns how many."""
    gone = [ring for ring in _attached.values() if not ring.owner and not os.path.exists(ring.path)]
    for ring in gone:
        ring.close()
    return len(gone)


def _ring_files() -> list[tuple[str, int, int]]:
    """(path, coordinator pid, writer pid) of every ring file."""
    found = []
    for entry in os.scandir(_directory()):
        pids = entry.name[len(PREFIX) :].split("-", 2)[:2]
        if entry.name.startswith(PREFIX) and len(pids) == 2 and all(p.isdigit() for p in pids):
            found.append((entry.path, int(pids[0]), int(pids[1])))
    return found


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user counts as alive: not ours to judge)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: str) -> bool:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def i420_shape(height: int, width: int) -> tuple[int, int]:
    """Shape of the I420 planes of a ``height`` x ``width`` picture, stored after its RGB pixels."""
    return height * 3 // 2, width


def resolve(message) -> None:
    """Give a ``frame`` message that references a slot its ``image`` array (a read-only view) and,
    when the slot holds them (meta ``i420``), the frame's own yuv420p planes as ``i420``."""
    if message.slot is None:
        return
    name, slot, shape = message.slot
    ring = FrameRing.attach(name)
    message.arrays["image"] = ring.view(int(slot), tuple(shape))
    if message.meta.get(I420):
        height, width = int(shape[0]), int(shape[1])
        offset = height * width * 3
        message.arrays[I420] = ring.view(int(slot), i420_shape(height, width), offset=offset)


def release(message, reader: int) -> None:
    """This reader is done with the message's slot (no-op for inline pixels)."""
    if message.slot is None:
        return
    name, slot, _ = message.slot
    message.arrays.pop("image", None)
    message.arrays.pop(I420, None)
    FrameRing.attach(name).release(int(slot), reader)
    message.slot = None
