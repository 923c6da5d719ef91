"""What every ``mlsys`` command shares: options, config loading, and failing with one line."""

from __future__ import annotations

import functools
import socket
import sys
from collections.abc import Callable
from datetime import datetime
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
                "online_store": cfg.online_store.model_copy(update={"path": ""})
                if cfg.online_store.type == "sqlite"
                else cfg.online_store,
                "mlflow": cfg.mlflow.model_copy(update={"tracking_uri": "", "artifact_location": ""}),
                "pipelines": cfg.pipelines.model_copy(update={"uri": ""}),
                "teams": cfg.teams.model_copy(update={"state_dir": ""}),
                "rollout": cfg.rollout.model_copy(update={"uri": ""}),
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


def parse_time(value: str, name: str) -> datetime:
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        err.print(f"[red]error:[/red] --{name} '{value}' is not an ISO-8601 timestamp")
        raise typer.Exit(2) from None
    if ts.tzinfo is None:
        err.print(f"[red]error:[/red] --{name} '{value}' has no UTC offset (write e.g. 2013-12-31T17:00:00-05:00)")
        raise typer.Exit(2)
    return ts


def require_free_port(host: str, port: int) -> None:
    """Fail before minutes of training, not at deploy time with a proxy crash."""
    with socket.socket() as sock:
        try:
            sock.bind((host, port))
        except OSError:
            raise MLSystemError(f"port {port} on {host} is in use; pass --port with a free one") from None


def by_name(by: str | None) -> str:
    import getpass

    return by or getpass.getuser()


def when(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds")


ByOpt = typer.Option(None, "--by", help="Who makes the change on a platform without team tokens (default: the OS user)")
