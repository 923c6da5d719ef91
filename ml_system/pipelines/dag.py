"""A use case's retraining pipeline as a graph of steps, checked before anything runs.

Steps declare what they read and what they make (``PipelineStep.inputs`` / ``outputs``); the
edges follow from those names, so a use case adds a step by naming its inputs, or replaces a
default step by giving its name. Besides what steps make, every step may read the run's own
inputs (``RUN_INPUTS``). The order is the standard library's topological sort (``graphlib``):
a cycle, two producers of one output, or an input nothing produces is refused with the names
involved. No DAG library: the graph is a few nodes, and the execution is Ray's (``runner``).
"""

from __future__ import annotations

import graphlib
from dataclasses import dataclass

from ml_system.errors import PipelineError
from ml_system.pipelines import steps
from ml_system.usecase import PipelineStep, UseCase

# what a run provides to every step: its as-of moment (ISO-8601 or None), its parameters
# (trials, rounds, seed, rebuild) and the code version (``fingerprint.code_version``)
RUN_INPUTS = ("as_of", "params", "code")

DEFAULT_STEPS: tuple[PipelineStep, ...] = (
    PipelineStep(
        "ingest",
        steps.ingest,
        inputs=("params",),
        outputs=("table_versions", "definitions"),
        cache=False,
        description="build the use case's offline tables when missing, apply its definitions; pin versions",
    ),
    PipelineStep(
        "validate",
        steps.validate,
        inputs=("table_versions", "as_of"),
        outputs=("validated",),
        cache=False,
        description="source tables against their expectations (pandera); a bad batch stops the run",
    ),
    PipelineStep(
        "build_training_set",
        steps.build_training_set,
        inputs=("table_versions", "definitions", "as_of", "validated"),
        outputs=("training_set", "lineage"),
        num_cpus=0.5,
        description="point-in-time training set at the pinned versions (as of the run's moment)",
    ),
    PipelineStep(
        "train",
        steps.train_model,
        inputs=("training_set", "lineage", "params"),
        outputs=("model", "fit"),
        # Tune's trials reserve their own CPUs; this task only drives them
        num_cpus=0,
        description="Ray Tune over XGBoost on train/valid",
    ),
    PipelineStep(
        "evaluate",
        steps.evaluate,
        inputs=("training_set", "lineage", "model", "fit"),
        outputs=("evaluation",),
        cache=False,
        description="challenger vs baseline and champion on the same test rows",
    ),
    PipelineStep(
        "register",
        steps.register_challenger,
        inputs=("training_set", "lineage", "definitions", "model", "fit", "evaluation", "params", "code"),
        outputs=("model_version",),
        max_retries=1,
        description="MLflow model version with its lineage, alias challenger",
    ),
    PipelineStep(
        "start_canary",
        steps.start_canary,
        inputs=("model_version",),
        outputs=("canary",),
        cache=False,
        max_retries=0,
        description="hand the challenger to the rollout (no-op until a canary hook is configured)",
    ),
)


@dataclass(frozen=True)
class Pipeline:
    usecase: str
    steps: tuple[PipelineStep, ...]
    """In an order that runs every producer before its readers."""

    def step(self, name: str) -> PipelineStep:
        for step in self.steps:
            if step.name == name:
                return step
        raise PipelineError(f"pipeline of '{self.usecase}' has no step '{name}' (steps: {self.names})")

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.steps]

    def producers(self) -> dict[str, str]:
        return {out: s.name for s in self.steps for out in s.outputs}

    def upstream(self, step: PipelineStep) -> list[str]:
        """The steps whose outputs ``step`` reads, in pipeline order."""
        made = self.producers()
        wanted = {made[i] for i in step.inputs if i in made}
        return [n for n in self.names if n in wanted]


def compose(usecase: str, defaults: tuple[PipelineStep, ...], extra: tuple[PipelineStep, ...]) -> Pipeline:
    """Defaults with the use case's steps: one of the same name replaces, a new one is added."""
    merged = {s.name: s for s in defaults}
    for step in extra:
        merged[step.name] = step
    return check(usecase, list(merged.values()))


def check(usecase: str, steps_: list[PipelineStep]) -> Pipeline:
    """Refuse a graph that cannot run; return it in a runnable order."""
    where = f"pipeline of '{usecase}'"
    names = [s.name for s in steps_]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise PipelineError(f"{where}: step names {twice} are used twice")
    producers: dict[str, str] = {}
    for step in steps_:
        for out in step.outputs:
            if out in RUN_INPUTS:
                raise PipelineError(f"{where}: step '{step.name}' declares output '{out}', which is a run input")
            if out in producers:
                raise PipelineError(f"{where}: output '{out}' is made by both '{producers[out]}' and '{step.name}'")
            producers[out] = step.name
    graph: dict[str, set[str]] = {}
    for step in steps_:
        unknown = [i for i in step.inputs if i not in producers and i not in RUN_INPUTS]
        if unknown:
            raise PipelineError(
                f"{where}: step '{step.name}' reads {unknown}, which no step makes "
                f"(outputs: {sorted(producers)}; run inputs: {list(RUN_INPUTS)})"
            )
        graph[step.name] = {producers[i] for i in step.inputs if i in producers}
    try:
        order = list(graphlib.TopologicalSorter(graph).static_order())
    except graphlib.CycleError as exc:
        cycle = " -> ".join(exc.args[1])
        raise PipelineError(f"{where}: steps form a cycle: {cycle}") from None
    by_name = {s.name: s for s in steps_}
    return Pipeline(usecase, tuple(by_name[n] for n in order))


def pipeline_for(usecase: UseCase) -> Pipeline:
    return compose(usecase.name, DEFAULT_STEPS, tuple(usecase.pipeline_steps))
