"""RGB <-> YUV 4:2:0 conversions for decoding and encoding video, done once per frame in one place.

Every video sink encodes RGB pictures through ``rgb_to_yuv420p_frame`` and every source decodes through
``frame_to_rgb``. Both use OpenCV's fixed-point SIMD conversions where they give the picture FFmpeg's
swscale would, and swscale itself everywhere else:

- Encoding: swscale's default for rgb24 -> yuv420p is BT.601 limited range, untagged, chroma from the
  2x2 neighbourhood. ``cv2.cvtColor(..., COLOR_RGB2YUV_I420)`` computes the same luma (within one
  level) but takes each chroma sample from the top-left pixel of its 2x2 block, which aliases thin
  coloured lines such as skeleton links; so the chroma planes are recomputed from the 2x2 box average
  of the picture. At 1080p this is about 2.7x less CPU than swscale (``benchmarks/render_encode.py``).
- Decoding: OpenCV's YUV -> RGB is BT.601 limited range only, so it is used for yuv420p frames that are
  tagged BT.601 (or untagged, which swscale also reads as BT.601) and limited (or unspecified) range.
  A BT.709, BT.2020 or full-range picture, any other pixel format and any odd size go to swscale,
  which honours the frame's tags. The gain there is mostly that OpenCV writes into a caller's buffer
  (a shared-memory frame slot), which saves the copy that follows a swscale conversion; OpenCV's
  result is also a little closer to the encoded picture (swscale's fast path rounds down).
- Such BT.601 limited-range frames are exactly what the sinks encode, so their planes
  (``RgbDecoder.with_i420``) can be encoded as they are when nothing is drawn on the frame.

Measured by ``benchmarks/render_encode.py``. The chroma averaging was kept after measuring the
alternative: on frames with rendered skeletons, OpenCV's point-sampled chroma lost about 2.5 dB PSNR
against the RGB picture (and 2 dB after libx264 at crf 20), where the averaged chroma was 0.2 dB better
than swscale's.
"""

from __future__ import annotations

import av
import cv2
import numpy as np
from av.video.reformatter import ColorRange, VideoReformatter

# Full-range chroma (what OpenCV's YCrCb gives) to limited range: 128 + (c - 128) * 224 / 255.
_LIMITED_CHROMA = np.clip(np.round(128 + (np.arange(256) - 128) * 224 / 255), 0, 255).astype(np.uint8)

# Tags under which a yuv420p frame is BT.601 limited range, the only case OpenCV's conversion covers.
# ``VideoFrame.colorspace`` is FFmpeg's AVColorSpace, which PyAV exposes only as an int (stable ABI
# values): UNSPECIFIED 2, BT470BG 5, SMPTE170M 6 (both BT.601); swscale reads untagged YUV as BT.601.
_BT601_SPACES = frozenset({2, 5, 6})
_LIMITED_RANGES = frozenset({int(ColorRange.UNSPECIFIED), int(ColorRange.MPEG)})


def single_threaded_opencv() -> None:
    """Run OpenCV calls on the calling thread only, for a stage that has a process of its own
    (``stream.runtime.stage.run_worker`` sets it in every worker process).

    The decode and render stages convert (and draw on) one frame at a time, and the inference stage warps
    crops and blurs heatmaps between the model's parallel regions, while the other stages' processes,
    FFmpeg's decoder threads and x264's threads keep every core busy; OpenCV's own thread pool then only
    adds hand-offs and spinning wake-ups (``sched_yield``) that cost CPU the encoder needs.
    """
    cv2.setNumThreads(1)


def _check_rgb(image: np.ndarray) -> None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}")


