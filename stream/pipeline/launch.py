"""Starting the stage workers: which stage each role runs, as threads (inproc) or processes from a
fork server, and which of them are still running."""

from __future__ import annotations

import multiprocessing
import threading
import time
from typing import Protocol

import zmq

from stream.runtime import stage as runtime
from stream.runtime.stage import StageFactory, WorkerSpec


def stage_factory(role: str) -> StageFactory:
    """The stage class of ``role``. Imported on demand: the coordinator never loads torch itself."""
    if role == "decode":
        from stream.stages.decode import DecodeStage

        return DecodeStage
    if role == "infer":
        from stream.stages.inference import InferenceStage

        return InferenceStage
    if role == "track":
        from stream.stages.track import TrackStage

        return TrackStage
    if role == "render":
        from stream.stages.render import RenderStage

        return RenderStage
    raise ValueError(f"unknown worker role {role!r}")


def run_worker(spec: WorkerSpec, context: zmq.Context | None = None) -> None:
    """A worker's entry point (thread or process target): run the stage of ``spec.role``."""
    runtime.run_worker(spec, stage_factory(spec.role), context)


# Imported once by the fork server, so workers start from a warm interpreter instead of each paying for
# Python, numpy, PyAV, OpenCV, ZeroMQ and the tracker's solver. Not torch: only the inference worker needs
# it, and it imports it itself (seconds on a small CPU) while the decoders already read the first frames;
# the fork server, and so every other worker, starts without it. Nothing here starts threads beyond the
# BLAS pool, which re-initialises after fork.
WORKER_PRELOAD = [
    "stream.pipeline.worker_server",  # first: the fork server ignores stop signals sent to the group
    "__main__",
    "stream.pipeline.launch",
    "stream.stages.decode",
    "stream.stages.track",
    "stream.stages.render",
    "scipy.optimize",  # the tracker's assignment solver
]


def process_context():
    """forkserver where the platform has it, else spawn. Never plain fork of the coordinator: it holds
    ZeroMQ contexts (I/O threads) and maybe CUDA, neither survives fork; the fork server is a clean
    process that has only imported modules."""
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(WORKER_PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


def start_worker_server() -> None:
    """Start the fork server now, if workers come from one: it imports the workers' modules while the
    sources are probed (a camera may take as long to answer) and the coordinator sets up, instead of
    after. Later runs of this process reuse it."""
    context = process_context()
    if context.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        forkserver.ensure_running()


def waits_for_models(spec: WorkerSpec) -> bool:
    """A live camera's decoder starts once the models are loaded, so it loses no frames to start-up.
    File decoders start with the other stages: their first frames are decoded while the models load."""
    return spec.role == "decode" and spec.sources[0].live


class RemoteWorker(Protocol):
    """A worker started on another host: what the launcher asks of a process, answered from afar."""

    pid: int | None
    exitcode: int | None

    def is_alive(self) -> bool: ...

    def join(self, timeout: float | None = None) -> None: ...

    def kill(self) -> None: ...


class RemotePlacement(Protocol):
    """Runs some of a run's workers on other hosts (``stream.cluster.remote``: decoders on the camera-side
    nodes of a Ray cluster). ``host``: the address this host's ends of the links bind, reachable from
    those hosts (tcp, so CURVE)."""

    host: str

    def places(self, spec: WorkerSpec) -> bool: ...

    def start(self, spec: WorkerSpec) -> RemoteWorker: ...


class Launcher:
    """Starts workers as threads (inproc), processes, or on other hosts (``remote``), and tells which
    are still running."""

    def __init__(self, context: zmq.Context, in_process: bool, remote: RemotePlacement | None = None) -> None:
        self.context = context
        self.in_process = in_process
        self.remote = remote
        self.workers: dict[str, threading.Thread | multiprocessing.Process | RemoteWorker] = {}

    def start(self, spec: WorkerSpec) -> None:
        if self.remote is not None and self.remote.places(spec):
            self.workers[spec.label] = self.remote.start(spec)
            return
        if self.in_process:
            worker = threading.Thread(
                target=run_worker, args=(spec, self.context), name=spec.label, daemon=True
            )
        else:
            worker = process_context().Process(target=run_worker, args=(spec,), name=spec.label, daemon=True)
        worker.start()
        self.workers[spec.label] = worker

    def pid(self, label: str) -> int | None:
        """The process id of worker ``label`` (None: a thread)."""
        return None if self.in_process else self.workers[label].pid

    def forget(self, label: str) -> None:
        """Stop watching worker ``label`` (it died and is dealt with; a new one may take its label)."""
        self.workers.pop(label, None)

    def kill(self, label: str) -> None:
        """End worker process ``label`` at once (one that did not leave when asked)."""
        worker = self.workers.get(label)
        if worker is not None and not self.in_process and worker.is_alive():
            worker.kill()

    def running(self) -> list[str]:
        return [label for label, w in self.workers.items() if w.is_alive()]

    def crashed(self) -> list[tuple[str, int]]:
        """Processes that ended with a non-zero exit code (a crash that could not report itself), with
        that code (negative: the signal that killed it)."""
        if self.in_process:
            return []
        return [(label, w.exitcode) for label, w in self.workers.items() if w.exitcode not in (None, 0)]

    def join(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for worker in self.workers.values():
            worker.join(max(0.0, deadline - time.monotonic()))
        if not self.in_process:
            for worker in self.workers.values():
                if worker.is_alive():
                    worker.kill()  # SIGTERM asks a worker to drain; one that hangs this long is ended
                    worker.join(5.0)
