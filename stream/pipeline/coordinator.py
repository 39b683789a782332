"""The coordinator: plans the stages of a run, starts them, watches them and reports.

The run's wiring (which stages, which links, which side binds, high-water marks) is the table in
``stream.runtime.topology``; ``sapiens-stream run ... --print-topology`` prints it for a run. With
``workers="inproc"`` every worker is a thread of this process over ``inproc://``; with ``ipc``
(default) or ``tcp`` each is a process of its own (``stream.pipeline.launch``). The coordinator binds
the ``events`` link (workers report ``stream.runtime.events`` records) and the ``control`` link
(``Stop``: sources end and the pipeline drains to EOS; ``Finish``: every sink has its final EOS;
``Abort``: stop at once, close outputs).

A ``stream.Pipeline`` (``stream.api``) runs the coordinator in a thread of its own and reads every
source's results on the ``api`` link (``CallerLink``); ``run_pipeline`` runs it in the calling thread.

SIGINT/SIGTERM: the first one stops the sources and lets everything drain, so every output is
complete and playable; a second one aborts (outputs are still closed and playable).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from stream.config import PipelineConfig, parse_host_port
from stream.edges.metrics import StatsRegistry, start_metrics_server
from stream.edges.sources import missing_frames
from stream.pipeline.launch import Launcher, start_worker_server, waits_for_models
from stream.pipeline.plan import check_inputs, plan_sources, prepare_out_dir
from stream.pipeline.report import ProgressDisplay, RunReport, SourceReport, stage_times
from stream.pipeline.supervise import RETIRE_GRACE_S, Restart, Supervisor
from stream.runtime import events, topology
from stream.runtime.messages import to_decoded_frame
from stream.runtime.ring import remove_rings, remove_stale_rings
from stream.runtime.stage import STOP_SIGNALS, SourcePlan, WorkerSpec
from stream.runtime.topology import COORDINATOR, RunTopology
from stream.runtime.transport import Endpoints, recv_message

STOP_RESEND_S = 0.5  # PUB/SUB drops messages to subscribers still connecting: repeat commands
ABORT_GRACE_S = 15.0  # after an abort, workers that have not exited by then are terminated
FINAL_EVENTS_WAIT_MS = 100  # once the workers have exited: how long to wait for their last events


class PipelineError(RuntimeError):
    """A run that could not complete (one-line message for the user); ``status``: the exit status it
    calls for (2: a failure the user can act on, such as a full disk; 1: a failed stage); ``detail``:
    the failed worker's traceback, when it could send one."""

    def __init__(self, message: str, status: int = 1, detail: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


@dataclass
class CallerLink:
    """A ``stream.Pipeline`` in this process reading the run's results on the ``api`` link.

    The run waits for ``received`` (every source's final ``eos`` reached the caller) before it lets the
    render stages disconnect, so nothing queued for the caller is lost; ``abort`` ends the run at once.
    """

    images: bool = False
    received: threading.Event = field(default_factory=threading.Event)
    abort: threading.Event = field(default_factory=threading.Event)


def worker_specs(
    cfg: PipelineConfig,
    plans: list[SourcePlan],
    run: RunTopology,
    endpoints: dict[str, str],
    caller_images: bool = False,
) -> list[WorkerSpec]:
    """One spec per worker of the run, in the topology's start order."""
    session = uuid.uuid4().hex[:12]
    by_name = {plan.name: plan for plan in plans}
    return [
        WorkerSpec(role, cfg, endpoints, [by_name[n] for n in names], session, caller_images=caller_images)
        for role, names in run.workers()
    ]


def describe_run(cfg: PipelineConfig) -> str:
    """The topology table of the run ``cfg`` would start (sources are probed, nothing is started)."""
    cfg.validate()
    plans = plan_sources(cfg)
    run = RunTopology(cfg, [plan.name for plan in plans])
    space = Endpoints(transport=cfg.workers)
    return run.describe({name: space.pattern(name) for name in run.endpoint_names()})


class _Signals:
    """First stop signal (SIGINT, SIGTERM, SIGHUP), to the coordinator or passed on by a worker: stop
    and drain; second: abort. Handlers are installed in the main thread only."""

    def __init__(self) -> None:
        self.count = 0
        self.previous: dict[int, object] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.count += 1

    def passed_on(self, count: int) -> None:
        """A worker got its ``count``-th stop signal (a signal to the group reaches every process, and
        counts once)."""
        self.count = max(self.count, count)

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class _Coordinator:
    """Runs one pipeline: sockets, workers, the event loop and the report."""

    def __init__(
        self,
        cfg: PipelineConfig,
        plans: list[SourcePlan],
        stop: threading.Event | None,
        context: zmq.Context | None = None,
        caller: CallerLink | None = None,
    ) -> None:
        self.cfg = cfg
        self.plans = plans
        self.external_stop = stop
        self.caller = caller
        self.run_topology = RunTopology(cfg, [plan.name for plan in plans], caller=caller is not None)
        self.space = Endpoints(transport=cfg.workers)
        self.endpoints = self.run_topology.endpoints(self.space)
        self.spec = WorkerSpec(COORDINATOR, cfg, self.endpoints, plans)  # the coordinator's ends
        # A caller's socket lives in the same context (inproc endpoints are per context); its owner
        # terminates it once both are closed.
        self.own_context = context is None
        self.context = context if context is not None else zmq.Context()
        self.events = topology.open(self.context, self.spec, "events")
        self.control = topology.open(self.context, self.spec, "control")
        self.preview_in = None
        self.registry = StatsRegistry()
        self.reports = {
            p.name: SourceReport(p.name, p.info.spec, "live" if p.live else "offline") for p in plans
        }
        self.infos = {p.name: p.info for p in plans}
        self.error: str | None = None
        self.error_status = 1
        self.error_detail = ""
        self.device: str | None = None
        self.first_output: float | None = None
        self.last_output: float | None = None
        self.worker_cpu: dict[str, dict[str, float]] = {}
        self.stopping = False
        self.aborting = False
        self.last_command: dict[type, float] = {}
        self.sinks_open = {p.name for p in plans}
        self.reached = {p.name: 0 for p in plans}  # frames of each source written so far
        self.top_ids = {p.name: 0 for p in plans}  # each source's highest track id written so far
        self.supervisor = Supervisor([])  # replaced by the run's own in run()
        self.signals = _Signals()  # replaced by the run's own in run()
        self.viewers: list = []
        self.metrics_server = None

    # --- set-up ---------------------------------------------------------------------------------------

    def start_services(self) -> None:
        if self.cfg.show or self.cfg.serve:
            self.preview_in = topology.open(self.context, self.spec, "preview")
        try:
            from stream.edges.preview import PreviewServer
            from stream.edges.preview_window import PreviewWindow
        except ImportError as exc:
            if self.preview_in is not None:
                raise PipelineError(f"preview is not available: {exc}") from exc
        if self.cfg.show:
            self.viewers.append(PreviewWindow())
        if self.cfg.serve:
            host, port = parse_host_port(self.cfg.serve, "serve")
            server = PreviewServer(host=host, port=port, max_viewers=self.cfg.max_viewers)
            print(f"preview: {server.url}", file=sys.stderr, flush=True)
            self.viewers.append(server)
        if self.cfg.metrics:
            host, port = parse_host_port(self.cfg.metrics, "metrics")
            self.metrics_server = start_metrics_server(self.registry, host=host, port=port)
            print(f"metrics: {self.metrics_server.url}", file=sys.stderr, flush=True)

    # --- event loop -----------------------------------------------------------------------------------

    def run(self, signals: _Signals) -> RunReport:
        self.signals = signals
        start = time.monotonic()
        launcher = Launcher(self.context, in_process=self.cfg.workers == "inproc")
        progress = ProgressDisplay(self.cfg, self.plans, self.registry)
        try:
            self.start_services()
            images = self.caller is not None and self.caller.images
            specs = worker_specs(self.cfg, self.plans, self.run_topology, self.endpoints, images)
            self.supervisor = Supervisor(specs)
            decoders = [spec for spec in specs if waits_for_models(spec)]
            for spec in specs:
                if not waits_for_models(spec):
                    self._start(launcher, spec)
            abort_deadline = None
            while launcher.running() or self.supervisor.pending:
                if decoders and (self.device is not None or self.error or signals.count):
                    for spec in decoders:
                        self._start(launcher, spec)
                    decoders = []
                # Once every sink is closed only the workers' exits are awaited: look for them often.
                self._drain_events(progress, timeout_ms=100 if self.sinks_open else 5)
                self._drain_preview()
                self._check_stop(signals)
                if not self.sinks_open and (self.caller is None or self.caller.received.is_set()):
                    # Every sink (and the caller) has its final EOS: senders may now disconnect
                    # without losing data.
                    self._command(events.Finish())
                self._handle_crashes(launcher)
                self._advance_restarts(launcher)
                if self.error is not None or signals.count >= 2:
                    self.aborting = True
                if self.caller is not None and self.caller.abort.is_set():
                    self.aborting = True
                if self.aborting:
                    self.supervisor.pending.clear()
                    abort_deadline = abort_deadline or time.monotonic() + ABORT_GRACE_S
                    self._command(events.Abort())
                    if time.monotonic() > abort_deadline:
                        break
            launcher.join(timeout=5.0)
            # Events a worker sent just before it exited may still be on their way through the socket.
            # A process worker's last event is its usage: read until every one is in, or none comes.
            expected = 0 if launcher.in_process else len(launcher.workers)
            self._drain_events(progress, timeout_ms=0)
            while len(self.worker_cpu) < expected and self.events.poll(FINAL_EVENTS_WAIT_MS, zmq.POLLIN):
                self._drain_events(progress, timeout_ms=0)
        finally:
            progress.close()
            self._close()
        if self.error is not None:
            raise PipelineError(self.error, self.error_status, self.error_detail)
        interrupted = (
            signals.count > 0
            or bool(self.external_stop and self.external_stop.is_set())
            or bool(self.caller and self.caller.abort.is_set())
        )
        first = None if self.first_output is None else self.first_output - start
        last = None if self.last_output is None else self.last_output - start
        elapsed = time.monotonic() - start
        return RunReport(self.reports, elapsed, interrupted, self.device, first, last, self.worker_cpu)

    def _start(self, launcher: Launcher, spec: WorkerSpec) -> None:
        launcher.start(spec)
        self.supervisor.started_now(spec, time.monotonic())

    def _handle_crashes(self, launcher: Launcher) -> None:
        """A dead worker ends the run (one error line), or in a live run is restarted with its group."""
        for label, exitcode in launcher.crashed():
            if self.supervisor.retiring(label):
                continue  # asked to leave for a restart, and killed: its successor is planned
            restartable = self.device is not None and not (self.stopping or self.aborting or self.error)
            if not (restartable and self.supervisor.can_restart(label)):
                self.error = self.error or self._crash_message(label, exitcode)
                continue
            pid = launcher.pid(label)
            launcher.forget(label)
            if label.startswith("decode[") and pid is not None:
                remove_rings(os.getpid(), writer_pid=pid)  # its readers drop frames from them
            alive = launcher.running()
            restart = self.supervisor.plan(label, time.monotonic(), alive, dict(self.top_ids))
            role = label.split("[", 1)[0]
            restarted = {plan.name for spec in restart.specs for plan in spec.sources}
            for name in restarted:
                self.registry.source(name).restart(role)
            print(
                f"stage {label} died ({_how(exitcode)}); restarting it with {len(restart.specs) - 1} other "
                f"worker(s) in {restart.due - time.monotonic():.0f} s",
                file=sys.stderr,
                flush=True,
            )

    def _advance_restarts(self, launcher: Launcher) -> None:
        """Ask the survivors of each planned restart to leave; start the new workers once they are gone
        and the backoff has passed (at once when the run is stopping: they drain with the rest)."""
        now = time.monotonic()
        for restart in list(self.supervisor.pending):
            alive = set(launcher.running())
            for label in [label for label in restart.retiring if label not in alive]:
                launcher.forget(label)
                del restart.retiring[label]
            if restart.retiring:
                if now - restart.told >= STOP_RESEND_S:
                    self.control.send(events.pack(events.Abort(workers=list(restart.retiring.values()))))
                    restart.told = now
                    restart.asked = restart.asked or now
                if now - restart.asked > RETIRE_GRACE_S:
                    for label in restart.retiring:
                        launcher.kill(label)
                continue
            if now < restart.due and not self.stopping:
                continue
            self.supervisor.pending.remove(restart)
            self._start_restart(launcher, restart)

    def _start_restart(self, launcher: Launcher, restart: Restart) -> None:
        for spec in restart.specs:
            self._start(launcher, spec)
            if spec.role == "render":
                self.sinks_open.update(plan.name for plan in spec.sources)

    def _crash_message(self, label: str, exitcode: int) -> str:
        """One line for a worker process that died without reporting: which stage, how, and how far
        each of its sources had got."""
        how = _how(exitcode)
        names = label[label.index("[") + 1 : -1].split(",") if "[" in label else []
        names = list(self.reached) if names == ["all"] else names
        where = ", ".join(f"{name} frame {self.reached.get(name, 0)}" for name in names)
        return f"stage {label} died ({how}); written so far: {where or 'nothing'}"

    def _check_stop(self, signals: _Signals) -> None:
        requested = signals.count > 0 or (self.external_stop is not None and self.external_stop.is_set())
        if requested and not self.stopping:
            self.stopping = True
            if signals.count:
                print(
                    "stopping: draining the pipeline (press Ctrl+C again to abort)",
                    file=sys.stderr,
                    flush=True,
                )
        if self.stopping and not self.aborting:
            self._command(events.Stop())

    def _command(self, command: events.Command) -> None:
        now = time.monotonic()
        kind = type(command)
        if now - self.last_command.get(kind, 0.0) >= STOP_RESEND_S:
            self.last_command[kind] = now
            self.control.send(events.pack(command))

    def _drain_events(self, progress: ProgressDisplay, timeout_ms: int) -> None:
        if not self.events.poll(timeout_ms, zmq.POLLIN):
            return
        while True:
            try:
                event = events.unpack(self.events.recv(zmq.NOBLOCK))
            except zmq.Again:
                return
            self._handle(event, progress)

    def _handle(self, event: events.Event, progress: ProgressDisplay) -> None:
        if event.generation < self.supervisor.generation(event.worker):
            return  # a worker replaced by a restart, still leaving
        source = getattr(event, "source", None)
        report = self.reports.get(source) if source else None
        if isinstance(event, events.Usage):
            self.worker_cpu[event.worker] = {"user_s": event.user_s, "system_s": event.system_s}
        elif isinstance(event, events.Ready) and event.device:
            self.device = f"{event.device} {event.dtype or ''}".strip()
        elif isinstance(event, events.Error) and self.error is None:
            self.error = event.message or "a worker failed"
            self.error_status = event.status
            self.error_detail = event.detail
        elif isinstance(event, events.StopRequested):
            self.signals.passed_on(event.count)
        elif report is not None:
            self._handle_source(event, report, progress)

    def _handle_source(self, event: events.Event, report: SourceReport, progress: ProgressDisplay) -> None:
        stats = self.registry.source(report.name)
        if isinstance(event, events.Progress):
            self.reached[report.name] = (event.frame or 0) + 1
            self.top_ids[report.name] = max(self.top_ids[report.name], event.top_id)
            self.last_output = time.monotonic()
            if self.first_output is None:
                self.first_output = self.last_output
            if not event.skipped:
                # A skipped frame is already counted as a drop; as output it would inflate the output
                # rate and put a frame that was never processed into the latency percentiles.
                stats.frame_out(float(event.latency), stage_times(event.stamps))
            progress.advance()
        elif isinstance(event, events.Drop):
            report.drops[event.cause] = report.drops.get(event.cause, 0) + event.count
            stats.drop(event.cause, event.count)
        elif isinstance(event, events.Reconnect):
            stats.reconnect()
        elif isinstance(event, events.FrameIn):
            stats.frame_in()
        elif isinstance(event, events.Done) and event.stage == "decode":
            report.frames_decoded = event.frames
            report.frames_missing = missing_frames(self.infos[report.name], report.frames_decoded)
        elif isinstance(event, events.SinkClosed):
            report.frames_written = event.frames
            report.lines = event.lines
            report.skipped = event.skipped
            report.outputs = dict(event.outputs)
            report.complete = event.complete
            report.error = event.error
            self.sinks_open.discard(report.name)

    def _drain_preview(self) -> None:
        if self.preview_in is None:
            return
        while self.preview_in.poll(0, zmq.POLLIN):
            message = recv_message(self.preview_in)
            image = to_decoded_frame(message).image
            stats = self.registry.source(message.source).summary()
            for viewer in self.viewers:
                viewer.publish(message.source, image, stats)

    def _close(self) -> None:
        for viewer in self.viewers:
            viewer.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
        self.events.close(linger=0)
        self.control.close(linger=0)
        if self.preview_in is not None:
            self.preview_in.close(linger=0)
        if self.own_context:
            self.context.term()
        self.space.cleanup()
        remove_rings(os.getpid())  # whatever its workers left, however they ended


def _how(exitcode: int) -> str:
    return f"killed by {signal.Signals(-exitcode).name}" if exitcode < 0 else f"exit status {exitcode}"


def run_pipeline(config: PipelineConfig, stop: threading.Event | None = None) -> RunReport:
    """Run ``config`` to the end of its sources (or until ``stop`` is set / SIGINT) and report.

    Raises SourceError, ConfigError or PipelineError (one-line messages) on bad input or a failed stage;
    whatever was processed before a failure is flushed and playable.
    """
    return run_prepared(prepare_run(config, stop))


def run_prepared(coordinator: _Coordinator) -> RunReport:
    """Run a prepared coordinator to its end; in the main thread SIGINT/SIGTERM stop it (see above)."""
    with _Signals() as signals:
        return coordinator.run(signals)


def prepare_run(
    config: PipelineConfig,
    stop: threading.Event | None = None,
    context: zmq.Context | None = None,
    caller: CallerLink | None = None,
) -> _Coordinator:
    """Check ``config``, probe its sources and set up the run's coordinator (nothing started yet)."""
    config.validate()
    if config.workers != "inproc":
        start_worker_server()
    plans = plan_sources(config)
    check_inputs(config)
    if config.out is not None:
        prepare_out_dir(Path(config.out))
    remove_stale_rings()  # left by runs that were killed before they could clean up
    return _Coordinator(config, plans, stop, context, caller)
