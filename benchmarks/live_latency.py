"""Live mode from an RTSP camera: capture -> render latency and drop rate with a tiny pose model.

    python benchmarks/live_latency.py                     # benchmarks/results/live_latency.json
    python benchmarks/live_latency.py --cameras 4 --out /tmp/live_4cams.json

A local GStreamer RTSP server (``tests/rtsp_server.py``, run with the system Python) streams a moving
test picture at ``--fps``; ``run_pipeline`` runs in live mode on it (one person box per frame given as
``boxes:FILE``, a tiny Sapiens2 pose model written here, flip off as live mode defaults). Latency is the
pipeline's own capture -> render measurement, read from its Prometheus endpoint after ``--warmup``
seconds: exact p50/p95 of each 5 s stats window (the median and worst window are reported) and
p50/p95 interpolated from the latency histogram over the whole measured span, per camera and for the
worst camera. Drop rate = dropped frames / decoded frames over the same span, with the causes.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._common import write_results  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from rtsp_server import RtspServerProcess, free_port, server_unavailable_reason  # noqa: E402

STATS_WINDOW_S = 5.0  # the pipeline's stats window (stream.metrics.StatsRegistry default)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0, help="measured seconds after warm-up")
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring")
    parser.add_argument("--fps", type=int, default=30)
    parser.add_argument("--cameras", type=int, default=1, help="RTSP cameras streaming at once")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--input-size", default="128x96", help="model input HxW of the tiny model")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", default="ipc", help="inproc, ipc (default, processes) or tcp")
    parser.add_argument("--transport", default="tcp", help="RTSP transport: tcp or udp")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/)")
    return parser.parse_args(argv)


def write_inputs(directory: Path, input_size: tuple[int, int], width: int, height: int) -> tuple[Path, Path]:
    """A tiny pose checkpoint and a boxes file with one centred person box on every frame."""
    from models import Sapiens2Config, build_sapiens2, save_sapiens2

    torch.manual_seed(0)
    model_dir = directory / "tiny_pose"
    config = Sapiens2Config.from_arch("tiny", task="pose", image_size=input_size)
    save_sapiens2(build_sapiens2(config), model_dir)
    box = [width * 0.3, height * 0.1, width * 0.6, height * 0.95, 0.9]
    boxes = directory / "boxes.jsonl"
    with boxes.open("w") as f:
        for index in range(30 * 3600):
            f.write(json.dumps({"frame": index, "boxes": [box]}) + "\n")
    return model_dir, boxes


def scrape(url: str) -> dict[str, dict]:
    """Samples per source: {source: {(metric name, sorted label items but source): value}}."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(url, timeout=10).read().decode()
    sources: dict[str, dict] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "source"))
            sources.setdefault(sample.labels.get("source", ""), {})[(sample.name, labels)] = sample.value
    return sources


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """Prometheus' histogram_quantile: linear interpolation inside the bucket holding rank q."""
    total = buckets[-1][1]
    if total <= 0:
        return None
    rank = q * total
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower_bound
            fraction = (rank - lower_count) / max(count - lower_count, 1e-12)
            return lower_bound + (bound - lower_bound) * fraction
        lower_bound, lower_count = bound, count
    return None


def buckets_between(before: dict, after: dict) -> list[tuple[float, float]]:
    rows = []
    for (name, labels), value in after.items():
        if name == "sapiens_stream_latency_seconds_bucket":
            bound = float(dict(labels)["le"])
            rows.append((bound, value - before.get((name, labels), 0.0)))
    return sorted(rows)


def counter_delta(before: dict, after: dict, name: str) -> dict[str, float]:
    """Per-label-set increase of a counter, keyed by the label values joined (or "" without labels)."""
    deltas = {}
    for (sample, labels), value in after.items():
        if sample == name:
            key = ",".join(v for _, v in labels)
            deltas[key] = value - before.get((sample, labels), 0.0)
    return deltas


