"""Live runs outlive their stages: a worker process that dies is restarted, with backoff.

Which workers restart together follows the data: a source's decode, track and render workers number
their messages in one sequence and join them in render, so a death in any of them restarts all three,
as a new session of the source (messages of the old session still in flight are dropped on arrival),
writing new files named by their start time. The GPU worker serves every source: when it dies, it is
restarted with every source's workers. Survivors of a restarted group are asked to leave first (they
close their files, playable); the new workers start once they are gone and the backoff has passed.

Backoff: the first restart waits ``BACKOFF_FIRST_S``, each further death of the same worker doubles it,
up to ``BACKOFF_MAX_S``; a worker that ran for ``HEALTHY_AFTER_S`` starts again from the first delay.
Offline runs never restart: a dead worker ends the run with one error line (an archive must be exact,
and a rerun is cheap). Nor does a worker that dies before the models are loaded, or while the run
stops: those are errors the user has to see.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field, replace

from stream.runtime.stage import WorkerSpec
from stream.runtime.topology import SHARED_STAGES

BACKOFF_FIRST_S = 1.0  # at least a second: a restarted source's files are named by the second
BACKOFF_MAX_S = 30.0
HEALTHY_AFTER_S = 60.0
RETIRE_GRACE_S = 10.0  # a survivor asked to leave that is still there then is killed


@dataclass
class Restart:
    """One planned restart: the new workers, due at ``due``, after the old ones in ``retiring`` left."""

    due: float
    specs: list[WorkerSpec]
    retiring: dict[str, str] = field(default_factory=dict)  # label -> instance asked to leave
    asked: float | None = None  # when the retiring workers were first asked to leave
    told: float = 0.0  # when they were last asked (commands on PUB/SUB are repeated)


class Supervisor:
    """The current spec of every worker of a run, and the restarts of the dead ones."""

    def __init__(self, specs: list[WorkerSpec]) -> None:
        self.specs = {spec.label: spec for spec in specs}
        self.started: dict[str, float] = {}
        self.delays: dict[str, float] = {}
        self.pending: list[Restart] = []

    def generation(self, label: str) -> int:
        spec = self.specs.get(label)
        return 0 if spec is None else spec.generation

    def can_restart(self, label: str) -> bool:
        """Only workers of live runs restart (see the module's docstring)."""
        spec = self.specs.get(label)
        return spec is not None and bool(spec.sources) and all(plan.live for plan in spec.sources)

    def group(self, label: str) -> list[str]:
        """The workers that restart with ``label``: its sources' workers (every worker for the GPU worker)."""
        spec = self.specs[label]
        if spec.role in SHARED_STAGES:
            return list(self.specs)
        names = {plan.name for plan in spec.sources}
        return [
            other.label
            for other in self.specs.values()
            if other.role not in SHARED_STAGES and {plan.name for plan in other.sources} & names
        ]

    def retiring(self, label: str) -> bool:
        return any(label in restart.retiring for restart in self.pending)

    def plan(self, label: str, now: float, alive: list[str], top_ids: dict[str, int]) -> Restart:
        """Plan the restart of dead worker ``label`` and its group; ``alive``: those still running,
        which are asked to leave; ``top_ids``: each source's highest track id written."""
        ran = now - self.started.get(label, now)
        previous = self.delays.get(label)
        fresh = previous is None or ran >= HEALTHY_AFTER_S
        delay = BACKOFF_FIRST_S if fresh else min(previous * 2, BACKOFF_MAX_S)
        self.delays[label] = delay
        labels = self.group(label)
        survivors = [other for other in labels if other in alive and other != label]
        retiring = {other: self.specs[other].instance for other in survivors}
        sessions = {}  # one new session per source, shared by its decode, track and render workers
        specs = []
        for other in labels:
            old = self.specs[other]
            new = replace(old, generation=old.generation + 1)
            if old.role not in SHARED_STAGES:
                (plan,) = old.sources
                new.session = sessions.setdefault(plan.name, uuid.uuid4().hex[:12])
                new.first_track_id = max(top_ids.get(plan.name, 0) + 1, old.first_track_id)
            self.specs[other] = new  # from now on, events of the old generation are ignored
            specs.append(new)
        restart = Restart(due=now + delay, specs=specs, retiring=retiring)
        self.pending.append(restart)
        return restart

    def started_now(self, spec: WorkerSpec, now: float) -> None:
        self.started[spec.label] = now
