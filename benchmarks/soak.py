"""Soak: two RTSP cameras through the real command for minutes, one of them killed and restored.

    python -m benchmarks.soak                                   # 10 min, benchmarks/results/soak.json
    python -m benchmarks.soak --duration 60 --outage-every 20 --out /tmp/soak.json

Two local GStreamer RTSP servers (``tests/rtsp_server.py``) stream a moving test picture; the real
command ``python -m stream run steady flaky --mode live --metrics ...`` runs as a subprocess with its
default process workers, a tiny pose model and a boxes file (``benchmarks/live_latency.py`` writes them),
and rotated outputs (``--segment-time``). Time zero is when both cameras deliver results. Every
``--outage-every`` seconds the ``flaky`` camera's server is killed and started again ``--down`` seconds
later. Every ``--sample-every`` seconds the benchmark samples the RSS of each process of the run's tree
(the run's pid and its descendants: the fork server and the stage workers), the bytes of the frame rings
(``ss-ring-*`` files in /dev/shm) and the Prometheus endpoint. It reports RSS growth from the end of
``--warmup`` to the end of the run, per process and in total (target < 5 %), frame age (capture ->
render) p50/p99 interpolated from the latency histogram over the same span, drops by cause, reconnects,
how soon the flaky camera came back after each outage and whether the steady camera kept writing
meanwhile, and /dev/shm use over time, including what is left after the run exits.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import psutil  # noqa: E402

from benchmarks._common import write_results  # noqa: E402
from benchmarks.live_latency import histogram_quantile, scrape, write_inputs  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from rtsp_server import RtspServerProcess, free_port, server_unavailable_reason  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
RING_PREFIX = "ss-ring-"
SHM = Path("/dev/shm")
SOURCES = ("steady", "flaky")  # source names: the RTSP mounts
RSS_TARGET_PCT = 5.0
MB = 1024 * 1024


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds from the first results")
    parser.add_argument("--outage-every", type=float, default=120.0, help="seconds between outages")
    parser.add_argument("--down", type=float, default=10.0, help="seconds the flaky camera stays down")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds before RSS and latency are measured (default: duration / 10, 6..60)")
    parser.add_argument("--sample-every", type=float, default=5.0, help="seconds between samples")
    parser.add_argument("--fps", type=int, default=15)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--input-size", default="64x48", help="model input HxW of the tiny model")
    parser.add_argument("--segment-time", type=float, default=60.0, help="output rotation (seconds)")
    parser.add_argument("--threads", type=int, default=1, help="OMP threads per process of the run")
    parser.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/soak.json)")
    args = parser.parse_args(argv)
    if args.warmup is None:
        args.warmup = min(60.0, max(6.0, args.duration / 10))
    if args.duration <= 0 or args.down <= 0 or args.outage_every <= args.down or args.sample_every <= 0:
        parser.error("need --duration > 0, --down > 0, --outage-every > --down and --sample-every > 0")
    if not 0 <= args.warmup < args.duration:
        parser.error("--warmup must be in [0, --duration)")
    return args


def outage_times(args: argparse.Namespace) -> list[float]:
    """Outage starts: every ``outage_every`` s, each leaving ``down`` s plus as long again to come back."""
    times, start = [], args.outage_every
    while start + 2 * args.down <= args.duration:
        times.append(start)
        start += args.outage_every
    return times


# -- what the run's processes hold ----------------------------------------------------------------


def process_tree(root: psutil.Process) -> list[psutil.Process]:
    try:
        return [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def process_role(process: psutil.Process, root_pid: int, camera_ports: dict[int, str], out: Path) -> str:
    """What a process of the run is: the coordinator, the fork server, a camera's decoder (it holds the
    camera's TCP connection), a writer of outputs, or another stage worker."""
    if process.pid == root_pid:
        return "coordinator"
    cmdline = " ".join(process.cmdline())
    if "resource_tracker" in cmdline:
        return "resource_tracker"
    if "forkserver" in cmdline and process.ppid() == root_pid:  # its children, the workers, share its cmdline
        return "forkserver"
    for connection in process.net_connections(kind="tcp"):
        if connection.raddr and connection.raddr.port in camera_ports:
            return f"decode:{camera_ports[connection.raddr.port]}"
    written = [Path(f.path).name for f in process.open_files() if Path(f.path).is_relative_to(out)]
    for name in camera_ports.values():
        if any(file.startswith(name) for file in written):  # outputs are named after their source
            return f"writer:{name}"
    if written:
        return "writer"
    return "worker"


