"""Rollout plans are refused before anything moves when they cannot work; the durable state refuses a
second rollout; a step's analysis passes, waits or fails on what the prediction log holds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml_system.errors import RolloutError
from ml_system.rollout.analysis import analyse
from ml_system.rollout.config import Thresholds, load_rollout, parse_rollout
from ml_system.rollout.state import RolloutState, RolloutStore


@pytest.mark.parametrize(
    ("plan", "fragment"),
    [
        ({"steps": [5, 120]}, "field 'steps[1]': weight 120 is outside (0, 100]"),
        ({"steps": [0, 50, 100]}, "field 'steps[0]': weight 0 "),
        ({"steps": [-5, 100]}, "steps[0]"),
        ({"steps": [25, 25, 100]}, "field 'steps[1]': weight 25 does not increase on 25"),
        ({"steps": [50, 10, 100]}, "does not increase"),
        ({"steps": [5, 25]}, "field 'steps': the last weight is 25; auto_promote"),
        ({"steps": []}, "field 'steps': give at least one weight"),
        (
            {"thresholds": {"max_error_rate": None, "max_p99_ratio": None, "max_psi": None}},
            "field 'thresholds': every threshold is off",
        ),
        ({"thresholds": {"max_error_rate": 2}}, "field 'thresholds.max_error_rate'"),
        ({"stepWeight": 5}, "stepWeight"),
        ({"strategy": "ab"}, "strategy"),
    ],
)
def test_a_plan_that_cannot_work_is_refused_naming_the_field(plan: dict[str, object], fragment: str) -> None:
    with pytest.raises(RolloutError, match="rollout config") as info:
        parse_rollout({"usecase": "flights", **plan})
    assert fragment in str(info.value)


def test_plans_load_from_yaml_and_blue_green_is_one_switch(tmp_path: Path) -> None:
    path = tmp_path / "canary.yaml"
    path.write_text("usecase: flights\nsteps: [5, 25, 50, 100]\nstep_s: 30\nthresholds: {max_psi: 0.2}\n")
    plan = load_rollout(path)
    assert plan.steps == [5, 25, 50, 100] and plan.thresholds.max_psi == 0.2 and plan.step_s == 30
    assert parse_rollout({"strategy": "blue_green", "steps": [10, 20]}).steps == [100]
    path.write_text("steps: [5, 25\n")
    with pytest.raises(RolloutError, match="not valid YAML"):
        load_rollout(path)


def test_a_second_rollout_of_a_use_case_is_refused_until_the_first_ends(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path)

    def rollout(challenger: str) -> RolloutState:
        return RolloutState("", "flights", "flight_delay", "canary", "1", challenger, {}, "delays", weight=5)

    first = store.begin(rollout("2"))
    with pytest.raises(RolloutError, match=f"rollout {first.id} of v2 under way"):
        store.begin(rollout("3"))
    # another store object (a restarted controller) reads the same state
    again = RolloutStore(tmp_path).active("flights")
    assert again is not None and again.id == first.id and again.weight == 5
    store.update("flights", first.id, status="aborted", event={"why": "test"})
    assert store.active("flights") is None
    second = store.begin(rollout("3"))
    assert [p.id for p in store.past("flights")] == [first.id] and store.active("flights").id == second.id  # type: ignore[union-attr]
    with pytest.raises(RolloutError, match="not running"):
        store.update("flights", first.id, weight=50)


def log_rows(arm: str, version: str, n: int, predictions: np.ndarray, errors: int = 0, ms: float = 5.0) -> pd.DataFrame:
    status = ["error"] * errors + ["ok"] * (n - errors)
    return pd.DataFrame(
        {
            "request_id": [f"{arm}-{i}" for i in range(n)],
            "model_version": version,
            "arm": arm,
            "prediction": predictions[:n],
            "status": status,
            "latency_ms": ms,
        }
    )


def test_a_step_waits_for_traffic_then_passes_or_fails_on_each_threshold() -> None:
    rng = np.random.default_rng(0)
    same = rng.beta(2, 6, 400)
    t = Thresholds(min_requests=50, max_error_rate=0.02, max_p99_ratio=2.0, max_psi=0.2)

    def judge(challenger: pd.DataFrame) -> list[str]:
        frame = pd.concat([log_rows("champion", "1", 200, rng.beta(2, 6, 400)), challenger])
        result = analyse(frame, "1", "2", False, t, "auc", True)
        assert result.ready
        return result.reasons

    few = analyse(log_rows("challenger", "2", 10, same), "1", "2", False, t, "auc", True)
    assert not few.ready and not few.passed and "waiting for 50 requests" in few.notes[0]
    assert judge(log_rows("challenger", "2", 100, same)) == []
    assert "error rate 0.050 above 0.02" in judge(log_rows("challenger", "2", 100, same, errors=5))[0]
    assert "2.00" not in judge(log_rows("challenger", "2", 100, same, ms=9.0))  # 1.8x: within 2x
    assert "x the champion's" in judge(log_rows("challenger", "2", 100, same, ms=11.0))[0]
    assert "PSI" in judge(log_rows("challenger", "2", 100, rng.beta(6, 2, 400)))[0]


def test_quality_is_judged_once_enough_rows_are_labelled() -> None:
    rng = np.random.default_rng(1)
    truth = rng.integers(0, 2, 300)
    good = np.clip(truth * 0.6 + rng.normal(0.2, 0.1, 300), 0, 1)
    noise = rng.uniform(0, 1, 300)
    frame = pd.concat([log_rows("champion", "1", 300, good), log_rows("challenger", "2", 300, noise)])
    labels = dict(zip(frame["request_id"], np.concatenate([truth, truth]), strict=True))

    def feedback(rows: pd.DataFrame) -> pd.Series:
        return pd.Series([labels[r] for r in rows["request_id"]], index=rows.index, dtype="float64")

    t = Thresholds(min_requests=10, max_psi=None, max_p99_ratio=None, max_metric_loss=0.05, min_labels=100)
    result = analyse(frame, "1", "2", False, t, "auc", True, feedback)
    assert not result.passed and result.reasons[0].startswith("auc")
    assert result.champion.labelled == 300 and result.champion.metric is not None and result.champion.metric > 0.9
    unlabelled = analyse(frame, "1", "2", False, t.model_copy(update={"min_labels": 1000}), "auc", True, feedback)
    assert unlabelled.passed and "quality not judged" in unlabelled.notes[0]
