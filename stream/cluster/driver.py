"""The driver of a run on a Ray cluster: connects, starts the shards, hands out sources, reports.

Offline files are a work queue. Each idle shard takes the next files (a source is never split: its
frame order and tracker state stay with one shard); a shard whose actor dies has its unfinished files
put back at the front of the queue and run again on another shard (a replacement actor is started in
its place). Outputs appear under their final names only when complete (see ``stream.cluster.shard``).

Paths must mean the same on every host: ``--out``, the sources and local model paths are made absolute
here, and on several hosts they must lie on a filesystem every host mounts at the same place.
"""

from __future__ import annotations

import math
import shutil
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path

from stream.config import ConfigError, PipelineConfig
from stream.pipeline.coordinator import PipelineError
from stream.pipeline.plan import check_inputs, plan_sources
from stream.pipeline.report import RunReport, SourceReport
from stream.runtime.curve import CurveKeys

INSTALL_HINT = "pip install sapiens-stream[ray]"
MAX_ATTEMPTS = 3  # runs of one file before the run gives up on it (each on a new shard)
MAX_FILES_PER_CALL = 4  # files one shard takes at once: they share its GPU worker's batches
POLL_S = 0.5
LIVE_SEGMENT_S = 3600.0  # live recordings on a cluster rotate at least hourly
MAX_CAMERAS_PER_SHARD = 256  # threads of a shard actor: one per live camera, plus its own calls
STOP_WAIT_S = 60.0  # after a stop: how long live cameras get to drain and close their files


def require_ray():
    """The ``ray`` module, or a ConfigError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


@dataclass
class ClusterReport(RunReport):
    """A run's report over the whole cluster: per source, also which shard wrote it."""

    placement: dict[str, str] = field(default_factory=dict)  # source -> "shard-N on HOST"
    shards: int = 0
    lost_shards: int = 0  # shard actors that died during the run (each replaced)


def connect(ray, address: str) -> bool:
    """Join or start the cluster named by ``address``; True when this call started Ray (so the run
    shuts it down). An already connected process (an application, a test) keeps its connection."""
    if ray.is_initialized():
        return False
    try:
        if address == "local":
            ray.init(include_dashboard=False, log_to_driver=False)
        else:
            ray.init(address=address, log_to_driver=False)
    except Exception as exc:  # Ray raises ConnectionError, RuntimeError or ValueError here
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {str(exc).splitlines()[0]}") from None
    return True


def run_cluster(config: PipelineConfig, stop: threading.Event | None = None) -> ClusterReport:
    """Run ``config`` over the Ray cluster ``config.ray`` and report for the whole cluster."""
    ray = require_ray()
    config.validate()
    config = _absolute_paths(config)
    plans = plan_sources(config)  # bad input is refused here, before anything is placed
    check_inputs(config)
    live = {plan.live for plan in plans}
    if len(live) > 1:
        raise ConfigError("--ray: run live cameras and files in separate runs")
    if config.control:
        from stream.edges.control import check_control_address

        check_control_address(config.control)
        if True not in live:
            raise ConfigError("control: the control API adds and removes live cameras; this run has files")
    if True in live and config.segment_time is None:
        # A camera moved to another shard starts new files named by their start time: never the same
        # name as the files its dead shard left.
        config = replace(config, segment_time=LIVE_SEGMENT_S)
    Path(config.out).mkdir(parents=True, exist_ok=True)
    started = connect(ray, config.ray)
    try:
        sources = [(p.info.spec, p.name) for p in plans]
        if True in live:
            return _LiveDriver(ray, config, sources, stop).run()
        return _Driver(ray, config, sources, stop).run()
    finally:
        if started:
            ray.shutdown()


def _absolute_paths(config: PipelineConfig) -> PipelineConfig:
    """Paths as every shard sees them: absolute (a shard's working directory is not the driver's)."""

    def absolute(value: str) -> str:
        return str(Path(value).resolve()) if Path(value).exists() else value

    detector = config.detector
    if detector.startswith("boxes:"):
        detector = "boxes:" + absolute(detector[len("boxes:") :])
    return replace(
        config,
        sources=[absolute(s) for s in config.sources],
        out=str(Path(config.out).resolve()),
        pose_model=absolute(config.pose_model),
        seg_model=absolute(config.seg_model),
        detector=absolute(detector) if not detector.startswith("boxes:") else detector,
    )


