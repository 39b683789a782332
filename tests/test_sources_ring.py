"""Frames decoded straight into shared-memory ring slots, and the offline decoder held back by the ring."""

from __future__ import annotations

import threading
import time

import av
import numpy as np
import pytest
import zmq

from stream.config import build_config
from stream.edges.sources import open_source, probe_source
from stream.media.frames import I420
from stream.media.synth import moving_squares, write_clip
from stream.pipeline.launch import run_worker
from stream.runtime import events
from stream.runtime.messages import EOS, FRAME
from stream.runtime.ring import INFER_READER, READERS, RENDER_READER, FrameRing, release, resolve
from stream.runtime.stage import SourcePlan, WorkerSpec
from stream.runtime.transport import Endpoints, make_socket, recv_message

SIZE = (96, 64)  # W, H
SHAPE = (64, 96, 3)


def _clip(tmp_path, frames: int):
    path = tmp_path / "clip.mp4"
    write_clip(path, moving_squares(frames, SIZE), fps=30)
    info = probe_source(str(path))
    with open_source(info) as decoded:
        plain = [frame.image.copy() for frame in decoded]
    return info, plain


def _planes(info) -> list[np.ndarray]:
    with av.open(info.spec) as container:
        return [frame.to_ndarray() for frame in container.decode(video=0)]


def test_ring_claims_commits_and_gives_back_slots():
    ring = FrameRing.create(int(np.prod(SHAPE)), 2, READERS)
    try:
        first, second = ring.claim(SHAPE), ring.claim(SHAPE)
        assert {first[0], second[0]} == {0, 1} and first[1].flags.writeable
        assert ring.claim(SHAPE) is None  # both claimed, though no reader holds either yet
        ring.unclaim(first[0])
        again = ring.claim(SHAPE)
        assert again[0] == first[0]
        ring.commit(second[0])
        assert ring.in_use() == 1
        with pytest.raises(ValueError, match="not claimed"):
            ring.commit(second[0])
        ring.release(second[0], INFER_READER)
        assert ring.claim(SHAPE) is None  # the render reader still holds it
        ring.release(second[0], RENDER_READER)
        assert ring.claim(SHAPE)[0] == second[0]
        assert not ring.fits((65, 96, 3)) and ring.claim((65, 96, 3)) is None
    finally:
        ring.close()


def test_video_frames_decode_into_the_slots_they_are_given(tmp_path):
    info, plain = _clip(tmp_path, 6)
    planes = _planes(info)
    ring = FrameRing.create(int(np.prod(SHAPE)), 4, READERS)
    claims = []

    def frame_buffer(height: int, width: int, with_i420: bool):
        assert with_i420  # an untagged H.264 clip: its planes come along
        claims.append(ring.claim((height, width, 3)))
        return None if claims[-1] is None else claims[-1][1]

    try:
        with open_source(info, frame_buffer=frame_buffer) as frames:
            for i, frame in enumerate(frames):
                if i < 4:
                    slot, view = claims[-1]
                    assert frame.image is view
                    ring.commit(slot)  # held by the readers: never handed out again until released
                else:
                    # Every slot is held: the source decodes into an array of its own.
                    assert claims[-1] is None
                    assert not any(np.shares_memory(frame.image, ring.view(s, SHAPE)) for s in range(4))
                np.testing.assert_array_equal(frame.image, plain[i])
                # The source's own BT.601 planes come along, for sinks that encode the frame as it is.
                np.testing.assert_array_equal(frame.extra[I420], planes[i])
        for slot in range(4):
            np.testing.assert_array_equal(ring.view(slot, SHAPE), plain[slot])
    finally:
        ring.close()


