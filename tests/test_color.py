"""RGB <-> YUV conversions against swscale: the fast paths give swscale's picture, or swscale runs."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
import ultralytics
from av.video.reformatter import ColorRange, Colorspace

from stream.edges.sinks import VideoSink
from stream.edges.sources import I420, open_source, probe_source
from stream.media.color import RgbDecoder, frame_to_rgb, opencv_decodes, rgb_to_i420, rgb_to_yuv420p_frame

ASSETS = Path(ultralytics.__file__).parent / "assets"


def _photo(name: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """An ultralytics sample photo as RGB, resized to ``size`` (W, H) or cut to even sides."""
    image = cv2.cvtColor(cv2.imread(str(ASSETS / name)), cv2.COLOR_BGR2RGB)
    if size is not None:
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    height, width = image.shape[:2]
    return np.ascontiguousarray(image[: height - height % 2, : width - width % 2])


def _swscale_i420(image: np.ndarray) -> np.ndarray:
    """What the encoder did before: PyAV's default rgb24 -> yuv420p conversion."""
    return av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p").to_ndarray()


def _swscale_rgb(i420: np.ndarray) -> np.ndarray:
    return av.VideoFrame.from_ndarray(i420, format="yuv420p").to_ndarray(format="rgb24")


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / mse))


@pytest.mark.parametrize("name", ["bus.jpg", "zidane.jpg"])
def test_encoder_conversion_gives_swscales_picture_on_photos(name):
    image = _photo(name)
    height = image.shape[0]
    fast, reference = rgb_to_i420(image).astype(int), _swscale_i420(image).astype(int)
    luma, chroma = np.abs(fast[:height] - reference[:height]), np.abs(fast[height:] - reference[height:])
    # Same BT.601 limited-range luma up to rounding; chroma from the same 2x2 neighbourhood.
    assert luma.max() <= 1 and luma.mean() < 0.05
    assert chroma.max() <= 6 and chroma.mean() < 0.4
    assert 16 <= fast[:height].min() and fast[:height].max() <= 235  # limited range
    # Decoded back by swscale, both are the same picture, and as close to the photo as swscale's own.
    fast_rgb, reference_rgb = _swscale_rgb(fast.astype(np.uint8)), _swscale_rgb(reference.astype(np.uint8))
    assert _psnr(fast_rgb, reference_rgb) > 44
    assert _psnr(fast_rgb, image) > _psnr(reference_rgb, image) - 0.3


def test_encoder_frame_is_untagged_yuv420p_for_every_even_size():
    image = _photo("zidane.jpg")
    for height, width in [(720, 1280), (242, 322), (2, 2)]:  # 242: a height that is not a multiple of 4
        part = np.ascontiguousarray(image[:height, :width])
        frame = rgb_to_yuv420p_frame(part)
        assert (frame.format.name, frame.width, frame.height) == ("yuv420p", width, height)
        assert frame.colorspace == 2 and frame.color_range == int(ColorRange.UNSPECIFIED)
        np.testing.assert_array_equal(frame.to_ndarray(), rgb_to_i420(part))


