"""Decoding of Sapiens2 outputs against transformers' Sapiens2ImageProcessor post-processing."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from transformers.models.sapiens2.image_processing_sapiens2 import Sapiens2ImageProcessor
from transformers.models.sapiens2.modeling_sapiens2 import flip_back

from models.meta import pose_meta, seg_meta
from models.postprocess import (
    decode_pose_heatmaps,
    full_blur_max,
    gaussian_kernel_1d,
    paste_person_segmentation,
    postprocess_matting,
    postprocess_normals,
    postprocess_pointmaps,
    segment_full_frame,
)
from models.preprocess import crop_to_frame_affine

torch.set_num_threads(2)
INPUT_SIZE = (256, 192)
HEATMAP_SIZE = (64, 48)
NUM_KEYPOINTS = len(pose_meta().names)

BOXES = torch.tensor(
    [
        [120.0, 40.0, 380.0, 700.0],  # an ordinary person
        [0.0, 0.0, 90.0, 260.0],  # touching the top-left frame border
        [1500.0, 600.0, 1920.0, 1080.0],  # touching the bottom-right border of a 1080p frame
        [-40.0, 300.0, 60.0, 500.0],  # partly outside
        [800.0, 500.0, 803.0, 504.0],  # tiny
        [400.0, 50.0, 1000.0, 1070.0],  # large
    ]
)


def _heatmaps(
    num_persons: int, generator: torch.Generator, noise: float = 0.005, margin: float = 0.0
) -> torch.Tensor:
    """Model-like heatmaps: a Gaussian bump per map (``margin`` px inside), amplitude 0.2..1, light noise."""
    h, w = HEATMAP_SIZE
    shape = (num_persons, NUM_KEYPOINTS, 1, 1)
    cx = margin + torch.rand(shape, generator=generator) * (w - 1 - 2 * margin)
    cy = margin + torch.rand(shape, generator=generator) * (h - 1 - 2 * margin)
    sigma = 1.5 + 1.5 * torch.rand(shape, generator=generator)
    amplitude = 0.2 + 0.8 * torch.rand(shape, generator=generator)
    ys = torch.arange(h, dtype=torch.float32).view(1, 1, h, 1)
    xs = torch.arange(w, dtype=torch.float32).view(1, 1, 1, w)
    bumps = amplitude * torch.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2))
    return bumps + noise * torch.randn(bumps.shape, generator=generator)


def _reference_pose(heatmaps, boxes, heatmaps_flipped=None):
    processor = Sapiens2ImageProcessor(size={"height": INPUT_SIZE[0], "width": INPUT_SIZE[1]})
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
    flipped = None if heatmaps_flipped is None else SimpleNamespace(heatmaps=heatmaps_flipped)
    results = processor.post_process_pose_estimation(
        SimpleNamespace(heatmaps=heatmaps), boxes=[xywh.tolist()], outputs_flipped=flipped
    )[0]
    return torch.stack([r["keypoints"] for r in results]), torch.stack([r["scores"] for r in results])


def _assert_pose_parity(heatmaps, boxes, reference_keypoints, reference_scores):
    keypoints, scores = decode_pose_heatmaps(heatmaps, crop_to_frame_affine(boxes, INPUT_SIZE), INPUT_SIZE)
    assert keypoints.shape == (len(boxes), NUM_KEYPOINTS, 2) and scores.shape == (len(boxes), NUM_KEYPOINTS)
    torch.testing.assert_close(scores, reference_scores, rtol=0, atol=0)
    assert (reference_scores > 0).all()
    error = (keypoints - reference_keypoints).abs().max()
    assert error <= 1e-3, f"{error} px from the reference"


def test_pose_decoding_equals_the_reference():
    generator = torch.Generator().manual_seed(0)
    heatmaps = _heatmaps(len(BOXES), generator)
    _assert_pose_parity(heatmaps, BOXES, *_reference_pose(heatmaps, BOXES))


def test_pose_decoding_with_flip_tta_equals_the_reference_outputs_flipped():
    generator = torch.Generator().manual_seed(1)
    heatmaps = _heatmaps(len(BOXES), generator)
    raw_flipped = _heatmaps(len(BOXES), generator)  # the model's output on the mirrored crops
    # The model code averages with the mirrored output flipped back (left/right swapped, mirrored)...
    flip_indices = torch.from_numpy(pose_meta().flip_indices)
    averaged = (heatmaps + raw_flipped[:, flip_indices].flip(-1)) / 2
    # ...which the reference does with its flip_back and the meta's flip pairs.
    flipped_back = flip_back(raw_flipped, torch.from_numpy(pose_meta().flip_pairs))
    _assert_pose_parity(averaged, BOXES, *_reference_pose(heatmaps, BOXES, flipped_back))


def test_pose_decoding_where_the_log_clamp_matters_equals_the_reference():
    # Weak maps (the blurred values cross the 1e-3 floor), single-pixel spikes, a ridge along the map's
    # edge and peaks above the clamp's ceiling of 50: the paths that need the fully blurred map. (Weak
    # peaks stay off the edge: there a half-clamped neighbourhood sends the Newton step pixels away, an
    # ill-conditioned answer that float32 rounding alone moves by 1e-3 heatmap px, in the reference too.)
    generator = torch.Generator().manual_seed(2)
    heatmaps = _heatmaps(3, generator, noise=0.0, margin=2.0)
    heatmaps[0] *= 4e-3
    heatmaps[1] = 0.0
    index = torch.arange(NUM_KEYPOINTS)
    heatmaps[1, index, (index * 7) % HEATMAP_SIZE[0], (index * 5) % HEATMAP_SIZE[1]] = 0.9
    heatmaps[2, :10] *= 80.0
    heatmaps[2, 10:20, :, 0] = 0.8  # ridge along the left edge
    _assert_pose_parity(heatmaps, BOXES[:3], *_reference_pose(heatmaps, BOXES[:3]))


@pytest.mark.parametrize(("shape", "kernel_size"), [((64, 48), 11), ((9, 7), 11), ((2, 3), 5), ((33, 20), 3)])
def test_blurred_map_maxima_agree_between_backends(shape: tuple[int, int], kernel_size: int):
    # OpenCV (the CPU path) stacks maps with zero rows between them; the banded products (the GPU path)
    # blur each map alone. Both must see zero padding at every map's edges: bright edges and corners
    # make a wrong padding visible in the maximum, and maps smaller than the kernel test its reach.
    generator = torch.Generator().manual_seed(5)
    maps = torch.rand(40, *shape, generator=generator) - 0.5
    maps[:10, 0, :] += 2.0  # bright top rows: the row above must be zero, not the previous map
    maps[10:20, -1, -1] += 5.0  # bright bottom-right corners
    kernel = gaussian_kernel_1d(kernel_size)
    dense = torch.stack([_zero_padded_blur(m, kernel).amax() for m in maps])
    for backend in ("opencv", "torch"):
        torch.testing.assert_close(full_blur_max(maps, kernel, backend=backend), dense, rtol=1e-5, atol=1e-6)
    which = torch.tensor([39, 0, 17, 17, 3])
    for backend in ("opencv", "torch"):
        picked = full_blur_max(maps, kernel, which, backend)
        torch.testing.assert_close(picked, dense[which], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="blur backend"):
        full_blur_max(maps, kernel, backend="fft")


def _zero_padded_blur(image: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """The separable blur with zero padding, as a plain 2-D convolution."""
    radius = kernel.shape[0] // 2
    weight = (kernel[:, None] * kernel[None, :])[None, None]
    return torch.nn.functional.conv2d(image[None, None], weight, padding=radius)[0, 0]


def test_pose_decoding_maps_heatmap_corners_to_crop_window_corners():
    # A peak exactly on a heatmap pixel, symmetric around it: DARK leaves it; UDP maps heatmap pixel 0
    # to the crop window's first edge and pixel w - 1 to its last.
    h, w = HEATMAP_SIZE
    peaks = [(12, 12), (w - 13, h - 13)]  # far enough from the edges to stay symmetric
    heatmaps = torch.zeros(1, 2, h, w)
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    for k, (x, y) in enumerate(peaks):
        heatmaps[0, k] = torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 8)
    box = torch.tensor([[100.0, 200.0, 292.0, 456.0]])  # 192 x 256 -> window 240 x 320 from (76, 168)
    keypoints, scores = decode_pose_heatmaps(heatmaps, crop_to_frame_affine(box, INPUT_SIZE), INPUT_SIZE)
    expected = torch.tensor([[76 + x * 240 / (w - 1), 168 + y * 320 / (h - 1)] for x, y in peaks])
    torch.testing.assert_close(keypoints[0], expected, atol=1e-3, rtol=0)
    torch.testing.assert_close(scores[0], torch.ones(2))


def test_pose_decoding_of_degenerate_maps_and_empty_batches():
    h, w = HEATMAP_SIZE
    heatmaps = torch.zeros(1, 4, h, w)
    heatmaps[0, 1] = -0.3  # all negative
    heatmaps[0, 2, 10, 10] = float("nan")
    heatmaps[0, 3, 5, 7] = 0.5
    affine = crop_to_frame_affine(torch.tensor([[0.0, 0.0, 47.0, 63.0]]), HEATMAP_SIZE)  # 1 crop px = 1.25 px
    keypoints, scores = decode_pose_heatmaps(heatmaps, affine, HEATMAP_SIZE)
    assert torch.isfinite(keypoints).all() and torch.isfinite(scores).all()
    assert scores[0].tolist() == [0.0, pytest.approx(-0.3), 0.0, 0.5]
    not_found = affine[0, :, :2] @ torch.tensor([-1.0, -1.0]) + affine[0, :, 2]
    for k in range(3):
        torch.testing.assert_close(keypoints[0, k], not_found)
    torch.testing.assert_close(keypoints[0, 3], affine[0, :, :2] @ torch.tensor([7.0, 5.0]) + affine[0, :, 2])

    keypoints, scores = decode_pose_heatmaps(torch.zeros(0, 308, h, w), torch.zeros(0, 2, 3), INPUT_SIZE)
    assert keypoints.shape == (0, 308, 2) and scores.shape == (0, 308)
    with pytest.raises(ValueError, match="crop_to_frame"):
        decode_pose_heatmaps(torch.zeros(2, 3, h, w), torch.zeros(1, 2, 3), INPUT_SIZE)
    with pytest.raises(ValueError, match="heatmaps"):
        decode_pose_heatmaps(torch.zeros(3, h, w), torch.zeros(3, 2, 3), INPUT_SIZE)
    with pytest.raises(ValueError, match="kernel"):
        decode_pose_heatmaps(torch.rand(1, 2, h, w), torch.zeros(1, 2, 3), INPUT_SIZE, blur_kernel_size=4)


def test_full_frame_segmentation_equals_the_reference():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 29, 64, 48, generator=generator)
    sizes = [(90, 160), (200, 120)]
    processor = Sapiens2ImageProcessor(size={"height": 64, "width": 48})
    reference = processor.post_process_semantic_segmentation(
        SimpleNamespace(logits=logits), target_sizes=sizes, return_segmentation_scores=True
    )
    for i, size in enumerate(sizes):
        labels, probs = segment_full_frame(logits[i], size)
        assert labels.shape == size and labels.dtype == torch.int64
        torch.testing.assert_close(labels, reference[i].segmentation, rtol=0, atol=0)
        torch.testing.assert_close(probs, reference[i].segmentation_scores.softmax(dim=0))
        torch.testing.assert_close(probs.sum(dim=0), torch.ones(size))
        assert segment_full_frame(logits[i], size, return_probs=False)[1] is None
    with pytest.raises(ValueError, match="one frame"):
        segment_full_frame(logits, sizes[0])


def _crop_logits_from_label_map(label_map: torch.Tensor, affine: torch.Tensor, size, num_classes: int):
    """Logits of a crop that sees ``label_map`` through ``affine`` (nearest frame pixel), confident."""
    h, w = size
    ys, xs = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    frame_x = (affine[0, 0] * xs + affine[0, 2]).round().long()
    frame_y = (affine[1, 1] * ys + affine[1, 2]).round().long()
    inside = (frame_x >= 0) & (frame_x < label_map.shape[1]) & (frame_y >= 0) & (frame_y < label_map.shape[0])
    labels = torch.where(inside, label_map[frame_y.clamp(0, label_map.shape[0] - 1),
                                           frame_x.clamp(0, label_map.shape[1] - 1)], 0)
    return 8.0 * torch.nn.functional.one_hot(labels, num_classes).permute(2, 0, 1).float()


def test_person_segmentation_pasted_back_reproduces_the_frame_labels():
    num_classes = len(seg_meta().classes)
    frame_hw = (240, 320)
    label_map = torch.zeros(frame_hw, dtype=torch.long)
    label_map[40:200, 50:110] = 3  # person A's body
    label_map[60:90, 60:100] = 4  # A's hair
    label_map[100:230, 200:280] = 13  # person B
    boxes = torch.tensor([[50.0, 40.0, 110.0, 200.0], [200.0, 100.0, 280.0, 230.0]])
    affine = crop_to_frame_affine(boxes, (128, 96))
    logits = torch.stack([_crop_logits_from_label_map(label_map, a, (128, 96), num_classes) for a in affine])
    labels, masks, probs = paste_person_segmentation(logits, affine, frame_hw)
    assert labels.shape == frame_hw and masks.shape == (2, *frame_hw)
    assert probs.shape == (num_classes, *frame_hw)
    # Away from class boundaries (bilinear blending of nearest-sampled logits) the labels come back.
    edges = torch.zeros(frame_hw, dtype=torch.bool)
    edges[1:] |= label_map[1:] != label_map[:-1]
    edges[:, 1:] |= label_map[:, 1:] != label_map[:, :-1]
    edges = torch.nn.functional.max_pool2d(edges[None].float(), 5, 1, 2)[0].bool()
    assert (labels[~edges] == label_map[~edges]).all()
    assert (masks[0] & masks[1]).sum() == 0
    assert (masks[0] == ((labels != 0) & (torch.arange(320) < 160))).float().mean() > 0.99
    torch.testing.assert_close(probs.sum(dim=0), torch.ones(frame_hw))
    # Pixels no crop covers are background with certainty.
    assert labels[0:5, 0:5].eq(0).all() and probs[0, 0:5, 0:5].eq(1).all()


def test_overlapping_persons_are_resolved_by_foreground_probability():
    num_classes = 29
    frame_hw = (100, 100)
    boxes = torch.tensor([[10.0, 10.0, 60.0, 60.0], [40.0, 40.0, 90.0, 90.0]])
    affine = crop_to_frame_affine(boxes, (32, 32))
    logits = torch.zeros(2, num_classes, 32, 32)
    logits[0, 0], logits[0, 5] = 0.0, 3.0  # A: class 5, foreground ~0.95
    logits[1, 0], logits[1, 7] = 0.0, 1.0  # B: class 7, foreground ~0.73
    labels, masks, _ = paste_person_segmentation(logits, affine, frame_hw)
    assert labels[50, 50] == 5 and masks[0, 50, 50] and not masks[1, 50, 50]
    assert labels[80, 80] == 7 and masks[1, 80, 80]
    assert labels[5, 95] == 0 and not masks[:, 5, 95].any()
    # A person entirely outside the frame changes nothing.
    outside = crop_to_frame_affine(torch.tensor([[500.0, 500.0, 540.0, 540.0]]), (32, 32))
    labels2, masks2, _ = paste_person_segmentation(
        torch.cat([logits, logits[:1]]), torch.cat([affine, outside]), frame_hw
    )
    torch.testing.assert_close(labels2, labels)
    assert not masks2[2].any()
    empty_labels, empty_masks, _ = paste_person_segmentation(logits[:0], affine[:0], frame_hw)
    assert empty_labels.eq(0).all() and empty_masks.shape == (0, *frame_hw)


def test_normals_and_pointmaps_equal_the_reference():
    generator = torch.Generator().manual_seed(4)
    processor = Sapiens2ImageProcessor(size={"height": 64, "width": 48}, do_pad=True)
    normals = torch.randn(2, 3, 64, 48, generator=generator)
    pointmaps = torch.randn(2, 3, 64, 48, generator=generator)
    scales = torch.rand(2, 1, generator=generator) + 0.5
    cases = [
        dict(source_sizes=[(90, 160), (200, 120)]),
        dict(source_sizes=[(90, 160), (90, 160)], target_sizes=[(45, 80), (45, 80)]),
        dict(),
    ]
    for kwargs in cases:
        reference = processor.post_process_normal_estimation(SimpleNamespace(normals=normals), **kwargs)
        ours = postprocess_normals(normals, **kwargs)
        for mine, theirs in zip(ours, reference, strict=True):
            torch.testing.assert_close(mine, theirs["normals"])
        reference = processor.post_process_pointmap_estimation(
            SimpleNamespace(pointmaps=pointmaps, scales=scales), **kwargs
        )
        ours = postprocess_pointmaps(pointmaps, scales, **kwargs)
        for mine, theirs in zip(ours, reference, strict=True):
            torch.testing.assert_close(mine, theirs["pointmap"])
    unit = postprocess_normals(normals, source_sizes=[(64, 48), (64, 48)])
    torch.testing.assert_close(unit[0].norm(dim=0), torch.ones(64, 48))
    with pytest.raises(ValueError, match="source_sizes"):
        postprocess_normals(normals, source_sizes=[(64, 48)])


@pytest.mark.parametrize("with_size", [False, True])
def test_matting_equals_the_reference(with_size):
    generator = torch.Generator().manual_seed(5)
    foregrounds = torch.rand(2, 3, 64, 48, generator=generator)
    alphas = torch.rand(2, 1, 64, 48, generator=generator)
    background = torch.from_numpy((np.random.default_rng(0).random((3, 40, 30)) * 255).astype(np.uint8))
    processor = Sapiens2ImageProcessor(size={"height": 64, "width": 48})
    target = (90, 70) if with_size else None
    reference = processor.post_process_image_matting(
        SimpleNamespace(foregrounds=foregrounds, alphas=alphas),
        target_sizes=[target, target] if with_size else None,
        backgrounds=background,
    )
    ours = postprocess_matting(foregrounds, alphas, target_size=target, backgrounds=background)
    for i in range(2):
        torch.testing.assert_close(ours["alpha"][i], reference[i]["alpha"])
        torch.testing.assert_close(ours["foreground"][i], reference[i]["foreground"])
        difference = (ours["composite"][i].int() - reference[i]["composite"].int()).abs()
        assert difference.max() <= 1 and difference.float().mean() < 1e-3
    assert postprocess_matting(foregrounds, alphas)["composite"] is None
    with pytest.raises(ValueError, match="alphas"):
        postprocess_matting(foregrounds, alphas[:1])
