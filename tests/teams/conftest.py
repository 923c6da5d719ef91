"""Admission queues on the session's cluster: one per test, each with its own state folder, stopped after."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ml_system.teams.admission import AdmissionClient
from ml_system.teams.groups import parse_groups

# Fractions of a CPU: the session's 2 CPUs may already carry other tests' Serve replicas.
HALVES = {
    "give_back_s": 30,
    "teams": {"a": {"quota": {"cpu": 0.5}, "priority": 10}, "b": {"quota": {"cpu": 0.5}, "priority": 5}},
}


@pytest.fixture()
def admission(ray_cluster: str, tmp_path: Path) -> Iterator[Callable[..., AdmissionClient]]:
    """``admission(groups_doc=HALVES)`` -> a client of a fresh queue on the session cluster."""
    clients: list[AdmissionClient] = []

    def start(groups: dict[str, Any] | None = None, state_dir: Path | None = None) -> AdmissionClient:
        client = AdmissionClient.connect(state_dir or tmp_path / "teams", parse_groups(groups or HALVES))
        clients.append(client)
        return client

    yield start
    for client in clients:
        try:
            client.shutdown()
        except Exception:  # noqa: BLE001 - already stopped by the test
            pass