def test_encoder_conversion_rejects_what_yuv420p_cannot_hold():
    with pytest.raises(ValueError, match="even sides"):
        rgb_to_i420(np.zeros((5, 4, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8 RGB"):
        rgb_to_i420(np.zeros((4, 4, 3), np.float32))


def _encode(path: Path, image: np.ndarray, codec: str, **tags) -> None:
    """A 3-frame clip of ``image`` whose YUV is made (and tagged) by swscale with ``tags``."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=30)
        stream.height, stream.width = image.shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": "0", "preset": "ultrafast"} if codec == "libx264" else {}
        if "colorspace" in tags:
            stream.codec_context.colorspace = tags["colorspace"]
        if "color_range" in tags:
            stream.codec_context.color_range = tags["color_range"]
        source = av.VideoFrame.from_ndarray(image, format="rgb24")
        for i in range(3):
            frame = source.reformat(
                format="yuv420p",
                dst_colorspace=tags.get("sws_space"),
                dst_color_range=tags.get("color_range"),
            )
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


def _decode_all(path: Path) -> tuple[list[np.ndarray], list[np.ndarray], list[bool]]:
    """Frames through the sources' decoder, through swscale, and whether OpenCV converted them."""
    with av.open(str(path)) as container:
        frames = list(container.decode(video=0))
        reference = [frame.to_ndarray(format="rgb24") for frame in frames]
        fast = [opencv_decodes(frame) for frame in frames]
    with open_source(probe_source(str(path))) as decoded:
        decoded = list(decoded)
    # Planes for the sinks come along exactly when they are BT.601 limited range, like the fast path.
    assert [I420 in frame.extra for frame in decoded] == fast
    return [frame.image for frame in decoded], reference, fast


def test_untagged_h264_decodes_like_swscale_and_closer_to_the_photo(tmp_path):
    image = _photo("bus.jpg", (480, 640))
    _encode(tmp_path / "bt601.mp4", image, "libx264")
    ours, reference, fast = _decode_all(tmp_path / "bt601.mp4")
    assert all(fast) and len(ours) == 3
    difference = np.abs(ours[0].astype(int) - reference[0].astype(int))
    assert difference.max() <= 4 and difference.mean() < 1.5
    # swscale's fast YUV -> RGB path rounds down; OpenCV's is at least as faithful.
    assert _psnr(ours[0], image) >= _psnr(reference[0], image) - 0.2


def _patches() -> np.ndarray:
    """Saturated and mid colours in flat 16x16 blocks (flat, so chroma subsampling does not blur them)."""
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (20, 200, 90), (230, 120, 40)]
    image = np.zeros((32, 16 * len(colors), 3), np.uint8)
    for i, color in enumerate(colors):
        image[:, 16 * i : 16 * (i + 1)] = color
    return image


@pytest.mark.parametrize(
    "tags",
    [
        {"colorspace": 1, "sws_space": Colorspace.ITU709, "color_range": int(ColorRange.MPEG)},
        {"color_range": int(ColorRange.JPEG)},
    ],
    ids=["bt709", "full-range"],
)
def test_bt709_and_full_range_sources_decode_to_their_colours(tmp_path, tags):
    image = _patches()
    _encode(tmp_path / "tagged.mp4", image, "libx264", **tags)
    ours, reference, fast = _decode_all(tmp_path / "tagged.mp4")
    assert not any(fast)  # OpenCV's BT.601 limited-range formula would be wrong here
    np.testing.assert_array_equal(ours[0], reference[0])
    centres = ours[0][8::16, 8::16].astype(int)
    assert np.abs(centres - image[8::16, 8::16].astype(int)).max() <= 3


def test_odd_sized_video_decodes_through_swscale(tmp_path):
    image = _photo("zidane.jpg", (161, 91))
    path = tmp_path / "odd.mkv"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("ffv1", rate=30)
        stream.width, stream.height, stream.pix_fmt = 161, 91, "yuv420p"
        frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    ours, reference, fast = _decode_all(path)
    assert fast == [False] and ours[0].shape == (91, 161, 3)
    np.testing.assert_array_equal(ours[0], reference[0])


@pytest.mark.parametrize("tagged", [False, True], ids=["opencv", "swscale"])
def test_decoding_into_a_given_buffer_writes_there(tagged):
    image = _patches()
    frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(
        format="yuv420p", dst_color_range=ColorRange.JPEG if tagged else None
    )
    assert opencv_decodes(frame) is not tagged
    buffer = np.zeros_like(image)
    out = RgbDecoder()(frame, buffer)
    assert out is buffer
    np.testing.assert_array_equal(buffer, frame_to_rgb(frame))
    with pytest.raises(ValueError, match="does not fit"):
        RgbDecoder()(frame, np.zeros((8, 8, 3), np.uint8))


def _decode_file(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def _swscale_encode(path: Path, image: np.ndarray, codec: str, options: dict[str, str]) -> None:
    """The encode as it was before the fast path: rgb24 frames, converted by the encoder (swscale)."""
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=30)
        stream.height, stream.width = image.shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.options = options
        for i in range(3):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


@pytest.mark.parametrize("codec", ["libx264", "mpeg4"])
def test_video_sink_pictures_are_as_faithful_as_swscales_with_each_codec(tmp_path, codec):
    for width, height in [(320, 240), (161, 91)]:  # 161x91 is padded to 162x92 by the sink
        image = _photo("bus.jpg", (width, height))
        padded = cv2.copyMakeBorder(image, 0, height % 2, 0, width % 2, cv2.BORDER_REPLICATE)
        path = tmp_path / f"{codec}_{width}.mp4"
        with VideoSink(path, width, height, Fraction(30), codec=codec, crf=0) as sink:
            for i in range(3):
                sink.write(image, i)
        ours = _decode_file(path)
        assert len(ours) == 3 and ours[0].shape == padded.shape
        if codec == "libx264":  # crf 0 is lossless: exactly the picture converted by rgb_to_i420
            np.testing.assert_array_equal(ours[-1], _swscale_rgb(rgb_to_i420(padded)))
        _swscale_encode(tmp_path / "reference.mp4", padded, codec, {"crf": "0"} if codec == "libx264" else {})
        reference = _decode_file(tmp_path / "reference.mp4")
        assert _psnr(ours[-1], padded) > _psnr(reference[-1], padded) - 0.5
