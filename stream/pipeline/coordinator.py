"""The coordinator: plans the stages of a run, starts them, watches them and reports.

Topology (DESIGN.md §2–3); every arrow is a ZeroMQ PUSH -> PULL link with explicit high-water marks::

    decode[s] ──frames──► infer (one, batched across sources) ──results──► track[s] ──results──┐
        └──────────────────────────────── frames ─────────────────────────────────────► render[s] ──► sinks

Per source ``s`` there is one decode, one track and one render worker; all sources share one GPU
worker (``infer``). With ``workers="inproc"`` every worker is a thread of this process over
``inproc://``; with ``ipc`` (default) or ``tcp`` each is a process of its own. The coordinator binds an
``events`` PULL socket (workers report ready/progress/drops/done/errors) and a ``control`` PUB socket
(``stop``: sources end and the pipeline drains to EOS; ``abort``: stop at once, close outputs).

SIGINT/SIGTERM: the first one stops the sources and lets everything drain, so every output is
complete and playable; a second one aborts (outputs are still closed and playable).
"""

from __future__ import annotations

import multiprocessing
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import zmq

from models.boxes import load_boxes_file
from stream.config import PipelineConfig
from stream.edges.publish import check_publish_target
from stream.edges.sources import SourceInfo, missing_frames, probe_source, unique_names
from stream.runtime.messages import to_decoded_frame
from stream.runtime.stage import CONTROL_HWM, EVENTS_HWM, SourcePlan, WorkerSpec, run_worker
from stream.runtime.transport import Topology, make_socket, recv_message

STOP_RESEND_S = 0.5  # PUB/SUB drops messages to subscribers still connecting: repeat commands
ABORT_GRACE_S = 15.0  # after an abort, workers that have not exited by then are terminated
FINAL_EVENTS_WAIT_MS = 100  # once the workers have exited: how long to wait for their last events


class PipelineError(RuntimeError):
    """A run that could not complete (one-line message for the user)."""


@dataclass
class SourceReport:
    """What happened to one source."""

    name: str
    spec: str
    mode: str
    frames_decoded: int = 0
    frames_missing: int = 0  # announced by the container but never decoded (a damaged or cut file)
    frames_written: int = 0  # video frames
    lines: int = 0  # JSONL lines (one per decoded frame, skipped ones included)
    skipped: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    complete: bool = False  # the final EOS reached the sinks


@dataclass
class RunReport:
    """Per-source accounting of a run, its wall time and how it ended."""

    sources: dict[str, SourceReport]
    elapsed: float
    interrupted: bool = False
    device: str | None = None
    first_output: float | None = None  # seconds from start until the first frame reached a sink
    last_output: float | None = None  # seconds from start until the last frame reached a sink
    # Process workers only: worker label -> {"user_s", "system_s"}, the CPU seconds it used.
    worker_cpu: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return sum(s.lines for s in self.sources.values())

    @property
    def fps(self) -> float:
        return self.frames / self.elapsed if self.elapsed > 0 else 0.0


def plan_sources(cfg: PipelineConfig) -> list[SourcePlan]:
    """Probe every source (one-line SourceError on bad input) and give each its output name and mode."""
    if not cfg.sources:
        raise PipelineError("no sources given")
    infos: list[SourceInfo] = [probe_source(spec) for spec in cfg.sources]
    plans = []
    for name, info in zip(unique_names(infos), infos, strict=True):
        live = cfg.mode == "live" or (cfg.mode == "auto" and info.is_live)
        plans.append(SourcePlan(name=name, info=info, live=live))
    return plans


def check_inputs(cfg: PipelineConfig) -> None:
    """Refuse, before starting anything, model and detector paths that do not exist and boxes files
    that do not parse."""
    models = ([("pose", cfg.pose_model)] if cfg.pose else []) + ([("seg", cfg.seg_model)] if cfg.seg else [])
    for task, spec in models:
        if not cfg.random_weights and _looks_like_path(spec) and not Path(spec).exists():
            raise FileNotFoundError(f"{task} model not found: {spec}")
    if cfg.detector.startswith("boxes:"):
        load_boxes_file(cfg.detector[len("boxes:") :])  # a malformed file is bad input, refused here
    elif _looks_like_path(cfg.detector) and not Path(cfg.detector).exists():
        raise FileNotFoundError(f"detector weights not found: {cfg.detector}")
    if cfg.publish is not None:
        check_publish_target(cfg.publish, len(cfg.sources))


