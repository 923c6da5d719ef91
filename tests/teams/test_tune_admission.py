"""Tune trials on a team's quota: a borrowed trial pauses when the owner asks, then resumes from its checkpoint."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import ray
from ray import tune
from ray.tune.schedulers import FIFOScheduler

from ml_system.teams.resources import Resources
from ml_system.teams.tune_admission import (
    AdmittedScheduler,
    AdmittedVariantGenerator,
    BudgetStopper,
    TrialAdmission,
    TrialGate,
)
from ml_system.teams.work import TeamSession

pytestmark = [pytest.mark.integration]
ROUNDS = 25


def counting_trainable(config: dict[str, Any]) -> None:
    """Counts to ROUNDS, a checkpoint per step; a restored trial continues from its checkpoint."""
    start = 0
    restored = tune.get_checkpoint()
    if restored:
        with restored.as_directory() as folder:
            start = json.loads((Path(folder) / "state.json").read_text())["i"] + 1
    for i in range(start, ROUNDS):
        time.sleep(0.2)
        if i >= 2:
            Path(config["progress"], str(config["x"])).write_text(str(i))
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "state.json").write_text(json.dumps({"i": i}))
            tune.report({"i": i, "start": start}, checkpoint=tune.Checkpoint.from_directory(folder))


@ray.remote
def owner_work() -> str:
    time.sleep(0.5)
    return os.environ.get("MLSYS_TEAM", "")


def test_a_borrowed_trial_gives_its_quota_back_and_resumes_from_its_checkpoint(admission, tmp_path: Path) -> None:
    client = admission()
    admitted = TrialAdmission(client, "b", group="exp-b", per_trial=Resources(cpu=0.5))
    gate = TrialGate(admitted)
    progress = tmp_path / "progress"
    progress.mkdir()
    tuner = tune.Tuner(
        tune.with_resources(counting_trainable, {"cpu": 0.5}),
        param_space={"x": tune.grid_search([1, 2]), "progress": str(progress)},
        tune_config=tune.TuneConfig(
            scheduler=AdmittedScheduler(gate, FIFOScheduler()),
            search_alg=AdmittedVariantGenerator(gate),
            metric="i",
            mode="max",
        ),
        run_config=tune.RunConfig(storage_path=str(tmp_path / "tune"), name="b", verbose=0, stop=BudgetStopper(gate)),
    )
    out: dict[str, Any] = {}

    def fit() -> None:
        try:
            out["grid"] = tuner.fit()
        finally:
            gate.close()

    search = threading.Thread(target=fit, daemon=True)
    search.start()
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and not (
        client.status()["usage"]["b"]["borrowed"]["cpu"] == 0.5 and len(list(progress.iterdir())) == 2
    ):
        time.sleep(0.1)
    assert client.status()["usage"]["b"]["borrowed"]["cpu"] == 0.5, "team b never borrowed team a's idle quota"

    asked = time.time()
    placed: list[float] = []
    work = TeamSession(client, "a").submit(
        owner_work, resources=Resources(cpu=0.5), label="owner", on_start=lambda _l: placed.append(time.time())
    )
    assert work.result(timeout=180).value == "a"
    search.join(timeout=300)
    assert not search.is_alive()

    finals = {r.config["x"]: r.metrics for r in out["grid"]}
    assert {x: m["i"] for x, m in finals.items()} == {1: ROUNDS - 1, 2: ROUNDS - 1}  # both ran to the end
    assert len(admitted.preempted_trials) == 1
    resumed = [m for m in finals.values() if m["start"] > 0]
    assert len(resumed) == 1  # the paused trial went on from its checkpoint instead of starting again
    give_backs = [g for g in client.status()["give_backs"] if g["borrower"] == "b"]
    bound = client.groups.give_back_s
    assert give_backs and max(g["seconds"] for g in give_backs) <= bound
    assert placed and placed[0] - asked <= bound
    print(
        f"trial give-back {max(g['seconds'] for g in give_backs):.2f} s (ledger), owner placed after "
        f"{placed[0] - asked:.2f} s, resumed at step {resumed[0]['start']} of {ROUNDS}, "
        f"bound {bound:g} s, CPU-seconds held by the search {admitted.spent_cpu_seconds:.1f}"
    )
