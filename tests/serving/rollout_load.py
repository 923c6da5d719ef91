"""Constant HTTP load for rollout tests and the rollout benchmark (every answer recorded, failures counted), and
a challenger that should never pass a rollout."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import mlflow
import numpy as np
import pandas as pd
import xgboost as xgb

from ml_system.config import PlatformConfig
from ml_system.training import mlflow_model, tracking
from ml_system.training.model_artifact import ModelSpec

NAME = "flight_delay"


@dataclass
class Answer:
    at: float
    key: int
    status: int
    version: str
    arm: str
    ms: float


@dataclass
class Load:
    """``threads`` clients posting one flight each, round robin over ``items``, until ``stop``."""

    url: str
    items: list[dict[str, Any]]
    threads: int = 4
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        for n in range(self.threads):
            worker = threading.Thread(target=self._run, args=(n,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def _run(self, n: int) -> None:
        i = n
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                key = i % len(self.items)
                t0 = time.perf_counter()
                try:
                    r = client.post(f"{self.url}/predict", json={"flights": [self.items[key]]})
                    body = r.json() if r.status_code == 200 else {}
                    answer = Answer(
                        time.monotonic(), key, r.status_code, str(body.get("model_version", "")),
                        r.headers.get("x-model-arm", ""), (time.perf_counter() - t0) * 1000,
                    )  # fmt: skip
                except httpx.HTTPError:
                    answer = Answer(time.monotonic(), key, 0, "", "", (time.perf_counter() - t0) * 1000)
                with self._lock:
                    self.answers.append(answer)
                i += self.threads

    def stop(self) -> list[Answer]:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=60)
        return self.answers

    def since(self, t: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.at >= t]

    def failed(self) -> list[Answer]:
        return [a for a in self.answers if a.status != 200]


def register_random(config: PlatformConfig) -> str:
    """A well-formed challenger that reads the right features but predicts noise around 0.5."""
    champion = tracking.resolve(config.mlflow, NAME)
    _, spec = mlflow_model.load_model(config.mlflow, champion)
    columns = list(spec.feature_columns)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(500, len(columns))).astype(np.float32)
    booster = xgb.train(
        {"objective": "binary:logistic", "nthread": 1},
        xgb.DMatrix(x, label=rng.integers(0, 2, 500).astype(float), feature_names=columns),
        10,
    )
    random_spec = ModelSpec(columns, spec.feature_service, spec.label, spec.objective, spec.threshold)
    with mlflow.start_run(experiment_id=tracking.experiment_id(config.mlflow, "random_challengers")):
        logged = mlflow_model.log_model(booster, random_spec, input_example=pd.DataFrame(x[:3], columns=columns))
    return mlflow_model.register_model(config.mlflow, logged, NAME, tags={}, alias=tracking.CHALLENGER).version