def _looks_like_path(spec: str) -> bool:
    # Hub ids are "owner/name"; anything with a path prefix, more parts or a file suffix is a path.
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or Path(spec).exists()


def endpoint_names(plans: list[SourcePlan]) -> list[str]:
    names = ["events", "control", "preview", "infer"]
    for plan in plans:
        names += [f"track.{plan.name}", f"render.{plan.name}.frames", f"render.{plan.name}.results"]
    return names


def worker_specs(cfg: PipelineConfig, plans: list[SourcePlan], endpoints: dict[str, str]) -> list[WorkerSpec]:
    """Receivers first: they bind, so senders that connect find them (ZeroMQ queues until then anyway)."""
    session = uuid.uuid4().hex[:12]
    specs = []
    for plan in plans:
        specs.append(WorkerSpec("render", cfg, endpoints, [plan], session))
        specs.append(WorkerSpec("track", cfg, endpoints, [plan], session))
    specs.append(WorkerSpec("infer", cfg, endpoints, list(plans), session))
    for plan in plans:
        specs.append(WorkerSpec("decode", cfg, endpoints, [plan], session))
    return specs


class _Launcher:
    """Starts workers as threads (inproc) or spawned processes and tells which are still running."""

    def __init__(self, context: zmq.Context, in_process: bool) -> None:
        self.context = context
        self.in_process = in_process
        self.workers: dict[str, threading.Thread | multiprocessing.Process] = {}

    def start(self, spec: WorkerSpec) -> None:
        if self.in_process:
            worker = threading.Thread(
                target=run_worker, args=(spec, self.context), name=spec.label, daemon=True
            )
        else:
            worker = _process_context().Process(target=run_worker, args=(spec,), name=spec.label, daemon=True)
        worker.start()
        self.workers[spec.label] = worker

    def running(self) -> list[str]:
        return [label for label, w in self.workers.items() if w.is_alive()]

    def crashed(self) -> list[str]:
        """Processes that ended with a non-zero exit code (a crash that could not report itself)."""
        if self.in_process:
            return []
        return [label for label, w in self.workers.items() if w.exitcode not in (None, 0)]

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for worker in self.workers.values():
            worker.join(max(0.0, deadline - time.monotonic()))
        if not self.in_process:
            for worker in self.workers.values():
                if worker.is_alive():
                    worker.terminate()
                    worker.join(5.0)


# Imported once by the fork server, so workers start from a warm interpreter instead of each paying for
# Python, numpy, PyAV, ZeroMQ and torch (seconds per worker on a small CPU). Nothing here starts threads
# beyond the BLAS pool, which re-initialises after fork; OpenCV (imported by models.preprocess for the CPU
# crops) starts its pool on first use, in the worker.
WORKER_PRELOAD = [
    "__main__",
    "stream.runtime.stage",
    "stream.stages.decode",
    "stream.stages.track",
    "scipy.optimize",  # the tracker's assignment solver
    "torch",
    "stream.stages.inference",
    "models.sapiens2",
    "models.loading",
    "models.detector",
    "models.preprocess",
    "models.postprocess",
    "models.tta",
]


