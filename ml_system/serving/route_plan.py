"""What the replicas of a use case's app route to: the plan a rollout writes and every replica reads.

One small JSON document per use case, ``<rollout.uri>/routes/<usecase>.json``, replaced atomically.
The rollout controller writes it; each replica reads it every ``alias_poll_s``, so a weight change
reaches every replica without a redeploy or restart, and a restarted replica (or controller) finds
the plan where it was left. With no plan, or ``strategy: none``, the app serves its champion alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from ml_system.teams.durable import write_json

Strategy = Literal["none", "canary", "blue_green", "shadow"]


@dataclass(frozen=True)
class RoutePlan:
    strategy: Strategy = "none"
    challenger_version: str = ""
    weight: float = 0.0
    """Percent of requests the challenger answers (canary, blue-green); a shadow answers none."""
    rollout_id: str = ""
    promoted_version: str = ""
    """Set when a rollout ends in promotion: a replica keeps answering with that version while its
    champion loads it, so traffic never goes back to the old champion in between."""

    @property
    def routes(self) -> bool:
        return self.strategy != "none" and bool(self.challenger_version)


class RoutePlanStore:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder) / "routes"

    def path(self, usecase: str) -> Path:
        return self.folder / f"{usecase}.json"

    def read(self, usecase: str) -> RoutePlan:
        try:
            return RoutePlan(**json.loads(self.path(usecase).read_text()))
        except FileNotFoundError:
            return RoutePlan()

    def write(self, usecase: str, plan: RoutePlan) -> None:
        write_json(self.path(usecase), asdict(plan))
