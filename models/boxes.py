"""Given person boxes: the ``boxes:FILE`` detector, a JSONL file with one
``{"frame": int, "boxes": [[x1, y1, x2, y2, score], ...]}`` line per frame (frames absent from the file
have no persons). Boxes come back exactly as given: the file is the truth. Needs no torch, so a run can
check the file before any worker starts.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

Detections = list[tuple[np.ndarray, np.ndarray]]


class DetectorError(ValueError):
    """A detector spec or boxes file that cannot be used; the message names the problem and the fix."""



def empty_detection() -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((0, 4), np.float32), np.zeros((0,), np.float32)


def _parse_boxes_line(line: str, where: str) -> tuple[int, np.ndarray, np.ndarray]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DetectorError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(record, dict) or "frame" not in record or "boxes" not in record:
        raise DetectorError(
            f'{where}: expected an object {{"frame": int, "boxes": [[x1, y1, x2, y2, score]]}}'
        )
    frame = record["frame"]
    if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
        raise DetectorError(f"{where}: 'frame' must be a non-negative integer, got {frame!r}")
    rows = record["boxes"]
    if not isinstance(rows, list):
        raise DetectorError(f"{where}: 'boxes' must be a list, got {type(rows).__name__}")
    boxes = np.zeros((len(rows), 4), np.float32)
    scores = np.ones((len(rows),), np.float32)
    for i, row in enumerate(rows):
        valid = (
            isinstance(row, list)
            and len(row) in (4, 5)
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in row)
        )
        if not valid:
            raise DetectorError(
                f"{where}: box {i} must be [x1, y1, x2, y2, score] of finite numbers, got {row!r}"
            )
        if row[2] < row[0] or row[3] < row[1]:
            raise DetectorError(f"{where}: box {i} has x2 < x1 or y2 < y1: {row!r}")
        boxes[i] = row[:4]
        if len(row) == 5:
            scores[i] = row[4]
    return frame, boxes, scores


def load_boxes_file(path: str | Path) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Read a boxes JSONL file into ``{frame: (boxes (N, 4) float32, scores (N,) float32)}``.

    A score may be left out (``[x1, y1, x2, y2]``), meaning 1.0. Blank lines are ignored. A malformed
    line, or a frame listed twice, raises ``DetectorError`` naming the file and the line number.
    """
    path = Path(path)
    if not path.is_file():
        raise DetectorError(f"boxes file not found: {path}")
    table: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    first_line_of: dict[int, int] = {}
    with path.open("r", encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            frame, boxes, scores = _parse_boxes_line(line, where)
            if frame in table:
                raise DetectorError(f"{where}: frame {frame} already given on line {first_line_of[frame]}")
            table[frame] = (boxes, scores)
            first_line_of[frame] = line_number
    return table


class BoxesFileDetector:
    """Returns the boxes a JSONL file lists for each frame index; frames not in the file have none."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.table = load_boxes_file(self.path)

    def __call__(self, images: Sequence[np.ndarray], frame_indices: Sequence[int]) -> Detections:
        if len(images) != len(frame_indices):
            raise ValueError(f"got {len(images)} images but {len(frame_indices)} frame indices")
        detections = []
        for index in frame_indices:
            boxes, scores = self.table.get(int(index), empty_detection())
            detections.append((boxes.copy(), scores.copy()))
        return detections
