"""Resource groups: the teams that share one Ray cluster, their quotas, priorities and borrowing.

Declared in ``cluster/resource_groups.yaml`` and validated here before anything runs: an unknown
field, a negative or missing quota, a malformed token hash is refused with the field named. A
quota larger than the cluster, or quotas that add up to more than it, are refused when the
admission queue starts on a cluster (``check_capacity``), because only then is the cluster known.

The vocabulary is Kueue's, where Kubernetes users meet the same problem: a team's quota is its
*nominal* share, guaranteed whenever it asks for it; idle nominal quota of a team that may *lend*
can be *borrowed* by a team that may *borrow*; borrowed work is *preempted* when the owner wants
its quota back. Priority orders the borrowers (who borrows first, who gives back first).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ml_system.errors import TeamError
from ml_system.teams.resources import GIB, Resources

TEAM_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
"""DNS-label-like, so that a team name is also a valid Ray job id prefix and Kubernetes queue name."""
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class QuotaSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    cpu: float = Field(0.0, ge=0)
    gpu: float = Field(0.0, ge=0)
    memory_gb: float = Field(0.0, ge=0)
    """GiB of Ray's ``memory`` resource (work that declares no memory counts none)."""

    @model_validator(mode="after")
    def _not_empty(self) -> QuotaSpec:
        if self.cpu == 0 and self.gpu == 0 and self.memory_gb == 0:
            raise ValueError("a quota needs at least one of cpu, gpu, memory_gb above 0")
        return self

    def resources(self) -> Resources:
        return Resources(self.cpu, self.gpu, self.memory_gb * GIB)


class TeamSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    quota: QuotaSpec
    priority: int = Field(0, ge=0, le=1_000_000)
    """Higher borrows first and gives borrowed quota back last."""
    can_borrow: bool = True
    """May run work on other teams' idle quota (work that can be preempted: trials, tasks)."""
    can_lend: bool = True
    """Lets other teams borrow this team's quota while it is idle."""
    token_sha256: list[str] = Field(default_factory=list)
    """SHA-256 hashes of the team's tokens, for clusters configured from Git; ``mlsys groups token
    issue`` adds tokens to the state folder instead."""
    description: str = ""

    @field_validator("token_sha256")
    @classmethod
    def _hex_hashes(cls, hashes: list[str]) -> list[str]:
        for value in hashes:
            if not SHA256_HEX.match(value):
                raise ValueError(f"'{value[:12]}...' is not a lowercase hex SHA-256 (64 characters)")
        return hashes


class ResourceGroups(BaseModel):
    """The whole file: teams by name, and the give-back bound every borrower agrees to."""

    model_config = ConfigDict(extra="forbid")

    give_back_s: float = Field(30.0, gt=0, le=3600)
    """Bound on how long borrowed quota takes to come back once its owner asks for it."""
    teams: dict[str, TeamSpec] = Field(min_length=1)

    @field_validator("teams")
    @classmethod
    def _team_names(cls, teams: dict[str, TeamSpec]) -> dict[str, TeamSpec]:
        for name in teams:
            if not TEAM_NAME.match(name):
                raise ValueError(f"team name '{name}' must match {TEAM_NAME.pattern}")
        return teams

    def team(self, name: str) -> TeamSpec:
        try:
            return self.teams[name]
        except KeyError:
            known = ", ".join(sorted(self.teams))
            raise TeamError(f"unknown team '{name}' (resource groups define: {known})") from None

    def quota(self, name: str) -> Resources:
        return self.team(name).quota.resources()

    def total_quota(self) -> Resources:
        total = Resources()
        for spec in self.teams.values():
            total = total + spec.quota.resources()
        return total

    def check_capacity(self, capacity: Resources) -> None:
        """Refuse quotas the cluster cannot hold: one team's alone, or all of them together.

        Quotas that add up to more than the cluster would make the guarantee a lie: two teams
        each asking for their nominal share at once could not both get it.
        """
        for name, spec in self.teams.items():
            quota = spec.quota.resources()
            if not quota.fits(capacity):
                raise TeamError(
                    f"team '{name}': quota {quota.describe()} is larger than the cluster ({capacity.describe()})"
                )
        total = self.total_quota()
        if not total.fits(capacity):
            raise TeamError(
                f"quotas add up to {total.describe()}, more than the cluster has ({capacity.describe()}); "
                "lower them or add nodes"
            )

    def document(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def parse_groups(data: Any, source: str = "resource groups") -> ResourceGroups:
    try:
        return ResourceGroups.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise TeamError(f"{source}: field '{field}': {first['msg']}") from None


def load_groups(path: str | Path) -> ResourceGroups:
    """Read and validate ``resource_groups.yaml``."""
    file = Path(path)
    if not file.exists():
        raise TeamError(f"resource groups file {file} does not exist (set teams.resource_groups or --groups)")
    try:
        data = yaml.safe_load(file.read_text())
    except yaml.YAMLError as exc:
        raise TeamError(f"resource groups file {file} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise TeamError(f"resource groups file {file} must hold a mapping with a 'teams' key")
    return parse_groups(data, f"resource groups file {file}")
