"""Person crops: geometry and pixels against transformers' Sapiens2 processor and cv2's resamplers."""

import cv2
import numpy as np
import pytest
import torch
from transformers.models.sapiens2.image_processing_sapiens2 import (
    Sapiens2ImageProcessor,
    boxes_to_crop_params,
    crop_and_resize,
)

from models.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    crop_and_warp,
    crop_to_frame_affine,
    prepare_frames,
    prepare_full_frame,
    valid_box_mask,
)
from models.processor_config import Preprocessing, read_preprocessing

torch.set_num_threads(2)
MEAN = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) * 255
STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) * 255


def _smooth_frame(height: int, width: int, seed: int = 0, cell: int = 8) -> torch.Tensor:
    """A textured but band-limited RGB frame (random coarse grid of ``cell`` pixels, cubic-upsampled)."""
    shape = (height // cell + 1, width // cell + 1, 3)
    coarse = (np.random.default_rng(seed).random(shape) * 255).astype(np.uint8)
    return torch.from_numpy(cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC))


def _noise_frame(height: int, width: int, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy((np.random.default_rng(seed).random((height, width, 3)) * 255).astype(np.uint8))


def _pixels(batch) -> torch.Tensor:
    """Undo the normalisation: crops in 0..255."""
    return batch.pixel_values * STD + MEAN


def _xyxy_to_cxcywh(boxes: torch.Tensor) -> torch.Tensor:
    return torch.cat([(boxes[:, :2] + boxes[:, 2:]) / 2, boxes[:, 2:] - boxes[:, :2]], dim=1)


BOXES = torch.tensor(
    [
        [100.0, 50.0, 300.0, 450.0],  # shrinks about 2x at 256x192
        [10.0, 10.0, 40.0, 60.0],  # tiny: enlarges
        [560.0, 400.0, 700.0, 520.0],  # past the bottom-right corner
        [-30.0, -20.0, 60.0, 200.0],  # past the top-left corner
    ]
)


def test_crop_window_and_affine_match_the_reference_geometry():
    input_size = (256, 192)
    centre, window = boxes_to_crop_params(_xyxy_to_cxcywh(BOXES), output_size=input_size, padding=1.25)
    affine = crop_to_frame_affine(BOXES, input_size, padding=1.25)
    torch.testing.assert_close(affine[:, 0, 0], window[:, 0] / 191)
    torch.testing.assert_close(affine[:, 1, 1], window[:, 1] / 255)
    # Crop corners land on the window corners.
    torch.testing.assert_close(affine[:, :, 2], centre - window / 2)
    bottom_right = affine[:, :, :2] @ torch.tensor([191.0, 255.0]) + affine[:, :, 2]
    torch.testing.assert_close(bottom_right, centre + window / 2)
    assert (affine[:, 0, 1] == 0).all() and (affine[:, 1, 0] == 0).all()


BACKENDS = ["torch", "opencv"]
# Largest difference from an exact float computation: float rounding for torch; for opencv the crop's
# rounding to uint8 (0.5) plus cv2's fixed-point weights.
TOLERANCE = {"torch": 0.1, "opencv": 0.52}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("input_size", [(256, 192), (64, 48)])
def test_single_tap_mode_equals_transformers_crop_and_resize(input_size, backend):
    frame = _noise_frame(480, 640)
    index = torch.zeros(4, dtype=torch.long)
    batch = crop_and_warp([frame], BOXES, index, input_size, antialias=False, backend=backend)
    reference = crop_and_resize(frame.permute(2, 0, 1).float(), _xyxy_to_cxcywh(BOXES), input_size)
    # Same taps; only the clamp to the uint8 range (cv2's saturation) differs from the reference, and
    # float rounding of tap positions (1e-5 px) on a noise frame whose neighbours differ by up to 255.
    difference = (_pixels(batch) - reference.clamp(0, 255)).abs()
    assert difference.max() < TOLERANCE[backend]
    assert difference.mean() < (1e-3 if backend == "torch" else 0.3)


@pytest.mark.parametrize("backend", BACKENDS)
def test_exact_where_both_are_exact_scale_one_integer_offsets(backend):
    # Frame sides of 2^k + 1 px keep grid_sample's normalised coordinates exact, so taps hit pixel centres.
    frame = _noise_frame(129, 129, seed=1)
    input_size = (41, 41)  # window = box * 1.25 = 40 = size - 1: one crop pixel per frame pixel
    boxes = torch.tensor([[30.0, 20.0, 62.0, 52.0], [-6.0, 90.0, 26.0, 122.0]])
    batch = crop_and_warp([frame], boxes, torch.zeros(2, dtype=torch.long), input_size, backend=backend)
    reference = crop_and_resize(frame.permute(2, 0, 1).float(), _xyxy_to_cxcywh(boxes), input_size)
    ours = _pixels(batch)
    # Both are the frame itself, shifted, with zeros beyond the frame (up to the normalisation's rounding).
    expected = torch.zeros(2, 3, 41, 41)
    expected[0] = frame[16:57, 26:67].permute(2, 0, 1).float()
    expected[1, :, :, 10:] = frame[86:127, 0:31].permute(2, 0, 1).float()
    torch.testing.assert_close(reference, expected, rtol=0, atol=0)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-4)
    torch.testing.assert_close(batch.pixel_values, (expected - MEAN) / STD, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_enlarging_matches_cv2_warp_affine_cubic(backend):
    frame = _smooth_frame(480, 640)
    boxes = BOXES[1:3]
    batch = crop_and_warp([frame], boxes, torch.zeros(2, dtype=torch.long), (256, 192), backend=backend)
    for i in range(2):
        affine = np.vstack([batch.crop_to_frame[i].double().numpy(), [0, 0, 1]])
        expected = cv2.warpAffine(
            frame.numpy(), np.linalg.inv(affine)[:2], (192, 256), flags=cv2.INTER_CUBIC,
            borderMode=cv2.BORDER_CONSTANT, borderValue=0,
        )
        difference = (_pixels(batch)[i] - torch.from_numpy(expected).permute(2, 0, 1).float()).abs()
        assert difference.max() <= 0.52  # cv2 rounds to uint8; its cubic weights are fixed-point


@pytest.mark.parametrize("backend", BACKENDS)
def test_antialiased_shrink_is_an_area_average_like_cv2_inter_area(backend):
    # A 4x shrink aligned on pixel blocks: crop pixel c averages frame pixels 4c .. 4c + 3 in each axis.
    frame = _noise_frame(128, 128, seed=2)
    boxes = torch.tensor([[1.5, 1.5, 125.5, 125.5]])
    index = torch.zeros(1, dtype=torch.long)
    batch = crop_and_warp([frame], boxes, index, (32, 32), padding=1.0, backend=backend)
    expected = torch.from_numpy(cv2.resize(frame.numpy(), (32, 32), interpolation=cv2.INTER_AREA))
    expected = expected.permute(2, 0, 1).float()
    assert (_pixels(batch)[0] - expected).abs().max() <= (0.51 if backend == "torch" else 1.01)
    # The single tap (what cv2.warpAffine does even with INTER_AREA) aliases: far from the area average.
    aliased = crop_and_warp([frame], boxes, torch.zeros(1, dtype=torch.long), (32, 32), 1.0, antialias=False)
    assert (_pixels(aliased)[0] - expected).abs().mean() > 10


@pytest.mark.parametrize("backend", BACKENDS)
def test_antialiased_shrink_stays_close_to_the_reference_on_smooth_images(backend):
    frame = _smooth_frame(960, 1280, cell=32)
    boxes = torch.tensor([[200.0, 100.0, 600.0, 900.0]])  # ~3.9x shrink to 256x192
    batch = crop_and_warp([frame], boxes, torch.zeros(1, dtype=torch.long), (256, 192), backend=backend)
    reference = crop_and_resize(frame.permute(2, 0, 1).float(), _xyxy_to_cxcywh(boxes), (256, 192))
    difference = (_pixels(batch) - reference).abs()
    # Inside the frame the content is smooth at the scale of the filter; the edge rows blend with the border.
    assert difference[..., 20:-20, 20:-20].mean() < 2.0
    assert difference[..., 20:-20, 20:-20].max() < 25.0


def _natural_frame() -> torch.Tensor:
    from pathlib import Path

    import ultralytics

    path = Path(ultralytics.__file__).parent / "assets" / "bus.jpg"
    return torch.from_numpy(cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB))


