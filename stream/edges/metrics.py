"""Per-source health: frame rates, drops by cause, capture -> render latency, reconnects.

``SourceStats`` is fed by the pipeline stages (thread-safe, O(1) per call); ``StatsRegistry`` holds one
per source, formats the periodic stats line and exposes everything as Prometheus metrics on a registry
of its own (never the process-global default one, so several pipelines in one process do not collide).

Source names reach log lines, metric labels and the preview page only through
``stream.edges.redact.redact``: camera URLs routinely carry credentials.
"""

from __future__ import annotations

import bisect
import logging
import threading
import time
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from stream.edges.http_thread import BackgroundHTTPServer
from stream.edges.redact import redact

log = logging.getLogger(__name__)

# Latency histogram bucket bounds (seconds): live overlays care about tens of milliseconds, analytics
# about whether anything falls past the staleness budget (0.5 s by default).
LATENCY_BUCKETS = (
    0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.05, 0.06, 0.075, 0.1, 0.125, 0.15, 0.2, 0.3, 0.5,
    0.75, 1.0, 2.0, 5.0,
)

class SourceStats:
    """Counters and sliding windows for one source. Every method is safe to call from any thread.

    Rates and latency percentiles cover the last ``window`` seconds; totals cover the whole run.
    """

    def __init__(self, name: str, window: float = 5.0, max_samples: int = 4096) -> None:
        if window <= 0:
            raise ValueError(f"stats window must be positive, got {window}")
        self.name = redact(name)
        self.window = float(window)
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self.frames_in = 0
        self.frames_out = 0
        self.reconnects = 0
        self.timestamp_jumps = 0  # new segments because the source's clock jumped
        self.restarts: dict[str, int] = {}  # stage -> restarts of this source's workers after a crash
        self.state: str | None = None  # set by sources that know it (LiveSource); None otherwise
        self.drops_by_cause: dict[str, int] = {}
        self._in_times: deque[float] = deque(maxlen=max_samples)
        self._out_samples: deque[tuple[float, float]] = deque(maxlen=max_samples)  # (time, latency)
        self._stage_samples: dict[str, deque[tuple[float, float]]] = {}
        self._bucket_counts = [0] * (len(LATENCY_BUCKETS) + 1)  # last slot: +Inf
        self._latency_sum = 0.0

    # -- fed by the stages ------------------------------------------------------------------------
    def frame_in(self) -> None:
        """A frame left the decoder."""
        now = time.monotonic()
        with self._lock:
            self.frames_in += 1
            self._in_times.append(now)

    def frame_out(self, latency_s: float, stage_times: dict[str, float] | None = None) -> None:
        """A frame was rendered/written, ``latency_s`` after its capture; ``stage_times`` in seconds."""
        now = time.monotonic()
        latency_s = max(0.0, float(latency_s))
        with self._lock:
            self.frames_out += 1
            self._out_samples.append((now, latency_s))
            self._bucket_counts[bisect.bisect_left(LATENCY_BUCKETS, latency_s)] += 1
            self._latency_sum += latency_s
            for stage, seconds in (stage_times or {}).items():
                samples = self._stage_samples.get(stage)
                if samples is None:
                    samples = self._stage_samples[stage] = deque(maxlen=self._out_samples.maxlen)
                samples.append((now, float(seconds)))

    def drop(self, cause: str, count: int = 1) -> None:
        """``count`` frames were dropped for ``cause`` (e.g. ``"stale"``, ``"queue_full"``)."""
        with self._lock:
            self.drops_by_cause[cause] = self.drops_by_cause.get(cause, 0) + int(count)

    def reconnect(self) -> None:
        with self._lock:
            self.reconnects += 1

    def timestamp_jump(self) -> None:
        with self._lock:
            self.timestamp_jumps += 1

    def restart(self, stage: str) -> None:
        """A worker of this source (``stage``: the one that died) was restarted."""
        with self._lock:
            self.restarts[stage] = self.restarts.get(stage, 0) + 1

    def set_state(self, state: str | None) -> None:
        """The source's connection state (``connecting``, ``streaming``, ``reconnecting``, ...)."""
        with self._lock:
            self.state = state

    # -- read by the stats line, the preview and Prometheus ---------------------------------------
    @property
    def drops(self) -> int:
        with self._lock:
            return sum(self.drops_by_cause.values())

    def summary(self) -> dict:
        """Rates (frames/s) and latency percentiles (seconds, None before any output) of the window."""
        now = time.monotonic()
        with self._lock:
            # Young sources: divide by at least one second so the first frames do not read as 1000s fps.
            span = min(self.window, max(now - self._started, 1.0))
            since = now - self.window
            fps_in = sum(1 for t in self._in_times if t >= since) / span
            recent = [lat for t, lat in self._out_samples if t >= since]
            fps_out = len(recent) / span
            stages = {
                stage: float(np.median([s for t, s in samples if t >= since]))
                for stage, samples in self._stage_samples.items()
                if any(t >= since for t, _ in samples)
            }
            p50, p95 = (np.percentile(recent, [50, 95]).tolist() if recent else (None, None))
            return {
                "state": self.state,
                "frames_in": self.frames_in,
                "frames_out": self.frames_out,
                "fps_in": fps_in,
                "fps_out": fps_out,
                "drops": sum(self.drops_by_cause.values()),
                "drops_by_cause": dict(self.drops_by_cause),
                "latency_p50": p50,
                "latency_p95": p95,
                "stage_p50": stages,
                "reconnects": self.reconnects,
                "timestamp_jumps": self.timestamp_jumps,
                "restarts": dict(self.restarts),
            }

    def latency_histogram(self) -> tuple[list[tuple[str, int]], float]:
        """Cumulative Prometheus buckets ``[(le, count), ...]`` and the latency sum, whole run."""
        with self._lock:
            counts = list(self._bucket_counts)
            total = self._latency_sum
        cumulative, running = [], 0
        for bound, count in zip((*LATENCY_BUCKETS, float("inf")), counts, strict=True):
            running += count
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return cumulative, total