def measure(args: argparse.Namespace) -> dict:
    from stream.config import PipelineConfig, parse_size
    from stream.pipeline.coordinator import run_pipeline

    torch.set_num_threads(args.threads)
    input_size = parse_size(args.input_size)
    with tempfile.TemporaryDirectory(prefix="live-latency-") as tmp:
        tmp_path = Path(tmp)
        model_dir, boxes = write_inputs(tmp_path, input_size, args.width, args.height)
        servers = [
            RtspServerProcess(width=args.width, height=args.height, fps=args.fps, keyint=args.fps,
                              mount=f"/cam{i}", duration=args.warmup + args.duration + 180).start()
            for i in range(args.cameras)
        ]
        metrics_port = free_port()
        metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
        config = PipelineConfig(
            sources=[server.url for server in servers], out=str(tmp_path / "out"), mode="live",
            pose_model=str(model_dir), detector=f"boxes:{boxes}", input_size=input_size, device=args.device,
            flip=False, metrics=f"127.0.0.1:{metrics_port}", workers=args.workers,
            rtsp_transport=args.transport, progress=False,
        )
        stop = threading.Event()
        observed: dict = {"windows": {}}
        observer = threading.Thread(target=_observe, args=(metrics_url, args, stop, observed), daemon=True)
        observer.start()
        try:
            report = run_pipeline(config, stop=stop)
        finally:
            stop.set()
            for server in servers:
                server.stop()
        observer.join(timeout=10)
    if "after" not in observed:
        raise RuntimeError("the pipeline produced no results to measure")

    per_source = {
        name: _source_figures(observed["before"].get(name, {}), samples, observed["windows"].get(name, []),
                              observed["measured_s"])
        for name, samples in observed["after"].items() if name
    }
    written = sum(f["frames"]["written"] for f in per_source.values())
    dropped = sum(f["frames"]["dropped"] for f in per_source.values())
    return {
        "config": {
            "source": f"{args.cameras} x local RTSP/{args.transport} server, {args.width}x{args.height} "
                      f"@ {args.fps} fps",
            "model": f"tiny Sapiens2 pose, input {input_size[0]}x{input_size[1]}, flip off",
            "persons_per_frame": 1, "device": args.device, "workers": args.workers,
            "warmup_s": args.warmup, "measured_s": round(observed["measured_s"], 1),
        },
        "latency_ms": {  # worst source
            key: max((f["latency_ms"][key] for f in per_source.values() if f["latency_ms"][key] is not None),
                     default=None)
            for key in ("p50", "p95", "p95_worst_window", "p50_histogram", "p95_histogram")
        },
        "frames": {
            "written": written,
            "dropped": dropped,
            "drop_rate": round(dropped / max(written + dropped, 1), 4),
            "output_fps_per_camera": round(written / observed["measured_s"] / args.cameras, 2),
        },
        "sources": per_source,
        "whole_run": {name: {"lines": s.lines, "skipped": s.skipped, "drops": s.drops}
                      for name, s in report.sources.items()} | {"elapsed_s": round(report.elapsed, 1)},
    }


def _observe(metrics_url: str, args: argparse.Namespace, stop: threading.Event, observed: dict) -> None:
    """Wait for the first results and the warm-up, then scrape each stats window; stop the run."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not stop.is_set():
        try:
            sources = scrape(metrics_url)
            outputs = [s.get(("sapiens_stream_frames_out_total", ()), 0) for s in sources.values()]
            if len(outputs) >= args.cameras and all(n > 0 for n in outputs):
                break
        except OSError:
            pass
        time.sleep(0.5)
    if stop.wait(args.warmup):
        return
    observed["before"] = scrape(metrics_url)
    start = time.monotonic()
    while time.monotonic() - start < args.duration - 1e-3:
        if stop.wait(min(STATS_WINDOW_S, args.duration - (time.monotonic() - start))):
            return
        sources = scrape(metrics_url)
        for name, samples in sources.items():
            window = {q: samples.get(("sapiens_stream_latency_window_seconds", (("quantile", q),)))
                      for q in ("0.5", "0.95")}
            observed["windows"].setdefault(name, []).append(window)
        observed["after"] = sources
    observed["measured_s"] = time.monotonic() - start
    stop.set()


def _source_figures(before: dict, after: dict, windows: list[dict], seconds: float) -> dict:
    buckets = buckets_between(before, after)
    drops = counter_delta(before, after, "sapiens_stream_frames_dropped_total")
    written = sum(counter_delta(before, after, "sapiens_stream_frames_out_total").values())
    dropped = sum(drops.values())
    p50s = [w["0.5"] for w in windows if w["0.5"] is not None]
    p95s = [w["0.95"] for w in windows if w["0.95"] is not None]

    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1000.0, 1)

    return {
        "latency_ms": {
            "p50": ms(float(np.median(p50s))) if p50s else None,
            "p95": ms(float(np.median(p95s))) if p95s else None,
            "p95_worst_window": ms(max(p95s)) if p95s else None,
            "p50_histogram": ms(histogram_quantile(0.5, buckets)),
            "p95_histogram": ms(histogram_quantile(0.95, buckets)),
        },
        "frames": {
            "written": int(written), "dropped": int(dropped),
            "drop_rate": round(dropped / max(written + dropped, 1), 4),
            "dropped_by_cause": {cause: int(n) for cause, n in drops.items() if n},
            "output_fps": round(written / seconds, 2),
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = server_unavailable_reason()
    if missing is not None:
        print(f"live_latency: cannot run the RTSP server: {missing}", file=sys.stderr)
        return 2
    write_results("live_latency", measure(args), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