@pytest.mark.parametrize("antialias", [True, False])
def test_the_two_backends_agree_on_a_natural_image(antialias):
    frame = _natural_frame()  # 1080x810
    boxes = torch.tensor(
        [
            [50.0, 230.0, 250.0, 900.0],  # a person: about 3x shrink at 256x192
            [220.0, 400.0, 345.0, 860.0],  # about 2x
            [660.0, 380.0, 700.0, 440.0],  # enlarged
            [700.0, 600.0, 900.0, 1200.0],  # past the bottom-right corner
        ]
    )
    index = torch.zeros(4, dtype=torch.long)
    fast = crop_and_warp([frame], boxes, index, (256, 192), antialias=antialias, backend="opencv")
    exact = crop_and_warp([frame], boxes, index, (256, 192), antialias=antialias, backend="torch")
    torch.testing.assert_close(fast.crop_to_frame, exact.crop_to_frame, rtol=0, atol=0)
    difference = (_pixels(fast) - _pixels(exact)).abs()
    # Within about one grey level: the uint8 rounding of the crop and cv2's fixed-point taps.
    assert difference.max() <= 1.1
    assert difference.mean() < 0.3
    auto = crop_and_warp([frame], boxes, index, (256, 192), antialias=antialias)
    torch.testing.assert_close(auto.pixel_values, fast.pixel_values, rtol=0, atol=0)  # CPU frames: opencv