class _Stage:
    """The decoder's peers on real ipc sockets: the GPU worker's and the render stage's frame inboxes,
    and the coordinator's event and control sockets."""

    def __init__(self, tmp_path, info, live: bool = False):
        cfg = build_config(
            {
                "sources": [info.spec],
                "out": str(tmp_path / "out"),
                "workers": "ipc",
                "queue_frames": 1,
                "max_batch": 1,
            }
        )
        self.topology = Endpoints("ipc")
        names = ["infer", "render.clip.frames", "events", "control"]
        endpoints = {name: self.topology.endpoint(name) for name in names}
        self.context = zmq.Context()
        self.gpu = make_socket(self.context, zmq.PULL, endpoints["infer"], bind=True, hwm=1)
        self.render = make_socket(self.context, zmq.PULL, endpoints["render.clip.frames"], bind=True, hwm=1)
        self.events = make_socket(self.context, zmq.PULL, endpoints["events"], bind=True, hwm=1000)
        self.control = make_socket(
            self.context, zmq.PUB, endpoints["control"], bind=True, hwm=10, linger_ms=0
        )
        spec = WorkerSpec("decode", cfg, endpoints, [SourcePlan("clip", info, live=live)], "session")
        # 4 * queue_frames + 2 * max_batch + 8 slots in the decoder's ring.
        self.slots = 4 * 1 + 2 * 1 + 8
        self.worker = threading.Thread(target=run_worker, args=(spec, self.context), daemon=True)
        self.worker.start()

    def receive(self, sock, timeout_ms: int):
        if not sock.poll(timeout_ms, zmq.POLLIN):
            return None
        message = recv_message(sock)
        resolve(message)
        return message

    def command_until_done(self, command: events.Command, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.worker.is_alive() and time.monotonic() < deadline:
            self.control.send(events.pack(command))
            self.worker.join(0.1)
        assert not self.worker.is_alive()

    def close(self) -> None:
        # The worker's events socket lingers until its events are read (a live decoder sends one per
        # dropped frame, more than the high-water mark): read them, or ending the context waits for it.
        while self.events.poll(100, zmq.POLLIN):
            self.events.recv()
        for sock in (self.gpu, self.render, self.events, self.control):
            sock.close(linger=0)
        self.context.term()
        self.topology.cleanup()


def test_offline_decoder_waits_for_a_free_slot_instead_of_sending_pixels_inline(tmp_path):
    info, plain = _clip(tmp_path, 20)
    planes = _planes(info)
    stage = _Stage(tmp_path, info)
    try:
        held = []
        while len(held) < stage.slots:  # the readers hold every frame they get
            to_gpu, to_render = stage.receive(stage.gpu, 5000), stage.receive(stage.render, 5000)
            assert to_gpu.kind == to_render.kind == FRAME and to_gpu.seq == to_render.seq
            assert to_gpu.slot is not None and to_render.slot is not None  # pixels stay in the ring
            np.testing.assert_array_equal(to_render.arrays["image"], plain[to_render.frame])
            assert to_render.meta[I420]  # the slot also holds the source's planes
            np.testing.assert_array_equal(to_render.arrays[I420], planes[to_render.frame])
            held.append((to_gpu, to_render))
        # The ring is full: the decoder waits rather than sending frames inline.
        assert stage.receive(stage.gpu, 500) is None and stage.receive(stage.render, 0) is None
        for to_gpu, to_render in held:
            release(to_gpu, INFER_READER)
            release(to_render, RENDER_READER)
        frames = len(held)
        while True:
            to_gpu, to_render = stage.receive(stage.gpu, 5000), stage.receive(stage.render, 5000)
            if to_gpu.kind == EOS:
                break
            assert to_gpu.slot is not None
            np.testing.assert_array_equal(to_render.arrays["image"], plain[to_render.frame])
            release(to_gpu, INFER_READER)
            release(to_render, RENDER_READER)
            frames += 1
        assert frames == len(plain)
        stage.command_until_done(events.Finish())
    finally:
        stage.close()


def test_a_decoder_waiting_for_a_slot_still_aborts(tmp_path):
    info, _ = _clip(tmp_path, 20)
    stage = _Stage(tmp_path, info)
    try:
        for _ in range(stage.slots):
            assert stage.receive(stage.gpu, 5000).kind == FRAME
            assert stage.receive(stage.render, 5000).kind == FRAME
        assert stage.receive(stage.gpu, 300) is None  # waiting for a slot nobody releases
        stage.command_until_done(events.Abort(), timeout_s=5.0)
    finally:
        stage.close()


def test_live_decoder_sends_frames_inline_while_the_ring_is_full(tmp_path):
    """Live, the decoder never waits for a slot: with every slot held by the readers, frames travel
    inline, whole and in order, and the ring never hands out a slot still held."""
    # A file read live is decoded as fast as it can be, and frames the readers have not taken yet are
    # dropped, so only a fraction reaches them: the clip is long enough that the ring still fills
    # (the test stops as soon as it has seen five inline frames).
    info, plain = _clip(tmp_path, 3000)
    stage = _Stage(tmp_path, info, live=True)
    try:
        in_ring, inline = {}, []
        while len(inline) < 5:  # the readers keep every frame they get (nothing is released)
            to_gpu, to_render = stage.receive(stage.gpu, 10_000), stage.receive(stage.render, 10_000)
            assert to_gpu is not None and to_gpu.kind != EOS, "the clip ended before the ring was full"
            if to_gpu.kind != FRAME:
                continue  # a frame dropped for being late, as a live source does
            assert to_render.seq == to_gpu.seq
            image = to_render.arrays["image"]
            np.testing.assert_array_equal(image, plain[to_render.frame])
            if to_gpu.slot is None:
                assert to_render.slot is None
                inline.append(to_gpu.frame)
            else:
                assert to_gpu.slot[1] not in in_ring, "a held slot was handed out again"
                in_ring[to_gpu.slot[1]] = to_gpu.frame
        assert len(in_ring) == stage.slots  # inline only once every slot was held
        assert min(inline) > max(in_ring.values()) and inline == sorted(inline)
        stage.command_until_done(events.Abort(), timeout_s=10.0)
    finally:
        stage.close()


def _bt709_clip(tmp_path, frames: int):
    """A BT.709-tagged clip: its frames decode through swscale and carry no planes for the sinks."""
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        stream.codec_context.colorspace = 1  # AVCOL_SPC_BT709
        for i, image in enumerate(moving_squares(frames, SIZE)):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(
                format="yuv420p", dst_colorspace="itu709"
            )
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return probe_source(str(path))


def test_a_source_without_bt601_planes_gets_slots_for_rgb_only(tmp_path):
    info = _bt709_clip(tmp_path, 4)
    stage = _Stage(tmp_path, info)
    try:
        for _ in range(4):
            to_gpu, to_render = stage.receive(stage.gpu, 5000), stage.receive(stage.render, 5000)
            assert to_render.slot is not None and I420 not in to_render.meta
            assert I420 not in to_render.arrays
            assert FrameRing.attach(to_render.slot[0]).slot_bytes == int(np.prod(SHAPE))
            release(to_gpu, INFER_READER)
            release(to_render, RENDER_READER)
        assert stage.receive(stage.gpu, 5000).kind == EOS
        stage.command_until_done(events.Finish())
    finally:
        stage.close()


STOP_MID_DECODE = """
import sys
from pathlib import Path
from test_sources_ring import _Stage
from stream.edges.sources import probe_source
from stream.media.synth import moving_squares, write_clip
from stream.runtime import events

root = Path(sys.argv[1])
clip = root / "clip.mp4"
write_clip(clip, moving_squares(120, (1280, 720)), fps=30)
info = probe_source(str(clip))
for attempt in range(int(sys.argv[2])):
    stage = _Stage(root / str(attempt), info, live=True)
    try:
        assert stage.receive(stage.gpu, 10_000) is not None
        stage.command_until_done(events.Abort(), timeout_s=10.0)
    finally:
        stage.close()
print("stopped", sys.argv[2], "times")
"""


def test_a_file_read_live_stops_while_a_frame_is_being_decoded(tmp_path):
    """A stop closes the source while the live reader thread may be decoding from it: closing a PyAV
    container under a decode crashes the process. Large frames keep the reader inside the decoder most
    of the time; the stops run in a process of their own, so a crash fails the test instead of pytest."""
    import subprocess
    import sys
    from pathlib import Path

    tests = Path(__file__).parent
    done = subprocess.run([sys.executable, "-c", STOP_MID_DECODE, str(tmp_path), "60"], cwd=tests,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, f"exit status {done.returncode}: {done.stderr[-3000:]}"
    assert "stopped 60 times" in done.stdout
