"""``mlsys pipeline ...`` and ``mlsys reproduce``: retraining runs, their history, schedules, backfills."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ml_system.cli.common import (
    ConfigOpt,
    HomeOpt,
    UseCaseOpt,
    cli_config,
    console,
    err,
    fails_cleanly,
    parse_time,
)
from ml_system.errors import MLSystemError

pipeline_app = typer.Typer(help="Retraining pipelines: runs, history, schedules, backfills.", no_args_is_help=True)
scheduler_app = typer.Typer(help="The scheduler on the cluster (a detached Ray actor).", no_args_is_help=True)
pipeline_app.add_typer(scheduler_app, name="scheduler")

MARK = {"succeeded": "[green]done[/green]", "cached": "[cyan]cached[/cyan]", "failed": "[red]failed[/red]"}


def _short(value: Any, width: int = 70) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def _run_with_progress(run: Any) -> Any:
    """Run ``run(on_step)`` with a line per step that shows its state as the tasks finish."""
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        lines: dict[str, Any] = {}

        def on_step(record: Any, step: Any) -> None:
            if not lines:
                for s in record.steps:
                    lines[s.name] = progress.add_task(f"{s.name:<20} pending", total=1)
            label = MARK.get(step.status, step.status)
            extra = f" {step.duration_s:.1f}s" if step.status in ("succeeded", "cached", "failed") else ""
            finished = step.status not in ("pending", "running")
            progress.update(lines[step.name], description=f"{step.name:<20} {label}{extra}", completed=int(finished))

        return run(on_step)


def _print_run(record: Any) -> None:
    table = Table(title=f"run {record.run_id} ({record.usecase}, {record.trigger}): {record.status}")
    for col in ("step", "status", "seconds", "outputs", "error"):
        table.add_column(col)
    for step in record.steps:
        outputs = ", ".join(f"{k}={_short(v, 40)}" for k, v in step.outputs.items())
        table.add_row(step.name, step.status, f"{step.duration_s:.1f}", _short(outputs, 90), _short(step.error, 90))
    console.print(table)


def _fail_if_failed(record: Any) -> None:
    if record.status != "succeeded":
        err.print(f"[red]error:[/red] run {record.run_id} failed: {record.error}", soft_wrap=True)
        raise typer.Exit(1)


@pipeline_app.command("run")
@fails_cleanly
def pipeline_run(
    usecase: str | None = UseCaseOpt,
    trials: int = typer.Option(8, min=1, help="Ray Tune trials"),
    rounds: int | None = typer.Option(None, min=1, help="Max boosting rounds (default: the use case's)"),
    seed: int = typer.Option(7, help="Seed of the search and of XGBoost"),
    as_of: str | None = typer.Option(None, "--as-of", help="Build the training set as of this time (ISO-8601)"),
    rebuild: bool = typer.Option(False, help="Rebuild the offline tables even if they exist"),
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """Run the retraining pipeline: ingest, validate, training set, tune, evaluate, register challenger."""
    from ml_system.cluster import connect, quiet
    from ml_system.pipelines.runner import RunParams, run_pipeline
    from ml_system.pipelines.steps import usecase_for

    cfg = cli_config(config, home)
    uc = usecase_for(cfg, usecase)
    moment = parse_time(as_of, "as-of") if as_of else None
    if moment is not None and moment > datetime.now(UTC):
        raise MLSystemError(f"--as-of {as_of} is in the future")
    quiet()
    dashboard = connect(cfg.ray)
    console.print(f"pipeline of use case {uc.name}; Ray dashboard {dashboard or '-'} (tasks pipeline:{uc.name}:*)")
    params = RunParams(trials=trials, rounds=rounds, seed=seed, rebuild=rebuild)
    record = _run_with_progress(lambda on_step: run_pipeline(cfg, uc, params=params, as_of=moment, on_step=on_step))
    _print_run(record)
    _fail_if_failed(record)
    console.print(f"run {record.run_id} succeeded: {uc.model_name} version {record.model_version} is the challenger")


@pipeline_app.command("history")
@fails_cleanly
def pipeline_history(
    usecase: str | None = typer.Option(None, "--usecase", "-u", help="Only this use case's runs"),
    limit: int = typer.Option(20, min=1),
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """Recent runs, newest first: trigger, as-of, status, model version, steps run and cached."""
    from ml_system.pipelines.history import list_runs
    from ml_system.pipelines.storage import open_storage

    runs = list_runs(open_storage(cli_config(config, home)), usecase, limit)
    table = Table(title=f"pipeline runs ({len(runs)})")
    for col in ("run", "use case", "trigger", "as of", "status", "model version", "steps", "started"):
        table.add_column(col)
    for r in runs:
        counts: dict[str, int] = {}
        for s in r.steps:
            counts[s.status] = counts.get(s.status, 0) + 1
        steps = ", ".join(f"{n} {k}" for k, n in counts.items())
        row = (r.run_id, r.usecase, _short(r.trigger, 40), r.as_of or "-", r.status, r.model_version or "-", steps)
        table.add_row(*row, r.started[:19])
    console.print(table)


@pipeline_app.command("show")
@fails_cleanly
def pipeline_show(run: str, config: str | None = ConfigOpt, home: str | None = HomeOpt) -> None:
    """One run: each step's status, duration, cache key, inputs and outputs (and what failed)."""
    from ml_system.pipelines.history import load
    from ml_system.pipelines.storage import open_storage

    record = load(open_storage(cli_config(config, home)), run)
    console.print(f"[bold]{record.run_id}[/bold] {record.usecase}: {record.status} (trigger {record.trigger})")
    console.print(f"as of {record.as_of or 'now'}; params {record.params}; code {record.code.get('source', '')[:12]}")
    console.print(f"started {record.started}, finished {record.finished or '-'}, attempt {record.attempts}")
    if record.error:
        console.print(f"[red]error:[/red] {record.error}", soft_wrap=True)
    _print_run(record)
    for step in record.steps:
        if step.inputs or step.detail:
            console.print(f"[bold]{step.name}[/bold] key {step.cache_key[:16]} task {step.task}")
            console.print(f"  inputs: {_short(step.inputs, 400)}", markup=False, soft_wrap=True)
            if step.detail:
                console.print(f"  detail: {_short(step.detail, 1200)}", markup=False, soft_wrap=True)


