"""Reading a run's JSONL results back, checked, grouped by source, for the exporters."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from models.meta import pose_meta


class ExportError(ValueError):
    """Results that cannot be exported (one-line message naming the file)."""


@dataclass
class SourceResults:
    """One source's lines, in frame order. ``frames`` holds every line, skipped ones included."""

    name: str
    frames: list[dict] = field(default_factory=list)

    @property
    def processed(self) -> list[dict]:
        """Lines of frames that were processed (live runs also record skipped frames)."""
        return [line for line in self.frames if not line.get("skipped")]

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the first frame."""
        first = self.frames[0]
        return int(first["width"]), int(first["height"])

    @property
    def num_frames(self) -> int:
        return max(int(line["frame"]) for line in self.frames) + 1


def read_results(paths: list[str | Path]) -> list[SourceResults]:
    """The sources of one or more JSONL files, each with its lines sorted by frame.

    Every person must carry the 308 keypoints of a pose run: the exports are keypoint formats.
    """
    sources: dict[str, SourceResults] = {}
    for path in map(Path, paths):
        for number, line in _lines(path):
            _check_line(path, number, line)
            name = str(line["source"])
            sources.setdefault(name, SourceResults(name)).frames.append(line)
    if not sources:
        raise ExportError(f"{Path(paths[0])}: no results in it")
    for source in sources.values():
        source.frames.sort(key=lambda line: int(line["frame"]))
    return list(sources.values())


def _lines(path: Path):
    if not path.is_file():
        raise ExportError(f"results file not found: {path}")
    with path.open(encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                yield number, json.loads(text)
            except json.JSONDecodeError:
                raise ExportError(f"{path}: line {number} is not JSON (expected a run's results)") from None


def _check_line(path: Path, number: int, line) -> None:
    where = f"{path}: line {number}"
    if not isinstance(line, dict) or not all(key in line for key in ("source", "frame", "width", "height")):
        raise ExportError(f"{where} is not a result line (source, frame, width, height)")
    if line.get("skipped"):
        return
    persons = line.get("persons")
    if not isinstance(persons, list):
        raise ExportError(f"{where} has no persons list")
    expected = len(pose_meta().names)
    for person in persons:
        keypoints = person.get("keypoints") if isinstance(person, dict) else None
        if keypoints is None:
            raise ExportError(f"{where}: a person without keypoints (exports need a run with --task pose)")
        if len(keypoints) != expected or "bbox" not in person:
            raise ExportError(f"{where}: a person with {len(keypoints)} keypoints, expected {expected}")


def number(value) -> float:
    """A JSONL number; null (a non-finite value in the run) reads as 0."""
    return 0.0 if value is None else float(value)


def track_id(person: dict) -> int:
    """The person's track id, -1 while untracked (JSONL writes -1 or null)."""
    value = person.get("id")
    return int(value) if value is not None and int(value) >= 0 else -1
