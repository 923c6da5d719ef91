"""The hypothesis queue: a team's experiment requests, run in priority order, judged against their claim.

An experiment says what it expects: "this search space for that use case, within this budget,
will beat the current champion's test metric by at least ``expected_gain``". It waits in its
team's queue (highest ``priority`` first, then first come) until a runner claims it
(``ml_system.pipelines.experiments``), runs as a Tune search on the team's quota through the
admission queue, and gets its outcome written beside the claim: reference metric, achieved
metric, gain, and whether the hypothesis held. The same outcome goes on the MLflow run as tags.

Budgets are checked before anything runs: a search whose concurrent trials need more than the
team's quota is refused, since it could never run as asked. The queue is a JSON document under
the teams state folder, changed under a file lock (``durable.py``), so concurrent ``mlsys``
commands and runners never lose each other's changes.
"""

from __future__ import annotations

import math
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ml_system.errors import TeamError
from ml_system.teams.durable import read_json, update_json
from ml_system.teams.groups import ResourceGroups
from ml_system.teams.resources import Resources

State = Literal["queued", "running", "succeeded", "failed", "cancelled"]
FINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})
DOMAINS = ("randint", "uniform", "loguniform", "choice")
TRIAL = Resources(cpu=1)
"""What one trial asks for (the XGBoost trainable is single-threaded)."""


class Budget(BaseModel):
    model_config = ConfigDict(extra="forbid")

    trials: int = Field(4, ge=1, le=1000)
    cpu_seconds: float | None = Field(None, gt=0)
    """Stop the search once its trials have held this many CPU-seconds (None: the trials decide)."""
    concurrency: int = Field(1, ge=1, le=256)
    """Trials at once; each holds one CPU of the team's quota (or borrowed idle quota)."""
    rounds: int | None = Field(None, ge=10, le=10_000)
    """Boosting rounds per trial (None: the use case's)."""


class ExperimentRequest(BaseModel):
    """What ``mlsys experiments submit`` sends; the team comes from the authenticated token."""

    model_config = ConfigDict(extra="forbid")

    team: str
    usecase: str
    owner: str = Field(min_length=1)
    search_space: dict[str, Any] = Field(default_factory=dict)
    budget: Budget = Field(default_factory=Budget)
    expected_gain: float
    """In the use case's metric, in its better direction (AUC up, MAE down): 0.01 = one point better."""
    priority: int = Field(0, ge=0, le=1_000_000)
    description: str = ""

    @field_validator("search_space")
    @classmethod
    def _valid_space(cls, space: dict[str, Any]) -> dict[str, Any]:
        for name, value in space.items():
            _check_domain(name, value)
        return space

    @field_validator("expected_gain")
    @classmethod
    def _finite(cls, value: float) -> float:
        if not math.isfinite(value):
            raise ValueError("must be a finite number")
        return value


def _check_domain(name: str, value: Any) -> None:
    if not isinstance(value, dict):
        if not isinstance(value, (int, float, str, bool)):
            raise ValueError(f"'{name}': a constant must be a number, a string or a boolean")
        return
    if len(value) != 1 or next(iter(value)) not in DOMAINS:
        raise ValueError(f"'{name}': write a constant or one of {{{', '.join(DOMAINS)}: ...}}, not {value}")
    kind, args = next(iter(value.items()))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise ValueError(f"'{name}': choice needs a non-empty list")
        return
    if not (isinstance(args, list) and len(args) == 2 and all(isinstance(a, (int, float)) for a in args)):
        raise ValueError(f"'{name}': {kind} needs [low, high]")
    low, high = args
    if not low < high or (kind == "loguniform" and low <= 0):
        raise ValueError(f"'{name}': {kind} needs 0 < low < high" if kind == "loguniform" else f"'{name}': low < high")


def parse_request(data: dict[str, Any]) -> ExperimentRequest:
    try:
        return ExperimentRequest.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"])
        raise TeamError(f"experiment field '{field}': {first['msg']}") from None


def to_tune_space(space: dict[str, Any]) -> dict[str, Any]:
    """The stored (JSON) space as Ray Tune domains."""
    from ray import tune

    out: dict[str, Any] = {}
    for name, value in space.items():
        if isinstance(value, dict):
            kind, args = next(iter(value.items()))
            out[name] = tune.choice(args) if kind == "choice" else getattr(tune, kind)(*args)
        else:
            out[name] = value
    return out


