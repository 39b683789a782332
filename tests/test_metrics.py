"""Stats windows, the stats line, Prometheus exposition over real HTTP, and credential redaction."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

import stream.edges.metrics
from stream.edges.metrics import (
    SourceStats,
    StatsRegistry,
    start_metrics_server,
)
from stream.edges.redact import redact


class ManualClock:
    """The stats' monotonic clock, moved only by the test, so windows and rates do not depend on how
    fast the test runs."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch) -> ManualClock:
    clock = ManualClock()
    monkeypatch.setattr(stream.edges.metrics, "time", clock)
    return clock


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("rtsp://user:pw@host/x", "rtsp://***@host/x"),
        ("rtsp://admin:p%40ss@10.0.0.2:554/Streaming/101", "rtsp://***@10.0.0.2:554/Streaming/101"),
        ("rtsp://onlyuser@cam/stream", "rtsp://***@cam/stream"),
        ("rtsp://cam.local/stream", "rtsp://cam.local/stream"),
        ("https://cdn/live.m3u8?token=abc123&quality=hd", "https://cdn/live.m3u8?token=***&quality=hd"),
        ("clip.mp4", "clip.mp4"),
        ("0", "0"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact(url) == expected


def test_redact_text_masks_every_url_in_a_message() -> None:
    message = ("[Errno 111] Connection refused: 'rtsp://admin:s3cr3t@10.0.0.2/a' "
               "(fallback http://u:hunter2@10.0.0.3/b failed too)")
    redacted = redact(message)
    assert "s3cr3t" not in redacted and "hunter2" not in redacted
    assert "rtsp://***@10.0.0.2/a" in redacted and "http://***@10.0.0.3/b" in redacted


def test_summary_rates_percentiles_and_drops(clock) -> None:
    stats = SourceStats("cam", window=5.0)
    for i in range(100):
        stats.frame_in()
        if i % 4 == 0:
            stats.drop("stale")
        else:
            stats.frame_out(latency_s=0.010 + 0.001 * i, stage_times={"inference": 0.02, "render": 0.004})
    stats.drop("queue_full", count=3)
    stats.reconnect()
    clock.advance(0.5)
    summary = stats.summary()
    assert summary["frames_in"] == 100 and summary["frames_out"] == 75
    assert summary["drops"] == 28 and summary["drops_by_cause"] == {"stale": 25, "queue_full": 3}
    assert summary["reconnects"] == 1
    # All within the first second: rates are counted over at least one second.
    assert summary["fps_in"] == pytest.approx(100.0) and summary["fps_out"] == pytest.approx(75.0)
    clock.advance(1.5)  # two seconds old, inside the window: the rates spread over the source's age
    assert stats.summary()["fps_in"] == pytest.approx(50.0)
    outs = sorted(0.010 + 0.001 * i for i in range(100) if i % 4)
    assert summary["latency_p50"] == pytest.approx(outs[37], abs=1e-3)
    assert summary["latency_p95"] == pytest.approx(0.010 + 0.001 * 94.5, abs=2e-3)
    assert summary["stage_p50"] == pytest.approx({"inference": 0.02, "render": 0.004})


def test_window_forgets_old_samples(clock) -> None:
    stats = SourceStats("cam", window=3.0)
    for _ in range(10):
        stats.frame_out(latency_s=1.0)
    clock.advance(2.0)
    assert stats.summary()["latency_p95"] == pytest.approx(1.0), "still inside the window"
    clock.advance(1.5)
    stats.frame_out(latency_s=0.05)
    summary = stats.summary()
    assert summary["latency_p95"] == pytest.approx(0.05), "percentiles cover the window only"
    assert summary["fps_out"] == pytest.approx(1 / 3), "so do the rates"
    assert summary["frames_out"] == 11, "totals cover the whole run"


def test_counters_are_exact_under_concurrent_updates() -> None:
    stats = SourceStats("cam")

    def work() -> None:
        for _ in range(2000):
            stats.frame_in()
            stats.drop("stale")
            stats.frame_out(0.01)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    summary = stats.summary()
    assert summary["frames_in"] == summary["frames_out"] == 8000 and summary["drops"] == 8000


def test_stats_line(clock) -> None:
    registry = StatsRegistry()
    stats = registry.source("rtsp://a:b@cam1/live")
    stats.set_state("streaming")
    stats.frame_in()
    stats.frame_out(0.042)
    stats.drop("stale", 2)
    stats.drop("queue_full")
    line = registry.stats_line("rtsp://a:b@cam1/live")
    assert line == (
        "rtsp://***@cam1/live [streaming]: in 1.0 fps, out 1.0 fps, drops 3 (queue_full 1, stale 2), "
        "latency p50 42 ms p95 42 ms, reconnects 0"
    )
    empty = registry.stats_line("cam2")
    assert empty == "cam2: in 0.0 fps, out 0.0 fps, drops 0, latency p50 - ms p95 - ms, reconnects 0"


def test_prometheus_endpoint_over_http() -> None:
    registry = StatsRegistry()
    cam = registry.source("rtsp://user:secretpw@cam1/live")
    for latency in (0.015, 0.04, 0.04, 0.3, 7.0):
        cam.frame_in()
        cam.frame_out(latency, {"inference": 0.02})
    cam.drop("stale", 4)
    cam.reconnect()
    cam.set_state("streaming")
    registry.source("cam2").set_state("reconnecting")
    registry.source("cam3").frame_out(0.02)  # no state known: up while frames flow
    server = start_metrics_server(registry, port=0)
    try:
        assert server.host == "127.0.0.1"
        response = urllib.request.urlopen(server.url, timeout=5)
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.read().decode()
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(server.url.replace("/metrics", "/other"), timeout=5)
    finally:
        server.close()
    assert "secretpw" not in text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    source = ("source", "rtsp://***@cam1/live")
    assert samples[("sapiens_stream_frames_in_total", (source,))] == 5
    assert samples[("sapiens_stream_frames_out_total", (source,))] == 5
    assert samples[("sapiens_stream_frames_dropped_total", (("cause", "stale"), source))] == 4
    assert samples[("sapiens_stream_reconnects_total", (source,))] == 1
    assert samples[("sapiens_stream_source_up", (source,))] == 1
    assert samples[("sapiens_stream_source_up", (("source", "cam2"),))] == 0
    assert samples[("sapiens_stream_source_up", (("source", "cam3"),))] == 1
    assert samples[("sapiens_stream_latency_seconds_bucket", (("le", "0.05"), source))] == 3
    assert samples[("sapiens_stream_latency_seconds_bucket", (("le", "5.0"), source))] == 4
    assert samples[("sapiens_stream_latency_seconds_bucket", (("le", "+Inf"), source))] == 5
    assert samples[("sapiens_stream_latency_seconds_count", (source,))] == 5
    assert samples[("sapiens_stream_latency_seconds_sum", (source,))] == pytest.approx(7.395)
    assert samples[("sapiens_stream_stage_seconds", (source, ("stage", "inference")))] == pytest.approx(0.02)
    assert samples[("sapiens_stream_latency_window_seconds", (("quantile", "0.5"), source))] == 0.04


def test_two_registries_do_not_collide_and_ports_are_checked() -> None:
    first, second = StatsRegistry(), StatsRegistry()
    first.source("cam").frame_in()
    assert b'frames_in_total{source="cam"} 1.0' in first.prometheus_text()
    assert b"frames_in_total{" not in second.prometheus_text()
    with start_metrics_server(first, port=0) as server:
        with pytest.raises(OSError, match=f"cannot serve metrics on 127.0.0.1:{server.port}"):
            start_metrics_server(second, port=server.port)


def test_live_runs_print_a_stats_line_per_source_at_the_interval(capsys) -> None:
    from stream.config import build_config
    from stream.media.frames import SourceInfo
    from stream.pipeline.report import ProgressDisplay
    from stream.runtime.stage import SourcePlan

    config = build_config({"sources": ["rtsp://cam1/live", "rtsp://cam2/live"], "progress": True})
    plans = [SourcePlan(name, SourceInfo(f"rtsp://{name}/live", name, "live", None, None, None), True)
             for name in ("cam1", "cam2")]  # fmt: skip
    registry = StatsRegistry()
    registry.source("cam1").frame_in()
    registry.source("cam2").frame_in()
    ProgressDisplay(config, plans, registry, interval=3600.0).advance()
    assert capsys.readouterr().err == ""  # not yet due
    every_time = ProgressDisplay(config, plans, registry, interval=0.0)
    every_time.advance()
    every_time.advance()
    lines = capsys.readouterr().err.splitlines()
    assert sum(line.startswith("cam1:") for line in lines) == 2
    assert sum(line.startswith("cam2:") for line in lines) == 2
    quiet = ProgressDisplay(config.replace(progress=False), plans, registry, interval=0.0)
    quiet.advance()
    assert capsys.readouterr().err == ""  # --no-progress
