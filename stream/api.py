"""The Python API: the pipeline run from Python, each frame's results handed over as objects.

::

    import stream

    with stream.Pipeline(["clip.mp4", "rtsp://cam/1"], task="pose") as pipe:
        for r in pipe:  # a FrameResult per frame, each source's frames in order
            print(r.source, r.frame, [(p.id, p.bbox) for p in r.persons])
    report = stream.run(["clip.mp4"], out="out")  # to the end, like ``sapiens-stream run``

Options are the command line's, named with underscores (``--max-batch`` is ``max_batch``; every field
of ``stream.config.PipelineConfig``), with the same defaults but one: ``out`` is None, so nothing is
written; ``out=DIR`` writes what ``sapiens-stream run --out DIR`` writes. ``render=True`` adds the
annotated image to every result. With the dense tasks (``task="pose,seg,normal,pointmap,matting"``) each
result also carries the frame's maps (``seg``, ``normals``, ``pointmap`` and ``depth``, ``alpha``; see
``FrameResult``).

The pipeline runs in its worker processes (``workers="ipc"``, the default) and the run's coordinator
in a thread of this process; results come from the render stages over the topology's ``api`` link, a
bounded ZeroMQ socket. Offline a caller that reads slowly slows the run and loses nothing; live the
oldest results it has not taken are dropped, counted (``report.sources[name].drops["caller"]``) and
handed over as ``skipped`` results. ``stop()`` ends the sources: the iteration yields what is still in
the pipeline, then ends. Leaving the ``with`` block or breaking out of the loop stops the same way;
either way the workers are gone and the outputs closed when it returns.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import zmq

from stream.config import PipelineConfig, build_config
from stream.edges.sinks import frame_record
from stream.media import frames
from stream.pipeline.coordinator import CallerLink, prepare_run, run_pipeline, run_prepared
from stream.pipeline.report import RunReport
from stream.runtime import topology
from stream.runtime.messages import EOS, SKIP, Message, to_frame_result
from stream.runtime.stage import WorkerSpec
from stream.runtime.topology import CALLER
from stream.runtime.transport import recv_message

POLL_MS = 100  # how long a wait for the next result lasts before the run's state is looked at again

Sources = str | os.PathLike | Iterable[str | os.PathLike]


@dataclass
class Person:
    """One person in a frame, in source-frame pixels."""

    id: int | None  # track id; None until the track is confirmed
    bbox: np.ndarray  # (4,) float32 x1, y1, x2, y2
    score: float  # detector score
    keypoints: np.ndarray | None = None  # (K, 3) float32 x, y, score; None when pose did not run


@dataclass
class FrameResult:
    """One decoded frame of one source and what the models found in it.

    ``frame`` is the 0-based decode index and ``pts`` the presentation time in seconds (None for image
    folders), as in the JSONL. A ``skipped`` frame (live: dropped in the pipeline, or not taken by the
    caller in time) has no persons, no maps and no ``image``.

    The dense maps are the frame's size, in frame coordinates, each present when its task ran: the
    float values the command line's lossless files hold to 16 bits (``sapiens-stream run`` writes
    ``round((normals + 1) / 2 * 65535)``, ``round(depth * 1000)`` with 0 for NaN, ``round(alpha * 65535)``;
    the ``--save-pointmap`` ``.npy`` is ``pointmap`` in float16), smoothed over time as the files are,
    unless ``smooth=False``.
    """

    source: str
    frame: int
    pts: float | None
    width: int
    height: int
    skipped: bool = False
    persons: list[Person] = field(default_factory=list)
    seg: np.ndarray | None = None  # (H, W) uint8 class ids when segmentation ran
    normals: np.ndarray | None = None  # (H, W, 3) float32 unit camera-space normals (x, y, z), task normal
    pointmap: np.ndarray | None = None  # (H, W, 3) float32 camera-space XYZ in metres, task pointmap
    depth: np.ndarray | None = None  # (H, W) float32 metres, the pointmap's Z; NaN where nothing is in front
    alpha: np.ndarray | None = None  # (H, W) float32 matte in [0, 1], task matting
    image: np.ndarray | None = None  # (H, W, 3) uint8 RGB, annotated, with render=True

    def to_dict(self) -> dict:
        """This frame's JSONL record, exactly as ``sapiens-stream run`` writes it."""
        outputs = None if self.skipped else self._model_outputs()
        return frame_record(self.source, self.frame, self.pts, self.width, self.height, outputs, self.skipped)

    def _model_outputs(self) -> frames.ModelOutputs:
        count = len(self.persons)
        outputs = frames.ModelOutputs(
            boxes=np.asarray([p.bbox for p in self.persons], np.float32).reshape(count, 4),
            scores=np.asarray([p.score for p in self.persons], np.float32),
            track_ids=np.asarray([-1 if p.id is None else p.id for p in self.persons], np.int64),
        )
        if count and all(p.keypoints is not None for p in self.persons):
            points = np.stack([p.keypoints for p in self.persons])
            outputs.keypoints, outputs.keypoint_scores = points[..., :2], points[..., 2]
        return outputs


def pipeline_config(sources: Sources, options: dict) -> PipelineConfig:
    """The run's configuration: the command line's options and defaults, but no files unless ``out``."""
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    return build_config({"out": None, **options, "sources": [os.fspath(s) for s in sources]})


def run(sources: Sources, **options) -> RunReport:
    """Run the pipeline on ``sources`` to their end (or SIGINT) and return the run's report.

    ``sapiens-stream run`` is this call. Raises ``ConfigError``/``SourceError`` on bad input and
    ``PipelineError`` when a stage fails (one-line messages).
    """
    return run_pipeline(pipeline_config(sources, options))


