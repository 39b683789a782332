"""The wiring of a run, in one table: every link between the stages and the coordinator.

::

    decode[s] ──frames──► infer (one, batched across sources) ──results──► track[s] ──tracked──┐
        └──────────────────────────── render_frames ──────────────────────────────────► render[s] ──► sinks
    every stage ──events──► coordinator ──control──► every stage;   render[s] ──preview──► coordinator
    render[s] ──api──► caller (the Python API's ``stream.Pipeline``, in the coordinator's process)

Per source ``s`` there is one decode, one track and one render worker; all sources share one GPU
worker (``infer``). Each ``Link`` says who sends and who receives, the socket types, which side binds,
the high-water mark of each end (in messages), whether it has one endpoint per source or one shared
one, and whether its ends may sit on different hosts. The coordinator builds the endpoints and the
worker list from this table (``RunTopology``); every stage opens its sockets with ``open``.

Data links follow one rule: the receiver binds (a PULL), senders connect (PUSH), so a stage with many
producers (the GPU worker) has one socket that fair-queues all of them, and a PUSH blocks when its
peer's queue is full, which is how offline backpressure reaches the decoder.
"""

from __future__ import annotations

import graphlib
from dataclasses import dataclass

import zmq

from stream.config import PipelineConfig
from stream.runtime.transport import DEFAULT_LINGER_MS, Endpoints, make_socket

COORDINATOR = "coordinator"
CALLER = "caller"  # the thread iterating a ``stream.Pipeline``: it reads every source's results
WORKER = "worker"  # either end of events and control: every stage
STAGES = ("decode", "infer", "track", "render")
SHARED_STAGES = ("infer",)  # one worker for every source; the others run one worker per source


@dataclass(frozen=True)
class Hwm:
    """A high-water-mark rule: ``fixed`` messages, or ``factor`` x ``queue_frames`` (x the number of
    sources when ``per_source``: one queue that every source's sender fills)."""

    fixed: int = 0
    factor: int = 0
    per_source: bool = False

    def value(self, cfg: PipelineConfig, sources: int) -> int:
        if self.fixed:
            return self.fixed
        return self.factor * cfg.queue_frames * (max(1, sources) if self.per_source else 1)

    def __str__(self) -> str:
        if self.fixed:
            return str(self.fixed)
        text = "queue_frames" if self.factor == 1 else f"{self.factor}*queue_frames"
        return f"{text}*sources" if self.per_source else text


@dataclass(frozen=True)
class End:
    """One end of a link: the role holding it, its socket type, high-water mark and linger."""

    role: str
    socket_type: int
    hwm: Hwm
    linger_ms: int = DEFAULT_LINGER_MS


@dataclass(frozen=True)
class Link:
    name: str
    sender: End
    receiver: End
    binds: str  # "sender" or "receiver"
    endpoint: str  # endpoint name; ``{source}`` in it makes one endpoint per source
    crosses_hosts: bool  # may its ends run on different hosts (tcp)? pixels then travel inline
    carries: str
    preview_only: bool = False  # opened only with --show or --serve
    caller_only: bool = False  # opened only when a ``stream.Pipeline`` reads the results

    @property
    def per_source(self) -> bool:
        return "{source}" in self.endpoint

    def endpoint_name(self, source: str | None = None) -> str:
        if self.per_source and source is None:
            raise ValueError(f"link {self.name!r} has one endpoint per source: name the source")
        return self.endpoint.format(source=source) if self.per_source else self.endpoint

    def end(self, role: str) -> tuple[End, bool]:
        """The end ``role`` holds and whether that end binds."""
        for end, side in ((self.sender, "sender"), (self.receiver, "receiver")):
            if end.role == role or (end.role == WORKER and role in STAGES):
                return end, self.binds == side
        raise ValueError(f"{role!r} holds no end of link {self.name!r}")


EVENTS_HWM = Hwm(fixed=100_000)  # events are tiny; the coordinator reads them continuously
CONTROL_HWM = Hwm(fixed=1000)
FRAMES, RESULTS = Hwm(factor=1), Hwm(factor=4)
FRAMES_ALL_SOURCES = Hwm(factor=1, per_source=True)  # the GPU worker's one inbox, filled by every decoder

