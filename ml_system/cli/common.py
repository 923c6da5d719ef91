"""What every ``mlsys`` command module shares: consoles, common options, config loading, clean failures.

Every command prints what it did; a platform error exits 1 with one line of reason (no
traceback), a usage error exits 2 (typer's convention).
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from ml_system.config import PlatformConfig, load_config
from ml_system.errors import MLSystemError

F = TypeVar("F", bound=Callable[..., Any])

# Piped output (logs, CI, tests) gets wide tables rather than Rich's 80-column wrap.
console = Console(width=None if sys.stdout.isatty() else 160)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 160)

ConfigOpt = typer.Option(None, "--config", "-c", help="YAML config file (default: $MLSYS_CONFIG or ./mlsys.yaml)")
HomeOpt = typer.Option(None, "--home", help="Platform state folder (default: $MLSYS_HOME or ~/.mlsys)")
UseCaseOpt = typer.Option(None, "--usecase", "-u", help="Use case by name (default: flights; `mlsys usecases`)")


def cli_config(config: str | None, home: str | None) -> PlatformConfig:
    cfg = load_config(config)
    if home:
        cfg = cfg.model_copy(
            update={
                "home": home,
                "offline_store": cfg.offline_store.model_copy(update={"uri": ""}),
                "registry": cfg.registry.model_copy(update={"uri": ""}),
                "online_store": cfg.online_store.model_copy(update={"path": ""}),
                "mlflow": cfg.mlflow.model_copy(update={"tracking_uri": "", "artifact_location": ""}),
                "teams": cfg.teams.model_copy(update={"state_dir": ""}),
            }
        )
        cfg = cfg.resolved()
    return cfg


def fails_cleanly(fn: F) -> F:
    """Turn platform errors into one line on stderr and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MLSystemError as exc:
            err.print(f"[red]error:[/red] {exc}", soft_wrap=True)  # one line, however long
            raise typer.Exit(1) from None

    return wrapper  # type: ignore[return-value]
