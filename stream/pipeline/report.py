"""What a run reports: per-source accounting (``SourceReport``), the run's ``RunReport``, and the
progress shown while it runs (a tqdm bar offline, a stats line per source live)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from stream.config import PipelineConfig
from stream.runtime.stage import SourcePlan

STATS_LINE_S = 5.0  # live: how often each source's stats line is printed


@dataclass
class SourceReport:
    """What happened to one source."""

    name: str
    spec: str
    mode: str
    frames_decoded: int = 0
    frames_missing: int = 0  # announced by the container but never decoded (a damaged or cut file)
    frames_written: int = 0  # video frames
    lines: int = 0  # JSONL lines (one per decoded frame, skipped ones included)
    skipped: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    outputs: dict[str, str] = field(default_factory=dict)
    complete: bool = False  # the final EOS reached the sinks
    error: str = ""  # why the sinks stopped early (live: a full disk), one line; "" when they did not


@dataclass
class RunReport:
    """Per-source accounting of a run, its wall time and how it ended."""

    sources: dict[str, SourceReport]
    elapsed: float
    interrupted: bool = False
    device: str | None = None
    first_output: float | None = None  # seconds from start until the first frame reached a sink
    last_output: float | None = None  # seconds from start until the last frame reached a sink
    # Process workers only: worker label -> {"user_s", "system_s"}, the CPU seconds it used.
    worker_cpu: dict[str, dict[str, float]] = field(default_factory=dict)

    @property
    def frames(self) -> int:
        return sum(s.lines for s in self.sources.values())

    @property
    def fps(self) -> float:
        return self.frames / self.elapsed if self.elapsed > 0 else 0.0


class ProgressDisplay:
    """Offline: a tqdm bar (frames, fps, ETA). Live: a stats line per source every few seconds."""

    def __init__(
        self, cfg: PipelineConfig, plans: list[SourcePlan], registry, interval: float = STATS_LINE_S
    ) -> None:
        self.registry = registry
        self.interval = interval
        self.live = any(p.live for p in plans)
        self.bar = None
        self.last_line = time.monotonic()
        self.names = [p.name for p in plans]
        if cfg.progress and not self.live:
            from tqdm import tqdm

            known = [p.info.num_frames for p in plans]
            total = sum(known) if all(n is not None for n in known) else None
            self.bar = tqdm(total=total, unit="frame", dynamic_ncols=True, disable=None, file=sys.stderr)
        self.enabled = cfg.progress

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)
        elif self.live and self.enabled and time.monotonic() - self.last_line >= self.interval:
            self.last_line = time.monotonic()
            for name in self.names:
                print(self.registry.stats_line(name), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def stage_times(stamps: dict) -> dict[str, float]:
    """Seconds spent between consecutive stage stamps (decode -> infer -> track)."""
    ordered = sorted(stamps.items(), key=lambda item: item[1])
    return {b[0]: b[1] - a[1] for a, b in zip(ordered, ordered[1:], strict=False)}
