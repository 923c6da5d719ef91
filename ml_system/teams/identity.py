"""Team identity: a team's members act with a bearer token; the platform keeps only its hash.

``authenticate(token) -> Team`` is the one check every entry point that acts for a team uses:
the ``mlsys`` commands that submit, cancel or run a team's work take ``--team`` and the token in
``MLSYS_TEAM_TOKEN``; the rollout commands and the HTTP routes that change state reuse it.

Tokens are 256 random bits (``secrets.token_urlsafe(32)``) behind an ``mlsys_`` prefix that
secret scanners can match. Only their SHA-256 is stored: a salted slow hash (bcrypt, scrypt)
protects guessable passwords, but a 256-bit random token cannot be guessed, so a fast hash is
enough, as for GitHub's and Ray's own tokens. A presented token's hash is compared with every
stored hash by ``hmac.compare_digest``, without stopping at the first match, so the time taken
says nothing about which stored hash came close.

Hashes come from two places: the ``token_sha256`` lists of ``resource_groups.yaml`` (for
clusters configured from Git) and ``tokens.json`` in the teams state folder, written by
``mlsys groups token issue``. A refused token changes nothing; it is logged, and appended to
``refusals.log`` beside the hashes, with a short prefix of its hash (never the token).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import secrets
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from ml_system.errors import AuthenticationError, TeamError
from ml_system.teams.durable import read_json, update_json
from ml_system.teams.groups import ResourceGroups

log = logging.getLogger(__name__)

TOKEN_ENV = "MLSYS_TEAM_TOKEN"
TOKEN_PREFIX = "mlsys_"


@dataclass(frozen=True)
class Team:
    """Who a token speaks for."""

    name: str
    priority: int


@dataclass(frozen=True)
class TokenRecord:
    id: str
    team: str
    sha256: str
    created_at: str
    label: str = ""


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class TokenStore:
    """Token hashes issued by ``mlsys groups token issue``, in ``<state_dir>/tokens.json``."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / "tokens.json"

    def records(self) -> list[TokenRecord]:
        return [TokenRecord(**r) for r in read_json(self.path, {"tokens": []})["tokens"]]

    def issue(self, team: str, groups: ResourceGroups, label: str = "") -> tuple[TokenRecord, str]:
        """A new token for ``team``; the token itself is returned once and never stored."""
        groups.team(team)
        token = new_token()
        record = TokenRecord(
            id=uuid.uuid4().hex[:12],
            team=team,
            sha256=hash_token(token),
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            label=label,
        )
        update_json(self.path, {"tokens": []}, lambda doc: doc["tokens"].append(asdict(record)))
        return record, token

    def refused(self, reason: str, presented_sha256: str | None) -> None:
        """Append a refusal to ``refusals.log`` (JSON lines): when, why, and a short hash prefix, never the token."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = {"at": datetime.now(UTC).isoformat(timespec="seconds"), "reason": reason}
        if presented_sha256:
            line["sha256_prefix"] = presented_sha256[:8]
        with open(self.path.with_name("refusals.log"), "a") as out:
            out.write(json.dumps(line) + "\n")

    def revoke(self, token_id: str) -> TokenRecord:
        def drop(doc: dict[str, list[dict[str, str]]]) -> TokenRecord:
            for i, row in enumerate(doc["tokens"]):
                if row["id"] == token_id:
                    return TokenRecord(**doc["tokens"].pop(i))
            raise TeamError(f"no token with id '{token_id}' (see `mlsys groups token list`)")

        return update_json(self.path, {"tokens": []}, drop)


def token_index(groups: ResourceGroups, store: TokenStore | None) -> dict[str, tuple[str, str]]:
    """Every known hash -> (team, token id); a hash listed in the YAML has no record, its id is ``sha256:<prefix>``.

    Serving replicas keep this dict and answer a request with one lookup of the presented token's hash.
    """
    index = {h: (name, f"sha256:{h[:8]}") for name, spec in groups.teams.items() for h in spec.token_sha256}
    if store is not None:
        index.update({r.sha256: (r.team, r.id) for r in store.records()})
    return index


def identify(token: str | None, groups: ResourceGroups, store: TokenStore | None = None) -> tuple[Team, str]:
    """The team ``token`` belongs to and the token's id, or ``AuthenticationError`` (logged; nothing else happens)."""
    if not token:
        refuse(store, "no token", None)
        raise AuthenticationError(f"no team token: set {TOKEN_ENV} to a token of your team")
    presented = hash_token(token)
    found: tuple[str, str] | None = None
    for stored, owner in token_index(groups, store).items():
        # every stored hash is compared, match or not, so timing reveals nothing
        if hmac.compare_digest(stored, presented) and found is None:
            found = owner
    if found is None or found[0] not in groups.teams:
        refuse(store, "unknown token", presented)
        raise AuthenticationError("the team token is not valid (revoked, mistyped, or of a team that was removed)")
    return Team(found[0], groups.teams[found[0]].priority), found[1]


def authenticate(token: str | None, groups: ResourceGroups, store: TokenStore | None = None) -> Team:
    """The team ``token`` belongs to, or ``AuthenticationError`` (logged; nothing else happens)."""
    return identify(token, groups, store)[0]


def authorize(token: str | None, team: str, groups: ResourceGroups, store: TokenStore | None = None) -> Team:
    """``authenticate``, then refuse a token of any team but ``team``."""
    groups.team(team)
    who = authenticate(token, groups, store)
    if who.name != team:
        refuse(store, f"a token of team '{who.name}' acting for team '{team}'", None)
        raise AuthenticationError(f"the token belongs to team '{who.name}', not '{team}'; nothing was changed")
    return who


def refuse(store: TokenStore | None, reason: str, presented: str | None) -> None:
    """Log a refusal and append it to ``refusals.log``: every entry point that refuses a token says so here."""
    log.warning("team token refused: %s%s", reason, f" (sha256 {presented[:8]}...)" if presented else "")
    if store is not None:
        store.refused(reason, presented)
