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

With ``--control`` (live runs) the coordinator serves the control API (``stream.edges.control``): live
sources are added and removed while the others run, all of them sharing the one GPU worker. The API's
threads never touch the sockets or the run's state: each request is queued and applied by the event
loop, which answers it (probing a new source's URL, which may take seconds, is done before, in the
request's thread). An added source gets its own decode, track and render workers (registered with the
supervisor, so they restart like the others); a removed one has its decoder stopped alone
(``Stop(workers=...)``): its final EOS drains its chain and closes its files, then its workers are told
``Finish`` and leave. The run does not end when its last source is removed: it ends on a signal.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path

import zmq

from stream.config import ConfigError, PipelineConfig, parse_host_port
from stream.edges.control import Conflict, ControlServer, Unavailable, check_control_address
from stream.edges.metrics import StatsRegistry, start_metrics_server
from stream.edges.redact import redact
from stream.edges.sources import missing_frames, probe_source
from stream.pipeline.launch import Launcher, RemotePlacement, start_worker_server, waits_for_models
from stream.pipeline.plan import check_inputs, plan_sources, prepare_out_dir
from stream.pipeline.report import ProgressDisplay, RunReport, SourceReport, stage_times
from stream.pipeline.supervise import RETIRE_GRACE_S, Restart, Supervisor
from stream.runtime import events, topology
from stream.runtime.curve import stop_authenticator
from stream.runtime.messages import to_decoded_frame
from stream.runtime.ring import remove_rings, remove_stale_rings
from stream.runtime.stage import STOP_SIGNALS, SourcePlan, WorkerSpec
from stream.runtime.topology import COORDINATOR, SHARED_STAGES, RunTopology
from stream.runtime.transport import Endpoints, recv_message

