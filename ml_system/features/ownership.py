"""Which team may change a feature view: the registry's guard, and who the change is recorded as.

A view names its owning team (``FeatureView.team``, a team of the resource groups). Where team
tokens are enforced (``teams.access``), a registry change that creates, changes, deletes or moves
a view through its lifecycle is written only when the acting token belongs to the view's team:

- a view already registered with a team is changed only by that team (changing ``team`` itself is
  the owner handing the view over, so the registered team decides);
- a new view, or a registered view with no team, is changed only by the team it declares;
- a view that declares no team, and entities, services and on-demand views, take any valid token.

The guard runs inside the registry's write, against the very document it replaces, so a change
that raced another writer is checked again; a refusal is logged and writes nothing.
"""

from __future__ import annotations

from typing import Any

from ml_system.config import PlatformConfig
from ml_system.features.registry import Guard
from ml_system.teams.access import Access, Actor


def view_guard(access: Access, actor: Actor) -> Guard:
    """A registry guard refusing any view change ``actor``'s team does not own."""

    def guard(base: dict[str, Any], doc: dict[str, Any]) -> None:
        before, after = base["feature_views"], doc["feature_views"]
        for name in sorted(set(before) | set(after)):
            old, new = before.get(name), after.get(name)
            if old == new:
                continue
            declared = (new or {}).get("team", "")
            if declared and declared != (old or {}).get("team", ""):
                access.check_team_exists(declared, f"feature view '{name}'")
            owner = (old or {}).get("team", "") or declared
            if owner:
                access.require_team(actor, owner, f"feature view '{name}'")

    return guard


def acting_on_views(config: PlatformConfig, token: str | None, by: str) -> tuple[str, Guard | None]:
    """Who a registry change is recorded as, and the guard it must pass.

    With tokens enforced it is the token's team and id (a missing or unknown token is refused
    here, before anything is read); on an open platform it is ``by`` and nothing is checked.
    """
    access = Access.from_config(config)
    if not access.enforced:
        return by, None
    actor = access.actor(token)
    return actor.who, view_guard(access, actor)
