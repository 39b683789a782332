"""One shard: runs the single-host pipeline for the sources placed on it and publishes their outputs.

A shard writes each call's outputs aside, under ``<out>/.partial/<run>/<call>/``, and moves them to
their final names only once the pipeline has closed them, the JSONL last: a file under its final name
is always complete, and a source's JSONL appearing means every output of it is in place. A shard that
dies mid-call leaves nothing under a final name for the sources it had not finished.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
from dataclasses import replace
from pathlib import Path

from stream.config import PipelineConfig
from stream.pipeline.coordinator import PipelineError, run_pipeline
from stream.pipeline.launch import RemotePlacement
from stream.pipeline.report import SourceReport

PARTIAL_DIR = ".partial"


class Shard:
    """The body of a shard actor (wrapped with ``ray.remote`` by the driver)."""

    def __init__(self, label: str, config: PipelineConfig, run_id: str) -> None:
        self.label = label
        self.config = config
        self.run_id = run_id
        self.calls = 0
        # Live cameras run side by side, each its own pipeline in its own thread of this actor (Ray's
        # threaded actor), so a camera moved here from a dead shard starts without stopping the others.
        self.stops: dict[str, threading.Event] = {}
        self.lock = threading.Lock()

    def where(self) -> dict:
        """Which process and host this shard is, for the run summary and for tests."""
        return {"label": self.label, "pid": os.getpid(), "host": socket.gethostname()}

    def run(self, sources: list[tuple[str, str]]) -> list[SourceReport]:
        """Run ``sources`` (``(spec, final name)`` pairs) to their end in one pipeline; publish each
        source's outputs under its final name; return the per-source reports with the final paths."""
        self.calls += 1
        out = Path(self.config.out)
        partial = out / PARTIAL_DIR / self.run_id / f"{self.label}-{self.calls}"
        config, remote = self._pipeline(sources=[spec for spec, _ in sources], out=str(partial))
        report = run_pipeline(config, remote=remote)
        if report.interrupted:
            raise PipelineError(f"{self.label} was stopped before its sources ended")
        results = []
        for source, (_, final) in zip(report.sources.values(), sources, strict=True):
            source.outputs = publish(source.outputs, source.name, out, final)
            source.name = final
            results.append(source)
        shutil.rmtree(partial, ignore_errors=True)
        return results

    def _pipeline(self, **changes) -> tuple[PipelineConfig, RemotePlacement | None]:
        """The single-host configuration of one call, and where its decoders run (``decode_on``: on the
        camera-side nodes, over CURVE links to this node's address)."""
        config = replace(self.config, ray=None, control=None, decode_on=None, progress=False, **changes)
        if self.config.decode_on is None:
            return config, None
        import ray

        from stream.cluster.remote import RayDecoders

        host = ray.util.get_node_ip_address()
        return replace(config, workers="tcp"), RayDecoders(self.config.decode_on, host)

    def run_live(self, spec: str, name: str) -> SourceReport:
        """Run one live camera until ``stop`` (or until its stream ends for good). Its recordings go
        straight to ``out``: live files are fragmented and rotate (``segment_time``), so they are
        playable up to the last fragment whatever happens to this shard, and a restart elsewhere starts
        new files named by their start time instead of overwriting these."""
        stop = threading.Event()
        with self.lock:
            self.stops[name] = stop
        config, remote = self._pipeline(sources=[spec])
        try:
            report = run_pipeline(config, stop=stop, remote=remote)
        finally:
            with self.lock:
                self.stops.pop(name, None)
        source = next(iter(report.sources.values()))
        source.name = name
        return source

    def stop_one(self, name: str) -> bool:
        """Stop one live camera (it drains and closes its files); False if it is not running here."""
        with self.lock:
            event = self.stops.get(name)
        if event is not None:
            event.set()
        return event is not None

    def stop(self) -> None:
        """Stop every live camera of this shard: each drains and closes its files."""
        with self.lock:
            for event in self.stops.values():
                event.set()


def publish(outputs: dict[str, str], name: str, out: Path, final: str) -> dict[str, str]:
    """Move one source's finished outputs from the side directory to ``out`` under ``final``'s name
    (an existing output of that name is replaced); the JSONL goes last."""
    moved = {}
    for kind in sorted(outputs, key=lambda k: k == "jsonl"):
        path = Path(outputs[kind])
        target = out / (final + path.name[len(name) :])
        if target.is_dir() and path.is_dir():
            # A directory cannot be replaced in one rename: move the old one aside first.
            old = path.with_name(path.name + ".old")
            os.replace(target, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(path, target)
        moved[kind] = str(target)
    return moved
