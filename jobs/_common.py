"""Shared by the job entrypoints: config, use case and cluster connection.

Under ``ray job submit`` the entrypoint runs on the cluster with ``RAY_ADDRESS``
set, so ``connect`` attaches to that cluster; run directly, it starts a local one.
A job submitted for a team (``mlsys groups submit``) binds its admission lease to itself.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ml_system.cluster import connect, quiet
from ml_system.config import PlatformConfig, load_config
from ml_system.errors import MLSystemError
from ml_system.pipelines.steps import usecase_for
from ml_system.teams.jobs import claim_job_lease
from ml_system.usecase import UseCase


def setup(
    parser: argparse.ArgumentParser,
    check: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None,
) -> tuple[argparse.Namespace, PlatformConfig, UseCase]:
    """Parse and validate arguments and the use case before touching the cluster, then connect."""
    parser.add_argument("--config", default=None, help="YAML config (default: $MLSYS_CONFIG or ./mlsys.yaml)")
    parser.add_argument("--usecase", default=None, help="use case by name (default: flights)")
    args = parser.parse_args()
    if check is not None:
        check(parser, args)
    try:
        config = load_config(args.config)
        usecase = usecase_for(config, args.usecase)
    except MLSystemError as exc:
        parser.exit(2, f"error: {exc}\n")
    quiet()
    connect(config.ray)
    try:
        claim_job_lease(config.teams.state_dir)  # a team's job (`mlsys groups submit`) holds its lease from here
    except MLSystemError as exc:
        parser.exit(1, f"error: {exc}\n")
    print(f"platform home: {config.home}, use case: {usecase.name}", flush=True)
    return args, config, usecase
