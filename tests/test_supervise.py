"""The restart plan of a live run: which workers restart together, how long each waits, and what the
new workers inherit (a new session per source, track ids above those written)."""

from __future__ import annotations

import pytest

from stream.config import build_config
from stream.media.frames import SourceInfo
from stream.pipeline.coordinator import worker_specs
from stream.pipeline.supervise import BACKOFF_FIRST_S, BACKOFF_MAX_S, HEALTHY_AFTER_S, Supervisor
from stream.runtime.stage import SourcePlan
from stream.runtime.topology import RunTopology
from stream.runtime.transport import Endpoints


def _supervisor(live: bool = True) -> Supervisor:
    names = ("a", "b")
    config = build_config({"sources": [f"rtsp://{n}/live" for n in names]})
    kind = "live" if live else "file"
    plans = [SourcePlan(n, SourceInfo(f"rtsp://{n}/live", n, kind, None, None, None), live) for n in names]
    run = RunTopology(config, list(names))
    supervisor = Supervisor(worker_specs(config, plans, run, run.endpoints(Endpoints(transport="ipc"))))
    for label in supervisor.specs:
        supervisor.started[label] = 0.0
    return supervisor


def test_a_sources_workers_restart_together_as_a_new_session_with_ids_above_those_written() -> None:
    supervisor = _supervisor()
    before = dict(supervisor.specs)
    alive = ["decode[a]", "render[a]", "infer[all]"]
    restart = supervisor.plan("track[a]", 5.0, alive=alive, top_ids={"a": 7})
    assert sorted(spec.label for spec in restart.specs) == ["decode[a]", "render[a]", "track[a]"]
    assert restart.retiring == {"decode[a]": "decode[a]#0", "render[a]": "render[a]#0"}
    assert restart.due == 5.0 + BACKOFF_FIRST_S
    assert {spec.generation for spec in restart.specs} == {1}
    sessions = {spec.session for spec in restart.specs}
    assert len(sessions) == 1 and sessions != {before["track[a]"].session}
    assert all(spec.first_track_id == 8 for spec in restart.specs)
    # Source b and the GPU worker are untouched.
    for label in ("decode[b]", "track[b]", "render[b]", "infer[all]"):
        assert supervisor.specs[label] is before[label]


def test_the_gpu_worker_restarts_with_every_sources_workers_one_session_per_source() -> None:
    supervisor = _supervisor()
    restart = supervisor.plan("infer[all]", 5.0, alive=list(supervisor.specs), top_ids={})
    assert {spec.label for spec in restart.specs} == set(supervisor.specs)
    assert "infer[all]" not in restart.retiring and len(restart.retiring) == 6
    sessions = {spec.sources[0].name: spec.session for spec in restart.specs if spec.role == "track"}
    assert all(spec.session == sessions[spec.sources[0].name]
               for spec in restart.specs if spec.role in ("decode", "render"))
    assert sessions["a"] != sessions["b"]


def test_backoff_doubles_up_to_its_cap_and_starts_again_after_a_healthy_run() -> None:
    supervisor = _supervisor()
    now, delays = 0.0, []
    for _ in range(8):
        restart = supervisor.plan("decode[a]", now, alive=[], top_ids={})
        delays.append(restart.due - now)
        now = restart.due
        supervisor.started_now(supervisor.specs["decode[a]"], now)
        now += 1.0  # dies a second after each start
    assert delays == [min(BACKOFF_FIRST_S * 2**i, BACKOFF_MAX_S) for i in range(8)]
    assert delays[-1] == BACKOFF_MAX_S
    now += HEALTHY_AFTER_S  # this time it ran for a minute before dying
    assert supervisor.plan("decode[a]", now, alive=[], top_ids={}).due - now == BACKOFF_FIRST_S
    # Another worker's deaths have their own backoff.
    assert supervisor.plan("render[b]", now, alive=[], top_ids={}).due - now == BACKOFF_FIRST_S


@pytest.mark.parametrize("live", [True, False])
def test_only_workers_of_live_sources_restart(live: bool) -> None:
    supervisor = _supervisor(live)
    assert all(supervisor.can_restart(label) == live for label in supervisor.specs)
