"""OverlayDrawer: official skeleton, keypoint and palette colours, thresholds, face dots, boxes, banner."""

from __future__ import annotations

import numpy as np
import pytest

from models.meta import pose_meta, seg_meta
from stream.drawing.overlay import DrawSizes, OverlayDrawer
from stream.media.frames import ModelOutputs

HEIGHT, WIDTH = 720, 1280
GREY = 60


def _canvas():
    return np.full((HEIGHT, WIDTH, 3), GREY, np.uint8)


def _pose_result(points: dict[int, tuple[float, float, float]]) -> ModelOutputs:
    """One person whose keypoints are all invisible except ``{index: (x, y, score)}``."""
    num_keypoints = len(pose_meta().names)
    keypoints = np.full((1, num_keypoints, 2), -50.0, np.float32)
    scores = np.zeros((1, num_keypoints), np.float32)
    for index, (x, y, score) in points.items():
        keypoints[0, index] = (x, y)
        scores[0, index] = score
    return ModelOutputs(
        boxes=np.zeros((1, 4), np.float32),
        scores=np.ones((1,), np.float32),
        track_ids=np.zeros((1,), np.int64),
        keypoints=keypoints,
        keypoint_scores=scores,
    )


def _link_index(a: int, b: int) -> int:
    skeleton = pose_meta().skeleton.tolist()
    return skeleton.index([a, b])


def test_skeleton_keypoints_and_face_dots_use_the_official_colours():
    meta = pose_meta()
    ankle, knee = 13, 11  # a link of the left leg
    hidden_ankle, shown_knee = 14, 12  # the right leg's link, with its ankle below the threshold
    face = int(np.flatnonzero(~meta.linked)[0])  # a face point: drawn as a dot, never linked
    points = {
        ankle: (200, 600, 0.9),
        knee: (200, 300, 0.9),
        hidden_ankle: (600, 600, 0.3),  # equal to the threshold: not drawn
        shown_knee: (600, 300, 0.8),
        face: (1000, 200, 0.95),
    }
    visible = {ankle, knee, shown_knee, face}
    links_between_visible = [
        tuple(link) for link in meta.skeleton.tolist() if link[0] in visible and link[1] in visible
    ]
    assert links_between_visible == [(ankle, knee)]

    image = _canvas()
    out = OverlayDrawer(keypoint_threshold=0.3, draw_boxes=False)(image, _pose_result(points))

    assert (image == GREY).all(), "the input image must not be drawn on"
    link_color = meta.link_colors[_link_index(ankle, knee)]
    np.testing.assert_array_equal(out[450, 200], link_color)  # midway along the link
    for index in (ankle, knee, shown_knee, face):
        x, y, _ = points[index]
        np.testing.assert_array_equal(out[y, x], meta.keypoint_colors[index], err_msg=f"keypoint {index}")
    # Below the threshold: neither the point nor its link.
    assert (out[600, 600] == GREY).all() and (out[450, 600] == GREY).all()
    # The face dot is small: a few pixels away the frame is untouched.
    sizes = DrawSizes.for_frame(HEIGHT, WIDTH)
    assert sizes.dot < sizes.radius
    assert (out[200 - 4 : 200 + 5, 1000 + sizes.dot + 2 : 1000 + 20] == GREY).all()
    assert (out[200 + sizes.dot + 2 : 200 + 20, 1000 - 4 : 1000 + 5] == GREY).all()
    # Nothing drawn anywhere else.
    changed = (out != GREY).any(axis=2)
    changed[280:620, 180:220] = False
    changed[280:320, 580:620] = False
    changed[190:211, 990:1011] = False
    assert not changed.any()


