"""``mlsys models promote | gate | rollback | audit``: moving ``champion``, through the gate and the audit log."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from ml_system.cli.common import ConfigOpt, HomeOpt, UseCaseOpt, cli_config, console, fails_cleanly
from ml_system.cli.models import models_app
from ml_system.teams.identity import TOKEN_ENV

TokenOpt = typer.Option(None, "--token", envvar=TOKEN_ENV, show_default=False, help=f"Team token (or ${TOKEN_ENV})")


@models_app.command("promote")
@fails_cleanly
def models_promote(
    usecase: str | None = UseCaseOpt,
    token: str | None = TokenOpt,
    force: bool = typer.Option(False, "--force", help="Promote although the gate failed (needs --reason)"),
    reason: str = typer.Option("", "--reason", help="Why (required with --force; written to the audit log)"),
    version: str | None = typer.Option(None, "--version", help="Promote this version instead of the challenger"),
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """Move the champion alias to the challenger when its gate passed (or with --force --reason)."""
    from ml_system.pipelines.steps import usecase_for
    from ml_system.rollout.promotion import promote

    cfg = cli_config(config, home)
    done = promote(cfg, usecase_for(cfg, usecase), token, force=force, reason=reason, version=version)
    how = "forced" if done.forced else "gate passed"
    moved = f"champion v{done.from_version or '-'} -> v{done.to_version}"
    console.print(f"{done.model}: {moved} by team {done.team} ({how}: {done.gate})")


@models_app.command("rollback")
@fails_cleanly
def models_rollback(
    usecase: str | None = UseCaseOpt,
    token: str | None = TokenOpt,
    reason: str = typer.Option(..., "--reason", help="Why (written to the audit log)"),
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """Move the champion alias back to the version the current champion replaced."""
    from ml_system.pipelines.steps import usecase_for
    from ml_system.rollout.promotion import rollback

    cfg = cli_config(config, home)
    done = rollback(cfg, usecase_for(cfg, usecase), token, reason)
    console.print(f"{done.model}: champion v{done.from_version} -> v{done.to_version} by team {done.team}")


@models_app.command("gate")
@fails_cleanly
def models_gate(
    usecase: str | None = UseCaseOpt,
    version: str | None = typer.Option(None, "--version", help="Compare this version (default: the challenger)"),
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """Compare the challenger with the champion on the held-out rows and record the result in MLflow."""
    from ml_system.cluster import connect
    from ml_system.features import FeatureStore
    from ml_system.pipelines.steps import usecase_for
    from ml_system.rollout.gate import evaluate_and_record
    from ml_system.training import tracking, trainer

    cfg = cli_config(config, home)
    uc = usecase_for(cfg, usecase)
    version = version or tracking.resolve(cfg.mlflow, uc.model_name, alias=tracking.CHALLENGER).version
    connect(cfg.ray)
    ts = trainer.build_training_set(FeatureStore(cfg), uc)
    result = evaluate_and_record(cfg, uc, ts.split("test"), ts.label, version)
    console.print(json.dumps(result.to_dict(), indent=1))
    console.print(result.summary())


@models_app.command("audit")
@fails_cleanly
def models_audit(
    usecase: str | None = UseCaseOpt,
    last: int = typer.Option(20, min=1, help="Newest entries to show"),
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """The audit log of promotions and rollouts (append-only; a broken hash chain is reported)."""
    from ml_system.rollout.audit import AuditLog

    cfg = cli_config(config, home)
    log = AuditLog(cfg.rollout.uri)
    table = Table(title=f"audit log {log.path}")
    for col in ("at", "use case", "action", "outcome", "who", "versions", "reason"):
        table.add_column(col)
    for e in log.entries(usecase)[-last:]:
        versions = f"{e.from_version or '-'} -> {e.to_version or '-'}" if e.from_version or e.to_version else ""
        table.add_row(e.at, e.usecase, e.action, e.outcome, e.who, versions, e.reason)
    console.print(table)
    broken = log.verify()
    if broken:
        console.print(f"[red]hash chain broken at lines {broken}: entries were edited or removed[/red]")
        raise typer.Exit(1)