class Pipeline:
    """The pipeline on ``sources``, iterated for each frame's ``FrameResult`` (see the module's text).

    Starts when entered (``with``) or first iterated; ``close()`` (or leaving the ``with`` block) stops
    it, drains it and returns the run's report, also kept as ``report``.
    """

    def __init__(self, sources: Sources, *, render: bool = False, **options) -> None:
        self.config = pipeline_config(sources, options)
        self.render = render
        self.report: RunReport | None = None
        self._caller = CallerLink(images=render)
        self._stop = threading.Event()
        self._context: zmq.Context | None = None
        self._sock: zmq.Socket | None = None
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._sources: set[str] = set()
        self._ended: set[str] = set()
        self._closed = False

    # --- life cycle -----------------------------------------------------------------------------------

    def start(self) -> Pipeline:
        """Probe the sources, start the workers and the coordinator (once)."""
        if self._thread is not None or self._closed:
            return self
        context = zmq.Context()
        try:
            coordinator = prepare_run(self.config, self._stop, context, self._caller)
            spec = WorkerSpec(CALLER, coordinator.cfg, coordinator.endpoints, coordinator.plans)
            self._sock = topology.open(context, spec, "api")
        except BaseException:
            context.term()
            raise
        self._context = context
        self._sources = {plan.name for plan in coordinator.plans}
        self._thread = threading.Thread(target=self._coordinate, args=(coordinator,), name="coordinator")
        self._thread.daemon = True  # a Pipeline never closed must not keep the interpreter alive
        self._thread.start()
        return self

    def _coordinate(self, coordinator) -> None:
        try:
            self.report = run_prepared(coordinator)
        except BaseException as exc:  # raised to the caller by close()
            self._error = exc

    def stop(self) -> None:
        """End the sources: what is already in the pipeline is finished and still yielded, then the
        iteration ends. Returns at once; safe from any thread."""
        self._stop.set()

    def close(self) -> RunReport | None:
        """Stop, drain (results not yet taken are discarded), wait for the workers to exit, close the
        outputs; returns the report, or raises the run's error. A second KeyboardInterrupt while
        draining aborts the run instead (outputs are still closed)."""
        if self._thread is None:
            self._closed = True
            return None
        if not self._closed:
            self._closed = True
            self._stop.set()
            try:
                while self._receive() is not None:
                    pass
            except BaseException:
                self._caller.abort.set()
                raise
            finally:
                self._thread.join()
                self._sock.close(linger=0)
                self._context.term()
        if self._error is not None:
            raise self._error
        return self.report

    def __enter__(self) -> Pipeline:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    # --- results --------------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[FrameResult]:
        self.start()
        finished = False
        try:
            while (result := self._receive()) is not None:
                yield result
            finished = True
        finally:
            if finished:
                self.close()  # raises the run's error, if any
            else:
                # Left early (break, an exception in the loop): stop here; an error of the run is
                # raised by the next close(), e.g. when the ``with`` block ends.
                try:
                    self.close()
                except Exception:
                    pass

    def __next__(self) -> FrameResult:
        self.start()
        result = self._receive()
        if result is None:
            raise StopIteration
        return result

    def _receive(self) -> FrameResult | None:
        """The next result, or None once every source has ended (or the run ended without them)."""
        if self._sock is None:
            return None
        while self._ended != self._sources:
            if self._sock.poll(POLL_MS, zmq.POLLIN):
                message = recv_message(self._sock)
                if message.kind != EOS:
                    return _frame_result(message)
                self._ended.add(message.source)
                if self._ended == self._sources:
                    self._caller.received.set()  # the render stages may now disconnect
            elif not self._thread.is_alive() and not self._sock.poll(0, zmq.POLLIN):
                return None  # the run ended (an error or an abort) before every source did
        return None


def _frame_result(message: Message) -> FrameResult:
    """The public record of one ``api`` message (arrays copied: the caller owns them)."""
    width, height = int(message.meta["width"]), int(message.meta["height"])
    result = FrameResult(message.source, int(message.frame), message.pts, width, height)
    if message.kind == SKIP:
        result.skipped = True
        return result
    outputs = to_frame_result(message)
    keypoints = None
    if outputs.keypoints is not None:
        keypoints = np.concatenate([outputs.keypoints, outputs.keypoint_scores[..., None]], axis=-1)
        keypoints = keypoints.astype(np.float32)
    for i in range(outputs.num_persons):
        track = int(outputs.track_ids[i])
        result.persons.append(
            Person(
                id=None if track < 0 else track,
                bbox=np.array(outputs.boxes[i], np.float32),
                score=float(outputs.scores[i]),
                keypoints=None if keypoints is None else keypoints[i],
            )
        )
    if outputs.seg_labels is not None:
        result.seg = np.array(outputs.seg_labels, np.uint8)
    if outputs.normals is not None:
        result.normals = np.array(outputs.normals, np.float32)
    if outputs.pointmap is not None:
        result.pointmap = np.array(outputs.pointmap, np.float32)
        depth = result.pointmap[..., 2].copy()
        depth[~(np.isfinite(depth) & (depth > 0))] = np.nan  # as the depth files: no depth there
        result.depth = depth
    if outputs.alpha is not None:
        result.alpha = np.array(outputs.alpha, np.float32)
    if "image" in message.arrays:
        result.image = np.array(message.arrays["image"])
    return result
