"""``mlsys serve``: check a Serve config fully, then deploy it (a strict ``serve deploy``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer
import yaml

from ml_system.cli.common import ConfigOpt, HomeOpt, cli_config, console, fails_cleanly
from ml_system.errors import ConfigError

FileArg = typer.Argument(..., help="Serve config YAML")
serve_app = typer.Typer(help="Serve configs: validate fully, deploy without taking the app down.", no_args_is_help=True)


def _document(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read serve config {path}: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"serve config {path} must hold a mapping at the top level")
    return doc


@serve_app.command("validate")
@fails_cleanly
def serve_validate(file: Path = FileArg) -> None:
    """Check every field, including autoscaling and user_config that `serve deploy` passes through unchecked."""
    from ml_system.serving.config_check import validate_document

    schema = validate_document(_document(file))
    console.print(f"{file}: valid ({', '.join(a.name for a in schema.applications)})")


@serve_app.command("deploy")
@fails_cleanly
def serve_deploy(
    file: Path = FileArg,
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """Validate, then deploy to the running cluster; a bad change is refused and the app keeps serving."""
    from ml_system.cluster import connect
    from ml_system.serving.config_check import validate_document
    from ml_system.serving.deploy import deploy_config

    doc = _document(file)
    validate_document(doc)
    connect(cli_config(config, home).ray)
    for name, url in deploy_config(doc).items():
        console.print(f"{name}: healthy at {url}")
