"""``mlsys stream``: the consumer group that feeds stream feature views from the broker."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from ml_system.cli.common import ConfigOpt, HomeOpt, cli_config, console, fails_cleanly
from ml_system.config import PlatformConfig
from ml_system.errors import MLSystemError

app = typer.Typer(help="Stream ingestion: broker -> Ray actors -> online store.", no_args_is_help=True)


def _attach(cfg: PlatformConfig) -> None:
    """Attach to a running cluster: the consumers are detached actors, which a throw-away local one would end."""
    import os

    import ray

    from ml_system.cluster import _local_cluster_alive, connect, quiet

    if not (ray.is_initialized() or cfg.ray.address or os.environ.get("RAY_ADDRESS") or _local_cluster_alive()):
        raise MLSystemError("no Ray cluster is running: start one (ray start --head) or set ray.address")
    quiet()
    connect(cfg.ray)


@app.command()
@fails_cleanly
def start(
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
    consumers: int | None = typer.Option(None, min=1, help="Group size (default: streaming.consumers)"),
) -> None:
    """Start the consumer group (the consumers already running are kept)."""
    from ml_system.features.streaming import group

    cfg = cli_config(config, home)
    _attach(cfg)
    names = group.start(cfg, consumers)
    console.print(f"started {len(names)} consumers of group '{cfg.streaming.group}' on stream '{cfg.streaming.stream}'")


@app.command()
@fails_cleanly
def status(
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON"),
) -> None:
    """Each consumer's state, counts and last error, and the group's backlog."""
    from ml_system.features.streaming import group

    cfg = cli_config(config, home)
    _attach(cfg)
    report = group.status(cfg)
    if as_json:
        console.print_json(json.dumps(report))
        return
    table = Table(title=f"stream '{report['stream']}', group '{report['group']}': backlog {report['backlog']}")
    for column in ("consumer", "state", "events", "duplicates", "dead letter", "late", "claimed", "retries", "error"):
        table.add_column(column)
    for name, s in report["consumers"].items():
        table.add_row(
            name,
            s.get("state", "?"),
            *(str(s.get(k, "")) for k in ("events", "duplicates", "dead_lettered", "late", "claimed", "retries")),
            s.get("last_error", "")[:80],
        )
    console.print(table)


@app.command()
@fails_cleanly
def stop(config: str | None = ConfigOpt, home: str | None = HomeOpt) -> None:
    """Stop every consumer after its current batch; unacked entries wait for the next start."""
    from ml_system.features.streaming import group

    cfg = cli_config(config, home)
    _attach(cfg)
    names = group.stop(cfg)
    console.print(f"stopped {len(names)} consumers of group '{cfg.streaming.group}'")