def rings_mapped(processes: list[psutil.Process]) -> set[str]:
    """Names of the frame-ring files the processes have mapped."""
    names = set()
    for process in processes:
        try:
            for region in process.memory_maps(grouped=True):
                name = os.path.basename(region.path)
                if name.startswith(RING_PREFIX):
                    names.add(name)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return names


def ring_bytes(names: set[str] | None = None) -> int:
    """Bytes of the ring files in /dev/shm (only those named, when ``names`` is given)."""
    total = 0
    for path in SHM.glob(RING_PREFIX + "*"):
        if names is None or path.name in names:
            try:
                total += path.stat().st_size
            except FileNotFoundError:  # unlinked meanwhile
                continue
    return total


class Sampler:
    """RSS of each process of the run's tree, the run's rings in /dev/shm, and the metrics endpoint."""

    def __init__(self, run: subprocess.Popen, camera_ports: dict[int, str], out: Path,
                 metrics_url: str) -> None:
        self.root = psutil.Process(run.pid)
        self.camera_ports = camera_ports
        self.out = out
        self.metrics_url = metrics_url
        self.roles: dict[int, str] = {}
        self.rings: set[str] = set()  # every ring the run has mapped, so a leaked one is still counted
        self.samples: list[dict] = []

    def sample(self, t: float) -> dict:
        processes = process_tree(self.root)
        rss = {}
        for process in processes:
            try:
                role = self.roles.get(process.pid)
                if role in (None, "worker"):  # a decoder between connections looks like any worker
                    role = self.roles[process.pid] = process_role(
                        process, self.root.pid, self.camera_ports, self.out)
                rss[process.pid] = process.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        self.rings |= rings_mapped(processes)
        sample = {
            "t": round(t, 1), "rss": rss, "shm_run_bytes": ring_bytes(self.rings),
            "shm_all_bytes": ring_bytes(), "metrics": scrape(self.metrics_url),
        }
        self.samples.append(sample)
        return sample


def counter(samples: dict, source: str, name: str) -> float:
    return samples.get(source, {}).get((name, ()), 0.0)


# -- the run --------------------------------------------------------------------------------------


def run_command(args: argparse.Namespace, urls: list[str], model_dir: Path, boxes: Path, out: Path,
                metrics_port: int) -> list[str]:
    return [
        sys.executable, "-m", "stream", "run", *urls, "--mode", "live", "--out", str(out),
        "--pose-model", str(model_dir), "--detector", f"boxes:{boxes}", "--input-size", args.input_size,
        "--device", "cpu", "--metrics", f"127.0.0.1:{metrics_port}", "--segment-time", str(args.segment_time),
        "--no-progress",
    ]


