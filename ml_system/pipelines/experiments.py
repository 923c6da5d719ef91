"""Run a team's hypothesis queue: each experiment a Tune search on the team's quota, judged against its claim.

The reference an experiment must beat is the use case's current champion (its ``test_<metric>``
tag, written when it was registered); without a champion it is the naive baseline the run
scores itself. The experiment's model is registered without an alias: confirming a hypothesis
is evidence for a promotion, not a promotion. Gain is measured in the metric's better
direction, so ``expected_gain`` 0.01 means "one point more AUC" or "0.01 less MAE".
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mlflow

from ml_system.config import PlatformConfig
from ml_system.errors import MLSystemError, ModelNotFoundError
from ml_system.pipelines.steps import usecase_for
from ml_system.teams.admission import AdmissionClient
from ml_system.teams.experiments import HypothesisQueue, to_tune_space
from ml_system.teams.tune_admission import TrialAdmission
from ml_system.training import tracking
from ml_system.training.trainer import train_usecase
from ml_system.usecase import METRICS, UseCase

TAG = "mlsys."


def reference_metric(config: PlatformConfig, usecase: UseCase) -> tuple[float | None, str]:
    """The champion's test metric and where it came from (None when there is no champion)."""
    assert usecase.training is not None
    metric = usecase.training.metric
    try:
        champion = tracking.resolve(config.mlflow, usecase.model_name, alias=tracking.CHAMPION)
    except ModelNotFoundError:
        return None, "naive baseline (no champion)"
    value = champion.tags.get(f"test_{metric}")
    if value is None:
        return None, f"naive baseline (champion v{champion.version} has no test_{metric} tag)"
    return float(value), f"champion v{champion.version}"


def run_experiment(
    config: PlatformConfig,
    record: dict[str, Any],
    client: AdmissionClient,
    queue: HypothesisQueue,
    on_trial_done: Callable[[str, float], None] | None = None,
) -> dict[str, Any]:
    """Run one claimed (``running``) experiment to its end and record the outcome; returns the record."""
    exp_id = record["id"]
    try:
        usecase = usecase_for(config, record["usecase"])
        assert usecase.training is not None
        metric = usecase.training.metric
        reference, source = reference_metric(config, usecase)
        budget = record["budget"]
        admission = TrialAdmission(
            client,
            record["team"],
            priority=int(record["priority"]),
            group=exp_id,
            concurrency=int(budget["concurrency"]),
            cpu_seconds=budget.get("cpu_seconds"),
            cancelled=lambda: queue.cancel_requested(exp_id),
        )
        tags = {
            f"{TAG}experiment": exp_id,
            f"{TAG}team": record["team"],
            f"{TAG}owner": record["owner"],
            f"{TAG}expected_gain": f"{record['expected_gain']:g}",
        }
        report = train_usecase(
            config,
            usecase,
            num_samples=int(budget["trials"]),
            num_boost_round=budget.get("rounds"),
            alias=None,
            on_trial_done=on_trial_done,
            search_space=to_tune_space(record["search_space"]),
            tags=tags,
            admission=admission,
        )
    except (MLSystemError, RuntimeError, ValueError) as exc:
        state = "cancelled" if queue.cancel_requested(exp_id) else "failed"
        return queue.finish(exp_id, state, error=f"{type(exc).__name__}: {exc}")
    if reference is None:
        reference = report.baseline_score
    sign = 1.0 if METRICS[metric] else -1.0
    gain = sign * (report.test_score - reference)
    held = gain >= float(record["expected_gain"])
    outcome = {
        "metric": metric,
        "reference": reference,
        "reference_source": source,
        "achieved": report.test_score,
        "gain": gain,
        "expected_gain": float(record["expected_gain"]),
        "hypothesis_held": held,
        "run_id": report.run_id,
        "model_version": report.model_version,
        "trials": report.trials,
        "cpu_seconds": round(admission.spent_cpu_seconds, 1),
        "preempted_trials": len(admission.preempted_trials),
    }
    tracking.client(config.mlflow)
    with mlflow.start_run(run_id=report.run_id):
        mlflow.set_tags(
            {
                f"{TAG}reference_{metric}": f"{reference:.6f}",
                f"{TAG}reference_source": source,
                f"{TAG}achieved_gain": f"{gain:.6f}",
                f"{TAG}hypothesis": "held" if held else "refuted",
            }
        )
    state = "cancelled" if queue.cancel_requested(exp_id) else "succeeded"
    return queue.finish(exp_id, state, outcome=outcome)


def run_queue(
    config: PlatformConfig,
    team: str,
    client: AdmissionClient,
    *,
    max_experiments: int | None = None,
    on_start: Callable[[dict[str, Any]], None] | None = None,
    on_done: Callable[[dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Run the team's queued experiments one after another, highest priority first."""
    queue = HypothesisQueue(config.teams.state_dir)
    done: list[dict[str, Any]] = []
    while max_experiments is None or len(done) < max_experiments:
        record = queue.claim_next(team)
        if record is None:
            break
        if on_start is not None:
            on_start(record)
        finished = run_experiment(config, record, client, queue)
        done.append(finished)
        if on_done is not None:
            on_done(finished)
    return done
