"""Whole frames through our preparation, model and post-processing against transformers' processor, model
and ``post_process_*`` on the same checkpoint, its preprocessor_config.json included."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
from transformers import (  # noqa: E402
    Sapiens2ForImageMatting,
    Sapiens2ForNormalEstimation,
    Sapiens2ForPointmapEstimation,
    Sapiens2ForSemanticSegmentation,
    Sapiens2ImageProcessor,
)

from models import Sapiens2Config, build_sapiens2, load_sapiens2, save_sapiens2  # noqa: E402
from models.postprocess import (  # noqa: E402
    postprocess_matting,
    postprocess_normals,
    postprocess_pointmaps,
    segment_full_frame,
)
from models.preprocess import prepare_frames  # noqa: E402

transformers.logging.set_verbosity_error()
torch.set_num_threads(2)

HF_CLASSES = {
    "seg": Sapiens2ForSemanticSegmentation,
    "normal": Sapiens2ForNormalEstimation,
    "pointmap": Sapiens2ForPointmapEstimation,
    "matting": Sapiens2ForImageMatting,
}
# As the release configures full frames: normals and pointmaps padded, segmentation and matting stretched;
# plus a bicubic, differently normalised variant of each.
PADDED = ("normal", "pointmap")
PROCESSORS = {
    "release": lambda task: dict(do_pad=task in PADDED),
    "bicubic_own_normalisation": lambda task: dict(
        do_pad=task in PADDED, resample=3, image_mean=[0.5, 0.5, 0.5], image_std=[0.25, 0.3, 0.35]
    ),
}


def frames() -> list[torch.Tensor]:
    """Wider, taller and smaller than the 64x48 input; textured so resampling differences would show."""
    rng = np.random.default_rng(7)
    coarse = (rng.random((12, 20, 3)) * 255).astype(np.uint8)
    smooth = cv2.resize(coarse, (160, 90), interpolation=cv2.INTER_CUBIC)
    return [
        torch.from_numpy(smooth),
        torch.from_numpy((rng.random((200, 120, 3)) * 255).astype(np.uint8)),
        torch.from_numpy((rng.random((40, 30, 3)) * 255).astype(np.uint8)),
    ]


@pytest.fixture
def checkpoint(tmp_path, request):
    task, variant = request.param
    torch.manual_seed(3)
    model = build_sapiens2(Sapiens2Config.from_arch("tiny", task=task, image_size=(64, 48)))
    with torch.no_grad():  # norms and layer scales off their initial ones, so a misplaced one shows
        generator = torch.Generator().manual_seed(4)
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    save_sapiens2(model, tmp_path)
    processor = Sapiens2ImageProcessor(size={"height": 64, "width": 48}, **PROCESSORS[variant](task))
    processor.save_pretrained(tmp_path)
    return task, tmp_path


CASES = [(task, variant) for task in HF_CLASSES for variant in PROCESSORS]


@pytest.mark.parametrize("checkpoint", CASES, indirect=True, ids=[f"{t}-{v}" for t, v in CASES])
def test_full_frames_equal_transformers_processor_model_and_post_processing(checkpoint):
    task, directory = checkpoint
    images = frames()
    sizes = [tuple(image.shape[:2]) for image in images]
    processor = Sapiens2ImageProcessor.from_pretrained(directory)
    theirs = HF_CLASSES[task].from_pretrained(directory).eval()
    ours = load_sapiens2(directory)
    with torch.no_grad():
        inputs = processor([image.permute(2, 0, 1) for image in images], return_tensors="pt")
        reference = theirs(inputs["pixel_values"])
        out = ours(prepare_frames(images, ours.preprocessing))

    if task == "seg":
        expected = processor.post_process_semantic_segmentation(
            reference, target_sizes=sizes, return_segmentation_scores=True
        )
        for i, size in enumerate(sizes):
            labels, probs = segment_full_frame(out.logits[i], size)
            scores = expected[i].segmentation_scores.softmax(dim=0)
            torch.testing.assert_close(probs, scores, atol=1e-4, rtol=0)
            # Labels may only differ where two classes tie within the model's float tolerance.
            assert (labels == expected[i].segmentation).float().mean() > 0.999
    elif task == "normal":
        expected = processor.post_process_normal_estimation(reference, source_sizes=sizes)
        ours_maps = postprocess_normals(out.normals, source_sizes=sizes)
        for mine, theirs_item in zip(ours_maps, expected, strict=True):
            torch.testing.assert_close(mine, theirs_item["normals"], atol=1e-4, rtol=1e-4)
    elif task == "pointmap":
        expected = processor.post_process_pointmap_estimation(reference, source_sizes=sizes)
        ours_maps = postprocess_pointmaps(out.pointmaps, out.scales, source_sizes=sizes)
        for mine, theirs_item in zip(ours_maps, expected, strict=True):
            torch.testing.assert_close(mine, theirs_item["pointmap"], atol=1e-4, rtol=1e-4)
    else:
        expected = processor.post_process_image_matting(reference, target_sizes=sizes)
        for i, size in enumerate(sizes):
            mine = postprocess_matting(out.foregrounds[i : i + 1], out.alphas[i : i + 1], target_size=size)
            torch.testing.assert_close(mine["alpha"][0], expected[i]["alpha"], atol=1e-4, rtol=0)
            torch.testing.assert_close(mine["foreground"][0], expected[i]["foreground"], atol=1e-4, rtol=0)
