"""What every stage worker shares: its sockets to the coordinator (events up, control down) and specs.

A worker runs either as a thread of the coordinating process (``inproc://``, one shared ZeroMQ
context) or as a process of its own (``ipc://``/``tcp://``, its own context). Either way it gets a
``WorkerSpec`` (picklable) and reports over the ``events`` socket: ``ready``, ``progress``, ``drop``,
``done``, ``error`` (a one-line message) and, from a process of its own, ``usage`` (its CPU seconds).
The coordinator publishes ``stop`` (sources end, the pipeline drains to EOS) and ``abort`` (stop now,
close outputs) on the ``control`` socket.
"""

from __future__ import annotations

import ctypes
import os
import time
import traceback
from dataclasses import dataclass, field

import msgpack
import zmq

from stream.config import PipelineConfig
from stream.edges.sources import SourceInfo
from stream.media.color import single_threaded_opencv
from stream.runtime.errors import first_line
from stream.runtime.transport import make_socket

EVENTS_HWM = 100_000  # events are tiny; the coordinator reads them continuously
CONTROL_HWM = 1000
EVENTS_LINGER_MS = 30_000

# glibc's mallopt parameters (malloc.h) and the values a worker process runs with.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD = 32 << 20  # the largest fixed threshold glibc accepts on 64-bit systems
_TRIM_THRESHOLD = 1 << 30


@dataclass
class SourcePlan:
    """One source as the workers see it: its output name, what it is and how it runs."""

    name: str
    info: SourceInfo
    live: bool


@dataclass
class WorkerSpec:
    """Everything a worker needs to start, in a form that survives pickling into a new process."""

    role: str  # "decode", "infer", "track" or "render"
    config: PipelineConfig
    endpoints: dict[str, str]
    sources: list[SourcePlan] = field(default_factory=list)
    session: str = ""

    @property
    def label(self) -> str:
        names = ",".join(s.name for s in self.sources) if self.role != "infer" else "all"
        return f"{self.role}[{names}]"


class StageLink:
    """A worker's connection to the coordinator: events go up, stop/abort commands come down."""

    def __init__(self, context: zmq.Context, spec: WorkerSpec) -> None:
        self.spec = spec
        self.events = make_socket(context, zmq.PUSH, spec.endpoints["events"], bind=False, hwm=EVENTS_HWM)
        self.control = make_socket(context, zmq.SUB, spec.endpoints["control"], bind=False, hwm=CONTROL_HWM)
        self.stop_requested = False
        self.aborted = False
        self.finished = False

    def poll_control(self) -> None:
        """Apply any pending commands (non-blocking)."""
        while True:
            try:
                command = msgpack.unpackb(self.control.recv(zmq.NOBLOCK))
            except zmq.Again:
                return
            if command.get("cmd") == "stop":
                self.stop_requested = True
            elif command.get("cmd") == "finish":
                self.finished = True
            elif command.get("cmd") == "abort":
                self.stop_requested = True
                self.aborted = True

    def wait_for_finish(self) -> None:
        """Keep this stage's connections open until every sink has its final EOS (or the run aborts).

        A sender that disconnects while its receiver sits at the high-water mark loses the messages
        still in the kernel's socket buffer (libzmq drops them with the connection), so senders stay
        connected until the coordinator publishes ``finish``.
        """
        while not (self.finished or self.aborted):
            if self.control.poll(100, zmq.POLLIN):
                self.poll_control()

    def should_abort(self) -> bool:
        self.poll_control()
        return self.aborted

    def emit(self, event: str, **fields) -> None:
        payload = {"event": event, "worker": self.spec.label, "time": time.time(), **fields}
        self.events.send(msgpack.packb(payload, use_bin_type=True))

    def close(self) -> None:
        self.control.close(linger=0)
        # The coordinator reads events until every worker has exited: wait for the final ones to land.
        self.events.close(linger=EVENTS_LINGER_MS)


def run_worker(spec: WorkerSpec, context: zmq.Context | None = None) -> None:
    """Run the stage ``spec.role`` until its sources end; errors are reported as ``error`` events."""
    own_context = context is None
    if own_context:
        # A process of its own: set it up for a pipeline stage. Threads of the coordinator (inproc)
        # leave the process's settings alone.
        _ignore_sigint()
        retain_freed_memory()
        single_threaded_opencv()
        context = zmq.Context()
    link = StageLink(context, spec)
    try:
        stage = _stage_function(spec.role)
        stage(context, spec, link)
    except Exception as exc:  # reported to the coordinator, which prints it and exits non-zero
        link.emit("error", message=first_line(exc), detail=traceback.format_exc())
    finally:
        if own_context:
            # The CPU this worker process used (its threads' and pools' included), for the run's report.
            times = os.times()
            link.emit("usage", user_s=round(times.user, 3), system_s=round(times.system, 3))
        link.close()
        if own_context:
            context.term()


def retain_freed_memory() -> bool:
    """Keep the memory this process frees for its own reuse instead of returning it to the system.

    A worker allocates and frees the same large buffers every batch (8 crops of 308 heatmaps at 64 x 48
    are 30 MB). By default glibc serves such blocks with fresh ``mmap``s and trims the top of the heap
    once 128 KB are free there, so every batch faulted its pages in again, zero-filled by the kernel:
    in the inference worker of ``benchmarks/pipeline.py`` (b) that was 1.8 s of system time in a 7 s run.
    Blocks up to 32 MB now come from the heap, and freed memory stays mapped up to 1 GB. Returns False
    where the C library is not glibc (the setting does not exist there).
    """
    libc = ctypes.CDLL(None)  # the C library this interpreter runs on
    if not hasattr(libc, "gnu_get_libc_version"):
        return False
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )


def _stage_function(role: str):
    if role == "decode":
        from stream.stages.decode import run_decoder

        return run_decoder
    if role == "infer":
        from stream.stages.inference import run_inference

        return run_inference
    if role == "track":
        from stream.stages.track import run_tracker

        return run_tracker
    if role == "render":
        from stream.stages.render import run_renderer

        return run_renderer
    raise ValueError(f"unknown worker role {role!r}")


def _ignore_sigint() -> None:
    # Ctrl+C reaches the whole process group; only the coordinator reacts, and drains the pipeline.
    import faulthandler
    import signal

    # SIGTERM keeps its default so the coordinator can still terminate a worker that hangs.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # `kill -USR1 <pid>` prints where a worker is (diagnosing a stalled pipeline).
    faulthandler.register(signal.SIGUSR1, all_threads=True)
