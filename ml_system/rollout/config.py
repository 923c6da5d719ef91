"""A rollout's plan as a typed YAML document, checked before anything moves.

In the spirit of Flagger's canary analysis: ``steps`` are the challenger's traffic weights (Flagger's
``stepWeights``), each held for ``step_s`` (its ``interval``) and judged by ``thresholds`` (its
``thresholdRange`` per metric) on what the prediction log recorded during the step. A step that
passes moves to the next; one that fails rolls back at once; the last passing step promotes.

    usecase: flights
    strategy: canary          # canary | blue_green | shadow
    steps: [5, 25, 50, 100]
    step_s: 60
    thresholds:
      max_error_rate: 0.01    # failed / answered requests of the challenger
      max_p99_ratio: 2.0      # challenger p99 latency / champion p99 latency
      max_psi: 0.25           # challenger's prediction distribution vs the champion's
      max_metric_loss: 0.02   # the use case's metric on labelled rows, challenger vs champion

Refused at load, with the field named: weights outside (0, 100], steps that do not increase, a
canary whose last step is not 100 (with ``auto_promote``), thresholds that are all off (nothing
could ever fail), and unknown keys.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ml_system.errors import RolloutError


class Thresholds(BaseModel):
    """Limits a step must stay within; None turns one off."""

    model_config = ConfigDict(extra="forbid")

    max_error_rate: float | None = Field(0.01, ge=0, le=1)
    max_p99_ms: float | None = Field(None, gt=0)
    """Absolute bound on the challenger's p99 request latency inside the replica."""
    max_p99_ratio: float | None = Field(3.0, gt=0)
    """Bound on the challenger's p99 over the champion's, measured in the same step."""
    max_psi: float | None = Field(0.25, ge=0)
    max_metric_loss: float | None = Field(None, ge=0)
    """Bound on how far the challenger's metric on labelled rows may fall behind the champion's; needs
    the use case's feedback (labels of served rows)."""
    min_requests: int = Field(20, ge=1)
    """Requests each arm must answer in a step before it is judged (fewer: the step waits)."""
    min_labels: int = Field(30, ge=1)
    """Labelled rows each arm needs before ``max_metric_loss`` is judged (fewer: not judged this step)."""

    @model_validator(mode="after")
    def _something_to_check(self) -> Thresholds:
        limits = (self.max_error_rate, self.max_p99_ms, self.max_p99_ratio, self.max_psi, self.max_metric_loss)
        if all(v is None for v in limits):
            raise ValueError("every threshold is off, so a step could never fail; set at least one")
        return self


class RolloutConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    usecase: str | None = None
    """The use case it is for; None: the one the command names."""
    strategy: Literal["canary", "blue_green", "shadow"] = "canary"
    version: str | None = Field(None, pattern=r"^[0-9]{1,9}$")
    """The version to roll out (default: the ``challenger`` alias)."""
    steps: list[float] = Field(default_factory=lambda: [5, 25, 50, 100])
    step_s: float = Field(60.0, gt=0, le=86_400)
    max_step_wait_s: float = Field(900.0, gt=0)
    """A step that has not gathered ``min_requests`` per arm by then fails (no traffic is no evidence)."""
    thresholds: Thresholds = Field(default_factory=Thresholds)
    auto_promote: bool = True
    """Promote after the last step passes; false: hold there until ``mlsys rollout promote``."""

    @model_validator(mode="after")
    def _steps(self) -> RolloutConfig:
        if self.strategy == "blue_green" and self.steps != [100]:
            self.steps = [100.0]
        if self.strategy == "shadow":
            self.steps = [0.0] * max(len(self.steps), 1)
            return self
        if not self.steps:
            raise ValueError("steps: give at least one weight")
        for i, w in enumerate(self.steps):
            if not 0 < w <= 100:
                raise ValueError(f"steps[{i}]: weight {w:g} is outside (0, 100]")
        for i in range(1, len(self.steps)):
            if self.steps[i] <= self.steps[i - 1]:
                raise ValueError(f"steps[{i}]: weight {self.steps[i]:g} does not increase on {self.steps[i - 1]:g}")
        if self.auto_promote and self.steps[-1] != 100:
            raise ValueError(f"steps: the last weight is {self.steps[-1]:g}; auto_promote needs it to reach 100")
        return self


def parse_rollout(data: Any, source: str = "rollout config") -> RolloutConfig:
    try:
        return RolloutConfig.model_validate(data or {})
    except ValidationError as exc:
        first = exc.errors()[0]
        msg = str(first["msg"]).removeprefix("Value error, ")
        field = ".".join(str(p) for p in first["loc"])
        if not field and ": " in msg:  # a check across fields names its field first
            field, msg = msg.split(": ", 1)
        raise RolloutError(f"{source}: field '{field or '(top level)'}': {msg}") from None


def load_rollout(path: str | Path) -> RolloutConfig:
    file = Path(path)
    if not file.exists():
        raise RolloutError(f"rollout config {file} does not exist")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise RolloutError(f"rollout config {file} is not valid YAML: {exc}".replace("\n", " ")) from None
    return parse_rollout(data, f"rollout config {file}")
