"""``mlsys models``: registered model versions (MLflow), with aliases, metrics and lineage."""

from __future__ import annotations

import typer
from rich.table import Table

from ml_system.cli.common import ConfigOpt, HomeOpt, cli_config, console, fails_cleanly

models_app = typer.Typer(help="Registered model versions (MLflow).", no_args_is_help=True)


@models_app.command("list")
@fails_cleanly
def models_list(
    name: str | None = typer.Argument(None), config: str | None = ConfigOpt, home: str | None = HomeOpt
) -> None:
    """Registered model versions with aliases, test metric beside its baseline, and lineage."""
    from ml_system.training import tracking

    cfg = cli_config(config, home)
    table = Table(title="registered models")
    for col in ("model", "version", "aliases", "use case", "test metric", "baseline", "feature service", "run"):
        table.add_column(col)
    for mv in tracking.list_versions(cfg.mlflow, name):
        metric = mv.tags.get("metric", "auc")
        table.add_row(
            mv.name,
            mv.version,
            ", ".join(mv.aliases),
            mv.tags.get("usecase", "-"),
            f"{metric} {mv.tags.get(f'test_{metric}', '-')}",
            mv.tags.get(f"baseline_{metric}", "-"),
            mv.tags.get("feature_service", "-"),
            mv.run_id[:12],
        )
    console.print(table)
