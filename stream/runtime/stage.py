"""The stage runtime: one loop that every stage runs, with the stage supplying handlers.

A worker runs either as a thread of the coordinating process (``inproc://``, one shared ZeroMQ
context) or as a process of its own (``ipc://``/``tcp://``, its own context). Either way it gets a
``WorkerSpec`` (picklable) and talks to the coordinator over two links of the topology: it reports
``stream.runtime.events`` records on ``events`` and obeys ``Stop``, ``Finish`` and ``Abort`` from
``control``.

The runtime owns, for every stage: polling its inputs and the control link, stop (sources end, the
rest drains to EOS), abort (leave at once; outputs are closed), the end of work (``Done``), keeping
senders connected until every sink has its final EOS, closing, errors (``Error``, one line), and in a
process of its own the signal set-up and the CPU usage report (``Usage``). A stage supplies:

- ``start()``: set up (sockets are opened in the constructor) and return its ``Ready`` record;
- ``inputs``: the sockets it reads; ``receive(sock, message)`` handles one message from one of them;
- ``step()``: called on every turn in which no input had a message (a source reads a frame here, the
  GPU worker finishes work it holds); ``poll_ms()`` says how long a turn may wait for input;
- ``stop()``: the coordinator asked the sources to end;
- ``finished`` (set by the stage) and ``finish()``: the stage's normal end, returning its ``Done``;
- ``close(finished)``: close everything; ``finished`` says the run ended normally.
"""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import zmq

from stream.config import PipelineConfig
from stream.media.color import single_threaded_opencv
from stream.media.frames import SourceInfo
from stream.runtime import events, topology
from stream.runtime.curve import stop_authenticator
from stream.runtime.errors import OutputError, first_line
from stream.runtime.ring import process_alive
from stream.runtime.transport import Endpoints, Stopped, recv_message

EVENTS_LINGER_MS = 30_000  # the coordinator reads events until every worker has exited
POLL_MS = 100  # how long a turn waits for input; control is looked at between turns
COORDINATOR_CHECK_S = 1.0  # how often a worker process looks whether its coordinator still runs
# The signals that ask a run to stop: Ctrl+C, `docker stop` / systemd / Kubernetes, a closed terminal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_PR_SET_NAME = 15  # prctl option: the process name `ps`, `top` and psutil show

_stop_signals = 0  # stop signals this worker process has received (set by the handler)

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

    role: str  # one of topology.STAGES, topology.COORDINATOR or topology.CALLER
    config: PipelineConfig
    endpoints: dict[str, str]
    sources: list[SourcePlan] = field(default_factory=list)
    session: str = ""
    coordinator_pid: int = field(default_factory=os.getpid)  # specs are made by the coordinator
    caller_images: bool = False  # the caller of ``stream.Pipeline`` asked for the annotated images
    generation: int = 0  # how many times a live run has restarted this worker (0: the first start)
    first_track_id: int = 1  # where a restarted tracker's ids begin: above every id already written
    # The run's endpoint space, given to the GPU worker of a run with a control API: the endpoints of
    # sources added later are derived from it (``Endpoints.derived``).
    space: Endpoints | None = None

    def endpoint(self, name: str) -> str:
        """The address of endpoint ``name``: given, or derived for a source added at run time."""
        if name not in self.endpoints and self.space is not None:
            return self.space.derived(name)
        return self.endpoints[name]

    @property
    def has_caller(self) -> bool:
        """Does a ``stream.Pipeline`` read this run's results (is the ``api`` link part of the run)?"""
        return "api" in self.endpoints

    @property
    def label(self) -> str:
        names = "all" if self.role in topology.SHARED_STAGES else ",".join(s.name for s in self.sources)
        return f"{self.role}[{names}]"

    @property
    def instance(self) -> str:
        """This start of the worker: its label and generation (``track[cam]#1``)."""
        return f"{self.label}#{self.generation}"


class StageLink:
    """A worker's connection to the coordinator: events go up, stop/finish/abort commands come down."""

    def __init__(self, context: zmq.Context, spec: WorkerSpec) -> None:
        self.spec = spec
        self.events = topology.open(context, spec, "events")
        self.control = topology.open(context, spec, "control")
        self.stop_requested = False
        self.aborted = False
        self.finished = False
        self.signals_told = 0
        self.orphaned = False
        self.in_process = False  # set by run_worker for a worker process of its own
        self.next_coordinator_check = 0.0

    def poll_control(self) -> None:
        """Apply any pending commands (non-blocking); pass on stop signals this process got; leave when
        the coordinator is gone (nobody would ever tell this worker to stop)."""
        if self.in_process:
            self._pass_on_signals()
            self._check_coordinator()
        while True:
            try:
                command = events.unpack(self.control.recv(zmq.NOBLOCK))
            except zmq.Again:
                return
            if command.workers and self.spec.instance not in command.workers:
                continue  # a command for other workers (a restart, a removed source)
            if isinstance(command, events.Stop):
                self.stop_requested = True
            elif isinstance(command, events.Finish):
                self.finished = True
            elif isinstance(command, events.Abort):
                self.stop_requested = True
                self.aborted = True

    def _pass_on_signals(self) -> None:
        # The coordinator decides for the whole run (a signal to one worker stops every source), so a
        # worker only tells it; it gets Stop or Abort back like every other stage.
        if _stop_signals > self.signals_told:
            self.signals_told = _stop_signals
            self.emit(events.StopRequested(count=_stop_signals))

    def _check_coordinator(self) -> None:
        now = time.monotonic()
        if now < self.next_coordinator_check:
            return
        self.next_coordinator_check = now + COORDINATOR_CHECK_S
        if not process_alive(self.spec.coordinator_pid):
            # Orphaned (the coordinator was killed): close the outputs and free the device.
            self.orphaned = self.stop_requested = self.aborted = True

    def wait_for_finish(self) -> None:
        """Keep this stage's connections open until every render stage has its final EOS (or the run aborts).

        A sender that disconnects while its receiver sits at the high-water mark loses the messages
        still in the kernel's socket buffer (libzmq drops them with the connection), so senders stay
        connected until the coordinator publishes ``Finish``.
        """
        while not (self.finished or self.aborted):
            if self.control.poll(POLL_MS, zmq.POLLIN):
                self.poll_control()

    def should_abort(self) -> bool:
        self.poll_control()
        return self.aborted

    def emit(self, event: events.Event) -> None:
        event.worker = self.spec.label
        event.generation = self.spec.generation
        self.events.send(events.pack(event))

    def close(self) -> None:
        self.control.close(linger=0)
        # The coordinator reads events until every worker has exited: wait for the final ones to land
        # (unless there is no coordinator left to read them).
        self.events.close(linger=0 if self.orphaned else EVENTS_LINGER_MS)


