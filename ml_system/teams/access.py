"""Whether a platform enforces team tokens, and who a token speaks for when it does.

The convention is Feast's and MLflow's: a platform nobody configured for teams stays open (the
embedded quickstart, a notebook, a single user), and access control switches on with the first
team token. ``teams.access`` in the platform config says which:

- ``auto`` (default): enforced as soon as any team token exists (``tokens.json`` in the teams
  state folder, or a ``token_sha256`` in ``resource_groups.yaml``). Issuing the first token is
  the act that turns it on; revoking the last turns it off again.
- ``enforce``: always; with no token issued every change is refused.
- ``open``: never (the ``--by`` text is recorded as who made a change).

Enforcement is at the platform's entry points (``mlsys`` commands, the serving app's routes): a
process that can write the registry's files directly is trusted with them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ml_system.config import PlatformConfig
from ml_system.errors import AuthenticationError, TeamError
from ml_system.teams.groups import ResourceGroups, load_groups
from ml_system.teams.identity import TokenStore, identify, refuse, token_index


@dataclass(frozen=True)
class Actor:
    """A team acting through one of its tokens."""

    team: str
    token_id: str

    @property
    def who(self) -> str:
        """What histories and audit logs record: the team, and which of its tokens."""
        return f"team {self.team} (token {self.token_id})"


class Access:
    """A platform's teams, token hashes and access mode, read once per command or replica start."""

    def __init__(self, mode: str, groups: ResourceGroups | None, store: TokenStore) -> None:
        self.mode = mode
        self.groups = groups
        self.store = store

    @classmethod
    def from_config(cls, config: PlatformConfig) -> Access:
        """The groups file is optional unless access is enforced: an open platform may have no teams at all."""
        path = Path(config.teams.resource_groups)
        groups = load_groups(path) if path.exists() else None
        return cls(config.teams.access, groups, TokenStore(config.teams.state_dir))

    def index(self) -> dict[str, tuple[str, str]]:
        """Every known token hash -> (team, token id)."""
        return token_index(self.groups, self.store) if self.groups is not None else {}

    @property
    def enforced(self) -> bool:
        if self.mode == "open":
            return False
        if self.mode == "enforce":
            return True
        return bool(self.store.records()) or (
            self.groups is not None and any(spec.token_sha256 for spec in self.groups.teams.values())
        )

    def _groups(self) -> ResourceGroups:
        if self.groups is None:
            raise TeamError("team tokens are enforced but no resource groups file exists (set teams.resource_groups)")
        return self.groups

    def actor(self, token: str | None) -> Actor:
        """The team ``token`` belongs to, or ``AuthenticationError`` (the refusal is logged)."""
        team, token_id = identify(token, self._groups(), self.store)
        return Actor(team.name, token_id)

    def require_team(self, actor: Actor, team: str, what: str) -> None:
        """Refuse (and log) ``actor`` acting on ``what``, a resource owned by ``team``, unless it is that team."""
        if actor.team != team:
            refuse(self.store, f"a token of team '{actor.team}' acting on {what} of team '{team}'", None)
            raise AuthenticationError(
                f"{what} belongs to team '{team}'; the token is of team '{actor.team}'; nothing was changed"
            )

    def check_team_exists(self, team: str, what: str) -> None:
        groups = self._groups()
        if team not in groups.teams:
            have = sorted(groups.teams)
            raise TeamError(f"{what} names team '{team}', which is not a team of the resource groups {have}")
