"""``mlsys features``: definitions, registry, lifecycle, lineage, materialization and online snapshots."""

from __future__ import annotations

import importlib
from typing import Any

import typer
from rich.table import Table

from ml_system.cli.common import (
    ByOpt,
    ConfigOpt,
    HomeOpt,
    UseCaseOpt,
    by_name,
    cli_config,
    console,
    err,
    fails_cleanly,
    parse_time,
    when,
)
from ml_system.cli.groups import TokenOpt
from ml_system.config import PlatformConfig
from ml_system.errors import MLSystemError

features_app = typer.Typer(help="Feature definitions, registry and materialization.", no_args_is_help=True)
snapshot_app = typer.Typer(help="Online data snapshots: load, switch, roll back, reclaim.", no_args_is_help=True)
features_app.add_typer(snapshot_app, name="snapshot")
PruneOpt = typer.Option(False, "--prune", help="Also delete registered objects the module no longer defines")


def _definitions(module: str | None, usecase: str | None, cfg: PlatformConfig) -> tuple[str, list[Any]]:
    """The definitions of a module (``-m``), or else of the use case (flights by default)."""
    from ml_system.features import Entity, FeatureService, FeatureView, OnDemandFeatureView

    if module is None:
        from ml_system.pipelines.steps import usecase_for

        uc = usecase_for(cfg, usecase)
        return f"use case {uc.name}", list(uc.definitions)
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise MLSystemError(f"cannot import definitions module '{module}': {exc}") from exc
    kinds = (Entity, FeatureView, OnDemandFeatureView, FeatureService)
    found = [v for v in vars(mod).values() if isinstance(v, kinds)]
    if not found:
        raise MLSystemError(f"module '{module}' defines no Entity, FeatureView or FeatureService")
    return module, found


def _acting(cfg: PlatformConfig, token: str | None, by: str | None) -> tuple[str, Any]:
    """Who a registry change is recorded as, and the guard that checks the view's team (``docs/security.md``)."""
    from ml_system.features.ownership import acting_on_views

    who, guard = acting_on_views(cfg, token, by_name(by))
    if guard is not None and by:
        raise MLSystemError("--by is not taken where team tokens are enforced: the token's team is recorded")
    return who, guard


DefsOpt = typer.Option(None, "--module", "-m", help="Python module holding definitions (default: the use case's)")


