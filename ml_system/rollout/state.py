"""Durable rollout state: one JSON document per use case under ``rollout.uri``, replaced atomically.

The Serve replicas, the controller and the CLI all read it, so the state outlives any of them: a
restarted controller or replica reads which step a rollout is at and carries on. Writes are
read-modify-write cycles under an exclusive lock (``teams.durable``), which is also what refuses a
second rollout of a use case that has one running.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ml_system.errors import RolloutError
from ml_system.teams.durable import read_json, update_json

RUNNING = "running"
FINISHED = ("promoted", "rolled_back", "aborted")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


@dataclass
class RolloutState:
    id: str
    usecase: str
    model: str
    strategy: str
    """``canary``, ``blue_green`` or ``shadow``."""
    champion: str
    challenger: str
    config: dict[str, Any]
    started_by: str
    status: str = RUNNING
    step: int = 0
    """Index into ``config['steps']`` of the weight now applied."""
    weight: int = 0
    """Percent of requests the challenger answers now."""
    step_started_at: str = ""
    started_at: str = ""
    finished_at: str = ""
    reason: str = ""
    history: list[dict[str, Any]] = field(default_factory=list)

    @property
    def running(self) -> bool:
        return self.status == RUNNING


class RolloutStore:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder) / "rollouts"

    def _path(self, usecase: str) -> Path:
        return self.folder / f"{usecase}.json"

    def _doc(self, usecase: str) -> dict[str, Any]:
        doc: dict[str, Any] = read_json(self._path(usecase), {"current": None, "past": []})
        return doc

    def current(self, usecase: str) -> RolloutState | None:
        """The newest rollout of ``usecase``, running or finished."""
        data = self._doc(usecase)["current"]
        return None if data is None else RolloutState(**data)

    def active(self, usecase: str) -> RolloutState | None:
        state = self.current(usecase)
        return state if state is not None and state.running else None

    def past(self, usecase: str) -> list[RolloutState]:
        return [RolloutState(**d) for d in self._doc(usecase)["past"]]

    def begin(self, state: RolloutState) -> RolloutState:
        """Record a new rollout, or refuse it while another of the same use case runs."""
        state.id = state.id or uuid.uuid4().hex[:10]
        state.started_at = state.step_started_at = now()

        def change(doc: dict[str, Any]) -> None:
            running = doc["current"]
            if running is not None and running["status"] == RUNNING:
                raise RolloutError(
                    f"use case '{state.usecase}' has rollout {running['id']} of v{running['challenger']} under way; "
                    "promote or abort it first"
                )
            if running is not None:
                doc["past"].append(running)
            doc["current"] = asdict(state)

        update_json(self._path(state.usecase), {"current": None, "past": []}, change)
        return state

    def update(self, usecase: str, rollout_id: str, **changes: Any) -> RolloutState:
        """Change the running rollout ``rollout_id``; refused if it finished or was replaced meanwhile."""
        event = changes.pop("event", None)

        def change(doc: dict[str, Any]) -> RolloutState:
            data = doc["current"]
            if data is None or data["id"] != rollout_id or data["status"] != RUNNING:
                raise RolloutError(f"rollout {rollout_id} of '{usecase}' is not running")
            data.update(changes)
            if event is not None:
                data["history"].append({"at": now(), **event})
            return RolloutState(**data)

        return update_json(self._path(usecase), {"current": None, "past": []}, change)