STOP_RESEND_S = 0.5  # PUB/SUB drops messages to subscribers still connecting: repeat commands
ABORT_GRACE_S = 15.0  # after an abort, workers that have not exited by then are terminated
FINAL_EVENTS_WAIT_MS = 100  # once the workers have exited: how long to wait for their last events
CONTROL_ANSWER_S = 10.0  # how long a control API request waits for the event loop's answer


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
        remote: RemotePlacement | None = None,
    ) -> None:
        self.cfg = cfg
        self.plans = plans
        self.external_stop = stop
        self.caller = caller
        self.remote = remote
        self.run_topology = RunTopology(cfg, [plan.name for plan in plans], caller=caller is not None)
        # Workers on other hosts reach this one's ends of the links at ``remote.host`` (tcp, CURVE).
        self.space = Endpoints(transport="tcp", host=remote.host) if remote else Endpoints(cfg.workers)
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
        # Sources whose render stage has not had its final EOS: until then their senders must stay
        # connected. Not the same as open sinks: a live source whose disk filled has closed its sinks,
        # but its frames still drain through its stages.
        self.awaiting_eos = {p.name for p in plans}
        self.reached = {p.name: 0 for p in plans}  # frames of each source written so far
        self.top_ids = {p.name: 0 for p in plans}  # each source's highest track id written so far
        self.supervisor = Supervisor([])  # replaced by the run's own in run()
        self.signals = _Signals()  # replaced by the run's own in run()
        self.viewers: list = []
        self.metrics_server = None
        self.progress: ProgressDisplay | None = None
        self.launcher: Launcher | None = None  # set by run(); added sources' workers start there
        self.waiting_decoders: list[WorkerSpec] = []  # live decoders start once the models are loaded
        # The control API (``--control``): requests from its threads, applied by the event loop.
        self.control_server: ControlServer | None = None
        self.requests: queue.SimpleQueue[tuple[Callable[[], object], Future]] = queue.SimpleQueue()
        self.removing: dict[str, float] = {}  # source -> when its workers were last told (0: not yet)
        self.removal_aborts: set[str] = set()  # removed sources whose chain cannot drain: aborted
        self.removed: set[str] = set()
        self.retired: dict[str, int] = {}  # label of a removed source's worker -> its last generation

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
        if self.cfg.control:
            self.control_server = ControlServer(self, self.cfg.control)
            print(f"control: {self.control_server.url}", file=sys.stderr, flush=True)

    # --- event loop -----------------------------------------------------------------------------------

    def run(self, signals: _Signals) -> RunReport:
        self.signals = signals
        start = time.monotonic()
        launcher = self.launcher = Launcher(
            self.context, in_process=self.cfg.workers == "inproc", remote=self.remote
        )
        progress = self.progress = ProgressDisplay(self.cfg, self.plans, self.registry)
        try:
            self.start_services()
            images = self.caller is not None and self.caller.images
            specs = worker_specs(self.cfg, self.plans, self.run_topology, self.endpoints, images)
            for spec in specs:
                if spec.role in SHARED_STAGES and self.cfg.control:
                    spec.space = self.space  # it opens the results links of sources added later
            self.supervisor = Supervisor(specs)
            self.waiting_decoders = [spec for spec in specs if waits_for_models(spec)]
            for spec in specs:
                if not waits_for_models(spec):
                    self._start(launcher, spec)
            abort_deadline = None
            while launcher.running() or self.supervisor.pending:
                if self.waiting_decoders and (self.device is not None or self.error or signals.count):
                    for spec in self.waiting_decoders:
                        self._start(launcher, spec)
                    self.waiting_decoders = []
                # Once every final EOS is in only the workers' exits are awaited: look for them often.
                self._drain_events(progress, timeout_ms=100 if self.awaiting_eos else 5)
                self._drain_preview()
                self._check_stop(signals)
                self._serve_requests()
                ends = self.cfg.control is None or self.stopping  # with a control API, sources come and go
                if ends and not self.awaiting_eos and (self.caller is None or self.caller.received.is_set()):
                    # Every sink (and the caller) has its final EOS: senders may now disconnect
                    # without losing data.
                    self._command(events.Finish())
                self._handle_crashes(launcher)
                self._advance_restarts(launcher)
                self._advance_removals(launcher)
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
            source = _source_of(label)
            if source in self.removing:
                # A removed source's worker died while its chain drained: the others cannot drain
                # now; they are told to leave (outputs closed) and it is not restarted.
                print(f"stage {label} died ({_how(exitcode)}) while removed", file=sys.stderr, flush=True)
                self.removal_aborts.add(source)
                self.removing[source] = 0.0
                self._forget_worker(launcher, label)
                continue
            restartable = self.device is not None and not (self.stopping or self.aborting or self.error)
            if not (restartable and self.supervisor.can_restart(label)):
                self.error = self.error or self._crash_message(label, exitcode)
                continue
            self._forget_worker(launcher, label)  # its readers drop frames from a dead decoder's rings
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
                self.awaiting_eos.update(plan.name for plan in spec.sources)

    def _forget_worker(self, launcher: Launcher, label: str) -> None:
        """Stop watching worker ``label`` (dead, or gone with its removed source); a decoder's rings go."""
        pid = launcher.pid(label) if label in launcher.workers else None
        launcher.forget(label)
        if label.startswith("decode[") and pid is not None:
            remove_rings(os.getpid(), writer_pid=pid)

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
        elif isinstance(event, events.Done) and event.stage == "render":
            self.awaiting_eos.discard(report.name)
        elif isinstance(event, events.SinkClosed):
            report.frames_written = event.frames
            report.lines = event.lines
            report.skipped = event.skipped
            report.outputs = dict(event.outputs)
            report.complete = event.complete
            report.error = event.error

    def _drain_preview(self) -> None:
        if self.preview_in is None:
            return
        while self.preview_in.poll(0, zmq.POLLIN):
            message = recv_message(self.preview_in)
            image = to_decoded_frame(message).image
            stats = self.registry.source(message.source).summary()
            for viewer in self.viewers:
                viewer.publish(message.source, image, stats)

    # --- the control API (stream.edges.control), called from its server's threads -------------------

    def list_sources(self) -> list[dict]:
        return self._ask(lambda: [self._row(name) for name in self.infos])

    def add_source(self, name: str | None, url: str) -> dict:
        info = probe_source(url)  # seconds for a camera: here, not in the event loop (SourceError: 400)
        if not info.is_live:
            raise ValueError("the control API adds live sources (cameras, streams)")
        plan = SourcePlan(name=name or info.name, info=info, live=True)
        return self._ask(lambda: self._add(plan))

    def remove_source(self, name: str) -> dict:
        return self._ask(lambda: self._remove(name))

    def _ask(self, apply: Callable[[], object]):
        """``apply()`` run by the event loop; its answer, or its exception raised here."""
        answer: Future = Future()
        self.requests.put((apply, answer))
        try:
            return answer.result(timeout=CONTROL_ANSWER_S)
        except FutureTimeout:
            raise Unavailable("the run did not answer in time") from None

    def _serve_requests(self) -> None:
        while True:
            try:
                apply, answer = self.requests.get_nowait()
            except queue.Empty:
                return
            try:
                answer.set_result(apply())
            except Exception as exc:  # Conflict, KeyError, Unavailable...: the server's answer
                answer.set_exception(exc)

    def _state(self, name: str) -> str:
        if name in self.removed:
            return "removed"
        if name in self.removing or (self.stopping and name in self.awaiting_eos):
            return "stopping"
        return "running" if name in self.awaiting_eos else "ended"

    def _row(self, name: str) -> dict:
        return {"name": name, "url": redact(self.infos[name].spec), "state": self._state(name), "shard": None}

    def _add(self, plan: SourcePlan) -> dict:
        """Start ``plan``'s decode, track and render workers; they share the running GPU worker."""
        name = plan.name
        if self.stopping or self.aborting:
            raise Unavailable("the run is stopping")
        if name in self.infos and name not in self.removed:
            raise Conflict(f"a source named {name!r} is {self._state(name)}")
        self.removed.discard(name)
        self.plans = [p for p in self.plans if p.name != name] + [plan]
        self.infos.pop(name, None)
        self.infos[name] = plan.info
        self.reports[name] = SourceReport(name, plan.info.spec, "live")
        self.reached.setdefault(name, 0)
        self.top_ids.setdefault(name, 0)
        if name not in self.run_topology.sources:
            self.run_topology.sources.append(name)
            self.endpoints = {**self.endpoints, **self.run_topology.endpoints(self.space)}
        if self.progress is not None and name not in self.progress.names:
            self.progress.names.append(name)
        self.registry.source(name)
        session = uuid.uuid4().hex[:12]
        self.awaiting_eos.add(name)
        for role, _ in RunTopology(self.cfg, [name]).workers():
            if role in SHARED_STAGES:
                continue
            spec = WorkerSpec(role, self.cfg, self.endpoints, [plan], session)
            if spec.label in self.retired:
                # The name was used before: a new generation (its files are named by their start time,
                # so the earlier ones stay) and track ids above those written.
                spec.generation = self.retired.pop(spec.label) + 1
                spec.first_track_id = self.top_ids[name] + 1
            self.supervisor.specs[spec.label] = spec
            if waits_for_models(spec) and self.device is None:
                self.waiting_decoders.append(spec)
            else:
                self._start(self.launcher, spec)
        print(f"control: added {name} ({redact(plan.info.spec)})", file=sys.stderr, flush=True)
        return self._row(name)

    def _remove(self, name: str) -> dict:
        """Stop ``name``'s decoder: its final EOS drains the chain and closes its files
        (``_advance_removals`` sees it through)."""
        if self.stopping or self.aborting:
            raise Unavailable("the run is stopping")
        if name not in self.infos or name in self.removed or name in self.removing:
            raise KeyError(name)
        self.removing[name] = 0.0
        waiting = [spec for spec in self.waiting_decoders if spec.sources[0].name == name]
        if waiting:  # its decoder never started: nothing will drain the rest
            self.waiting_decoders = [spec for spec in self.waiting_decoders if spec not in waiting]
            self.removal_aborts.add(name)
        print(f"control: removing {name}", file=sys.stderr, flush=True)
        return self._row(name)

    def _advance_removals(self, launcher: Launcher) -> None:
        """Tell each removed source's workers what is next (commands on PUB/SUB are repeated): the
        decoder to stop; once the sinks are closed, all three to finish. Once they are gone the source
        is removed."""
        now = time.monotonic()
        alive = set(launcher.running())
        for name, told in list(self.removing.items()):
            labels = [label for label in self.supervisor.specs if _source_of(label) == name]
            restarting = [spec for restart in self.supervisor.pending for spec in restart.specs]
            if any(_source_of(spec.label) == name for spec in restarting):
                continue  # restarted with the GPU worker: its new workers are told once they run
            running = [label for label in labels if label in alive]
            if not running:
                for label in labels:
                    self._forget_worker(launcher, label)
                    self.retired[label] = self.supervisor.specs.pop(label).generation
                del self.removing[name]
                self.removal_aborts.discard(name)
                self.removed.add(name)
                self.awaiting_eos.discard(name)
                if self.progress is not None and name in self.progress.names:
                    self.progress.names.remove(name)
                print(f"control: removed {name}", file=sys.stderr, flush=True)
                continue
            if now - told < STOP_RESEND_S:
                continue
            self.removing[name] = now
            instances = [self.supervisor.specs[label].instance for label in running]
            if name in self.removal_aborts:
                self.control.send(events.pack(events.Abort(workers=instances)))
                continue
            decoder = self.supervisor.specs.get(f"decode[{name}]")
            if decoder is not None and decoder.label in running:
                self.control.send(events.pack(events.Stop(workers=[decoder.instance])))
            if name not in self.awaiting_eos:
                self.control.send(events.pack(events.Finish(workers=instances)))

    def _close(self) -> None:
        if self.control_server is not None:
            self.control_server.close()
        while True:  # requests that came too late
            try:
                _, answer = self.requests.get_nowait()
            except queue.Empty:
                break
            answer.set_exception(Unavailable("the run has ended"))
        for viewer in self.viewers:
            viewer.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
        self.events.close(linger=0)
        self.control.close(linger=0)
        if self.preview_in is not None:
            self.preview_in.close(linger=0)
        if self.own_context:
            stop_authenticator(self.context)  # its ZAP socket would hold the context open
            self.context.term()
        self.space.cleanup()
        remove_rings(os.getpid())  # whatever its workers left, however they ended


