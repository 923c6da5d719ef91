"""Run a pipeline: every step a named Ray task, retried, cached, and recorded as it finishes.

All steps are submitted at once, each task taking its upstream tasks' results as arguments, so
Ray runs the graph (independent steps in parallel, each as soon as its inputs exist) and the
driver only watches. Tasks are named ``pipeline:<use case>:<step>``, which is how the Ray
dashboard lists them, and carry the step's ``max_retries`` and ``retry_exceptions``: a transient
error (a store that did not answer) is retried, a bad batch or a model that loses to the baseline
is not. A failed step fails its downstream steps without running them.

The cache is decided inside the task, so it works the same from any driver: the key is a digest
of the step's name, its inputs (Delta versions, definitions digest, parameters, the as-of moment,
upstream outputs) and the code version; an entry is created exclusively under the pipelines'
storage, and a later task with the same key returns the recorded outputs without running.

A run can also be driven one step at a time (``only``), as an external orchestrator does (one
Airflow task per step): the selected steps run under the run's id, and every other step they read
is taken from the run's record, where an earlier call left its outputs. Re-running a step that is
not cached re-pins nothing upstream: ``ingest``'s table versions stay those the run started with.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

import ray

from ml_system.config import PlatformConfig
from ml_system.errors import PipelineError
from ml_system.pipelines import fingerprint, history
from ml_system.pipelines.context import StepContext
from ml_system.pipelines.dag import Pipeline, pipeline_for
from ml_system.pipelines.history import RunRecord, StepRecord, now_iso
from ml_system.pipelines.storage import PipelineStorage, open_storage
from ml_system.usecase import PipelineStep, UseCase, load_usecase

CACHE = "cache"


@dataclass(frozen=True)
class RunParams:
    trials: int = 8
    rounds: int | None = None
    seed: int = 7
    rebuild: bool = False
    """Rebuild the use case's offline tables even when they exist."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cache_key(usecase: str, step: str, inputs: dict[str, Any], code: dict[str, Any]) -> str:
    return fingerprint.digest({"usecase": usecase, "step": step, "inputs": inputs, "code": code.get("source")})


def _cache_entry(usecase: str, step: str, key: str) -> str:
    return f"{CACHE}/{usecase}/{step}/{key}.json"


def _artifacts_present(storage: PipelineStorage, outputs: dict[str, Any]) -> bool:
    keys = [v for v in outputs.values() if isinstance(v, str) and v.startswith("artifacts/")]
    return all(storage.read(k) is not None for k in keys)


def execute_step(
    config: PlatformConfig, usecase_name: str, run_id: str, step_name: str, run_inputs: dict[str, Any], *upstream: Any
) -> dict[str, Any]:
    """The body of a step's task: resolve inputs, use the cache or run the step, record the cache entry."""
    usecase = load_usecase(usecase_name, config.usecases, check_all=False)
    step = pipeline_for(usecase).step(step_name)
    available = dict(run_inputs)
    for result in upstream:
        available.update(result["outputs"])
    inputs = {name: available[name] for name in step.inputs}
    key = cache_key(usecase.name, step.name, inputs, run_inputs["code"])
    ctx = StepContext(config, usecase, run_id, step.name, key)
    started = time.time()
    base = {"cache_key": key, "inputs": inputs, "started": started}
    if step.cache:
        hit = ctx.storage.read(_cache_entry(usecase.name, step.name, key))
        if hit is not None:
            entry = json.loads(hit)
            if _artifacts_present(ctx.storage, entry["outputs"]):
                detail = f"cached: run {entry['run_id']} made these outputs from the same inputs"
                outputs = entry["outputs"]
                return {**base, "status": "cached", "outputs": outputs, "detail": detail, "finished": time.time()}
    outputs = dict(step.fn(ctx, inputs))
    detail = outputs.pop("detail", None)
    if set(outputs) != set(step.outputs):
        raise PipelineError(
            f"step '{step.name}' of '{usecase.name}' returned {sorted(outputs)}, but declares {sorted(step.outputs)}"
        )
    outputs = json.loads(json.dumps(outputs, default=str))
    if step.cache:
        entry = {"run_id": run_id, "step": step.name, "inputs": inputs, "outputs": outputs, "at": now_iso()}
        ctx.storage.create(_cache_entry(usecase.name, step.name, key), fingerprint.canonical(entry))
    return {**base, "status": "succeeded", "outputs": outputs, "detail": detail, "finished": time.time()}