def format_stats_line(name: str, summary: dict) -> str:
    """One human-readable line: rates, drops by cause, p50/p95 latency, reconnects (and restarts)."""

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f}"

    causes = ", ".join(f"{cause} {count}" for cause, count in sorted(summary["drops_by_cause"].items()))
    drops = f"{summary['drops']}" + (f" ({causes})" if causes else "")
    state = f" [{summary['state']}]" if summary.get("state") else ""
    return (
        f"{name}{state}: in {summary['fps_in']:.1f} fps, out {summary['fps_out']:.1f} fps, "
        f"drops {drops}, latency p50 {ms(summary['latency_p50'])} ms p95 {ms(summary['latency_p95'])} ms, "
        f"reconnects {summary['reconnects']}"
        + (f", restarts {sum(summary['restarts'].values())}" if summary.get("restarts") else "")
    )


class StatsRegistry:
    """All sources' stats, with their stats lines and a Prometheus view of them."""

    def __init__(self, window: float = 5.0) -> None:
        self.window = window
        self._lock = threading.Lock()
        self._sources: dict[str, SourceStats] = {}
        self.prometheus = CollectorRegistry(auto_describe=False)
        self.prometheus.register(_StatsCollector(self))

    def source(self, name: str) -> SourceStats:
        """The stats of ``name``, created on first use."""
        with self._lock:
            stats = self._sources.get(name)
            if stats is None:
                stats = self._sources[name] = SourceStats(name, window=self.window)
            return stats

    def names(self) -> list[str]:
        with self._lock:
            return list(self._sources)

    def items(self) -> Iterator[tuple[str, SourceStats]]:
        with self._lock:
            pairs = list(self._sources.items())
        yield from pairs

    def snapshot(self) -> dict[str, dict]:
        """``{redacted source name: summary}`` for every source (the preview page's JSON)."""
        return {stats.name: stats.summary() for _, stats in self.items()}

    def stats_line(self, name: str) -> str:
        stats = self.source(name)
        return format_stats_line(stats.name, stats.summary())

    def prometheus_text(self) -> bytes:
        return generate_latest(self.prometheus)