class _Driver:
    def __init__(self, ray, config: PipelineConfig, sources: list[tuple[str, str]], stop) -> None:
        self.ray = ray
        self.config = config
        self.stop = stop
        self.run_id = uuid.uuid4().hex[:8]
        self.queue: deque[tuple[str, str]] = deque(sources)
        self.attempts: dict[str, int] = {name: 0 for _, name in sources}
        self.reports: dict[str, SourceReport] = {}
        self.placement: dict[str, str] = {}
        self.order = [name for _, name in sources]
        self.count = self._shard_count(len(sources))
        self.per_call = max(1, min(MAX_FILES_PER_CALL, math.ceil(len(sources) / self.count)))
        self.made = 0
        self.actors: list = []
        self.lost = 0
        self.hosts: dict[str, str] = {}
        # Links between hosts are CURVE-secured with keys made here, for this run only; the shards get
        # them in their environment through Ray (never on disk, never on a command line).
        self.curve = CurveKeys.generate()

    def _shard_count(self, files: int) -> int:
        gpus = int(self.ray.cluster_resources().get("GPU", 0))
        wanted = self.config.shards or max(gpus, 1)
        if gpus and wanted > gpus:
            raise ConfigError(f"shards: {wanted} asked for, but the cluster has {gpus} GPUs (one per shard)")
        return max(1, min(wanted, files))

    def _new_shard(self):
        from stream.cluster.shard import Shard

        self.made += 1
        label = f"shard-{self.made}"
        gpus = self.ray.cluster_resources().get("GPU", 0)
        # One GPU per shard; without GPUs (CPU clusters, tests) one CPU reserves the actor's place.
        resources = {"num_gpus": 1} if gpus else {"num_cpus": 1}
        options = {**resources, "max_restarts": 0, "max_concurrency": MAX_CAMERAS_PER_SHARD}
        actor_class = self.ray.remote(**options)(Shard)
        # Named after its side directory (``.partial/<run>/<label>-<call>``), so it can be found.
        actor = actor_class.options(
            name=f"sapiens-stream-{self.run_id}-{label}", runtime_env={"env_vars": self.curve.to_env()}
        ).remote(
            label, self.config, self.run_id
        )
        self.actors.append(actor)
        return label, actor

    def run(self) -> ClusterReport:
        from ray.exceptions import RayActorError, RayTaskError

        start = time.monotonic()
        idle = [self._new_shard() for _ in range(self.count)]
        pending: dict = {}  # object ref -> (label, actor, files)
        interrupted = False
        try:
            while self.queue or pending:
                if self.stop is not None and self.stop.is_set():
                    interrupted = True
                    break
                while self.queue and idle:
                    label, actor = idle.pop()
                    files = [self.queue.popleft() for _ in range(min(self.per_call, len(self.queue)))]
                    for _, name in files:
                        self.attempts[name] += 1
                    pending[actor.run.remote(files)] = (label, actor, files)
                try:
                    done, _ = self.ray.wait(list(pending), num_returns=1, timeout=POLL_S)
                except KeyboardInterrupt:
                    # Ctrl+C: files finished so far are in place; the others leave nothing under a
                    # final name (their shards are killed below).
                    interrupted = True
                    break
                for ref in done:
                    label, actor, files = pending.pop(ref)
                    try:
                        results = self.ray.get(ref)
                    except RayTaskError as exc:
                        raise _task_error(exc) from None
                    except RayActorError:
                        self._requeue(label, files)
                        idle.append(self._new_shard())
                        continue
                    self._record(label, actor, results)
                    idle.append((label, actor))
        finally:
            # Shards hold GPUs: none outlives the run, on a cluster that does.
            for actor in self.actors:
                self.ray.kill(actor)
            shutil.rmtree(Path(self.config.out) / ".partial" / self.run_id, ignore_errors=True)
            partial = Path(self.config.out) / ".partial"
            if partial.is_dir() and not any(partial.iterdir()):
                partial.rmdir()
        elapsed = time.monotonic() - start
        sources = {name: self.reports[name] for name in self.order if name in self.reports}
        return ClusterReport(
            sources, elapsed, interrupted, placement=self.placement, shards=self.made, lost_shards=self.lost
        )

    def _requeue(self, label: str, files: list[tuple[str, str]]) -> None:
        """A shard died: its files go back to the front of the queue, to run again elsewhere."""
        self.lost += 1
        for _, name in files:
            if self.attempts[name] >= MAX_ATTEMPTS:
                raise PipelineError(f"{name}: its shard died {MAX_ATTEMPTS} times; giving up")
        self.queue.extendleft(reversed(files))

    def _record(self, label: str, actor, results: list[SourceReport]) -> None:
        if label not in self.hosts:
            self.hosts[label] = self.ray.get(actor.where.remote())["host"]
        for report in results:
            self.reports[report.name] = report
            self.placement[report.name] = f"{label} on {self.hosts[label]}"