def test_unknown_backend_is_refused():
    frame = _noise_frame(64, 64)
    with pytest.raises(ValueError, match="backend must be one of"):
        crop_and_warp([frame], torch.tensor([[0.0, 0, 5, 5]]), torch.zeros(1), (64, 48), backend="pil")


def test_boxes_of_several_frames_of_different_sizes_are_warped_from_their_own_frame():
    frames = [_smooth_frame(240, 320, seed=3), _smooth_frame(480, 640, seed=4)]
    boxes = torch.tensor([[10.0, 10.0, 200.0, 230.0], [300.0, 100.0, 500.0, 470.0], [20.0, 30.0, 60.0, 90.0]])
    frame_index = torch.tensor([1, 1, 0])
    batch = crop_and_warp(frames, boxes, frame_index, (64, 48))
    assert batch.pixel_values.shape == (3, 3, 64, 48)
    assert batch.pixel_values.dtype == torch.float32
    assert batch.frame_index.tolist() == [1, 1, 0]
    for i in range(3):
        single = crop_and_warp([frames[int(frame_index[i])]], boxes[i : i + 1], torch.zeros(1), (64, 48))
        torch.testing.assert_close(batch.pixel_values[i], single.pixel_values[0])
        torch.testing.assert_close(batch.crop_to_frame[i], single.crop_to_frame[0])