@features_app.command("plan")
@fails_cleanly
def features_plan(
    module: str | None = DefsOpt,
    usecase: str | None = UseCaseOpt,
    prune: bool = PruneOpt,
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """Show what `apply` would change: objects added, changed (field by field) or removed."""
    from ml_system.features import FeatureStore

    cfg = cli_config(config, home)
    store = FeatureStore(cfg)
    source, defs = _definitions(module, usecase, cfg)
    changes = store.plan(defs, prune=prune)
    console.print(f"registry version {store.registry.version} vs {source}: {len(changes)} change(s)")
    for change in changes:
        sign = {"add": "+", "change": "~", "remove": "-"}[change.action]
        console.print(f"{sign} {change.kind} {change.name}", markup=False, soft_wrap=True)
        for line in change.fields:
            console.print(f"    {line}", markup=False, soft_wrap=True)


@features_app.command("apply")
@fails_cleanly
def features_apply(
    module: str | None = DefsOpt,
    usecase: str | None = UseCaseOpt,
    prune: bool = PruneOpt,
    by: str | None = ByOpt,
    token: str | None = TokenOpt,
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """Validate the definitions of a use case (or MODULE) and record them as a new registry version.

    Where team tokens are enforced, every view created or changed must belong to the token's team."""
    from ml_system.features import FeatureStore

    cfg = cli_config(config, home)
    who, guard = _acting(cfg, token, by)
    store = FeatureStore(cfg)
    source, defs = _definitions(module, usecase, cfg)
    before = store.registry.version
    version = store.apply(defs, by=who, prune=prune, guard=guard)
    if version == before:
        console.print(f"{source}: no changes; registry stays at version {version}")
    else:
        console.print(f"applied {len(defs)} definitions from {source}: registry version {version}")


def _consumer_names(consumers: list[Any]) -> str:
    return ", ".join(f"{c.model} v{c.version}" for c in consumers) or "-"


@features_app.command("list")
@fails_cleanly
def features_list(config: str | None = ConfigOpt, home: str | None = HomeOpt) -> None:
    """Feature views with owner, state, consumers (models) and freshness."""
    from ml_system.features import FeatureStore

    store = FeatureStore(cli_config(config, home))
    table = Table(title=f"feature views (registry version {store.registry.version})")
    for col in (
        "view",
        "entities",
        "features",
        "ttl",
        "team",
        "owner",
        "state",
        "models",
        "latest event",
        "online until",
    ):
        table.add_column(col)
    for view in store.list_feature_views():
        fresh = store.freshness(view.name)
        table.add_row(
            view.name,
            ", ".join(view.join_keys),
            str(len(view.schema)),
            str(view.ttl or "-"),
            view.team or "-",
            view.owner or "-",
            view.lifecycle.value if view.lifecycle else "-",
            _consumer_names(store.registry.consumers(view.name)),
            when(fresh.latest_event),
            when(fresh.materialized_until),
        )
    console.print(table)


@features_app.command("describe")
@fails_cleanly
def features_describe(name: str, config: str | None = ConfigOpt, home: str | None = HomeOpt) -> None:
    """One feature view: fields, source, owner, state history, consumers and freshness."""
    from ml_system.features import FeatureStore

    store = FeatureStore(cli_config(config, home))
    view = store.registry.feature_view(name)
    fresh = store.freshness(name)
    state = view.lifecycle.value if view.lifecycle else "-"
    console.print(f"[bold]{view.name}[/bold]: {view.description}")
    console.print(
        f"team {view.team or '-'}, owner {view.owner or '-'}, state {state}, ttl {view.ttl or 'none'}, tags {view.tags}"
    )
    console.print(f"entities {', '.join(e.name for e in view.entities)} (join keys {', '.join(view.join_keys)})")
    console.print(f"source: Delta table '{view.source.table}' at {store.offline.table_uri(view.source.table)}")
    console.print(f"latest event {when(fresh.latest_event)}, online until {when(fresh.materialized_until)}")
    console.print(f"models: {_consumer_names(store.registry.consumers(name))}")
    table = Table()
    table.add_column("feature")
    table.add_column("dtype")
    for f in view.schema:
        table.add_row(f.name, f.dtype)
    console.print(table)
    history = Table(title="lifecycle")
    for col in ("state", "by", "at", "reason"):
        history.add_column(col)
    for event in store.registry.history(name):
        history.add_row(event.state.value, event.by, when(event.at), event.reason)
    console.print(history)


@features_app.command("lineage")
@fails_cleanly
def features_lineage(
    name: str | None = typer.Argument(None, help="A feature view (default: all)"),
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """Which feature services read each view, and which model versions were trained on them."""
    from ml_system.features import FeatureStore

    store = FeatureStore(cli_config(config, home))
    views = [store.registry.feature_view(name)] if name else store.list_feature_views()
    services = store.registry.feature_services()
    table = Table(title="lineage")
    for col in ("view", "state", "owner", "feature services", "models", "archived models"):
        table.add_column(col)
    for view in views:
        readers = sorted(s.name for s in services.values() if any(r.startswith(f"{view.name}:") for r in s.features))
        everyone = store.registry.consumers(view.name, include_archived=True)
        table.add_row(
            view.name,
            view.lifecycle.value if view.lifecycle else "-",
            view.owner or "-",
            ", ".join(readers) or "-",
            _consumer_names([c for c in everyone if not c.archived]),
            _consumer_names([c for c in everyone if c.archived]),
        )
    console.print(table)


@features_app.command("lifecycle")
@fails_cleanly
def features_lifecycle(
    name: str,
    state: str = typer.Argument(..., help="draft | active | deprecated | retired"),
    by: str | None = ByOpt,
    reason: str = typer.Option("", help="Why, kept in the view's history"),
    token: str | None = TokenOpt,
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """Move a feature view through draft -> active -> deprecated -> retired (its team's token, where enforced)."""
    from ml_system.features import FeatureStore, Lifecycle

    if state not in {s.value for s in Lifecycle}:
        err.print(f"[red]error:[/red] state '{state}' is not one of {[s.value for s in Lifecycle]}")
        raise typer.Exit(2)
    cfg = cli_config(config, home)
    who, guard = _acting(cfg, token, by)
    version = FeatureStore(cfg).registry.set_lifecycle(name, state, by=who, reason=reason, guard=guard)
    console.print(f"{name} is {state} (registry version {version})")


@features_app.command("sync-consumers")
@fails_cleanly
def features_sync_consumers(config: str | None = ConfigOpt, home: str | None = HomeOpt) -> None:
    """Record MLflow model versions trained on a feature service; mark archived or deleted ones."""
    from ml_system.features import FeatureStore
    from ml_system.pipelines.lineage import sync_consumers

    cfg = cli_config(config, home)
    recorded, archived = sync_consumers(FeatureStore(cfg), cfg.mlflow)
    console.print(f"recorded {len(recorded)} consumer(s) {recorded or ''}; archived {len(archived)} {archived or ''}")


@features_app.command("materialize")
@fails_cleanly
def features_materialize(
    end: str = typer.Option(..., help="Upper bound (inclusive), ISO-8601 with offset"),
    start: str | None = typer.Option(None, help="Lower bound (exclusive); omit for all history"),
    incremental: bool = typer.Option(False, help="Resume each view from its last materialized end"),
    usecase: str | None = typer.Option(None, "--usecase", "-u", help="Only the views this use case reads"),
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """Copy the newest feature values into the online store (every view, or a use case's)."""
    from ml_system.cluster import connect
    from ml_system.pipelines import steps

    cfg = cli_config(config, home)
    end_ts = parse_time(end, "end")
    start_ts = parse_time(start, "start") if start else None
    uc = steps.usecase_for(cfg, usecase) if usecase else None
    connect(cfg.ray)
    written = steps.materialize(cfg, end_ts, start_ts, incremental=incremental, usecase=uc)
    for view, n in written.items():
        console.print(f"{view}: {n} entity rows written to the {cfg.online_store.type} online store")


@snapshot_app.command("load")
@fails_cleanly
def snapshot_load(
    end: str = typer.Option(..., help="Materialize everything up to this time, ISO-8601 with offset"),
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """Materialize into a new snapshot that no reader sees until it is activated."""
    from ml_system.cluster import connect
    from ml_system.features import FeatureStore

    cfg = cli_config(config, home)
    end_ts = parse_time(end, "end")
    connect(cfg.ray)
    sid = FeatureStore(cfg).load_snapshot(end_ts)
    console.print(f"loaded snapshot {sid} (up to {end_ts.isoformat()})")
    console.print(f"serve it with: mlsys features snapshot activate {sid}")


@snapshot_app.command("activate")
@fails_cleanly
def snapshot_activate(snapshot: str, config: str | None = ConfigOpt, home: str | None = HomeOpt) -> None:
    """Switch every online reader to SNAPSHOT at once."""
    from ml_system.features import FeatureStore

    before = FeatureStore(cli_config(config, home)).activate_snapshot(snapshot)
    console.print(f"serving snapshot {snapshot} (was {before or 'base'})")


@snapshot_app.command("rollback")
@fails_cleanly
def snapshot_rollback(config: str | None = ConfigOpt, home: str | None = HomeOpt) -> None:
    """Switch back to the snapshot served before the last activation."""
    from ml_system.features import FeatureStore

    now = FeatureStore(cli_config(config, home)).rollback_snapshot()
    console.print(f"rolled back: serving {now or 'base'}")


@snapshot_app.command("list")
@fails_cleanly
def snapshot_list(config: str | None = ConfigOpt, home: str | None = HomeOpt) -> None:
    """Snapshots in the online store, with the one being served."""
    from ml_system.features import FeatureStore

    table = Table(title="online snapshots")
    for col in ("snapshot", "state", "up to", "created", "serving"):
        table.add_column(col)
    for snap in FeatureStore(cli_config(config, home)).list_snapshots():
        serving = "yes" if snap.active else ""
        table.add_row(snap.id or "base", snap.state, snap.end or "-", snap.created_at or "-", serving)
    console.print(table)
