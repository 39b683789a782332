"""Results in the formats annotation and evaluation tools import: COCO keypoints, COCO results of the
17 body keypoints, CVAT for video.

    sapiens-stream export out/clip.jsonl --format coco        # -> out/clip.coco.json
    sapiens-stream run clip.mp4 --out out --export coco,cvat-video

``export_results`` reads a run's JSONL and writes one format; the CLI's ``export`` command and
``run --export`` both call it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from stream.exports.results import ExportError, read_results

# format -> file name ending of its default output, next to the JSONL
FORMATS = {"coco": ".coco.json", "coco17": ".coco17.json", "cvat-video": ".cvat.xml"}

__all__ = ["FORMATS", "ExportError", "default_output", "export_results", "parse_formats"]


def parse_formats(value: str | Sequence[str]) -> list[str]:
    """``"coco,cvat-video"`` (or a list) -> the formats, checked; an unknown one is an ExportError."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    formats = list(dict.fromkeys(str(p).strip() for p in parts if str(p).strip()))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        got = unknown[0] if unknown else value
        raise ExportError(f"export format must be one of {', '.join(FORMATS)}, got {got!r}")
    return formats


def default_output(results: str | Path, fmt: str) -> Path:
    """``out/clip.jsonl`` -> ``out/clip.coco.json`` (the format's ending in place of ``.jsonl``)."""
    results = Path(results)
    stem = results.name[: -len(".jsonl")] if results.name.endswith(".jsonl") else results.stem
    return results.with_name(stem + FORMATS[fmt])


def export_results(
    results: str | Path | Sequence[str | Path],
    fmt: str,
    out: str | Path | None = None,
    keypoint_threshold: float = 0.3,
) -> Path:
    """Write the JSONL ``results`` (one file or several) as ``fmt``; returns the path written.

    ``out`` is a file, or a directory to write the default file name into (``clip.coco.json``).
    """
    from stream.exports.coco import coco17_results, coco_keypoints
    from stream.exports.cvat import cvat_video

    if fmt not in FORMATS:
        raise ExportError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    paths = [results] if isinstance(results, (str, Path)) else list(results)
    if out is None and len(paths) != 1:
        raise ExportError("give --out when exporting several results files together")
    if not 0 <= keypoint_threshold <= 1:
        raise ExportError(f"keypoint threshold must be in [0, 1], got {keypoint_threshold}")
    sources = read_results(paths)
    out = Path(out) if out is not None else default_output(paths[0], fmt)
    if out.is_dir():
        out = out / default_output(paths[0], fmt).name
    if any(out.resolve() == Path(path).resolve() for path in paths):
        raise ExportError(f"--out {out} would overwrite the results it is made from")
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "cvat-video":
        cvat_video(sources, keypoint_threshold).write(out, encoding="utf-8", xml_declaration=True)
        return out
    data = coco_keypoints(sources, keypoint_threshold) if fmt == "coco" else coco17_results(sources)
    out.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
    return out
