"""CVAT for video 1.1 XML: one skeleton track per person id, for correcting the results in CVAT.

Follows CVAT's published description of the format (interpolation mode): ``<meta><task>`` with the
labels, one ``<track>`` per person whose shapes are ``<skeleton frame= keyframe=>`` elements of
``<points label= outside= occluded= keyframe= points="x,y">``. The skeleton holds the keypoints the
metadata's skeleton links: the 17 body points, the 6 foot points and the 20 finger points of each hand
(the hands hang from the body's wrists); the face points, drawn as dots, are left out.

Every frame a person was seen on is a keyframe. On the first processed frame after a person is gone,
the track gets a keyframe with every point ``outside``, which is how CVAT ends (or pauses) a track; a
keypoint below the threshold is ``outside`` on its own. Frames dropped in live mode get no shape, so
CVAT interpolates over them. Untracked persons (id -1) become one-frame tracks, as CVAT exports shapes.
Tracks are numbered from 0: person ids in ascending order, then the untracked ones in frame order.
"""

from __future__ import annotations

import datetime
import xml.etree.ElementTree as ET

import numpy as np

from models.meta import pose_meta
from stream.exports.results import ExportError, SourceResults, number, track_id

LABEL = "person"
TEMPLATE_SIZE = 100.0  # CVAT's skeleton editor draws on a 100 x 100 canvas


def skeleton_points() -> tuple[np.ndarray, np.ndarray]:
    """Indices (into the 308) of the skeleton's points, and its edges as pairs of positions in those."""
    meta = pose_meta()
    indices = np.flatnonzero(meta.linked)
    position = {int(k): i for i, k in enumerate(indices)}
    edges = np.asarray([[position[int(a)], position[int(b)]] for a, b in meta.skeleton], dtype=np.int64)
    return indices, edges


def cvat_video(sources: list[SourceResults], keypoint_threshold: float) -> ET.ElementTree:
    if len(sources) != 1:
        names = ", ".join(s.name for s in sources)
        raise ExportError(f"cvat-video holds one video; the results have {len(sources)} sources ({names})")
    source = sources[0]
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    root.append(_meta(source))
    for number_, track in enumerate(_tracks(source)):
        root.append(_track_element(number_, track, source, keypoint_threshold))
    ET.indent(root)
    return ET.ElementTree(root)


def _tracks(source: SourceResults) -> list[list[tuple[int, dict]]]:
    """Each track's ``(frame, person)`` in frame order: person ids ascending, then untracked persons."""
    by_id: dict[int, list[tuple[int, dict]]] = {}
    untracked: list[list[tuple[int, dict]]] = []
    for line in source.processed:
        for person in line["persons"]:
            key = track_id(person)
            shape = (int(line["frame"]), person)
            if key < 0:
                untracked.append([shape])
            else:
                by_id.setdefault(key, []).append(shape)
    return [by_id[key] for key in sorted(by_id)] + untracked


def _track_element(index: int, track: list[tuple[int, dict]], source: SourceResults, threshold: float):
    element = ET.Element("track", id=str(index), label=LABEL, source="auto")
    seen = {frame for frame, _ in track}
    processed = [int(line["frame"]) for line in source.processed]
    following = dict(zip(processed, processed[1:] + [None], strict=True))
    for frame, person in track:
        element.append(_skeleton(frame, person, threshold))
        after = following[frame]
        if after is not None and after not in seen:
            element.append(_skeleton(after, person, threshold, outside=True))
    return element


def _skeleton(frame: int, person: dict, threshold: float, outside: bool = False) -> ET.Element:
    names = pose_meta().names
    indices, _ = skeleton_points()
    shape = ET.Element("skeleton", frame=str(frame), keyframe="1", z_order="0")
    for k in indices:
        x, y, score = person["keypoints"][k]
        hidden = outside or x is None or y is None or number(score) < threshold
        ET.SubElement(
            shape,
            "points",
            {
                "label": names[k],
                "outside": "1" if hidden else "0",
                "occluded": "0",
                "keyframe": "1",
                "points": f"{number(x):.2f},{number(y):.2f}",
            },
        )
    return shape


