"""Moving the ``champion`` alias: only through the gate, or forced with a reason; always audited.

Training registers a new version as ``challenger`` (the very first version of a model, with no
champion to compare against, becomes champion). ``promote`` moves ``champion`` to the challenger
when the gate recorded on the challenger passed against the champion serving now; ``force`` skips
the gate but needs a reason. ``rollback`` moves ``champion`` back to the version it replaced
(recorded as the ``previous_champion`` tag at promotion). Serving replicas follow the alias by
themselves (``ScorerSettings.alias_poll_s``), so moving it is the whole deployment.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from ml_system.config import PlatformConfig
from ml_system.errors import ModelNotFoundError, RolloutError
from ml_system.rollout import access, gate
from ml_system.rollout.audit import AuditEntry, AuditLog
from ml_system.rollout.state import RolloutStore
from ml_system.training import tracking
from ml_system.usecase import UseCase

PREVIOUS_TAG = "previous_champion"


@dataclass(frozen=True)
class Promotion:
    model: str
    from_version: str
    to_version: str
    team: str
    forced: bool
    gate: str


def _champion(config: PlatformConfig, model: str) -> tracking.RegisteredModel | None:
    try:
        return tracking.resolve(config.mlflow, model, alias=tracking.CHAMPION)
    except ModelNotFoundError:
        return None


def gate_verdict(challenger: tracking.RegisteredModel, champion: tracking.RegisteredModel | None) -> tuple[bool, str]:
    """Whether the gate recorded on ``challenger`` lets it replace ``champion`` now, and why."""
    result = gate.recorded(challenger)
    if result is None:
        return False, f"v{challenger.version} was never compared with the champion; run `mlsys models gate`"
    compared = result.champion.version if result.champion else None
    current = champion.version if champion else None
    if compared != current:
        return False, (
            f"the gate compared v{challenger.version} with champion v{compared}, but the champion is now v{current}; "
            "run `mlsys models gate` again"
        )
    return result.passed, result.summary()


def move_champion(config: PlatformConfig, model: str, version: str, previous: str | None, team: str) -> None:
    c = tracking.client(config.mlflow)
    c.set_registered_model_alias(model, tracking.CHAMPION, version)
    if previous:
        c.set_model_version_tag(model, version, PREVIOUS_TAG, previous)
    c.set_model_version_tag(model, version, "promoted_by", team)
    c.set_model_version_tag(model, version, "promoted_at", datetime.now(UTC).isoformat(timespec="seconds"))
    try:
        if tracking.resolve(config.mlflow, model, alias=tracking.CHALLENGER).version == version:
            c.delete_registered_model_alias(model, tracking.CHALLENGER)
    except ModelNotFoundError:
        pass


def promote(
    config: PlatformConfig,
    usecase: UseCase,
    token: str | None,
    *,
    force: bool = False,
    reason: str = "",
    version: str | None = None,
) -> Promotion:
    """Move ``champion`` to the challenger (or ``version``) if the gate passed, or when forced with a reason."""
    model, action = usecase.model_name, "force_promote" if force else "promote"
    audit = AuditLog(config.rollout.uri)
    team = access.check(config, usecase.name, token, action, model)

    def refuse(why: str, to: str = "") -> RolloutError:
        audit.append(AuditEntry(action, usecase.name, "refused", team.name, why, model, to_version=to))
        return RolloutError(f"promotion of '{model}' refused: {why}; nothing changed")

    if force and not reason.strip():
        raise refuse("--force needs --reason saying why the gate is skipped")
    try:
        if version is not None:
            challenger = tracking.resolve(config.mlflow, model, version=version)
        else:
            challenger = tracking.resolve(config.mlflow, model, alias=tracking.CHALLENGER)
    except ModelNotFoundError as exc:
        raise refuse(str(exc)) from None
    champion = _champion(config, model)
    if champion is not None and champion.version == challenger.version:
        raise refuse(f"v{challenger.version} is the champion already", challenger.version)
    active = RolloutStore(config.rollout.uri).active(usecase.name)
    if active is not None:
        raise refuse(f"rollout {active.id} of v{active.challenger} is under way; `mlsys rollout promote` or abort it")
    passed, why = gate_verdict(challenger, champion)
    if not passed and not force:
        raise refuse(why, challenger.version)
    previous = champion.version if champion else ""
    move_champion(config, model, challenger.version, previous, team.name)
    audit.append(
        AuditEntry(
            action,
            usecase.name,
            "done",
            team.name,
            reason or why,
            model,
            previous,
            challenger.version,
            {"gate": why, "gate_passed": passed},
        )
    )
    return Promotion(model, previous, challenger.version, team.name, force, why)


def rollback(config: PlatformConfig, usecase: UseCase, token: str | None, reason: str) -> Promotion:
    """Move ``champion`` back to the version the current one replaced."""
    model = usecase.model_name
    audit = AuditLog(config.rollout.uri)
    team = access.check(config, usecase.name, token, "rollback", model)
    champion = _champion(config, model)
    previous = champion.tags.get(PREVIOUS_TAG, "") if champion else ""
    if champion is None or not previous:
        why = "the champion replaced no earlier version" if champion else "there is no champion"
        audit.append(AuditEntry("rollback", usecase.name, "refused", team.name, why, model))
        raise RolloutError(f"rollback of '{model}' refused: {why}; nothing changed")
    c = tracking.client(config.mlflow)
    c.set_registered_model_alias(model, tracking.CHAMPION, previous)
    c.set_model_version_tag(model, champion.version, "rolled_back_by", team.name)
    audit.append(AuditEntry("rollback", usecase.name, "done", team.name, reason, model, champion.version, previous))
    return Promotion(model, champion.version, previous, team.name, True, "rolled back")