def test_black_border_and_normalisation():
    frame = torch.full((100, 100, 3), 255, dtype=torch.uint8)
    boxes = torch.tensor([[80.0, 80.0, 120.0, 120.0]])  # the window reaches past the frame's corner
    batch = crop_and_warp([frame], boxes, torch.zeros(1, dtype=torch.long), (64, 64))
    white = (1 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    black = -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(batch.pixel_values[0, :, 2, 2], white)
    torch.testing.assert_close(batch.pixel_values[0, :, -2, -2], black)


def test_valid_box_mask_flags_every_kind_of_bad_box():
    boxes = torch.tensor(
        [
            [10.0, 10.0, 50.0, 80.0],  # fine
            [10.0, 10.0, 10.0, 80.0],  # zero width
            [50.0, 10.0, 10.0, 80.0],  # negative width
            [200.0, 10.0, 260.0, 80.0],  # right of the frame
            [-60.0, -60.0, -1.0, -1.0],  # above-left of the frame
            [float("nan"), 10.0, 50.0, 80.0],  # NaN coordinate
            [10.0, 10.0, 50.0, 80.0],  # NaN score
            [90.0, 90.0, 300.0, 300.0],  # partly outside: kept
            [10.0, 10.0, 50.0, 80.0],  # unknown frame
        ]
    )
    scores = torch.tensor([0.9, 0.9, 0.9, 0.9, 0.9, 0.9, float("nan"), 0.5, 0.9])
    frame_index = torch.tensor([0, 0, 0, 0, 0, 0, 0, 0, 3])
    mask = valid_box_mask(boxes, scores, [(100, 120)], frame_index)
    assert mask.tolist() == [True, False, False, False, False, False, False, True, False]
    assert valid_box_mask(boxes[:1], None, torch.tensor([[100, 120]]), frame_index[:1]).tolist() == [True]


@pytest.mark.parametrize(
    "box", [[10.0, 10.0, 10.0, 50.0], [300.0, 300.0, 400.0, 400.0], [float("nan"), 0.0, 5.0, 5.0]]
)
def test_crop_and_warp_refuses_bad_boxes_with_a_clear_error(box):
    frame = _noise_frame(100, 100)
    with pytest.raises(ValueError, match="box 0 .*valid_box_mask"):
        crop_and_warp([frame], torch.tensor([box]), torch.zeros(1, dtype=torch.long), (64, 48))


def test_empty_batch_and_bad_arguments():
    frame = _noise_frame(100, 100)
    empty = crop_and_warp([frame], torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), (64, 48))
    assert empty.pixel_values.shape == (0, 3, 64, 48)
    assert empty.crop_to_frame.shape == (0, 2, 3)
    assert len(empty) == 0
    with pytest.raises(ValueError, match="uint8"):
        crop_and_warp([frame.float()], torch.tensor([[0.0, 0, 5, 5]]), torch.zeros(1), (64, 48))
    with pytest.raises(ValueError, match="frame_index"):
        crop_and_warp([frame], torch.tensor([[0.0, 0, 5, 5]]), torch.zeros(2), (64, 48))
    with pytest.raises(ValueError, match="input_size"):
        crop_and_warp([frame], torch.tensor([[0.0, 0, 5, 5]]), torch.zeros(1), (1, 48))
    with pytest.raises(ValueError, match="frames is empty"):
        crop_and_warp([], torch.zeros(0, 4), torch.zeros(0), (64, 48))


@pytest.mark.parametrize("keep_aspect", [False, True])
def test_prepare_full_frame_matches_the_reference_processor(keep_aspect):
    frames = [_noise_frame(90, 160, seed=5), _smooth_frame(200, 120, seed=6)]
    ours = prepare_full_frame(frames, (64, 48), keep_aspect=keep_aspect)
    processor = Sapiens2ImageProcessor(size={"height": 64, "width": 48}, do_pad=keep_aspect)
    for i, frame in enumerate(frames):
        reference = processor(frame.permute(2, 0, 1), return_tensors="pt")["pixel_values"]
        # Same antialiased bilinear resize; torchvision's uint8 path uses fixed-point weights.
        difference = ((ours[i : i + 1] - reference) * STD).abs()
        assert difference.max() <= 1.01
        assert difference.mean() < 0.3


