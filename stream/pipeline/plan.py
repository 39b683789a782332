"""What a run will do, worked out and checked before anything starts: its sources (probed and named),
its models, detector and outputs. Bad input is refused here with one line, before any worker runs."""

from __future__ import annotations

import os
from pathlib import Path

from models.boxes import load_boxes_file
from stream.config import ConfigError, PipelineConfig
from stream.edges.publish import check_publish_target
from stream.edges.sources import probe_source, unique_names
from stream.media.frames import SourceInfo
from stream.runtime.stage import SourcePlan


def plan_sources(cfg: PipelineConfig) -> list[SourcePlan]:
    """Probe every source (one-line SourceError on bad input) and give each its output name and mode."""
    if not cfg.sources:
        raise ConfigError("no sources given")
    infos: list[SourceInfo] = [probe_source(spec) for spec in cfg.sources]
    plans = []
    for name, info in zip(unique_names(infos), infos, strict=True):
        live = cfg.mode == "live" or (cfg.mode == "auto" and info.is_live)
        plans.append(SourcePlan(name=name, info=info, live=live))
    return plans


def check_inputs(cfg: PipelineConfig) -> None:
    """Refuse, before starting anything, model and detector paths that do not exist, boxes files that
    do not parse and a background that cannot be used."""
    models = [(task, cfg.task_model(task)) for task in cfg.task]
    if "matting" in cfg.viewed:
        from stream.drawing.dense import Background

        Background(cfg.background).close()  # a colour, image or video that cannot be used: one line
    for task, spec in models:
        if not cfg.random_weights and _looks_like_path(spec) and not Path(spec).exists():
            raise FileNotFoundError(f"{task} model not found: {spec}")
    if cfg.detector.startswith("boxes:"):
        load_boxes_file(cfg.detector[len("boxes:") :])  # a malformed file is bad input, refused here
    elif _looks_like_path(cfg.detector) and not Path(cfg.detector).exists():
        raise FileNotFoundError(f"detector weights not found: {cfg.detector}")
    if cfg.publish is not None:
        check_publish_target(cfg.publish, len(cfg.sources))
    if cfg.show:
        from stream.edges.preview_window import display_available

        if not display_available():  # refused here, before any output is made or worker started
            raise ConfigError(
                "--show needs a display (DISPLAY/WAYLAND_DISPLAY is not set); "
                "use --serve 127.0.0.1:PORT for a browser preview instead"
            )


def prepare_out_dir(out: Path) -> None:
    """Create ``out`` or refuse it with one line: a file in its place, no permission, a read-only disk."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"out: {out} exists and is not a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"out: cannot create {out}: {exc.strerror or exc}") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"out: cannot write to {out}")


def _looks_like_path(spec: str) -> bool:
    # Hub ids are "owner/name"; anything with a path prefix, more parts or a file suffix is a path.
    return spec.startswith((".", "/", "~")) or spec.count("/") > 1 or Path(spec).exists()
