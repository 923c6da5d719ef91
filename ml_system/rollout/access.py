"""Who may move a use case's model: a team token, checked by ``teams.identity``, on every action.

A use case listed in ``rollout.owners`` accepts only its owning team's token; any other use case
accepts any team's valid token. A refusal is written to the audit log (and to the token store's
refusal log) before the error reaches the caller, and nothing else happens.
"""

from __future__ import annotations

from ml_system.config import PlatformConfig
from ml_system.errors import AuthenticationError, TeamError
from ml_system.rollout.audit import AuditEntry, AuditLog
from ml_system.teams.groups import load_groups
from ml_system.teams.identity import Team, TokenStore, authenticate, authorize


def check(config: PlatformConfig, usecase: str, token: str | None, action: str, model: str = "") -> Team:
    """The team acting, or ``AuthenticationError`` after the refusal is audited."""
    groups = load_groups(config.teams.resource_groups)
    store = TokenStore(config.teams.state_dir)
    owner = config.rollout.owners.get(usecase)
    try:
        return authorize(token, owner, groups, store) if owner else authenticate(token, groups, store)
    except (AuthenticationError, TeamError) as exc:
        AuditLog(config.rollout.uri).append(
            AuditEntry(action=action, usecase=usecase, outcome="refused", who="unknown", reason=str(exc), model=model)
        )
        raise AuthenticationError(str(exc)) from None
