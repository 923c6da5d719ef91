"""A pipeline that cannot run is refused, naming what is wrong, before anything runs."""

from __future__ import annotations

from typing import Any

import pytest

from ml_system.errors import ConfigError, PipelineError
from ml_system.pipelines.dag import DEFAULT_STEPS, RUN_INPUTS, compose
from ml_system.usecase import PipelineStep
from tests.conftest import make_config


def noop(ctx: Any, inputs: dict[str, Any]) -> dict[str, Any]:
    return {}


def test_the_default_pipeline_runs_each_producer_before_its_readers() -> None:
    pipeline = compose("x", DEFAULT_STEPS, ())
    assert pipeline.names == [
        "ingest", "validate", "build_training_set", "train", "evaluate", "register", "start_canary",
    ]  # fmt: skip
    made: set[str] = set(RUN_INPUTS)
    for step in pipeline.steps:
        assert set(step.inputs) <= made, step.name
        made |= set(step.outputs)
    assert pipeline.upstream(pipeline.step("register")) == [
        "ingest", "build_training_set", "train", "evaluate",
    ]  # fmt: skip


def test_a_use_case_step_is_added_after_what_it_reads_and_replaces_one_of_the_same_name() -> None:
    report = PipelineStep("report", noop, inputs=("model_version", "evaluation"), outputs=("report",))
    canary = PipelineStep("start_canary", noop, inputs=("model_version",), outputs=("canary",))
    pipeline = compose("x", DEFAULT_STEPS, (report, canary))
    assert pipeline.names.index("report") > pipeline.names.index("register")
    assert pipeline.step("start_canary").fn is noop


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ((PipelineStep("a", noop, inputs=("b_out",), outputs=("a_out",)),
          PipelineStep("b", noop, inputs=("a_out",), outputs=("b_out",))), "cycle"),
        ((PipelineStep("report", noop, inputs=("nothing_makes_this",), outputs=("r",)),), "nothing_makes_this"),
        ((PipelineStep("twin", noop, outputs=("model",)),), "made by both 'train' and 'twin'"),
        ((PipelineStep("clock", noop, outputs=("as_of",)),), "run input"),
    ],
)  # fmt: skip
def test_a_graph_that_cannot_run_is_refused_by_name(extra: tuple[PipelineStep, ...], message: str) -> None:
    with pytest.raises(PipelineError, match=message):
        compose("x", DEFAULT_STEPS, extra)


def test_an_unknown_step_is_named() -> None:
    with pytest.raises(PipelineError, match="no step 'nope'"):
        compose("x", DEFAULT_STEPS, ()).step("nope")


def test_a_bad_cron_expression_fails_when_the_config_is_loaded(tmp_path) -> None:
    from tests.pipelines.conftest import tiny_config

    with pytest.raises(ConfigError, match=r"pipelines\.schedules\.0\.cron"):
        tiny_config(tmp_path, schedules=[{"name": "nightly", "usecase": "tiny", "cron": "0 25 * * *"}])
    with pytest.raises(ConfigError, match="used twice"):
        tiny_config(tmp_path, schedules=[{"name": "n", "cron": "0 2 * * *"}, {"name": "n", "cron": "0 3 * * *"}])
    assert make_config(tmp_path).pipelines.uri == str(tmp_path / "pipelines")


def test_a_schedule_for_an_unknown_use_case_is_refused_before_anything_runs(tmp_path) -> None:
    from ml_system.pipelines.scheduler import Scheduler
    from tests.pipelines.conftest import tiny_config

    config = tiny_config(tmp_path, schedules=[{"name": "nightly", "usecase": "nope", "cron": "0 2 * * *"}])
    with pytest.raises(PipelineError, match="schedule 'nightly': unknown use case 'nope'"):
        Scheduler(config)
    assert not (tmp_path / "pipelines").exists()
