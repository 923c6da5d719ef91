"""Each pipeline run's durable record: trigger, inputs, every step's status, outputs and duration.

One JSON document per run (``runs/<run id>.json`` under the pipelines' storage), replaced whole
after each step, so ``mlsys pipeline history`` and ``show`` read it from any machine while the run
is going, and a run whose driver died is still there, marked as it was last seen. Run ids start
with the UTC time they were made, so listings sort by time.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from ml_system.errors import PipelineError
from ml_system.pipelines.storage import PipelineStorage

RUNS = "runs"
FINISHED = ("succeeded", "failed")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def new_run_id(usecase: str, stem: str = "") -> str:
    """``20260512T031500Z-flights-3fa2``; a schedule passes its slot as ``stem`` so a resumed slot keeps its id."""
    if stem:
        return f"{stem}-{usecase}"
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{usecase}-{secrets.token_hex(2)}"


@dataclass
class StepRecord:
    name: str
    status: str = "pending"
    """pending | running | succeeded | cached | failed | not_run"""
    cache_key: str = ""
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    detail: Any = None
    started: str = ""
    finished: str = ""
    duration_s: float = 0.0
    error: str = ""
    task: str = ""
    """The Ray task's name, as the dashboard shows it."""


@dataclass
class RunRecord:
    run_id: str
    usecase: str
    trigger: str
    as_of: str | None
    params: dict[str, Any]
    code: dict[str, Any]
    status: str = "running"
    started: str = field(default_factory=now_iso)
    finished: str = ""
    error: str = ""
    steps: list[StepRecord] = field(default_factory=list)
    attempts: int = 1

    def step(self, name: str) -> StepRecord:
        for record in self.steps:
            if record.name == name:
                return record
        raise PipelineError(f"run {self.run_id} has no step '{name}'")

    @property
    def model_version(self) -> str:
        for record in self.steps:
            if "model_version" in record.outputs:
                return str(record.outputs["model_version"])
        return ""

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), indent=1, default=str).encode()

    @classmethod
    def from_json(cls, data: bytes) -> RunRecord:
        raw = json.loads(data)
        raw["steps"] = [StepRecord(**s) for s in raw.get("steps", [])]
        return cls(**raw)


def key_of(run_id: str) -> str:
    return f"{RUNS}/{run_id}.json"


def save(storage: PipelineStorage, record: RunRecord) -> None:
    storage.write(key_of(record.run_id), record.to_json())


def load(storage: PipelineStorage, run_id: str) -> RunRecord:
    data = storage.read(key_of(run_id))
    if data is None:
        raise PipelineError(f"no pipeline run '{run_id}' under {storage.location(RUNS)} (see `mlsys pipeline history`)")
    return RunRecord.from_json(data)


def find(storage: PipelineStorage, run_id: str) -> RunRecord | None:
    data = storage.read(key_of(run_id))
    return None if data is None else RunRecord.from_json(data)


def list_runs(storage: PipelineStorage, usecase: str | None = None, limit: int = 50) -> list[RunRecord]:
    """The newest runs first."""
    keys = [k for k in storage.list(RUNS) if k.endswith(".json")]
    runs = []
    for key in reversed(keys):
        data = storage.read(key)
        if data is None:
            continue
        record = RunRecord.from_json(data)
        if usecase is None or record.usecase == usecase:
            runs.append(record)
    runs.sort(key=lambda r: r.started, reverse=True)
    return runs[:limit]