@pipeline_app.command("schedule")
@fails_cleanly
def pipeline_schedule(
    count: int = typer.Option(3, min=1, help="Next slots to list per schedule"),
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """Schedules and drift checks from the config: cron, policy, the next slots, the last one recorded."""
    from ml_system.pipelines.scheduler import Scheduler

    cfg = cli_config(config, home)
    scheduler = Scheduler(cfg, owner="cli")
    rows = scheduler.upcoming(datetime.now(UTC), count)
    if not rows:
        console.print("no schedules or triggers in the config (pipelines.schedules, pipelines.triggers)")
        return
    table = Table(title="schedules (UTC)")
    for col in ("name", "use case", "does", "cron", "missed slots", "next", "last slot", "last status"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            r["name"], r["usecase"], r["kind"], r["cron"], r["catchup"], "\n".join(r["next"]),
            r["last_slot"] or "-", r["last_status"] or "-",
        )  # fmt: skip
    console.print(table)


@pipeline_app.command("backfill")
@fails_cleanly
def pipeline_backfill(
    start: str = typer.Option(..., help="First slot at or after this time (ISO-8601 with offset)"),
    end: str = typer.Option(..., help="Last slot at or before this time"),
    cron: str | None = typer.Option(None, help="Slots (default: the use case's first retrain schedule, else daily)"),
    usecase: str | None = UseCaseOpt,
    trials: int = typer.Option(8, min=1),
    rounds: int | None = typer.Option(None, min=1),
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """One run per slot from --start to --end, each building its training set as of its slot."""
    from ml_system.cluster import connect, quiet
    from ml_system.pipelines.runner import RunParams
    from ml_system.pipelines.scheduler import backfill
    from ml_system.pipelines.steps import usecase_for

    cfg = cli_config(config, home)
    uc = usecase_for(cfg, usecase)
    t0, t1 = parse_time(start, "start"), parse_time(end, "end")
    schedules = [s for s in cfg.pipelines.schedules if s.usecase == uc.name and s.action == "retrain"]
    cron = cron or (schedules[0].cron if schedules else "0 0 * * *")
    quiet()
    connect(cfg.ray)

    def on_run(record: Any) -> None:
        mark = MARK.get(record.status, record.status)
        console.print(f"slot {record.as_of}: run {record.run_id} {mark} {record.model_version or record.error}")

    records = backfill(cfg, uc.name, t0, t1, cron, RunParams(trials=trials, rounds=rounds), on_run=on_run)
    failed = [r for r in records if r.status != "succeeded"]
    console.print(f"backfill of {uc.name} ({cron}): {len(records)} slot(s), {len(failed)} failed")
    if failed:
        _fail_if_failed(failed[0])


JobEnvOpt = typer.Option(None, "--env", help="NAME=VALUE for every job (repeatable)")


@pipeline_app.command("export-airflow")
@fails_cleanly
def pipeline_export_airflow(
    usecase: str | None = UseCaseOpt,
    out: str | None = typer.Option(None, "--out", "-o", help="DAG file (default: ./mlsys_retrain_<use case>.py)"),
    schedule: str | None = typer.Option(
        None, help="Five-field cron (default: the use case's retrain schedule in the config; 'none': manual only)"
    ),
    ray_address: str = typer.Option(
        "http://127.0.0.1:8265", "--ray-address", help="Job submission URL of the cluster (the dashboard's)"
    ),
    working_dir: str = typer.Option(".", help="Folder with jobs/retrain.py, uploaded with each job (or an s3:// zip)"),
    trials: int | None = typer.Option(None, min=1, help="Ray Tune trials (default: the schedule's, else 8)"),
    rounds: int | None = typer.Option(None, min=1),
    seed: int = typer.Option(7),
    catchup: bool = typer.Option(False, help="Run the slots missed since the DAG's start date"),
    step_timeout: int = typer.Option(4 * 3600, min=60, help="Seconds a step's Ray job may run"),
    retries: int = typer.Option(1, min=0, help="Airflow retries of a failed step"),
    poll_s: float = typer.Option(5.0, "--poll-s", min=0.1, help="Seconds between looks at a step's job and log"),
    env: list[str] | None = JobEnvOpt,
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """Write an Airflow DAG file whose tasks (one per step) submit the pipeline to the Ray cluster."""
    import os
    from pathlib import Path

    from ml_system.pipelines.airflow_export import AirflowExport, write_dag

    cfg = cli_config(config, home)
    job_env: dict[str, str] = {}
    if config or os.environ.get("MLSYS_CONFIG"):
        job_env["MLSYS_CONFIG"] = str(Path(config or os.environ["MLSYS_CONFIG"]).expanduser().resolve())
    if home:
        job_env["MLSYS_HOME"] = str(Path(home).expanduser().resolve())
    for item in env or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise MLSystemError(f"--env '{item}' is not NAME=VALUE")
        job_env[name] = value
    export = AirflowExport(
        usecase=usecase, ray_address=ray_address, working_dir=working_dir, schedule=schedule,
        trials=trials, rounds=rounds, seed=seed, catchup=catchup, step_timeout_s=step_timeout, retries=retries,
        poll_s=poll_s, env=job_env,
    )  # fmt: skip
    target, spec = write_dag(cfg, export, Path(out) if out else None)
    console.print(
        f"wrote {target}: DAG {spec['dag_id']}, schedule {spec['schedule'] or 'none (manual)'}, "
        f"catchup {spec['catchup']}, {len(spec['steps'])} tasks ({' > '.join(spec['steps'])}) submitting to "
        f"{spec['ray_address']}"
    )
    console.print("copy it to Airflow's dags folder; Airflow's Python needs apache-airflow and ray (setup_airflow.sh)")


@scheduler_app.command("start")
@fails_cleanly
def scheduler_start(config: str | None = ConfigOpt, home: str | None = HomeOpt) -> None:
    """Start the scheduler actor on the cluster (detached: it outlives this command)."""
    import ray

    from ml_system.cluster import connect
    from ml_system.pipelines.scheduler import ACTOR_NAME, NAMESPACE, start_scheduler

    cfg = cli_config(config, home)
    connect(cfg.ray)
    actor = start_scheduler(cfg)
    owner = ray.get(actor.status.remote(), timeout=60)["owner"]
    console.print(f"scheduler '{ACTOR_NAME}' (namespace {NAMESPACE}) runs as {owner}; state in {cfg.pipelines.uri}")


@scheduler_app.command("stop")
@fails_cleanly
def scheduler_stop(config: str | None = ConfigOpt, home: str | None = HomeOpt) -> None:
    """Stop the scheduler actor; slots due meanwhile follow each schedule's catch-up policy at the next start."""
    from ml_system.cluster import connect
    from ml_system.pipelines.scheduler import stop_scheduler

    connect(cli_config(config, home).ray)
    console.print("scheduler stopped" if stop_scheduler() else "no scheduler was running")


@fails_cleanly
def reproduce(
    target: str = typer.Argument(..., help="A pipeline run id, or a model name followed by VERSION"),
    version: str | None = typer.Argument(None, help="Model version (when TARGET is a model name)"),
    config: str | None = ConfigOpt,
    home: str | None = HomeOpt,
) -> None:
    """Rebuild a run's training set from its recorded inputs, retrain, and compare the predictions."""
    from ml_system.cluster import connect, quiet
    from ml_system.pipelines.reproduce import reproduce as rebuild

    cfg = cli_config(config, home)
    quiet()
    connect(cfg.ray)
    result = rebuild(cfg, target, version)
    table = Table(title=f"reproduce {result.model} v{result.version}")
    for col in ("input / output", "recorded", "reproduced / now", "same", "note"):
        table.add_column(col)
    for c in result.checks:
        table.add_row(c.item, c.recorded, c.now, "yes" if c.same else "[red]no[/red]", c.note)
    console.print(table)
    if result.identical:
        console.print(f"identical: the same {result.rows_compared} test predictions, value for value")
        return
    what = ", ".join(c.item for c in result.differences) or "the retrained booster"
    err.print(
        f"[red]error:[/red] not reproduced: {result.rows_differing} of {result.rows_compared} test predictions "
        f"differ (max {result.max_abs_diff:.3g}); differs: {what}"
    )
    raise typer.Exit(1)