def _meta(source: SourceResults) -> ET.Element:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(sep=" ")
    meta = ET.Element("meta")
    task = ET.SubElement(meta, "task")
    width, height = source.size
    for tag, text in (
        ("id", "0"), ("name", source.name), ("size", str(source.num_frames)), ("mode", "interpolation"),
        ("overlap", "0"), ("bugtracker", ""), ("flipped", "False"), ("created", now), ("updated", now),
    ):  # fmt: skip
        ET.SubElement(task, tag).text = text
    task.append(_labels(source))
    segment = ET.SubElement(ET.SubElement(task, "segments"), "segment")
    for tag, text in (("id", "0"), ("start", "0"), ("stop", str(source.num_frames - 1)), ("url", "")):
        ET.SubElement(segment, tag).text = text
    size = ET.SubElement(task, "original_size")
    ET.SubElement(size, "width").text = str(width)
    ET.SubElement(size, "height").text = str(height)
    ET.SubElement(meta, "dumped").text = now
    return meta


def _labels(source: SourceResults) -> ET.Element:
    names = pose_meta().names
    indices, _ = skeleton_points()
    labels = ET.Element("labels")
    skeleton = ET.SubElement(labels, "label")
    ET.SubElement(skeleton, "name").text = LABEL
    ET.SubElement(skeleton, "type").text = "skeleton"
    ET.SubElement(skeleton, "attributes")
    ET.SubElement(skeleton, "svg").text = _template_svg(source)
    for k in indices:
        point = ET.SubElement(labels, "label")
        ET.SubElement(point, "name").text = names[k]
        ET.SubElement(point, "type").text = "points"
        ET.SubElement(point, "attributes")
        ET.SubElement(point, "parent").text = LABEL
    return labels


def _template_svg(source: SourceResults) -> str:
    """The skeleton as CVAT's label editor stores it: element nodes (circles) and edges (lines)."""
    names = pose_meta().names
    indices, edges = skeleton_points()
    layout = _template_layout(source, indices)
    parts = []
    for a, b in edges:
        (x1, y1), (x2, y2) = layout[a], layout[b]
        parts.append(
            f'<line x1="{x1:.3f}" y1="{y1:.3f}" x2="{x2:.3f}" y2="{y2:.3f}" stroke="black" '
            f'data-type="edge" data-node-from="{a + 1}" stroke-width="0.5" data-node-to="{b + 1}"></line>'
        )
    for node, k in enumerate(indices, start=1):
        x, y = layout[node - 1]
        parts.append(
            f'<circle r="1.5" stroke="black" fill="#b3b3b3" cx="{x:.3f}" cy="{y:.3f}" stroke-width="0.1" '
            f'data-type="element node" data-element-id="{node}" data-node-id="{node}" '
            f'data-label-name="{names[k]}"></circle>'
        )
    return "".join(parts)


def _template_layout(source: SourceResults, indices: np.ndarray) -> np.ndarray:
    """Node positions on the template canvas: the average pose of the results, each person scaled to
    its box; points on a circle when there is no confident person to average."""
    poses = []
    for line in source.processed:
        for person in line["persons"]:
            points = np.asarray([[number(v) for v in person["keypoints"][k][:2]] for k in indices])
            x1, y1, x2, y2 = (number(v) for v in person["bbox"])
            if x2 > x1 and y2 > y1:
                poses.append((points - [x1, y1]) / max(x2 - x1, y2 - y1))
    if poses:
        mean = np.clip(np.mean(poses, axis=0), 0.0, 1.0)
        return 5.0 + mean * (TEMPLATE_SIZE - 10.0)
    angles = np.linspace(0.0, 2 * np.pi, len(indices), endpoint=False)
    return TEMPLATE_SIZE / 2 + 45.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
