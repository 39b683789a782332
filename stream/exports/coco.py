"""COCO keypoints: the whole 308-keypoint dataset layout, and the 17-keypoint results format.

``coco_keypoints`` is a dataset file (``images``, ``annotations``, ``categories``, plus ``videos``),
loadable by pycocotools and importable by annotation tools. Keypoints at or above the threshold are
visible (``v = 2``); those below are "not labelled" (``v = 0``, and then ``x = y = 0`` as COCO asks);
every keypoint's score stays in ``keypoint_scores``.

``coco17_results`` is the detection results format COCOeval scores against COCO person keypoint ground
truth: the metadata's COCO-17 subset of the 308, ``(x, y, score)`` per keypoint.

Images are numbered ``frame + 1`` within a source; the sources of one export follow each other, each
starting after the previous one's last frame.
"""

from __future__ import annotations

import datetime

from models.meta import pose_meta
from stream.exports.results import SourceResults, number, track_id
from stream.version import package_version

PERSON_CATEGORY = 1


def image_offsets(sources: list[SourceResults]) -> list[int]:
    """The image id of each source's frame 0, minus one."""
    offsets, start = [], 0
    for source in sources:
        offsets.append(start)
        start += source.num_frames
    return offsets


def coco_keypoints(sources: list[SourceResults], keypoint_threshold: float) -> dict:
    meta = pose_meta()
    images, annotations, videos = [], [], []
    for video_id, (source, offset) in enumerate(zip(sources, image_offsets(sources), strict=True), start=1):
        width, height = source.size
        videos.append({"id": video_id, "name": source.name, "width": width, "height": height})
        for line in source.processed:
            image_id = offset + int(line["frame"]) + 1
            images.append(
                {
                    "id": image_id,
                    "video_id": video_id,
                    "frame_id": int(line["frame"]),
                    # Frames are not written as images; this is where `ffmpeg -i VIDEO -start_number 0
                    # NAME/%06d.png` puts them.
                    "file_name": f"{source.name}/{int(line['frame']):06d}.png",
                    "width": int(line["width"]),
                    "height": int(line["height"]),
                }
            )
            for person in line["persons"]:
                annotation = _annotation(person, keypoint_threshold)
                annotations.append({"id": len(annotations) + 1, "image_id": image_id, **annotation})
    return {
        "info": _info(),
        "licenses": [],
        "videos": videos,
        "images": images,
        "annotations": annotations,
        "categories": [
            {
                "id": PERSON_CATEGORY,
                "name": "person",
                "supercategory": "person",
                "keypoints": list(meta.names),
                "skeleton": (meta.skeleton + 1).tolist(),  # COCO numbers keypoints from 1
            }
        ],
    }


def _annotation(person: dict, keypoint_threshold: float) -> dict:
    x1, y1, x2, y2 = (number(v) for v in person["bbox"])
    width, height = max(x2 - x1, 0.0), max(y2 - y1, 0.0)
    flat, scores = [], []
    for x, y, score in person["keypoints"]:
        score = number(score)
        visible = x is not None and y is not None and score >= keypoint_threshold
        flat += [number(x), number(y), 2] if visible else [0.0, 0.0, 0]
        scores.append(score)
    return {
        "category_id": PERSON_CATEGORY,
        "bbox": [round(x1, 2), round(y1, 2), round(width, 2), round(height, 2)],
        "area": round(width * height, 2),
        "iscrowd": 0,
        "score": number(person.get("score")),
        "track_id": track_id(person),
        "keypoints": flat,
        "keypoint_scores": scores,
        "num_keypoints": flat[2::3].count(2),
    }


def coco17_results(sources: list[SourceResults]) -> list[dict]:
    subset = pose_meta().coco17_index.tolist()
    results = []
    for source, offset in zip(sources, image_offsets(sources), strict=True):
        for line in source.processed:
            for person in line["persons"]:
                keypoints = []
                for index in subset:
                    keypoints += [number(v) for v in person["keypoints"][index]]
                results.append(
                    {
                        "image_id": offset + int(line["frame"]) + 1,
                        "category_id": PERSON_CATEGORY,
                        "keypoints": keypoints,
                        "score": number(person.get("score")),
                    }
                )
    return results


def _info() -> dict:
    return {
        "description": "sapiens-stream results (Sapiens2 308-keypoint pose)",
        "version": package_version(),
        "date_created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
