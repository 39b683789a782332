"""Decoders on camera-side hosts: ``--decode-on RESOURCE`` runs each source's decode worker as a Ray task on
a node that has the custom resource ``RESOURCE`` (``ray start --resources '{"camera": 1}'`` on the hosts
near the cameras), while its shard keeps the GPU worker, tracking and rendering.

The decoder connects to the shard's ends of its links (``frames`` to the GPU worker, ``render_frames`` to
the render stage, ``events`` and ``control`` to the coordinator) over ``tcp://`` at the shard's node
address, so every link is CURVE-authenticated and encrypted with the run's keys (``stream.runtime.curve``),
which the task gets in its environment through Ray, like the shard. Pixels travel inline (there is no
shared memory between hosts): each decoded frame crosses the network twice, to the GPU worker and to the
render stage, as raw RGB. Decoding near the camera saves the camera's uplink to the GPU hosts only where
the camera side has no better way; what it buys is placement (cameras on a network the GPU hosts cannot
reach directly, decoders spread over many small hosts).

A decoder task that fails or whose process dies is seen by the coordinator as a worker that exited with
status 1, as a crashed process would be; the shard's death takes its decoder tasks with it (Ray ends the
tasks of a dead owner).
"""

from __future__ import annotations

import os

from stream.runtime.curve import ENV_VAR, stop_authenticator
from stream.runtime.stage import WorkerSpec

RESOURCE_SHARE = 0.001  # a decoder asks this much of its node's resource: any number share one node
TASK_EXITED = 0


def _run_decoder(spec: WorkerSpec) -> None:
    """A decode worker in a Ray task (its own ZeroMQ context; Ray owns the process, so the worker leaves
    its signals and name alone)."""
    import zmq

    from stream.pipeline.launch import run_worker

    context = zmq.Context()
    try:
        run_worker(spec, context)
    finally:
        stop_authenticator(context)
        context.term()


class RayWorker:
    """A worker running as a Ray task, seen as the launcher sees a process."""

    pid: int | None = None  # not a process of this host

    def __init__(self, ray, ref) -> None:
        self.ray = ray
        self.ref = ref
        self.exitcode: int | None = None

    def is_alive(self) -> bool:
        if self.exitcode is not None:
            return False
        done, _ = self.ray.wait([self.ref], timeout=0)
        if not done:
            return True
        try:
            self.ray.get(self.ref)
            self.exitcode = TASK_EXITED
        except Exception:  # noqa: BLE001 - the task failed or its worker died: a crash, whatever Ray says
            self.exitcode = 1
        return False

    def join(self, timeout: float | None = None) -> None:
        self.ray.wait([self.ref], timeout=timeout)
        self.is_alive()

    def kill(self) -> None:
        self.ray.cancel(self.ref, force=True)


class RayDecoders:
    """Places a run's decode workers on the nodes with ``resource``; ``host``: this node's address."""

    def __init__(self, resource: str, host: str) -> None:
        import ray

        self.ray = ray
        self.resource = resource
        self.host = host
        self.task = ray.remote(num_cpus=0, max_retries=0)(_run_decoder)

    def places(self, spec: WorkerSpec) -> bool:
        return spec.role == "decode"

    def start(self, spec: WorkerSpec) -> RayWorker:
        env = {ENV_VAR: os.environ[ENV_VAR]}  # the run's CURVE keys, as this shard got them
        options = {"resources": {self.resource: RESOURCE_SHARE}, "runtime_env": {"env_vars": env}}
        return RayWorker(self.ray, self.task.options(**options).remote(spec))
