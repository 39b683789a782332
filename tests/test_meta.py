"""Invariants of the Sapiens2 metadata that flip-TTA and rendering rely on."""

import numpy as np

from models.meta import pose_decode_constants, pose_meta, raw_meta, seg_meta

_SIDE_SWAP = {"left": "right", "right": "left", "l": "r", "r": "l"}


def _mirrored_stem(name: str) -> str:
    """The name seen in a mirror, without point numbers (face contours are numbered along the curve,
    so a left point's number differs from its right twin's)."""
    return "_".join(_SIDE_SWAP.get(t, t) for t in name.split("_") if not t.isdigit())


def _stem(name: str) -> str:
    return "_".join(t for t in name.split("_") if not t.isdigit())


def test_pose_has_308_named_keypoints():
    meta = pose_meta()
    assert len(meta.names) == 308
    assert len(set(meta.names)) == 308
    assert meta.keypoint_colors.shape == (308, 3)
    assert meta.oks_sigmas.shape == (308,)
    assert (meta.oks_sigmas > 0).all()


def test_flip_indices_is_an_involution_built_from_the_flip_pairs():
    meta = pose_meta()
    flip = meta.flip_indices
    assert sorted(flip.tolist()) == list(range(308))
    np.testing.assert_array_equal(flip[flip], np.arange(308))
    expected = np.arange(308)
    expected[meta.flip_pairs[:, 0]] = meta.flip_pairs[:, 1]
    expected[meta.flip_pairs[:, 1]] = meta.flip_pairs[:, 0]
    np.testing.assert_array_equal(flip, expected)
    # Each keypoint is in at most one pair.
    assert len(np.unique(meta.flip_pairs)) == meta.flip_pairs.size


def test_flip_pairs_are_left_right_twins_and_unpaired_points_are_central():
    meta = pose_meta()
    for a, b in meta.flip_pairs:
        left, right = meta.names[a], meta.names[b]
        assert _mirrored_stem(left) == _stem(right) and left != right, (left, right)
    paired = set(meta.flip_pairs.ravel().tolist())
    for index, name in enumerate(meta.names):
        if index not in paired:
            assert not set(name.split("_")) & set(_SIDE_SWAP), name


def test_skeleton_links_are_in_range_with_one_colour_each():
    meta = pose_meta()
    assert meta.skeleton.ndim == 2 and meta.skeleton.shape[1] == 2
    assert meta.skeleton.min() >= 0 and meta.skeleton.max() < 308
    assert (meta.skeleton[:, 0] != meta.skeleton[:, 1]).all()
    assert meta.link_colors.shape == (len(meta.skeleton), 3)
    assert meta.linked.sum() == len(np.unique(meta.skeleton))


def test_coco17_subset_names_match_the_308_layout():
    meta = pose_meta()
    coco = raw_meta()["coco17"]
    assert meta.coco17_index.shape == (17,)
    assert [meta.names[i] for i in meta.coco17_index] == coco["names"]


def test_segmentation_classes_palette_and_left_right_pairs():
    meta = seg_meta()
    assert len(meta.classes) == 29
    assert meta.classes[0] == "Background"
    assert meta.palette.shape == (29, 3) and meta.palette.dtype == np.uint8
    assert len({tuple(c) for c in meta.palette.tolist()}) == 29
    np.testing.assert_array_equal(meta.flip_indices[meta.flip_indices], np.arange(29))
    for a, b in meta.flip_pairs:
        assert meta.classes[a].startswith("Left_") and meta.classes[b] == "Right_" + meta.classes[a][5:]


def test_pose_decode_constants_are_the_official_ones():
    constants = pose_decode_constants()
    assert constants["input_hw"] == [1024, 768]
    assert constants["heatmap_hw"] == [256, 192]
    assert constants["bbox_padding"] == 1.25
    assert constants["dark_udp_blur_kernel"] == 11
    assert constants["log_clip"] == [0.001, 50.0]
