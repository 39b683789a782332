"""``sapiens-stream``: annotate videos, image folders and live streams; ``sapiens-stream demo``.

    sapiens-stream run a.mp4 b.mp4 frames/ --out out/ [--task pose,seg] [--config configs/pose.yaml]
    sapiens-stream demo [--out DIR]
    sapiens-stream export out/a.jsonl --format coco|coco17|cvat-video [--out FILE]

Options given on the command line override those of ``--config``. Bad input exits with status 2 and
a one-line ``error:`` message; a failed stage exits with status 1.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from stream.config import FIELD_NAMES, ConfigError, build_config, load_yaml
from stream.runtime.errors import first_line
from stream.version import package_version


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one ``sapiens-stream: error: ...`` line and status 2."""

    def error(self, message: str):
        from stream.edges.redact import redact

        # argparse quotes the arguments it did not understand, camera URLs among them.
        self.exit(2, f"sapiens-stream: error: {redact(message)} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    description = "Sapiens2 pose, segmentation, normals, depth and matting on video."
    parser = _Parser(prog="sapiens-stream", description=description)
    commands = parser.add_subparsers(dest="command", required=True)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    parser.add_argument("--debug", action="store_true", help="on an error, print the whole traceback")

    run = commands.add_parser("run", help="annotate videos, image folders or live streams")
    run.add_argument(
        "sources", nargs="+", metavar="SOURCE",
        help="video file, image folder, image, webcam or URL; NAME=SOURCE names its outputs",
    )
    run.add_argument("--out", help="output directory (default: out)")
    run.add_argument("--config", help="YAML file with any of these options")
    run.add_argument(
        "--export", metavar="FORMAT[,FORMAT]", help="also write the results as coco, coco17 or cvat-video"
    )
    run.add_argument(
        "--print-topology",
        action="store_true",
        help="print the run's links, roles, endpoints and high-water marks, then exit",
    )
    _add_run_options(run)

    demo = commands.add_parser("demo", help="run the pipeline on a short sample clip")
    demo.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    demo.add_argument("--frames", type=int, default=24, help="length of the sample clip in frames")
    demo.add_argument("--device", default="auto")

    export = commands.add_parser("export", help="convert a run's JSONL results for annotation tools")
    export.add_argument("results", nargs="+", metavar="RESULTS", help="JSONL results of a run")
    export.add_argument("--format", required=True, help="coco, coco17 or cvat-video")
    export.add_argument("--out", help="output file (default: next to RESULTS, e.g. clip.coco.json)")
    export.add_argument(
        "--keypoint-threshold", type=float, default=0.3, help="keypoints below this score are not visible"
    )
    return parser


def _add_run_options(parser: argparse.ArgumentParser) -> None:
    # Every default is None: only options actually given override the YAML and the built-in defaults.
    add = parser.add_argument
    add("--task", help="any of pose, seg, normal, pointmap, matting, comma separated (default pose)")
    add("--pose-model", help="Hub id or local directory of the pose checkpoint")
    add("--seg-model", help="Hub id or local directory of the segmentation checkpoint")
    add("--normal-model", help="Hub id or local directory of the normal checkpoint")
    add("--pointmap-model", help="Hub id or local directory of the pointmap (depth) checkpoint")
    add("--matting-model", help="Hub id or local directory of the matting checkpoint")
    add("--seg-mode", help="frame (whole frame, default) or person (person crops pasted back)")
    add("--view", help="tasks the video shows, e.g. pose,seg or matting (default: every task run)")
    add("--background", help="matting video background: blur (default), a colour, an image or a video")
    add("--save-pointmap", action=argparse.BooleanOptionalAction, default=None,
        help="also write float16 .npy pointmaps")  # fmt: skip
    add("--detector", help="YOLO weights name or path, or boxes:FILE (JSONL of given boxes)")
    add("--device", help="auto, cpu, cuda or cuda:N")
    add("--precision", help="auto (bf16 on GPU, fp32 on CPU), fp32, bf16 or fp16")
    add("--flip", action=argparse.BooleanOptionalAction, default=None, help="flip test-time augmentation")
    add("--input-size", help="model input HxW (default: each checkpoint's own, else 1024x768)")
    add("--smooth", action=argparse.BooleanOptionalAction, default=None, help="temporal smoothing")
    add("--camera-motion", action=argparse.BooleanOptionalAction, default=None,
        help="compensate camera motion in tracking (handheld or panning video)")  # fmt: skip
    add("--mode", help="auto, offline (lossless) or live (bounded latency)")
    add("--max-batch", type=int, help="frames per batch (across sources) and crops per model forward")
    add("--max-wait-ms", type=float, help="how long to wait to fill a batch")
    add("--detect-every", type=int, help="run the detector every K-th frame")
    add("--conf", type=float, help="detector confidence threshold")
    add("--iou", type=float, help="detector NMS IoU threshold")
    add("--max-persons", type=int, help="most persons per frame")
    add("--keypoint-threshold", type=float, help="keypoints below this score are not drawn")
    add("--codec", help="video encoder: auto, libx264, h264_nvenc")
    add("--crf", type=int, help="encoder quality (lower is better)")
    add("--preset", help="encoder preset")
    add("--show", action=argparse.BooleanOptionalAction, default=None, help="preview window")
    add("--serve", metavar="HOST:PORT", help="browser preview (MJPEG), e.g. 127.0.0.1:8080")
    add("--max-viewers", type=int, help="browser preview: streams served at once, more get HTTP 503 (4)")
    add("--metrics", metavar="HOST:PORT", help="Prometheus metrics endpoint, e.g. 127.0.0.1:9100")
    add("--allow-remote", action="store_true", default=None,
        help="let --serve/--metrics bind an address other machines can reach (default: loopback only)")
    add("--stale-after", type=float, help="live: skip frames older than this many seconds")
    add("--rtsp-transport", help="tcp or udp")
    add("--stall-timeout", type=float, help="live: reconnect after this many seconds without a frame (5)")
    add("--webcam-size", metavar="WxH", help="resolution to request from a webcam, e.g. 1280x720")
    add("--webcam-fps", type=float, help="frame rate to request from a webcam")
    add("--webcam-format", help="pixel format to request from a webcam, e.g. mjpeg or yuyv422")
    add("--workers", help="inproc (threads), ipc (processes; default) or tcp")
    add("--progress", action=argparse.BooleanOptionalAction, default=None, help="progress bar")
    add("--ray", metavar="ADDRESS", help="run on a Ray cluster: local, auto or ray://HOST:PORT")
    add("--shards", type=int, help="Ray: shard actors (default: one per GPU)")
    add("--decode-on", metavar="RESOURCE",
        help="Ray: decode on the nodes that have this custom resource (camera-side hosts); links are CURVE")
    add("--control", metavar="HOST:PORT", help="HTTP API to list, add and remove live sources (loopback)")
    add("--segment-time", type=float, metavar="SECONDS",
        help="live: start new output files every SECONDS, named <name>_<UTC start>.mp4/.jsonl")
    add("--label-maps", action=argparse.BooleanOptionalAction, default=None,
        help="write segmentation label maps (default: offline yes, live no)")
    add("--publish", metavar="URL",
        help="also stream each source's video: rtsp://..., rtmp://... or DIR/{name}.m3u8 (HLS); "
        "{name} is the source's name")
    add("--random-weights", action="store_true", default=None,
        help="models with random weights instead of checkpoints (pipeline tests; outputs are meaningless; "
             "not settable from --config)")


def config_values(args: argparse.Namespace) -> dict:
    """YAML values (if ``--config``) overridden by the options given on the command line."""
    values = load_yaml(args.config) if args.config else {}
    for name, value in vars(args).items():
        if value is None or name in ("command", "config"):
            continue
        if name in FIELD_NAMES:
            values[name] = value
    return values


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "demo":
            from stream.front.demo import run_demo

            return run_demo(args.out, frames=args.frames, device=args.device)
        if args.command == "export":
            return export(args)
        config = build_config(config_values(args))
        if args.print_topology:
            from stream.pipeline.coordinator import describe_run

            print(describe_run(config))
            return 0
        return run(config, exports=_run_exports(args.export, config))
    except Exception as exc:
        if args.debug:
            # The whole traceback, for a bug report: the failed worker's first, where it sent one.
            if getattr(exc, "detail", ""):
                print(f"in the worker:\n{exc.detail}", file=sys.stderr)
            raise
        return _fail(exc)


def export(args: argparse.Namespace) -> int:
    from stream.exports import export_results

    path = export_results(args.results, args.format, args.out, keypoint_threshold=args.keypoint_threshold)
    print(f"{args.format} -> {path}")
    return 0


def _run_exports(value: str | None, config) -> list[str]:
    """The formats of ``run --export``, checked before the run starts."""
    from stream.exports import parse_formats

    if value is None:
        return []
    if not config.pose:
        raise ConfigError("--export needs keypoints: run with --task pose")
    return parse_formats(value)


def run(config, exports: Sequence[str] = ()) -> int:
    import dataclasses

    if config.ray:
        from stream.cluster import run_cluster

        report = run_cluster(config)
    else:
        import stream.api

        # The command line is the Python API's ``stream.run`` with the command line's options.
        report = stream.api.run(**dataclasses.asdict(config))
    placement = getattr(report, "placement", {})
    for source in report.sources.values():
        drops = sum(source.drops.values())
        extra = f", {source.skipped} skipped, {drops} dropped" if source.mode == "live" else ""
        extra += f" [{placement[source.name]}]" if source.name in placement else ""
        print(f"{source.name}: {source.lines} frames{extra} -> {', '.join(source.outputs.values())}")
    if placement:
        print(f"cluster: {report.shards} shards, {report.lost_shards} lost and replaced")
    note = " (interrupted)" if report.interrupted else ""
    print(f"done in {report.elapsed:.1f} s, {report.fps:.1f} frames/s{note}")
    if report.worker_cpu:
        # Where the time went: the stage whose CPU seconds approach the run's length is the bottleneck.
        used = [f"{name} {t['user_s'] + t['system_s']:.1f} s" for name, t in report.worker_cpu.items()]
        print(f"cpu: {', '.join(used)}")
    _write_exports(report, exports, config.keypoint_threshold)
    if any(source.error for source in report.sources.values()):
        return 2  # a live source's sinks failed (a full disk): its error line was printed when it did
    damaged = [s for s in report.sources.values() if s.frames_missing and not report.interrupted]
    if damaged:
        # Every decoded frame is written and the outputs are complete; the input itself was not.
        from stream.edges.sources import SourceError

        source = damaged[0]
        announced = source.frames_decoded + source.frames_missing
        decoded = source.frames_decoded
        return _fail(SourceError(
            f"{source.spec}: decoding stopped after {decoded} of {announced} frames (damaged or cut-short "
            f"file); the outputs hold the {decoded} decoded frames"
        ))
    return 0


def _write_exports(report, formats: Sequence[str], keypoint_threshold: float) -> None:
    """Each source's JSONL in every format, next to it (``out/<name>.coco.json``, ...)."""
    from stream.exports import export_results

    for source in report.sources.values():
        if formats and "jsonl" in source.outputs:
            paths = [export_results(source.outputs["jsonl"], f, keypoint_threshold=keypoint_threshold)
                     for f in formats]  # fmt: skip
            print(f"{source.name}: {', '.join(formats)} -> {', '.join(map(str, paths))}")


def _fail(exc: Exception) -> int:
    from stream.edges.sources import SourceError
    from stream.pipeline.coordinator import PipelineError

    if isinstance(exc, (ConfigError, SourceError)):
        status = 2
    elif isinstance(exc, PipelineError):
        # A failed stage; a failure the user can act on (a full disk) carries status 2.
        status = getattr(exc, "status", 1)
    elif isinstance(exc, (ValueError, OSError)):
        status = 2  # bad input, or the world refused: a missing file, a port in use, a full disk
    else:
        raise exc
    from stream.edges.redact import redact

    print(f"sapiens-stream: error: {redact(first_line(exc))}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