def _source_of(label: str) -> str | None:
    """The source of a per-source worker's label (``track[door]`` -> ``door``); None for the GPU worker."""
    role, _, rest = label.partition("[")
    return None if role in SHARED_STAGES or not rest else rest[:-1]


def _how(exitcode: int) -> str:
    return f"killed by {signal.Signals(-exitcode).name}" if exitcode < 0 else f"exit status {exitcode}"


def run_pipeline(
    config: PipelineConfig, stop: threading.Event | None = None, remote: RemotePlacement | None = None
) -> RunReport:
    """Run ``config`` to the end of its sources (or until ``stop`` is set / SIGINT) and report;
    ``remote`` runs some workers on other hosts (see ``stream.pipeline.launch.RemotePlacement``).

    Raises SourceError, ConfigError or PipelineError (one-line messages) on bad input or a failed stage;
    whatever was processed before a failure is flushed and playable.
    """
    return run_prepared(prepare_run(config, stop, remote=remote))


def run_prepared(coordinator: _Coordinator) -> RunReport:
    """Run a prepared coordinator to its end; in the main thread SIGINT/SIGTERM stop it (see above)."""
    with _Signals() as signals:
        return coordinator.run(signals)


def prepare_run(
    config: PipelineConfig,
    stop: threading.Event | None = None,
    context: zmq.Context | None = None,
    caller: CallerLink | None = None,
    remote: RemotePlacement | None = None,
) -> _Coordinator:
    """Check ``config``, probe its sources and set up the run's coordinator (nothing started yet)."""
    config.validate()
    if config.control is not None:
        check_control_address(config.control)
        if caller is not None:
            raise ConfigError("control: the control API serves runs of the command line, not stream.Pipeline")
    if config.workers != "inproc":
        start_worker_server()
    plans = plan_sources(config)
    if config.control is not None and not all(plan.live for plan in plans):
        raise ConfigError("control: the control API adds and removes live cameras; this run has files")
    check_inputs(config)
    if config.out is not None:
        prepare_out_dir(Path(config.out))
    remove_stale_rings()  # left by runs that were killed before they could clean up
    return _Coordinator(config, plans, stop, context, caller, remote)