# Processor settings a checkpoint may carry, at a 64x48 input.
FULL_FRAME_PROCESSORS = {
    "padded_bilinear": dict(do_pad=True),
    "stretched_bilinear": dict(do_pad=False),
    "padded_bicubic": dict(do_pad=True, resample=3),
    "stretched_bicubic": dict(resample=3),
    "padded_nearest": dict(do_pad=True, resample=0),
    "own_normalisation": dict(do_pad=True, image_mean=[120.0, 110.0, 100.0], image_std=[60.0, 55.0, 50.0],
                              do_rescale=False),
    "unnormalised": dict(do_normalize=False, rescale_factor=1 / 128),
}


@pytest.mark.parametrize("variant", sorted(FULL_FRAME_PROCESSORS))
def test_prepare_frames_equals_the_processor_as_its_file_configures_it(tmp_path, variant):
    """Frames wider, taller, smaller and the size of the input, through the preparation read from the file
    the processor writes: the same pixel values, 8-bit resize rounding included."""
    processor = Sapiens2ImageProcessor(size={"height": 64, "width": 48}, **FULL_FRAME_PROCESSORS[variant])
    processor.save_pretrained(tmp_path)
    preprocessing = read_preprocessing(tmp_path, task=None)
    frames = [
        _noise_frame(90, 160, seed=1),
        _smooth_frame(200, 120, seed=2),
        _smooth_frame(30, 20, seed=3, cell=4),
        _noise_frame(33, 50, seed=4),
        _noise_frame(64, 48, seed=5),
    ]
    ours = prepare_frames(frames, preprocessing)
    scale = torch.tensor(preprocessing.scale_shift()[0]).view(3, 1, 1)
    for i, frame in enumerate(frames):
        reference = processor(frame.permute(2, 0, 1), return_tensors="pt")["pixel_values"][0]
        assert ((ours[i] - reference) / scale).abs().max() < 1e-3, f"frame {tuple(frame.shape)}"


def test_prepare_frames_refuses_resampling_it_cannot_follow():
    with pytest.raises(ValueError, match="resample 'lanczos' is not supported"):
        prepare_frames([_noise_frame(20, 20)], Preprocessing(input_size=(16, 16), resample="lanczos"))


@pytest.mark.parametrize("backend", BACKENDS)
def test_crops_take_the_checkpoints_normalisation_as_the_processor_does(tmp_path, backend):
    """The processor's box crops with its own mean, std and rescaling; single-tap crops of a smooth frame."""
    normalisation = dict(image_mean=[0.3, 0.5, 0.7], image_std=[0.1, 0.2, 0.4], rescale_factor=1 / 200)
    processor = Sapiens2ImageProcessor(size={"height": 64, "width": 48}, **normalisation)
    processor.save_pretrained(tmp_path)
    preprocessing = read_preprocessing(tmp_path, task=None)
    frame = _smooth_frame(240, 320, seed=9)
    boxes = BOXES[:2] * 0.5
    batch = crop_and_warp(
        [frame], boxes, torch.zeros(2, dtype=torch.long), (64, 48), antialias=False, backend=backend,
        normalisation=preprocessing,
    )
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
    reference = processor(frame.permute(2, 0, 1), boxes=[xywh.tolist()], return_tensors="pt")["pixel_values"]
    scale, shift = (torch.tensor(v).view(1, 3, 1, 1) for v in preprocessing.scale_shift())
    # In grey levels; the reference keeps bicubic overshoot beyond 0..255 where ours saturates.
    ours, theirs = (batch.pixel_values - shift) / scale, ((reference - shift) / scale).clamp(0, 255)
    difference = (ours - theirs).abs()
    assert difference.max() < TOLERANCE[backend] and difference.mean() < 0.3
    default = crop_and_warp([frame], boxes, torch.zeros(2, dtype=torch.long), (64, 48), antialias=False,
                            backend=backend)
    assert (default.pixel_values - batch.pixel_values).abs().max() > 1.0  # the normalisation did change