def rgb_to_i420(image: np.ndarray) -> np.ndarray:
    """BT.601 limited-range YUV 4:2:0 of an RGB picture with even sides, as a ``(H * 3 // 2, W)`` array.

    Rows ``0..H`` hold Y, then the U plane (``H/2 x W/2`` samples, packed) and the V plane: the I420
    layout PyAV's ``yuv420p`` arrays use. Chroma is the 2x2 box average, like swscale's.
    """
    _check_rgb(image)
    height, width = image.shape[:2]
    if height % 2 or width % 2:
        raise ValueError(f"yuv420p needs even sides, got {width}x{height}")
    yuv = cv2.cvtColor(image, cv2.COLOR_RGB2YUV_I420)  # exact luma; point-sampled chroma, replaced below
    half = cv2.resize(image, (width // 2, height // 2), interpolation=cv2.INTER_AREA)  # 2x2 means
    ycrcb = cv2.cvtColor(half, cv2.COLOR_RGB2YCrCb)  # BT.601, full-range chroma
    chroma = yuv[height:]
    u_plane, v_plane = chroma.reshape(2, height // 2, width // 2)
    cv2.mixChannels([ycrcb], [u_plane, v_plane], [2, 0, 1, 1])  # Cb -> U, Cr -> V
    cv2.LUT(chroma, _LIMITED_CHROMA, dst=chroma)
    return yuv


def rgb_to_yuv420p_frame(image: np.ndarray) -> av.VideoFrame:
    """An untagged ``yuv420p`` VideoFrame of an RGB picture with even sides (see ``rgb_to_i420``).

    The frame owns its pixels: an encoder may keep it as long as it likes.
    """
    return _wrap_i420(rgb_to_i420(np.ascontiguousarray(image)))


def i420_to_frame(yuv: np.ndarray) -> av.VideoFrame:
    """An untagged ``yuv420p`` VideoFrame with a copy of an I420 array ``(H * 3 // 2, W)`` (even sides).

    The copy lets the caller reuse its array (a shared-memory slot) as soon as this returns, whatever
    the encoder keeps.
    """
    if yuv.ndim != 2 or yuv.dtype != np.uint8 or yuv.shape[0] % 3 or yuv.shape[1] % 2:
        raise ValueError(f"expected an (H * 3 // 2, W) uint8 I420 array with even sides, got {yuv.shape}")
    return _wrap_i420(np.array(yuv, order="C"))


def _wrap_i420(yuv: np.ndarray) -> av.VideoFrame:
    if yuv.shape[0] // 3 * 2 % 4 == 0:
        # Wraps the array without a copy. PyAV derives the height as rows // 6 * 4, which is right only
        # when the height is a multiple of 4.
        return av.VideoFrame.from_numpy_buffer(yuv, format="yuv420p")
    return av.VideoFrame.from_ndarray(yuv, format="yuv420p")


def opencv_decodes(frame: av.VideoFrame) -> bool:
    """True when ``frame`` is BT.601 limited-range yuv420p with even sides, which OpenCV converts right."""
    return (
        frame.format.name == "yuv420p"
        and frame.width % 2 == 0
        and frame.height % 2 == 0
        and int(frame.colorspace) in _BT601_SPACES
        and int(frame.color_range) in _LIMITED_RANGES
    )


class RgbDecoder:
    """Decoded frames to ``(H, W, 3)`` uint8 RGB, optionally into a caller's buffer (no extra copy).

    One per stream: the swscale fallback keeps its scaler context between frames.
    """

    def __init__(self) -> None:
        self._reformatter = VideoReformatter()

    def __call__(self, frame: av.VideoFrame, out: np.ndarray | None = None) -> np.ndarray:
        return self.with_i420(frame, out)[0]

    def with_i420(self, frame: av.VideoFrame, out: np.ndarray | None = None):
        """``(rgb, i420)``: the RGB picture and, when the frame is BT.601 limited-range yuv420p (what
        every video sink encodes), its planes as an ``(H * 3 // 2, W)`` I420 array, else None. An
        encoder given those planes writes the source's own picture, with no conversion at all."""
        shape = (frame.height, frame.width, 3)
        if out is not None and (out.shape != shape or out.dtype != np.uint8):
            raise ValueError(f"output buffer {out.shape} {out.dtype} does not fit a {shape} uint8 frame")
        if opencv_decodes(frame):
            if out is None:
                out = np.empty(shape, np.uint8)
            i420 = frame.to_ndarray()
            return cv2.cvtColor(i420, cv2.COLOR_YUV2RGB_I420, dst=out), i420
        rgb = self._reformatter.reformat(frame, format="rgb24").to_ndarray()
        if out is None:
            return np.ascontiguousarray(rgb), None
        out[...] = rgb
        return out, None


def frame_to_rgb(frame: av.VideoFrame, out: np.ndarray | None = None) -> np.ndarray:
    """One decoded frame as ``(H, W, 3)`` uint8 RGB (in ``out`` when given); see ``RgbDecoder``."""
    return RgbDecoder()(frame, out)
