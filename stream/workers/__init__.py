"""Stage workers: decode, inference (GPU worker), track+smooth, render+sinks. See ``stream.pipeline``."""

from stream.workers.base import SourcePlan, WorkerSpec, run_worker

__all__ = ["SourcePlan", "WorkerSpec", "run_worker"]