class Stage:
    """The handlers of one stage (see the module's docstring); the defaults do nothing."""

    inputs: Sequence[zmq.Socket] = ()  # a stage without inputs (a source) reads in ``step``
    finished: bool = False

    def start(self) -> events.Ready:
        return events.Ready()

    def poll_ms(self) -> int:
        return POLL_MS

    def receive(self, sock: zmq.Socket, message) -> None:
        raise NotImplementedError

    def step(self) -> None:
        """Nothing came in this turn."""

    def stop(self) -> None:
        """The sources are asked to end; stages downstream of them drain to EOS by themselves."""

    def finish(self) -> events.Done:
        return events.Done()

    def close(self, finished: bool) -> None:
        """Close sockets and outputs."""


def run_stage(stage: Stage, link: StageLink) -> None:
    """Run ``stage`` to its end, to an abort, or to an error (raised to the caller after closing)."""
    try:
        link.emit(stage.start())
        poller = zmq.Poller()
        for sock in stage.inputs:
            poller.register(sock, zmq.POLLIN)
        stopping = False
        while not stage.finished:
            ready = dict(poller.poll(stage.poll_ms())) if stage.inputs else {}
            link.poll_control()
            if link.aborted:
                return
            if link.stop_requested and not stopping:
                stopping = True
                stage.stop()
                continue
            received = [sock for sock in stage.inputs if sock in ready]
            for sock in received:
                stage.receive(sock, recv_message(sock))
            if not received:
                stage.step()
        done = stage.finish()
        done.stage = link.spec.role
        link.emit(done)
        link.wait_for_finish()
    except Stopped:
        pass
    finally:
        stage.close(finished=link.finished)


StageFactory = Callable[[zmq.Context, WorkerSpec, StageLink], Stage]


def run_worker(spec: WorkerSpec, make_stage: StageFactory, context: zmq.Context | None = None) -> None:
    """Build the stage with ``make_stage`` and run it; errors are reported as ``Error`` events."""
    own_context = context is None
    if own_context:
        # A process of its own: set it up for a pipeline stage. Threads of the coordinator (inproc)
        # leave the process's settings alone.
        _worker_signals()
        _name_process(f"sapiens-{spec.role}")
        retain_freed_memory()
        single_threaded_opencv()
        context = zmq.Context()
    link = StageLink(context, spec)
    link.in_process = own_context
    try:
        run_stage(make_stage(context, spec, link), link)
    except Exception as exc:  # reported to the coordinator, which prints it and exits non-zero
        status = 2 if isinstance(exc, OutputError) else 1
        link.emit(events.Error(message=first_line(exc), detail=traceback.format_exc(), status=status))
    finally:
        if own_context:
            # The CPU this worker process used (its threads' and pools' included), for the run's report.
            times = os.times()
            link.emit(events.Usage(user_s=round(times.user, 3), system_s=round(times.system, 3)))
        link.close()
        if own_context:
            stop_authenticator(context)  # a worker that bound a CURVE link: its ZAP socket holds the context
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


def _worker_signals() -> None:
    # A stop signal to a worker (alone, or with its whole process group, as `docker stop` and Ctrl+C
    # send it) is counted and passed on to the coordinator, which stops or aborts the whole run; the
    # worker itself never dies of it with its outputs open. (A hung worker is ended with SIGKILL.)
    for signum in STOP_SIGNALS:
        signal.signal(signum, _count_stop_signal)
    # `kill -USR1 <pid>` prints where a worker is (diagnosing a stalled pipeline).
    faulthandler.register(signal.SIGUSR1, all_threads=True)


def _count_stop_signal(signum, frame) -> None:
    global _stop_signals
    _stop_signals += 1


def _name_process(name: str) -> None:
    """Give this process a name that `ps` and `top` show (``sapiens-decode``, ``sapiens-infer``...)."""
    libc = ctypes.CDLL(None)
    if hasattr(libc, "prctl"):
        libc.prctl(_PR_SET_NAME, name.encode()[:15], 0, 0, 0)