def _task_error(exc) -> Exception:
    """The shard's own exception (SourceError, PipelineError...) so the exit status is the same as on
    one host; anything else as a PipelineError with its first line."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, Exception):
        return cause
    return PipelineError(str(exc).strip().splitlines()[-1])


class _LiveDriver(_Driver):
    """Live cameras: each runs on one shard until the run stops (or it is removed through the control
    API); when its shard dies it moves, within a poll, to the least loaded shard still alive and starts
    a new segment there."""

    def run(self) -> ClusterReport:
        from ray.exceptions import RayActorError, RayTaskError

        start = time.monotonic()
        self.lock = threading.RLock()  # the control API's threads and this loop share the state below
        self.alive = dict(self._new_shard() for _ in range(self.count))
        self.load: dict[str, set[str]] = {label: set() for label in self.alive}
        self.pending: dict = {}  # object ref -> (label, spec, name)
        self.urls: dict[str, str] = {}
        self.removed: set[str] = set()
        errors = (RayActorError, RayTaskError)
        interrupted = False
        server = None
        try:
            for spec, name in self.queue:
                self._place(spec, name)
            if self.config.control:
                from stream.edges.control import ControlServer

                server = ControlServer(self, self.config.control)
                print(f"control: {server.url}", file=sys.stderr, flush=True)
            try:
                while (self.pending or server) and not (self.stop is not None and self.stop.is_set()):
                    self._wait(*errors, POLL_S)
            except KeyboardInterrupt:
                interrupted = True
            if server is not None:
                server.close()
            if self.pending:
                interrupted = True
                print("stopping: draining every camera (press Ctrl+C again to abort)", file=sys.stderr)
                for actor in list(self.alive.values()):
                    actor.stop.remote()
                deadline = time.monotonic() + STOP_WAIT_S
                while self.pending and time.monotonic() < deadline:
                    self._wait(*errors, POLL_S, move=False)
        finally:
            if server is not None:
                server.close()
            for actor in self.actors:
                self.ray.kill(actor)
        sources = {name: self.reports[name] for name in self.urls if name in self.reports}
        return ClusterReport(
            sources, time.monotonic() - start, interrupted, placement=self.placement, shards=self.made,
            lost_shards=self.lost,
        )  # fmt: skip

    def _place(self, spec: str, name: str) -> None:
        with self.lock:
            if not self.alive:
                label, actor = self._new_shard()
                self.alive[label] = actor
                self.load[label] = set()
            label = min(self.alive, key=lambda key: len(self.load[key]))
            self.load[label].add(name)
            self.urls[name] = spec
            self.pending[self.alive[label].run_live.remote(spec, name)] = (label, spec, name)
            where = self.placement.get(name)
            self.placement[name] = f"{where}, then {label}" if where else label

    def _wait(self, actor_error, task_error, timeout: float, move: bool = True) -> None:
        with self.lock:
            refs = list(self.pending)
        if not refs:
            time.sleep(timeout)
            return
        done, _ = self.ray.wait(refs, num_returns=1, timeout=timeout)
        for ref in done:
            with self.lock:
                label, spec, name = self.pending.pop(ref)
                self.load.get(label, set()).discard(name)
            try:
                report = self.ray.get(ref)
            except task_error as exc:
                raise _task_error(exc) from None
            except actor_error:
                with self.lock:
                    if self.alive.pop(label, None) is not None:
                        self.lost += 1
                        print(f"{label} lost: moving its cameras to the other shards", file=sys.stderr)
                if move and name not in self.removed:
                    self._place(spec, name)
                continue
            self._add(report)

    def _add(self, report: SourceReport) -> None:
        """A camera's placements add up: frames and lines of every segment; outputs of the last."""
        before = self.reports.get(report.name)
        if before is not None:
            report.frames_decoded += before.frames_decoded
            report.frames_written += before.frames_written
            report.lines += before.lines
            report.skipped += before.skipped
            for cause, count in before.drops.items():
                report.drops[cause] = report.drops.get(cause, 0) + count
        self.reports[report.name] = report

    # --- the control API (stream.edges.control) -----------------------------------------------------

    def list_sources(self) -> list[dict]:
        from stream.edges.redact import redact

        with self.lock:
            running = {name: label for label, _, name in self.pending.values()}
            rows = []
            for name, spec in self.urls.items():
                if name in running:
                    state = "stopping" if name in self.removed else "running"
                else:
                    state = "removed" if name in self.removed else "ended"
                row = {"name": name, "url": redact(spec), "state": state, "shard": running.get(name)}
                rows.append(row)
            return rows

    def add_source(self, name: str | None, url: str) -> dict:
        from stream.edges.control import Conflict
        from stream.edges.sources import SourceError, probe_source

        try:
            info = probe_source(url)
        except SourceError as exc:
            raise ValueError(str(exc)) from None
        if info.kind != "live":
            raise ValueError("the control API adds live sources (cameras, streams)")
        name = name or info.name
        with self.lock:
            if name in {n for _, _, n in self.pending.values()}:
                raise Conflict(f"a source named {name!r} is running")
            self.removed.discard(name)
            self._place(url, name)
        return next(row for row in self.list_sources() if row["name"] == name)

    def remove_source(self, name: str) -> dict:
        with self.lock:
            running = {n: label for label, _, n in self.pending.values()}
            if name not in running or name in self.removed:
                raise KeyError(name)
            self.removed.add(name)
            actor = self.alive.get(running[name])
            if actor is not None:  # else its shard just died: it is not moved, so it is gone
                actor.stop_one.remote(name)
        return next(row for row in self.list_sources() if row["name"] == name)
