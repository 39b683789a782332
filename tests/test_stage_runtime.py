"""The stage runtime on real inproc sockets: a stage supplies handlers, the runtime runs the loop."""

from __future__ import annotations

import threading
import time

import zmq

from stream.config import build_config
from stream.media.frames import SourceInfo
from stream.runtime import events, topology
from stream.runtime.messages import EOS, control_message
from stream.runtime.stage import SourcePlan, Stage, WorkerSpec, run_worker
from stream.runtime.topology import COORDINATOR
from stream.runtime.transport import Endpoints, send_message


class _Counter(Stage):
    """A stage reading the ``results`` link of source ``cam`` until its final EOS."""

    def __init__(self, context, spec, link) -> None:
        self.inbox = topology.open(context, spec, "results", source="cam")
        self.inputs = [self.inbox]
        self.seen = 0
        self.stopped = False
        self.closed_with: bool | None = None
        _Counter.last = self

    def receive(self, sock, message) -> None:
        if message.meta.get("boom"):
            raise RuntimeError("stage failed\nsecond line")
        self.seen += 1
        self.finished = message.kind == EOS and bool(message.meta.get("final"))

    def stop(self) -> None:
        self.stopped = True

    def finish(self) -> events.Done:
        return events.Done(source="cam", frames=self.seen)

    def close(self, finished: bool) -> None:
        self.closed_with = finished
        self.inbox.close(linger=0)


class _Run:
    def __init__(self) -> None:
        cfg = build_config({"sources": ["x.mp4"], "workers": "inproc"})
        plan = SourcePlan("cam", SourceInfo("x.mp4", "cam", "file", None, None, None), live=False)
        self.space = Endpoints("inproc")
        run = topology.RunTopology(cfg, ["cam"])
        endpoints = run.endpoints(self.space)
        self.context = zmq.Context()
        coordinator = WorkerSpec(COORDINATOR, cfg, endpoints, [plan])
        self.events = topology.open(self.context, coordinator, "events")
        self.control = topology.open(self.context, coordinator, "control")
        spec = WorkerSpec("track", cfg, endpoints, [plan])
        self.worker = threading.Thread(target=run_worker, args=(spec, _Counter, self.context), daemon=True)
        self.worker.start()
        # The infer end of the results link, as the GPU worker holds it.
        gpu = WorkerSpec("infer", cfg, endpoints, [plan])
        self.sender = topology.open(self.context, gpu, "results", "cam")

    def next_event(self, timeout_ms: int = 5000) -> events.Event:
        assert self.events.poll(timeout_ms, zmq.POLLIN)
        return events.unpack(self.events.recv())

    def command_until_exit(self, command: events.Command) -> None:
        deadline = time.monotonic() + 10.0
        while self.worker.is_alive() and time.monotonic() < deadline:
            self.control.send(events.pack(command))
            self.worker.join(0.1)
        assert not self.worker.is_alive()

    def close(self) -> None:
        for sock in (self.events, self.control, self.sender):
            sock.close(linger=0)
        self.context.term()


def test_a_stage_runs_to_its_final_eos_reports_done_and_waits_for_finish() -> None:
    run = _Run()
    try:
        assert isinstance(run.next_event(), events.Ready)
        send_message(run.sender, control_message(EOS, "cam", 0, final=False))
        send_message(run.sender, control_message(EOS, "cam", 1, final=True))
        done = run.next_event()
        assert isinstance(done, events.Done)
        assert (done.stage, done.source, done.frames, done.worker) == ("track", "cam", 2, "track[cam]")
        run.worker.join(0.3)
        assert run.worker.is_alive()  # its senders stay connected until every sink is finished
        run.command_until_exit(events.Finish())
        assert _Counter.last.closed_with is True
    finally:
        run.close()


def test_stop_reaches_the_stage_and_abort_ends_it_without_done() -> None:
    run = _Run()
    try:
        assert isinstance(run.next_event(), events.Ready)
        run.control.send(events.pack(events.Stop()))
        deadline = time.monotonic() + 10.0
        while not _Counter.last.stopped and time.monotonic() < deadline:
            run.control.send(events.pack(events.Stop()))  # a subscriber may still be connecting
            time.sleep(0.05)
        assert _Counter.last.stopped and run.worker.is_alive()  # it drains to EOS by itself
        run.command_until_exit(events.Abort())
        assert _Counter.last.closed_with is False
        assert not run.events.poll(200, zmq.POLLIN)  # no Done after an abort
    finally:
        run.close()


def test_a_failing_handler_is_one_error_event_and_the_stage_is_closed() -> None:
    run = _Run()
    try:
        assert isinstance(run.next_event(), events.Ready)
        send_message(run.sender, control_message(EOS, "cam", 0, boom=True))
        error = run.next_event()
        assert isinstance(error, events.Error) and error.message == "stage failed"
        assert "RuntimeError" in error.detail
        run.worker.join(5.0)
        assert not run.worker.is_alive() and _Counter.last.closed_with is False
    finally:
        run.close()