def wait_for_results(run: subprocess.Popen, metrics_url: str, stderr_path: Path,
                     timeout: float = 300) -> None:
    """Until every camera has results on the metrics endpoint (models load, cameras connect)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if run.poll() is not None:
            raise RuntimeError(f"the run exited with {run.returncode}: {stderr_path.read_text()[-2000:]}")
        try:
            sources = scrape(metrics_url)
            if all(counter(sources, name, "sapiens_stream_frames_out_total") > 0 for name in SOURCES):
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"no results from both cameras within {timeout:.0f} s")


def soak(args: argparse.Namespace) -> dict:
    from stream.config import parse_size

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        tmp_path = Path(tmp)
        model_dir, boxes = write_inputs(tmp_path, parse_size(args.input_size), args.width, args.height)
        lifetime = args.duration + 600  # the servers exit by themselves long after the run
        servers = {
            name: RtspServerProcess(width=args.width, height=args.height, fps=args.fps, keyint=args.fps,
                                    mount=f"/{name}", duration=lifetime).start()
            for name in SOURCES
        }
        metrics_port = free_port()
        out = tmp_path / "out"
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONUNBUFFERED="1",
                   PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        stderr_path = tmp_path / "stderr.txt"
        command = run_command(args, [s.url for s in servers.values()], model_dir, boxes, out, metrics_port)
        with stderr_path.open("w") as stderr:
            run = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, env=env, cwd=REPO)
        try:
            metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
            wait_for_results(run, metrics_url, stderr_path)
            ports = {server.port: name for name, server in servers.items()}
            sampler = Sampler(run, ports, out, metrics_url)
            outages = drive(args, run, sampler, servers["flaky"])
            status = stop_run(run)
            left = ring_bytes(sampler.rings)
            stderr_tail = stderr_path.read_text()[-3000:]
            outputs = sorted(p for p in out.rglob("*") if p.is_file())
            output_summary = {"files": len(outputs), "bytes": sum(p.stat().st_size for p in outputs)}
        finally:
            if run.poll() is None:
                run.kill()
                run.wait()
            for server in servers.values():
                server.stop()
    if status != 0:
        raise RuntimeError(f"the run exited with {status}: {stderr_tail}")
    return report(args, sampler.samples, sampler.roles, outages, left, output_summary, status)


def drive(args: argparse.Namespace, run: subprocess.Popen, sampler: Sampler,
          flaky: RtspServerProcess) -> list[dict]:
    """Sample every ``sample_every`` s and take the flaky camera down and up on schedule."""
    start = time.monotonic()
    pending = outage_times(args)
    outages: list[dict] = []
    down: dict | None = None
    waiting_for_reconnect: dict | None = None
    next_sample = 0.0
    while (t := time.monotonic() - start) < args.duration:
        if run.poll() is not None:
            raise RuntimeError(f"the run exited with {run.returncode} at {t:.0f} s")
        if down is None and pending and t >= pending[0]:
            pending.pop(0)
            down = {"down_at_s": round(t, 1), **_outage_counters(sampler, "before")}
            flaky.stop()
        elif down is not None and t >= down["down_at_s"] + args.down:
            flaky.start()
            down.update(up_at_s=round(time.monotonic() - start, 1), **_outage_counters(sampler, "restored"),
                        reconnected_after_s=None)
            outages.append(down)
            waiting_for_reconnect, down = down, None
        if waiting_for_reconnect is not None:
            reconnects = counter(scrape(sampler.metrics_url), "flaky", "sapiens_stream_reconnects_total")
            # Counted from the camera's going down: no reconnect can happen while it is, and a reconnect
            # quicker than the scrape right after the restart still counts.
            if reconnects > waiting_for_reconnect["before_flaky_reconnects"]:
                t = time.monotonic() - start
                waiting_for_reconnect["reconnected_after_s"] = round(
                    max(0.0, t - waiting_for_reconnect["up_at_s"]), 2)
                waiting_for_reconnect = None
        if t >= next_sample:
            sampler.sample(t)
            next_sample += args.sample_every
        time.sleep(0.2)
    sampler.sample(time.monotonic() - start)
    return outages


def _outage_counters(sampler: Sampler, when: str) -> dict:
    sources = scrape(sampler.metrics_url)
    return {
        f"{when}_steady_frames_out": int(counter(sources, "steady", "sapiens_stream_frames_out_total")),
        f"{when}_flaky_reconnects": int(counter(sources, "flaky", "sapiens_stream_reconnects_total")),
    }


def stop_run(run: subprocess.Popen, timeout: float = 120.0) -> int:
    """SIGINT (stop and drain), as Ctrl-C would; the exit status."""
    run.send_signal(signal.SIGINT)
    try:
        return run.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        run.kill()
        return run.wait()


# -- the report -----------------------------------------------------------------------------------


def report(args: argparse.Namespace, samples: list[dict], roles: dict[int, str], outages: list[dict],
           shm_left: int, outputs: dict, status: int) -> dict:
    measured = [s for s in samples if s["t"] >= args.warmup]
    first, last = measured[0], measured[-1]
    for outage in outages:
        outage["steady_frames_out_during"] = outage["restored_steady_frames_out"] - outage[
            "before_steady_frames_out"]
    return {
        "config": {
            "command": "python -m stream run rtsp://.../steady rtsp://.../flaky --mode live --workers ipc "
                       f"(default) --segment-time {args.segment_time:g} --metrics ...",
            "cameras": f"2 x local RTSP/tcp server, {args.width}x{args.height} @ {args.fps} fps",
            "model": f"tiny Sapiens2 pose, input {args.input_size}, boxes file, 1 person per frame, cpu",
            "duration_s": args.duration, "warmup_s": args.warmup, "outage_every_s": args.outage_every,
            "down_s": args.down, "sample_every_s": args.sample_every, "omp_threads": args.threads,
        },
        "exit_status": status,
        "measured_s": round(last["t"] - first["t"], 1),
        "rss": rss_report(samples, roles, first, last),
        "frame_age_ms": frame_age(first["metrics"], last["metrics"]),
        "frames": {name: _frames(first["metrics"], last["metrics"], name) for name in SOURCES},
        "drops_by_cause": {name: _drops(last["metrics"].get(name, {})) for name in SOURCES},
        "reconnects": {name: int(counter(last["metrics"], name, "sapiens_stream_reconnects_total"))
                       for name in SOURCES},
        "outages": outages,
        "shm": shm_report(samples, first, last, shm_left),
        "outputs": outputs,
    }


def rss_report(samples: list[dict], roles: dict[int, str], first: dict, last: dict) -> dict:
    """Per process (``role[pid]``): RSS when first sampled after warm-up and at the end; total of the tree."""
    processes = {}
    for pid in last["rss"]:
        series = [(s["t"], s["rss"][pid]) for s in samples if s["t"] >= first["t"] and pid in s["rss"]]
        start_t, start = series[0]
        end = series[-1][1]
        processes[f"{roles[pid]}[{pid}]"] = {
            "start_mb": round(start / MB, 1), "end_mb": round(end / MB, 1),
            "max_mb": round(max(v for _, v in series) / MB, 1),
            "growth_pct": round(100.0 * (end - start) / start, 2),
            "since_s": start_t,  # later than warm-up: the process started after it
        }
    gone = sorted(f"{roles[pid]}[{pid}]" for pid in set(first["rss"]) - set(last["rss"]))
    total_start, total_end = sum(first["rss"].values()), sum(last["rss"].values())
    totals = [(s["t"], sum(s["rss"].values()) / MB) for s in samples if s["t"] >= first["t"]]
    growth = 100.0 * (total_end - total_start) / total_start
    return {
        "processes": processes,
        "processes_gone": gone,
        "total": {
            "start_mb": round(total_start / MB, 1), "end_mb": round(total_end / MB, 1),
            "growth_pct": round(growth, 2),
            # Memory that settles (pools, stats windows filling) shows as a first-half rise only; a leak
            # keeps rising: the trend over the second half of the measured span tells them apart.
            "trend_mb_per_hour": _trend(totals),
            "trend_mb_per_hour_second_half": _trend(totals[len(totals) // 2:]),
        },
        "target_pct": RSS_TARGET_PCT,
        "within_target": growth < RSS_TARGET_PCT and all(
            p["growth_pct"] < RSS_TARGET_PCT for p in processes.values()),
        "series_mb": [[s["t"], round(sum(s["rss"].values()) / MB, 1)] for s in samples],
    }


def _trend(series: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) samples, in MB per hour."""
    if len(series) < 3:
        return None
    seconds, mb = np.array(series).T
    return round(float(np.polyfit(seconds / 3600.0, mb, 1)[0]), 1)


