"""Run a team's Ray tasks through the admission queue, each in a placement group reserving its lease.

Why a placement group per lease: Ray then enforces the grant. The task runs with
``placement_group_capture_child_tasks``, so everything it starts must fit the same bundle (a
task cannot quietly use more than was admitted); the group carries the team in its name
(``mlsys:<team>:<label>:<lease>``), shown by the dashboard's placement-group view and by
``ray list placement-groups``; and removing the group is how preemption works: Ray kills
whatever runs in it, at once, wherever it runs, which the admission actor can do from the
head node without a handle to the task.

Preempted tasks queue again with their original arrival time and priority, so they keep their
place, and rerun from the start (a task has no checkpoint; work that has one belongs in Tune,
whose trials resume from theirs). Every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import ray
from ray.exceptions import (
    ActorDiedError,
    ActorPlacementGroupRemoved,
    RayTaskError,
    TaskCancelledError,
    TaskPlacementGroupRemoved,
    WorkerCrashedError,
)
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ml_system.errors import AdmissionError
from ml_system.teams.admission import AdmissionClient
from ml_system.teams.resources import Resources

TEAM_ENV = "MLSYS_TEAM"
PLACEMENT_TIMEOUT_S = 120.0
"""How long a granted lease may take to be placed by Ray: preempted work must stop first."""
_PREEMPTED = (
    TaskPlacementGroupRemoved,
    ActorPlacementGroupRemoved,
    WorkerCrashedError,
    ActorDiedError,
    TaskCancelledError,
)


def team_runtime_env(team: str, runtime_env: dict[str, Any] | None = None) -> dict[str, Any]:
    """A runtime env that names the team: the dashboard shows it on the task, actor or job."""
    env = dict(runtime_env or {})
    env["env_vars"] = {**env.get("env_vars", {}), TEAM_ENV: team}
    return env


def placement_group_name(team: str, label: str, lease: str) -> str:
    return f"mlsys:{team}:{label or 'work'}:{lease}"


@dataclass
class _Task:
    fn: Any
    args: tuple[Any, ...]
    resources: Resources
    priority: int
    label: str
    group: str
    max_preemptions: int
    wait_timeout_s: float | None
    submitted_at: float
    on_start: Callable[[str], None] | None


@dataclass
class WorkResult:
    value: Any
    leases: list[str] = field(default_factory=list)
    preemptions: int = 0
    waited_s: float = 0.0


class TeamSession:
    """Submit a team's tasks; each waits for a lease, runs in its placement group, queues again if preempted."""

    def __init__(self, client: AdmissionClient, team: str, max_parallel: int = 32) -> None:
        client.groups.team(team)
        self.client = client
        self.team = team
        self.pool = ThreadPoolExecutor(max_workers=max_parallel, thread_name_prefix=f"team-{team}")

    def submit(
        self,
        fn: Any,
        *args: Any,
        resources: Resources,
        priority: int = 0,
        label: str = "",
        group: str = "",
        max_preemptions: int = 20,
        wait_timeout_s: float | None = 3600.0,
        on_start: Callable[[str], None] | None = None,
    ) -> Future[WorkResult]:
        """``fn`` is a ``@ray.remote`` function; its own resource options are replaced by the lease's."""
        if resources.is_zero():
            raise AdmissionError(f"task '{label or fn}' asks for no resources; a lease needs at least some CPU")
        now = time.time()
        task = _Task(fn, args, resources, priority, label, group, max_preemptions, wait_timeout_s, now, on_start)
        return self.pool.submit(self._run, task)

    def _run(self, task: _Task) -> WorkResult:
        result = WorkResult(value=None)
        for _attempt in range(task.max_preemptions + 1):
            lease = self.client.submit(
                self.team,
                "task",
                task.resources,
                priority=task.priority,
                label=task.label,
                group=task.group,
                submitted_at=task.submitted_at,
            )
            result.leases.append(lease)
            began = time.monotonic()
            try:
                if self.client.wait_granted(lease, task.wait_timeout_s) != "granted":
                    result.preemptions += 1
                    continue
            except BaseException:
                self.client.release(lease)
                raise
            result.waited_s += time.monotonic() - began
            done, value = self._run_leased(task, lease)
            if done:
                result.value = value
                return result
            result.preemptions += 1
        tries = task.max_preemptions + 1
        raise AdmissionError(f"task '{task.label}' of team '{self.team}' was preempted {tries} times")

    def _run_leased(self, task: _Task, lease: str) -> tuple[bool, Any]:
        """Run once on ``lease``; (False, None) when the lease was taken back before or during the run."""
        resources, label = task.resources, task.label
        pg = placement_group([resources.bundle()], name=placement_group_name(self.team, label, lease))
        try:
            ready, _ = ray.wait([pg.ready()], timeout=PLACEMENT_TIMEOUT_S)
            if not ready:
                raise AdmissionError(
                    f"lease {lease} of team '{self.team}' was granted but Ray could not place "
                    f"{resources.describe()} within {PLACEMENT_TIMEOUT_S:g} s (no single node has room?)"
                )
            if self.client.bind(lease, {"pg": pg.id.hex()}) != "granted":
                return False, None
            if task.on_start is not None:
                task.on_start(lease)
            ref = task.fn.options(
                scheduling_strategy=PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=True),
                max_retries=0,
                name=f"{self.team}:{label or 'work'}",
                runtime_env=team_runtime_env(self.team),
                **resources.actor_options(),
            ).remote(*task.args)
            try:
                return True, ray.get(ref)
            except _PREEMPTED:
                if self.client.poll([lease])[lease] == "granted":
                    raise  # it died for a reason of its own
                return False, None
            except RayTaskError as exc:
                if isinstance(exc.cause, _PREEMPTED) and self.client.poll([lease])[lease] != "granted":
                    return False, None
                raise
        finally:
            with contextlib.suppress(Exception):
                remove_placement_group(pg)
            self.client.release(lease)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