def _process_context():
    """forkserver where the platform has it, else spawn. Never plain fork of the coordinator: it holds
    ZeroMQ contexts (I/O threads) and maybe CUDA, neither survives fork; the fork server is a clean
    process that has only imported modules."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(WORKER_PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


def _waits_for_models(spec: WorkerSpec) -> bool:
    """A live camera's decoder starts once the models are loaded, so it loses no frames to start-up.
    File decoders start with the other stages: their first frames are decoded while the models load."""
    return spec.role == "decode" and spec.sources[0].live


def start_worker_server() -> None:
    """Start the fork server now, if workers come from one: it imports torch (seconds on a small CPU)
    while the sources are probed (a camera may take as long to answer) and the coordinator sets up,
    instead of after. Later runs of this process reuse it."""
    context = _process_context()
    if context.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


class _Signals:
    """First SIGINT/SIGTERM: stop and drain; second: abort. Handlers are installed in the main thread only."""

    def __init__(self) -> None:
        self.count = 0
        self.previous: dict[int, object] = {}

    def __enter__(self) -> _Signals:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self.previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        self.count += 1

    def __exit__(self, *exc) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class _Progress:
    """Offline: a tqdm bar (frames, fps, ETA). Live: a stats line per source every few seconds."""

    def __init__(self, cfg: PipelineConfig, plans: list[SourcePlan], registry) -> None:
        self.registry = registry
        self.live = any(p.live for p in plans)
        self.bar = None
        self.last_line = time.monotonic()
        self.names = [p.name for p in plans]
        if cfg.progress and not self.live:
            from tqdm import tqdm

            known = [p.info.num_frames for p in plans]
            total = sum(known) if all(n is not None for n in known) else None
            self.bar = tqdm(total=total, unit="frame", dynamic_ncols=True, disable=None, file=sys.stderr)
        self.enabled = cfg.progress

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)
        elif self.live and self.enabled and time.monotonic() - self.last_line > 5.0:
            self.last_line = time.monotonic()
            for name in self.names:
                print(self.registry.stats_line(name), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Coordinator:
    """Runs one pipeline: sockets, workers, the event loop and the report."""

    def __init__(self, cfg: PipelineConfig, plans: list[SourcePlan], stop: threading.Event | None) -> None:
        from stream.edges.metrics import StatsRegistry

        self.cfg = cfg
        self.plans = plans
        self.external_stop = stop
        self.topology = Topology(transport=cfg.workers)
        self.endpoints = {name: self.topology.endpoint(name) for name in endpoint_names(plans)}
        self.context = zmq.Context()
        self.events = make_socket(self.context, zmq.PULL, self.endpoints["events"], bind=True, hwm=EVENTS_HWM)
        self.control = make_socket(
            self.context, zmq.PUB, self.endpoints["control"], bind=True, hwm=CONTROL_HWM, linger_ms=0
        )
        self.preview_in = None
        self.registry = StatsRegistry()
        self.reports = {
            p.name: SourceReport(p.name, p.info.spec, "live" if p.live else "offline") for p in plans
        }
        self.infos = {p.name: p.info for p in plans}
        self.error: str | None = None
        self.device: str | None = None
        self.first_output: float | None = None
        self.last_output: float | None = None
        self.worker_cpu: dict[str, dict[str, float]] = {}
        self.stopping = False
        self.aborting = False
        self.last_command: dict[str, float] = {}
        self.sinks_open = {p.name for p in plans}
        self.viewers: list = []
        self.metrics_server = None

    # --- set-up ---------------------------------------------------------------------------------------

    def start_services(self) -> None:
        if self.cfg.show or self.cfg.serve:
            self.preview_in = make_socket(
                self.context, zmq.PULL, self.endpoints["preview"], bind=True, hwm=4, linger_ms=0
            )
        try:
            from stream.edges.preview import PreviewServer, PreviewWindow
        except ImportError as exc:
            if self.preview_in is not None:
                raise PipelineError(f"preview is not available: {exc}") from exc
        if self.cfg.show:
            self.viewers.append(PreviewWindow())
        if self.cfg.serve:
            from stream.config import parse_host_port

            host, port = parse_host_port(self.cfg.serve, "serve")
            server = PreviewServer(host=host, port=port)
            print(f"preview: {server.url}", file=sys.stderr, flush=True)
            self.viewers.append(server)
        if self.cfg.metrics:
            from stream.config import parse_host_port
            from stream.edges.metrics import start_metrics_server

            host, port = parse_host_port(self.cfg.metrics, "metrics")
            self.metrics_server = start_metrics_server(self.registry, host=host, port=port)

    # --- event loop -----------------------------------------------------------------------------------

    def run(self, signals: _Signals) -> RunReport:
        start = time.monotonic()
        launcher = _Launcher(self.context, in_process=self.cfg.workers == "inproc")
        progress = _Progress(self.cfg, self.plans, self.registry)
        try:
            self.start_services()
            specs = worker_specs(self.cfg, self.plans, self.endpoints)
            decoders = [spec for spec in specs if _waits_for_models(spec)]
            for spec in specs:
                if not _waits_for_models(spec):
                    launcher.start(spec)
            abort_deadline = None
            while launcher.running():
                if decoders and (self.device is not None or self.error or signals.count):
                    for spec in decoders:
                        launcher.start(spec)
                    decoders = []
                # Once every sink is closed only the workers' exits are awaited: look for them often.
                self._drain_events(progress, timeout_ms=100 if self.sinks_open else 5)
                self._drain_preview()
                self._check_stop(signals)
                if not self.sinks_open:
                    # Every sink has its final EOS: senders may now disconnect without losing data.
                    self._command("finish")
                crashed = launcher.crashed()
                if crashed and self.error is None:
                    self.error = f"worker {crashed[0]} exited unexpectedly"
                if self.error is not None or signals.count >= 2:
                    self.aborting = True
                if self.aborting:
                    abort_deadline = abort_deadline or time.monotonic() + ABORT_GRACE_S
                    self._command("abort")
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
            raise PipelineError(self.error)
        interrupted = signals.count > 0 or bool(self.external_stop and self.external_stop.is_set())
        first = None if self.first_output is None else self.first_output - start
        last = None if self.last_output is None else self.last_output - start
        elapsed = time.monotonic() - start
        return RunReport(self.reports, elapsed, interrupted, self.device, first, last, self.worker_cpu)

    def _check_stop(self, signals: _Signals) -> None:
        requested = signals.count > 0 or (self.external_stop is not None and self.external_stop.is_set())
        if requested and not self.stopping:
            self.stopping = True
            print(
                "stopping: draining the pipeline (press Ctrl+C again to abort)", file=sys.stderr, flush=True
            )
        if self.stopping and not self.aborting:
            self._command("stop")

    def _command(self, command: str) -> None:
        now = time.monotonic()
        if now - self.last_command.get(command, 0.0) >= STOP_RESEND_S:
            self.last_command[command] = now
            self.control.send(msgpack.packb({"cmd": command}))

    def _drain_events(self, progress: _Progress, timeout_ms: int) -> None:
        if not self.events.poll(timeout_ms, zmq.POLLIN):
            return
        while True:
            try:
                event = msgpack.unpackb(self.events.recv(zmq.NOBLOCK), raw=False)
            except zmq.Again:
                return
            self._handle(event, progress)

    def _handle(self, event: dict, progress: _Progress) -> None:
        kind = event.get("event")
        source = event.get("source")
        report = self.reports.get(source) if source else None
        if kind == "progress" and report is not None:
            self.last_output = time.monotonic()
            if self.first_output is None:
                self.first_output = self.last_output
            if not event.get("skipped"):
                # A skipped frame is already counted as a drop; as output it would inflate the output
                # rate and put a frame that was never processed into the latency percentiles.
                stats = self.registry.source(source)
                stats.frame_out(float(event.get("latency", 0.0)), _stage_times(event.get("stamps") or {}))
            progress.advance()
        elif kind == "drop" and report is not None:
            cause = str(event.get("cause", "behind"))
            count = int(event.get("count", 1))
            report.drops[cause] = report.drops.get(cause, 0) + count
            self.registry.source(source).drop(cause, count)
        elif kind == "reconnect" and report is not None:
            self.registry.source(source).reconnect()
        elif kind == "frame_in" and report is not None:
            self.registry.source(source).frame_in()
        elif kind == "decoded" and report is not None:
            report.frames_decoded = int(event.get("frames", 0))
            report.frames_missing = missing_frames(self.infos[source], report.frames_decoded)
        elif kind == "done" and report is not None and "lines" in event:
            report.frames_written = int(event["frames"])
            report.lines = int(event["lines"])
            report.skipped = int(event["skipped"])
            report.outputs = dict(event.get("outputs") or {})
            report.complete = bool(event.get("complete"))
            self.sinks_open.discard(source)
        elif kind == "usage":
            self.worker_cpu[str(event.get("worker"))] = {
                "user_s": float(event.get("user_s", 0.0)),
                "system_s": float(event.get("system_s", 0.0)),
            }
        elif kind == "ready" and event.get("device"):
            self.device = f"{event['device']} {event.get('dtype', '')}".strip()
        elif kind == "error" and self.error is None:
            self.error = str(event.get("message", "a worker failed"))

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
        self.context.term()
        self.topology.cleanup()


def _stage_times(stamps: dict) -> dict[str, float]:
    """Seconds spent between consecutive stage stamps (decode -> infer -> track)."""
    ordered = sorted(stamps.items(), key=lambda item: item[1])
    return {b[0]: b[1] - a[1] for a, b in zip(ordered, ordered[1:], strict=False)}


def run_pipeline(config: PipelineConfig, stop: threading.Event | None = None) -> RunReport:
    """Run ``config`` to the end of its sources (or until ``stop`` is set / SIGINT) and report.

    Raises SourceError, ConfigError or PipelineError (one-line messages) on bad input or a failed stage;
    whatever was processed before a failure is flushed and playable.
    """
    config.validate()
    if config.workers != "inproc":
        start_worker_server()
    plans = plan_sources(config)
    check_inputs(config)
    Path(config.out).mkdir(parents=True, exist_ok=True)
    coordinator = _Coordinator(config, plans, stop)
    with _Signals() as signals:
        return coordinator.run(signals)