_remote_step = ray.remote(execute_step)


def task_name(usecase: str, step: str) -> str:
    return f"pipeline:{usecase}:{step}"


def _cause(exc: BaseException) -> BaseException:
    return getattr(exc, "cause", None) or exc


def _fill(record: StepRecord, result: dict[str, Any]) -> None:
    record.status = result["status"]
    record.cache_key = result["cache_key"]
    record.inputs = result["inputs"]
    record.outputs = result["outputs"]
    record.detail = result["detail"]
    record.started = datetime.fromtimestamp(result["started"], UTC).isoformat(timespec="milliseconds")
    record.finished = datetime.fromtimestamp(result["finished"], UTC).isoformat(timespec="milliseconds")
    record.duration_s = round(result["finished"] - result["started"], 3)


def run_pipeline(
    config: PlatformConfig,
    usecase: UseCase,
    *,
    params: RunParams | None = None,
    as_of: datetime | None = None,
    trigger: str = "manual",
    run_id: str | None = None,
    on_step: Callable[[RunRecord, StepRecord], None] | None = None,
    only: Sequence[str] | None = None,
) -> RunRecord:
    """Run the use case's pipeline to the end; the returned record says how it went (it never raises for a
    failed step: the record is ``failed`` and names the step and its error).

    ``only`` runs just those steps of run ``run_id``; the steps they read that are not selected must
    have finished in an earlier call for the same run (same as-of and parameters), else nothing runs.
    The record stays ``running`` until its last step has finished."""
    pipeline = pipeline_for(usecase)  # a bad graph is refused before anything runs
    if as_of is not None and as_of.tzinfo is None:
        raise PipelineError(f"as-of time {as_of} has no UTC offset")
    params = params or RunParams()
    storage = open_storage(config)
    code = fingerprint.code_version_of(usecase)
    run_id = run_id or history.new_run_id(usecase.name)
    earlier = history.find(storage, run_id)
    as_of_text = as_of.isoformat() if as_of else None
    selected = _selection(pipeline, only)
    record = RunRecord(run_id, usecase.name, trigger, as_of_text, params.to_dict(), code)
    record.steps = [StepRecord(s.name, task=task_name(usecase.name, s.name)) for s in pipeline.steps]
    record.attempts = earlier.attempts + 1 if earlier else 1
    if only is not None:
        given = _given_outputs(pipeline, record, earlier, selected)
        if earlier is not None:
            record.started = earlier.started
            tried = {s.name for s in earlier.steps if s.status != "pending"}
            record.attempts = earlier.attempts + 1 if tried & set(selected) else earlier.attempts
    else:
        given = {}
    history.save(storage, record)
    run_inputs = {"as_of": as_of_text, "params": params.to_dict(), "code": code}
    return _watch(config, pipeline, record, run_inputs, storage, on_step, selected, given)


def _selection(pipeline: Pipeline, only: Sequence[str] | None) -> list[str]:
    """The steps to run, in pipeline order; an unknown name is refused before anything runs."""
    if only is None:
        return pipeline.names
    unknown = [n for n in only if n not in pipeline.names]
    if unknown or not only:
        raise PipelineError(f"pipeline of '{pipeline.usecase}' has no step(s) {unknown} (steps: {pipeline.names})")
    return [n for n in pipeline.names if n in only]