class _StatsCollector(Collector):
    """Reads the live ``SourceStats`` at scrape time, so stages never touch Prometheus objects."""

    def __init__(self, registry: StatsRegistry) -> None:
        self.registry = registry

    def collect(self):
        frames_in = CounterMetricFamily(
            "sapiens_stream_frames_in", "Frames decoded from the source", labels=["source"]
        )
        frames_out = CounterMetricFamily(
            "sapiens_stream_frames_out", "Frames rendered and written", labels=["source"]
        )
        drops = CounterMetricFamily(
            "sapiens_stream_frames_dropped", "Frames dropped, by cause", labels=["source", "cause"]
        )
        reconnects = CounterMetricFamily(
            "sapiens_stream_reconnects", "Reconnects of the source", labels=["source"]
        )
        jumps = CounterMetricFamily(
            "sapiens_stream_timestamp_jumps", "New segments started because the source's clock jumped",
            labels=["source"],
        )
        restarts = CounterMetricFamily(
            "sapiens_stream_stage_restarts",
            "Restarts of the source's workers after a stage died (live runs), by the stage that died",
            labels=["source", "stage"],
        )
        fps = GaugeMetricFamily(
            "sapiens_stream_fps", "Frame rate over the stats window", labels=["source", "direction"]
        )
        quantiles = GaugeMetricFamily(
            "sapiens_stream_latency_window_seconds",
            "Capture to render latency percentiles over the stats window",
            labels=["source", "quantile"],
        )
        stage_times = GaugeMetricFamily(
            "sapiens_stream_stage_seconds", "Median time per stage over the stats window",
            labels=["source", "stage"],
        )
        up = GaugeMetricFamily(
            "sapiens_stream_source_up",
            "1 while the source delivers frames (state streaming, or unknown with recent frames)",
            labels=["source"],
        )
        latency = HistogramMetricFamily(
            "sapiens_stream_latency_seconds", "Capture to render latency", labels=["source"]
        )
        for _, stats in self.registry.items():
            name = stats.name
            summary = stats.summary()
            frames_in.add_metric([name], summary["frames_in"])
            frames_out.add_metric([name], summary["frames_out"])
            for cause, count in summary["drops_by_cause"].items():
                drops.add_metric([name, cause], count)
            reconnects.add_metric([name], summary["reconnects"])
            jumps.add_metric([name], summary["timestamp_jumps"])
            for stage, count in summary["restarts"].items():
                restarts.add_metric([name, stage], count)
            fps.add_metric([name, "in"], summary["fps_in"])
            fps.add_metric([name, "out"], summary["fps_out"])
            for label, key in (("0.5", "latency_p50"), ("0.95", "latency_p95")):
                if summary[key] is not None:
                    quantiles.add_metric([name, label], summary[key])
            for stage, seconds in summary["stage_p50"].items():
                stage_times.add_metric([name, stage], seconds)
            delivering = summary["fps_in"] > 0 or summary["fps_out"] > 0
            streaming = summary["state"] == "streaming" or (summary["state"] is None and delivering)
            up.add_metric([name], 1.0 if streaming else 0.0)
            buckets, total = stats.latency_histogram()
            latency.add_metric([name], buckets, total)
        yield from (frames_in, frames_out, drops, reconnects, jumps, restarts)
        yield from (fps, quantiles, stage_times, up, latency)


class MetricsServer:
    """Serves ``GET /metrics`` (Prometheus text format) from a background thread."""

    def __init__(self, registry: StatsRegistry, host: str = "127.0.0.1", port: int = 9100) -> None:
        stats_registry = registry

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                if self.path.split("?", 1)[0] not in ("/metrics", "/"):
                    self.send_error(404, "only /metrics is served here")
                    return
                body = stats_registry.prometheus_text()
                self.send_response(200)
                self.send_header("Content-Type", CONTENT_TYPE_LATEST)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # noqa: A002 - http.server's signature
                log.debug("metrics: " + format, *args)

        try:
            self._http = BackgroundHTTPServer(host, port, Handler, "metrics-http")
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {host}:{port}: {exc.strerror or exc}") from None
        self.host, self.port = self._http.host, self._http.port
        self.url = self._http.url("metrics")

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start_metrics_server(registry: StatsRegistry, host: str = "127.0.0.1", port: int = 9100) -> MetricsServer:
    """Prometheus exposition of ``registry`` on ``http://host:port/metrics`` (port 0: any free port)."""
    return MetricsServer(registry, host=host, port=port)
