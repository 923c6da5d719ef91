"""Shared by the job entrypoints: config and cluster connection.

Under ``ray job submit`` the entrypoint runs on the cluster with ``RAY_ADDRESS``
set, so ``connect`` attaches to that cluster; run directly, it starts a local one.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ml_system.cluster import connect, quiet
from ml_system.config import PlatformConfig, load_config


def setup(
    parser: argparse.ArgumentParser,
    check: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None,
) -> tuple[argparse.Namespace, PlatformConfig]:
    """Parse and validate arguments before touching the cluster, then connect."""
    parser.add_argument("--config", default=None, help="YAML config (default: $MLSYS_CONFIG or ./mlsys.yaml)")
    args = parser.parse_args()
    if check is not None:
        check(parser, args)
    config = load_config(args.config)
    quiet()
    connect(config.ray)
    print(f"platform home: {config.home}", flush=True)
    return args, config