def frame_age(before: dict, after: dict) -> dict:
    """Capture -> render p50/p99 (ms) from the latency histogram's increase, per camera and together."""
    per_source = {name: _buckets(before.get(name, {}), after.get(name, {})) for name in SOURCES}
    together = [(bound, sum(dict(b).get(bound, 0.0) for b in per_source.values()))
                for bound, _ in per_source[SOURCES[0]]]
    result = {}
    for name, buckets in [*per_source.items(), ("all", together)]:
        result[name] = {
            f"p{round(q * 100)}": None if not buckets or (v := histogram_quantile(q, buckets)) is None
            else round(v * 1000.0, 1)
            for q in (0.5, 0.99)
        }
        result[name]["frames"] = int(buckets[-1][1]) if buckets else 0
    return result


def _buckets(before: dict, after: dict) -> list[tuple[float, float]]:
    rows = []
    for (name, labels), value in after.items():
        if name == "sapiens_stream_latency_seconds_bucket":
            rows.append((float(dict(labels)["le"]), value - before.get((name, labels), 0.0)))
    return sorted(rows)


def _frames(before: dict, after: dict, name: str) -> dict:
    figures = {}
    for key, metric in (("in", "sapiens_stream_frames_in_total"), ("out", "sapiens_stream_frames_out_total")):
        total = counter(after, name, metric)
        figures[f"{key}_total"] = int(total)
        figures[f"{key}_measured"] = int(total - counter(before, name, metric))
    return figures