LINKS: dict[str, Link] = {
    link.name: link
    for link in (
        Link("events", End(WORKER, zmq.PUSH, EVENTS_HWM), End(COORDINATOR, zmq.PULL, EVENTS_HWM),
             "receiver", "events", True, "ready, progress, drop, done, error, usage records"),
        Link("control", End(COORDINATOR, zmq.PUB, CONTROL_HWM, linger_ms=0),
             End(WORKER, zmq.SUB, CONTROL_HWM), "sender", "control", True, "stop, finish, abort commands"),
        Link("frames", End("decode", zmq.PUSH, FRAMES), End("infer", zmq.PULL, FRAMES_ALL_SOURCES),
             "receiver", "infer", True, "frames (ring slot or pixels), skip, eos"),
        Link("render_frames", End("decode", zmq.PUSH, FRAMES), End("render", zmq.PULL, FRAMES),
             "receiver", "render.{source}.frames", True, "frames (ring slot or pixels), skip, eos"),
        Link("results", End("infer", zmq.PUSH, RESULTS), End("track", zmq.PULL, RESULTS),
             "receiver", "track.{source}", True, "results, skip, eos"),
        Link("tracked", End("track", zmq.PUSH, RESULTS), End("render", zmq.PULL, RESULTS),
             "receiver", "render.{source}.results", True, "results with track ids, skip, eos"),
        # The preview shows the newest frames; older ones are dropped, never queued.
        Link("preview", End("render", zmq.PUSH, Hwm(fixed=2), linger_ms=0),
             End(COORDINATOR, zmq.PULL, Hwm(fixed=4), linger_ms=0),
             "receiver", "preview", False, "rendered frames for the preview", preview_only=True),
        # Results for the Python API's caller. Offline a full queue blocks the render stage, so a slow
        # caller slows the run and loses nothing; live the render stage keeps at most queue_frames
        # results waiting and turns the oldest into skipped results (``stream.stages.caller``).
        Link("api", End("render", zmq.PUSH, FRAMES), End(CALLER, zmq.PULL, FRAMES_ALL_SOURCES),
             "receiver", "api", True, "results (images when asked), skip, eos", caller_only=True),
    )
}  # fmt: skip


def open(  # noqa: A001 - the verb of this module: topology.open(context, spec, "frames")
    context: zmq.Context, spec, name: str, source: str | None = None
) -> zmq.Socket:
    """The socket ``spec.role`` holds on link ``name`` (of ``source`` for a per-source link), bound
    or connected as the table says, with the table's high-water mark and linger.

    ``spec`` is a ``WorkerSpec`` (role, config, endpoints, sources).
    """
    link = LINKS[name]
    end, binds = link.end(spec.role)
    endpoint = spec.endpoint(link.endpoint_name(source))
    hwm = end.hwm.value(spec.config, len(spec.sources))
    return make_socket(context, end.socket_type, endpoint, bind=binds, hwm=hwm, linger_ms=end.linger_ms)


class RunTopology:
    """The table applied to one run: its links, endpoint names and workers."""

    def __init__(self, cfg: PipelineConfig, sources: list[str], caller: bool = False) -> None:
        self.cfg = cfg
        self.sources = sources
        preview = bool(cfg.show or cfg.serve)
        self.links = [
            link
            for link in LINKS.values()
            if (preview or not link.preview_only) and (caller or not link.caller_only)
        ]

    def endpoint_names(self) -> list[str]:
        names = []
        for link in self.links:
            for source in self.sources if link.per_source else [None]:
                names.append(link.endpoint_name(source))
        return names

    def endpoints(self, space: Endpoints) -> dict[str, str]:
        return {name: space.endpoint(name) for name in self.endpoint_names()}

    def workers(self) -> list[tuple[str, list[str]]]:
        """``(role, sources)`` per worker, receivers first: they bind, so senders that connect find them
        (ZeroMQ queues until then anyway)."""
        order = graphlib.TopologicalSorter()
        for link in self.links:
            if link.sender.role in STAGES and link.receiver.role in STAGES:
                order.add(link.sender.role, link.receiver.role)
        workers = []
        for role in order.static_order():
            if role in SHARED_STAGES:
                workers.append((role, list(self.sources)))
            else:
                workers.extend((role, [source]) for source in self.sources)
        return workers

    def describe(self, endpoints: dict[str, str] | None = None) -> str:
        """The table as text: one row per link (per source for per-source links), then the workers."""
        header = ("link", "sender", "receiver", "binds", "per", "hosts", "endpoint", "address", "carries")
        rows = [header]
        for link in self.links:
            ends = [self._end_text(end) for end in (link.sender, link.receiver)]
            per = "per source" if link.per_source else "shared"
            hosts = "may cross" if link.crosses_hosts else "one host"
            for source in self.sources if link.per_source else [None]:
                name = link.endpoint_name(source)
                address = (endpoints or {}).get(name, name)
                rows.append((link.name, *ends, link.binds, per, hosts, name, address, link.carries))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        lines = [f"sources: {', '.join(self.sources)}; workers: {self.cfg.workers}"]
        for *cells, last in rows:
            padded = [cell.ljust(width) for cell, width in zip(cells, widths, strict=True)]
            lines.append("  ".join([*padded, last]))
        workers = [
            f"{role}[{'all' if role in SHARED_STAGES else ','.join(names)}]" for role, names in self.workers()
        ]
        lines.append("workers, in start order (receivers bind first): " + " ".join(workers))
        return "\n".join(lines)

    def _end_text(self, end: End) -> str:
        role = "every stage" if end.role == WORKER else end.role
        hwm = end.hwm.value(self.cfg, len(self.sources))
        rule = "" if end.hwm.fixed else f" ({end.hwm})"
        return f"{role} {_SOCKET_NAMES[end.socket_type]} hwm={hwm}{rule}"


_SOCKET_NAMES = {zmq.PUSH: "PUSH", zmq.PULL: "PULL", zmq.PUB: "PUB", zmq.SUB: "SUB"}
