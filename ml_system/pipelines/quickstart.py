"""``mlsys quickstart``: the whole loop of a use case once, on embedded defaults, on real data.

Local Ray cluster, Delta tables on disk, SQLite online store, MLflow on SQLite:
nothing to install or start beforehand.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ml_system.cluster import connect, quiet
from ml_system.config import PlatformConfig
from ml_system.pipelines import steps
from ml_system.pipelines.stream_demo import BurstReport, describe, run_burst
from ml_system.serving.app import AppArgs, build_app
from ml_system.serving.deploy import fast_serving_env, run_app
from ml_system.teams.identity import TOKEN_ENV
from ml_system.usecase import UseCase


@dataclass
class ProbeReport:
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    sample: dict[str, Any]


def probe(url: str, items_field: str, items: list[dict[str, Any]], requests: int = 300) -> ProbeReport:
    """Send real HTTP requests, one item each, and measure latency."""
    latencies = []
    errors = 0
    sample: dict[str, Any] = {}
    token = os.environ.get(TOKEN_ENV)  # the app needs a key where the platform has team tokens (docs/security.md)
    headers = {"authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=url, timeout=30, headers=headers) as client:
        for i in range(requests):
            body = {items_field: [items[i % len(items)]]}
            t0 = time.perf_counter()
            resp = client.post("/predict", json=body)
            latencies.append((time.perf_counter() - t0) * 1000)
            if resp.status_code != 200:
                errors += 1
            elif not sample:
                sample = resp.json()
    arr = np.asarray(latencies)
    return ProbeReport(requests, errors, float(np.percentile(arr, 50)), float(np.percentile(arr, 99)), sample)


@dataclass
class QuickstartResult:
    dashboard_url: str
    endpoint: str
    metric: str
    test_score: float
    baseline_score: float
    valid_score: float
    model_version: str
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    wall_s: float
    stage_s: dict[str, float] = field(default_factory=dict)
    sample: dict[str, Any] = field(default_factory=dict)
    burst: BurstReport | None = None


def run_quickstart(
    config: PlatformConfig,
    usecase: UseCase,
    trials: int = 8,
    rounds: int | None = None,
    requests: int = 300,
    console: Console | None = None,
) -> QuickstartResult:
    console = console or Console()
    assert usecase.demo is not None and usecase.serving is not None
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
        # The fast Serve ingress (HAProxy; benchmarks/serve_load.py) is chosen when the cluster starts; it takes effect
        # if this starts a local one, and changes nothing on a cluster that is already running.
        for key, value in fast_serving_env(Path(config.home) / "haproxy").items():
            os.environ.setdefault(key, value)
        dashboard = connect(config.ray)
        done(task, "ray", t0)

        t0 = time.perf_counter()
        task = stage(f"Offline store and registry: {usecase.name} feature tables and definitions")
        versions = steps.build_features(config, usecase)
        done(task, "features", t0)

        t0 = time.perf_counter()
        task = stage("Point-in-time training set")
        tune_task = stage(f"Ray Tune: {trials} XGBoost trials (ASHA)", total=trials)

        def on_stage(name: str) -> None:
            if name == "tuning":
                progress.update(task, completed=1)

        def on_trial(trial_id: str, auc: float) -> None:
            progress.advance(tune_task)

        report = steps.train(
            config, usecase, num_samples=trials, num_boost_round=rounds, on_trial_done=on_trial, on_stage=on_stage
        )
        progress.update(task, completed=1)
        done(tune_task, "train", t0)

        t0 = time.perf_counter()
        task = stage(f"Materialize online store ({config.online_store.type})")
        written = steps.materialize(config, end=usecase.demo.cutoff, usecase=usecase)
        done(task, "materialize", t0)

        t0 = time.perf_counter()
        task = stage(f"Ray Serve: deploy the {usecase.app_name} app at {usecase.route}")
        app = build_app(AppArgs(usecase=usecase.name, home=config.home))
        url = run_app(app, usecase.app_name, config.serving, route_prefix=usecase.route)
        done(task, "serve", t0)

        t0 = time.perf_counter()
        task = stage(f"HTTP: {requests} real requests")
        items = usecase.demo.requests(config)
        probed = probe(url, usecase.serving.items_field, items, requests=requests)
        done(task, "requests", t0)

        burst = None
        if usecase.demo.stream is not None:
            t0 = time.perf_counter()
            task = stage("Stream: a burst of events through the consumer group, the same requests again")
            demo = usecase.demo.stream(config)
            burst = run_burst(config, demo, url, usecase.serving.items_field, AppArgs().user_config)
            done(task, "stream", t0)

    result = QuickstartResult(
        dashboard_url=dashboard,
        endpoint=f"{url}/predict",
        metric=report.metric,
        test_score=report.test_score,
        baseline_score=report.baseline_score,
        valid_score=report.valid_score,
        model_version=report.model_version,
        p50_ms=probed.p50_ms,
        p99_ms=probed.p99_ms,
        requests=probed.requests,
        errors=probed.errors,
        wall_s=time.perf_counter() - t_start,
        stage_s=stage_s,
        sample=probed.sample,
        burst=burst,
    )
    table = Table(title=f"ml_system quickstart: {usecase.name}: {usecase.description}")
    table.add_column("what")
    table.add_column("value")
    table.add_row("Delta tables", ", ".join(f"{k} v{v}" for k, v in versions.items() if k != "registry"))
    table.add_row(
        "training rows",
        f"{report.rows['train']:,} train / {report.rows['valid']:,} valid / {report.rows['test']:,} test",
    )
    table.add_row(
        "model", f"{report.model_name} v{report.model_version} (alias {report.alias}), {report.trials} trials"
    )
    metric = report.metric.upper()
    table.add_row(f"validation {metric}", f"{report.valid_score:.4f}")
    table.add_row(f"test {metric}", f"{report.test_score:.4f} (baseline without a model: {report.baseline_score:.4f})")
    table.add_row("online upserts (per block)", ", ".join(f"{k}={v}" for k, v in written.items()))
    table.add_row(
        "serving latency",
        f"p50 {probed.p50_ms:.1f} ms, p99 {probed.p99_ms:.1f} ms ({probed.requests} requests, {probed.errors} errors)",
    )
    if burst is not None:
        table.add_row("stream", describe(burst))
    table.add_row("endpoint", f"{url}/predict  (OpenAPI: {url}/docs)")
    table.add_row("Ray dashboard", dashboard or "(not available)")
    table.add_row("MLflow", f"mlflow ui --backend-store-uri {config.mlflow.tracking_uri}")
    table.add_row(
        "wall time", f"{result.wall_s:.0f} s (" + ", ".join(f"{k} {v:.0f}s" for k, v in stage_s.items()) + ")"
    )
    console.print(table)
    if probed.sample:
        console.print("sample response:", probed.sample)
    return result