def _drops(samples: dict) -> dict[str, int]:
    return {dict(labels)["cause"]: int(value) for (name, labels), value in samples.items()
            if name == "sapiens_stream_frames_dropped_total" and value}


def shm_report(samples: list[dict], first: dict, last: dict, left: int) -> dict:
    return {
        "run_bytes_start": first["shm_run_bytes"],
        "run_bytes_end": last["shm_run_bytes"],
        "run_bytes_max": max(s["shm_run_bytes"] for s in samples),
        "run_bytes_left_after_exit": left,
        "all_ring_bytes_max": max(s["shm_all_bytes"] for s in samples),  # other programs' rings too
        "series_bytes": [[s["t"], s["shm_run_bytes"]] for s in samples],
    }


def print_table(result: dict) -> None:
    rss, shm = result["rss"], result["shm"]
    print(f"\nsoak: {result['measured_s']:.0f} s measured after {result['config']['warmup_s']:g} s warm-up")
    print(f"{'process':<28}{'start MB':>10}{'end MB':>10}{'growth %':>10}")
    for label, p in sorted(rss["processes"].items()):
        print(f"{label:<28}{p['start_mb']:>10.1f}{p['end_mb']:>10.1f}{p['growth_pct']:>10.2f}")
    total = rss["total"]
    print(f"{'total':<28}{total['start_mb']:>10.1f}{total['end_mb']:>10.1f}{total['growth_pct']:>10.2f}"
          f"   (target < {rss['target_pct']:g} %: {'yes' if rss['within_target'] else 'NO'})")
    print(f"total RSS trend {total['trend_mb_per_hour']} MB/h, "
          f"{total['trend_mb_per_hour_second_half']} MB/h over the second half")
    for name in (*SOURCES, "all"):
        age = result["frame_age_ms"][name]
        print(f"frame age {name:<7} p50 {age['p50']} ms  p99 {age['p99']} ms")
    for name in SOURCES:
        print(f"{name:<7} frames out {result['frames'][name]['out_total']}, "
              f"drops {result['drops_by_cause'][name]}, reconnects {result['reconnects'][name]}")
    print(f"outages {len(result['outages'])}, back after "
          f"{[o['reconnected_after_s'] for o in result['outages']]} s")
    print(f"/dev/shm rings: start {shm['run_bytes_start'] / MB:.1f} MB, "
          f"end {shm['run_bytes_end'] / MB:.1f} MB, max {shm['run_bytes_max'] / MB:.1f} MB, "
          f"left after exit {shm['run_bytes_left_after_exit']} bytes")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = server_unavailable_reason()
    if missing is not None:
        print(f"soak: cannot run the RTSP server: {missing}", file=sys.stderr)
        return 2
    result = soak(args)
    write_results("soak", result, args.out)
    print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
