"""``mlsys features delete`` and ``mlsys features snapshot gc``: commands on the online data itself.

Thin over ``FeatureStore.delete`` and ``FeatureStore.gc_snapshots``; kept apart from
``features.py`` so that each CLI module stays one screenful of commands.
"""

from __future__ import annotations

import typer

from ml_system.cli.common import ConfigOpt, HomeOpt, cli_config, console, err, fails_cleanly
from ml_system.cli.features import features_app, snapshot_app


def _entity(text: str) -> dict[str, str]:
    """``driver_id=1`` or ``driver_id=1,city=nyc``: one entity's join-key values."""
    entity: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip():
            err.print(f"[red]error:[/red] --key '{text}' must look like 'name=value' (several: 'a=1,b=x')")
            raise typer.Exit(2)
        entity[key.strip()] = value.strip()
    return entity


KeyOpt = typer.Option(..., "--key", help="One entity's join keys, 'k=v' or 'k1=v1,k2=v2'; repeatable")


@features_app.command("delete")
@fails_cleanly
def features_delete(
    view: str,
    key: list[str] = KeyOpt,
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """Delete entities' rows of VIEW from the online store (every snapshot a reader may be switched to)."""
    from ml_system.features import FeatureStore

    entities = [_entity(k) for k in key]
    removed = FeatureStore(cli_config(config, home)).delete(view, entities)
    console.print(f"{view}: deleted {removed} of {len(entities)} entities from the served online data")


@snapshot_app.command("gc")
@fails_cleanly
def snapshot_gc(
    keep: int = typer.Option(1, min=1, help="Rollback targets to keep (the most recently replaced snapshots)"),
    abandoned_after: float | None = typer.Option(
        None, help="Seconds without a heartbeat after which a load counts as abandoned (default from the config)"
    ),
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """Reclaim replaced snapshots beyond KEEP rollback targets, and failed or abandoned loads."""
    from ml_system.features import FeatureStore

    report = FeatureStore(cli_config(config, home)).gc_snapshots(keep=keep, abandoned_after_s=abandoned_after)
    console.print(f"reclaimed {len(report.reclaimed)} snapshots: {', '.join(report.reclaimed) or '-'}")
    console.print(f"kept: {', '.join(s or 'base' for s in report.kept)}")
