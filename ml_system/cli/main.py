"""``mlsys``: a thin command line over the library, one module per noun.

Every command prints what it did; a platform error exits 1 with one line of
reason (no traceback), a usage error exits 2 (typer's convention).
"""

from __future__ import annotations

import sys

import typer
from rich.table import Table

from ml_system.cli import (
    experiments,
    groups,
    online_data,  # noqa: F401 - registers `features delete` and `features snapshot gc`
    stream,
)
from ml_system.cli.common import (
    ConfigOpt,
    HomeOpt,
    UseCaseOpt,
    cli_config,
    console,
    err,
    fails_cleanly,
    require_free_port,
)
from ml_system.cli.features import features_app
from ml_system.cli.models import models_app
from ml_system.cli.pipeline import pipeline_app, reproduce
from ml_system.cli.serve import serve_app
from ml_system.errors import MLSystemError

app = typer.Typer(help="ml_system: features, training and serving on one Ray cluster.", no_args_is_help=True)
app.add_typer(features_app, name="features")
app.add_typer(models_app, name="models")
app.add_typer(serve_app, name="serve")
app.add_typer(pipeline_app, name="pipeline")
app.add_typer(groups.app, name="groups")
app.add_typer(experiments.app, name="experiments")
app.add_typer(stream.app, name="stream")
app.command("reproduce")(reproduce)

__all__ = ["app", "console", "err", "main"]


@app.command()
@fails_cleanly
def quickstart(
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
    usecase: str | None = UseCaseOpt,
    trials: int = typer.Option(8, min=1, help="Ray Tune trials"),
    rounds: int | None = typer.Option(None, min=10, help="Max boosting rounds per trial (default: the use case's)"),
    requests: int = typer.Option(300, min=1, help="HTTP requests sent to the deployed app"),
    port: int = typer.Option(8000, help="Serve HTTP port"),
    keep_serving: bool = typer.Option(False, help="Keep the app (and a local cluster) up until Ctrl-C"),
) -> None:
    """Run a use case's whole loop on real data: features, training, registry, online store, serving."""
    from ml_system.pipelines.quickstart import run_quickstart
    from ml_system.pipelines.steps import usecase_for

    cfg = cli_config(config, home)
    cfg = cfg.model_copy(update={"serving": cfg.serving.model_copy(update={"port": port})})
    uc = usecase_for(cfg, usecase)
    if uc.demo is None:
        raise MLSystemError(f"use case '{uc.name}' has no demo (cut-off and requests) for the quickstart")
    require_free_port(cfg.serving.host, port)
    console.print(f"platform home: {cfg.home}")
    result = run_quickstart(cfg, uc, trials=trials, rounds=rounds, requests=requests, console=console)
    if result.errors:
        err.print(f"[red]error:[/red] {result.errors} of {result.requests} requests failed")
        raise typer.Exit(1)
    if keep_serving:
        import time

        console.print(f"serving at {result.endpoint}; Ctrl-C to stop")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


@app.command()
@fails_cleanly
def train(
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
    usecase: str | None = UseCaseOpt,
    trials: int = typer.Option(8, min=1),
    rounds: int | None = typer.Option(None, min=10, help="Max boosting rounds (default: the use case's)"),
) -> None:
    """Build the use case's point-in-time training set, tune XGBoost, register the best as champion."""
    from ml_system.cluster import connect
    from ml_system.pipelines import steps

    cfg = cli_config(config, home)
    uc = steps.usecase_for(cfg, usecase)
    connect(cfg.ray)
    report = steps.train(cfg, uc, num_samples=trials, num_boost_round=rounds)
    console.print(f"registered {report.summary()} as champion (run {report.run_id})")


@app.command("usecases")
@fails_cleanly
def usecases_list(config: str | None = ConfigOpt, home: str | None = HomeOpt) -> None:
    """The use cases this platform knows: name, model, route, feature service, metric."""
    from ml_system.usecase import load_all, usecase_table

    cfg = cli_config(config, home)
    paths = usecase_table(cfg.usecases)
    table = Table(title="use cases")
    for col in ("name", "model", "route", "feature service", "objective", "metric", "import path"):
        table.add_column(col)
    for uc in load_all(cfg.usecases):
        assert uc.training is not None
        table.add_row(
            uc.name, uc.model_name, uc.route, uc.feature_service, uc.training.objective, uc.training.metric,
            paths[uc.name],
        )  # fmt: skip
    console.print(table)


# the noun modules use the helpers above, so they are registered last
from ml_system.cli.pipeline import pipeline_app, reproduce  # noqa: E402

app.add_typer(pipeline_app, name="pipeline")
app.add_typer(groups.app, name="groups")
app.add_typer(experiments.app, name="experiments")
app.add_typer(stream.app, name="stream")
app.command("reproduce")(reproduce)


def main() -> None:  # pragma: no cover - console entry point
    sys.exit(app())


# commands on online data (delete, snapshot gc) live in their own module; importing it registers them