def check_budget(request: ExperimentRequest, groups: ResourceGroups) -> None:
    """Refuse a search that could never run as asked within the team's quota."""
    quota = groups.quota(request.team)
    need = TRIAL.scaled(request.budget.concurrency)
    if not need.fits(quota):
        raise TeamError(
            f"experiment for team '{request.team}' needs {need.describe()} at once "
            f"({request.budget.concurrency} concurrent trials x {TRIAL.describe()}), more than its quota "
            f"({quota.describe()}); lower budget.concurrency"
        )


class HypothesisQueue:
    """Experiments of every team, in ``<state_dir>/experiments.json``."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / "experiments.json"

    def _all(self) -> list[dict[str, Any]]:
        return list(read_json(self.path, {"experiments": []})["experiments"])

    def submit(self, request: ExperimentRequest, groups: ResourceGroups) -> dict[str, Any]:
        groups.team(request.team)
        check_budget(request, groups)
        record = {
            **request.model_dump(mode="json"),
            "id": f"exp-{uuid.uuid4().hex[:10]}",
            "state": "queued",
            "submitted_at": time.time(),
            "started_at": None,
            "finished_at": None,
            "cancel_requested": False,
            "outcome": None,
            "error": None,
        }
        update_json(self.path, {"experiments": []}, lambda doc: doc["experiments"].append(record))
        return record

    def list(self, team: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        """Queued ones in the order they will run, then the rest, newest first."""
        rows = [r for r in self._all() if team in (None, r["team"]) and state in (None, r["state"])]
        queued = sorted((r for r in rows if r["state"] == "queued"), key=_run_order)
        others = sorted((r for r in rows if r["state"] != "queued"), key=lambda r: -r["submitted_at"])
        return queued + others

    def get(self, experiment_id: str) -> dict[str, Any]:
        for row in self._all():
            if row["id"] == experiment_id:
                return row
        raise TeamError(f"no experiment '{experiment_id}' (see `mlsys experiments list`)")

    def cancel(self, experiment_id: str, team: str) -> dict[str, Any]:
        """A queued experiment is cancelled at once; a running one stops at its runner's next check."""

        def change(doc: dict[str, Any]) -> dict[str, Any]:
            row = _find(doc, experiment_id)
            if row["team"] != team:
                raise TeamError(f"experiment '{experiment_id}' belongs to team '{row['team']}', not '{team}'")
            if row["state"] in FINAL:
                raise TeamError(f"experiment '{experiment_id}' already ended ({row['state']})")
            if row["state"] == "queued":
                row.update(state="cancelled", finished_at=time.time())
            else:
                row["cancel_requested"] = True
            return dict(row)

        return update_json(self.path, {"experiments": []}, change)

    def claim_next(self, team: str) -> dict[str, Any] | None:
        """Mark the team's next experiment running and return it (None when its queue is empty)."""

        def change(doc: dict[str, Any]) -> dict[str, Any] | None:
            mine = [r for r in doc["experiments"] if r["team"] == team and r["state"] == "queued"]
            queued = sorted(mine, key=_run_order)
            if not queued:
                return None
            queued[0].update(state="running", started_at=time.time())
            return dict(queued[0])

        return update_json(self.path, {"experiments": []}, change)

    def cancel_requested(self, experiment_id: str) -> bool:
        return bool(self.get(experiment_id)["cancel_requested"])

    def finish(
        self, experiment_id: str, state: State, outcome: dict[str, Any] | None = None, error: str | None = None
    ) -> dict[str, Any]:
        def change(doc: dict[str, Any]) -> dict[str, Any]:
            row = _find(doc, experiment_id)
            row.update(state=state, finished_at=time.time(), outcome=outcome, error=error)
            return dict(row)

        return update_json(self.path, {"experiments": []}, change)


def _run_order(row: dict[str, Any]) -> tuple[int, float]:
    return (-int(row["priority"]), float(row["submitted_at"]))


def _find(doc: dict[str, Any], experiment_id: str) -> dict[str, Any]:
    for row in doc["experiments"]:
        if row["id"] == experiment_id:
            return row
    raise TeamError(f"no experiment '{experiment_id}' (see `mlsys experiments list`)")