def _given_outputs(
    pipeline: Pipeline, record: RunRecord, earlier: RunRecord | None, selected: list[str]
) -> dict[str, dict[str, Any]]:
    """Carry the earlier calls' step records into ``record``; return the outputs of the unselected steps
    the selection reads. Steps downstream of a selected one are reset: their inputs may change."""
    if earlier is not None:
        if earlier.usecase != record.usecase or earlier.as_of != record.as_of or earlier.params != record.params:
            raise PipelineError(
                f"run {record.run_id} was started with use case {earlier.usecase}, as of {earlier.as_of}, params "
                f"{earlier.params}; this call asks for {record.usecase}, as of {record.as_of}, params {record.params}"
            )
        kept = {s.name for s in earlier.steps}
        record.steps = [earlier.step(s.name) if s.name in kept else s for s in record.steps]
    stale = set(selected)
    for step in pipeline.steps:
        if stale & set(pipeline.upstream(step)):
            stale.add(step.name)
    for name in stale:
        record.steps[pipeline.names.index(name)] = StepRecord(name, task=task_name(pipeline.usecase, name))
    given: dict[str, dict[str, Any]] = {}
    for name in selected:
        for up in pipeline.upstream(pipeline.step(name)):
            if up in selected or up in given:
                continue
            done = record.step(up)
            if done.status not in ("succeeded", "cached"):
                raise PipelineError(
                    f"step '{name}' of run {record.run_id} reads the outputs of step '{up}', which is "
                    f"{done.status} in that run: run '{up}' first"
                )
            given[up] = {"outputs": done.outputs}
    return given


def _watch(
    config: PlatformConfig,
    pipeline: Pipeline,
    record: RunRecord,
    run_inputs: dict[str, Any],
    storage: PipelineStorage,
    on_step: Callable[[RunRecord, StepRecord], None] | None,
    selected: list[str],
    given: dict[str, dict[str, Any]],
) -> RunRecord:
    to_run = [s for s in pipeline.steps if s.name in selected]

    def upstream(step: PipelineStep) -> list[str]:
        return [u for u in pipeline.upstream(step) if u in selected]

    refs: dict[str, ray.ObjectRef] = {}
    for step in to_run:
        deps = [refs[name] if name in refs else given[name] for name in pipeline.upstream(step)]
        refs[step.name] = _remote_step.options(
            name=task_name(pipeline.usecase, step.name),
            num_cpus=step.num_cpus,
            max_retries=step.max_retries,
            retry_exceptions=list(step.retry_exceptions) if step.retry_exceptions else False,
        ).remote(config, pipeline.usecase, record.run_id, step.name, run_inputs, *deps)
    done: dict[str, ray.ObjectRef] = {}
    failed: dict[str, str] = {}
    processed: set[str] = set()

    def mark_running() -> None:
        for step in to_run:
            rec = record.step(step.name)
            if rec.status == "pending" and all(u in processed for u in upstream(step)):
                if not any(u in failed for u in upstream(step)):
                    rec.status = "running"
                    rec.started = now_iso()
                    if on_step:
                        on_step(record, rec)

    mark_running()
    pending = {ref: name for name, ref in refs.items()}
    while len(processed) < len(to_run):
        if pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            done[pending.pop(ready[0])] = ready[0]
        # in pipeline order, so an upstream failure is known before its downstream steps are judged
        for step in to_run:
            if step.name in processed or step.name not in done:
                continue
            if not all(u in processed for u in upstream(step)):
                continue
            rec = record.step(step.name)
            broken = [u for u in upstream(step) if u in failed]
            try:
                result = ray.get(done[step.name])
                _fill(rec, result)
            except Exception as exc:  # noqa: BLE001 - any step error ends up in the record, named
                cause = _cause(exc)
                if broken:
                    first_broken = record.step(broken[0])
                    root = f"upstream step '{broken[0]}' failed"
                    if first_broken.status == "not_run":
                        root = first_broken.error
                    rec.status, rec.error = "not_run", root
                else:
                    rec.status = "failed"
                    rec.error = f"{type(cause).__name__}: {cause}"
                    rec.detail = getattr(cause, "report", None) or None
                    rec.finished = now_iso()
                failed[step.name] = rec.error
            processed.add(step.name)
            history.save(storage, record)
            if on_step:
                on_step(record, rec)
        mark_running()
    first = next((record.step(s.name) for s in to_run if record.step(s.name).status == "failed"), None)
    complete = all(s.status in ("succeeded", "cached") for s in record.steps)
    record.status = "failed" if failed else "succeeded" if complete else "running"
    record.error = f"step '{first.name}': {first.error}" if first else ""
    record.finished = "" if record.status == "running" else now_iso()
    history.save(storage, record)
    return record