def test_line_width_and_radius_grow_with_the_frame():
    small, large = DrawSizes.for_frame(360, 640), DrawSizes.for_frame(1440, 2560)
    assert large.line > small.line and large.radius > small.radius and large.font_scale > small.font_scale

    def link_width(height, width):
        points = {13: (width * 0.2, height * 0.5, 1.0), 11: (width * 0.8, height * 0.5, 1.0)}
        image = np.zeros((height, width, 3), np.uint8)
        out = OverlayDrawer(draw_boxes=False)(image, _pose_result(points))
        return int((out[:, width // 2] > 0).any(axis=1).sum())

    assert link_width(1440, 2560) > link_width(360, 640)


def test_segmentation_overlay_follows_the_palette_and_leaves_background_untinted():
    palette = seg_meta().palette
    num_classes = len(palette)
    alpha = 0.5
    labels = np.zeros((HEIGHT, WIDTH), np.uint8)
    stripe = WIDTH // num_classes
    for class_id in range(num_classes):
        labels[:, class_id * stripe : (class_id + 1) * stripe] = class_id
    result = ModelOutputs.empty()
    result.seg_labels = labels
    image = _canvas()
    out = OverlayDrawer(seg_alpha=alpha)(image, result)

    for class_id in range(num_classes):
        pixel = out[HEIGHT // 2, class_id * stripe + stripe // 2].astype(int)
        if class_id == 0:
            assert (pixel == GREY).all()
        else:
            expected = GREY * (1 - alpha) + palette[class_id].astype(float) * alpha
            assert np.abs(pixel - expected).max() <= 1, f"class {class_id}: {pixel} vs {expected}"
    assert (out[:, num_classes * stripe :] == GREY).all()  # the unlabelled remainder is class 0

    # A class id outside the palette shows as white rather than failing; all background changes nothing.
    labels[:] = 0
    labels[10:20, 10:20] = 250
    out = OverlayDrawer(seg_alpha=alpha)(image, result)
    assert np.abs(out[15, 15].astype(int) - (GREY + 255) / 2).max() <= 1
    labels[:] = 0
    assert (OverlayDrawer(seg_alpha=alpha)(image, result) == GREY).all()


def test_segmentation_of_another_size_is_rejected():
    result = ModelOutputs.empty()
    result.seg_labels = np.zeros((10, 10), np.uint8)
    with pytest.raises(ValueError, match="seg_labels must be"):
        OverlayDrawer()(_canvas(), result)


def test_boxes_are_drawn_in_the_track_colour_only_when_asked():
    result = ModelOutputs(
        boxes=np.array([[100, 150, 400, 600]], np.float32),
        scores=np.array([0.9], np.float32),
        track_ids=np.array([7], np.int64),
    )
    with_boxes = OverlayDrawer(draw_boxes=True)(_canvas(), result)
    edge = with_boxes[400, 100]
    assert not (edge == GREY).all()
    np.testing.assert_array_equal(with_boxes[400, 400], edge)  # both sides share the track's colour
    assert (with_boxes[400, 250] == GREY).all()  # inside stays clear
    assert (OverlayDrawer(draw_boxes=False)(_canvas(), result) == GREY).all()


def test_banner_and_text_lines():
    overlay = OverlayDrawer()
    plain = overlay(_canvas(), ModelOutputs.empty())
    assert (plain == GREY).all()

    with_banner = overlay(_canvas(), ModelOutputs.empty(), banner="UNTRAINED WEIGHTS")
    top = with_banner[: HEIGHT // 20]
    banner_rows = (top == (200, 0, 0)).all(axis=2).mean()
    assert banner_rows > 0.5, "a band in the banner colour across the top"
    assert (with_banner[: HEIGHT // 6] == 255).all(axis=2).sum() > 2000, "big white letters"
    assert (with_banner[HEIGHT // 2 :] == GREY).all()

    with_text = overlay(_canvas(), None, text_lines=["fps 29.9", "latency 40 ms"])
    changed_rows = np.flatnonzero((with_text != GREY).any(axis=(1, 2)))
    changed_cols = np.flatnonzero((with_text != GREY).any(axis=(0, 2)))
    assert changed_rows.max() < HEIGHT // 4 and changed_cols.max() < WIDTH // 3  # a top-left panel
    assert (with_text == 255).all(axis=2).sum() > 50


def test_views_with_negative_strides_are_accepted():
    image = _canvas()
    image[:, : WIDTH // 2] = 0
    out = OverlayDrawer()(image[:, ::-1], None, text_lines=["x"])  # e.g. an RGB view of a BGR frame
    assert out.shape == image.shape and out.flags.c_contiguous
    assert (out[HEIGHT - 1, 0] == GREY).all() and (out[HEIGHT - 1, WIDTH - 1] == 0).all()


def test_bad_image_is_rejected():
    with pytest.raises(ValueError, match="uint8 RGB image"):
        OverlayDrawer()(np.zeros((10, 10), np.uint8), ModelOutputs.empty())
    with pytest.raises(ValueError, match="keypoints must be"):
        result = _pose_result({})
        result.keypoints = result.keypoints[:, :17]
        result.keypoint_scores = result.keypoint_scores[:, :17]
        OverlayDrawer()(_canvas(), result)
