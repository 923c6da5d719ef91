"""The model: one registered XGBoost version, scored on CPU or GPU.

``RegisteredBooster`` loads a version and scores a matrix; it is a plain class
so that a replica holding features too (``serving.scorer.Scorer``) can use it in-process
and batch the whole request there. ``XGBoostModel`` is the model as its own
deployment, to scale or place it apart (e.g. on a GPU): it gathers concurrent
calls with ``@serve.batch`` and scores them in one ``inplace_predict``. Batch
size and wait are ``user_config`` knobs applied in ``reconfigure``, so
``serve deploy`` changes them without restarting a replica.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

import numpy as np
import xgboost as xgb
from ray import serve

from ml_system.config import PlatformConfig, load_config
from ml_system.serving.metrics import serving_metrics
from ml_system.serving.settings import ScorerSettings
from ml_system.training import mlflow_model, tracking

log = logging.getLogger("ml_system.serving")


def platform_config(home: str | None) -> PlatformConfig:
    environ = dict(os.environ)
    if home:
        environ["MLSYS_HOME"] = home
    return load_config(environ=environ)


def gpu_visible() -> bool:
    """Whether this process may use a CUDA device (Ray's assignment when inside Ray)."""
    import ray

    if ray.is_initialized():
        try:
            return len(ray.get_gpu_ids()) > 0
        except Exception:  # noqa: BLE001 - a driver without a worker context
            pass
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return visible.strip() not in ("", "-1")
    return shutil.which("nvidia-smi") is not None


def select_device(requested: str) -> str:
    """``cuda`` when asked for and usable, else ``cpu`` with one log line saying why."""
    if not requested.startswith("cuda"):
        return "cpu"
    if not xgb.build_info().get("USE_CUDA"):
        log.warning("device %r requested but this xgboost build has no CUDA; scoring on CPU", requested)
        return "cpu"
    if not gpu_visible():
        log.warning("device %r requested but no GPU is visible to this process; scoring on CPU", requested)
        return "cpu"
    return requested


def configure_batch(method: Any, batching: ScorerSettings) -> None:
    """Apply batch settings to a ``@serve.batch`` method of a live replica."""
    method.set_max_batch_size(batching.max_batch_size)
    method.set_batch_wait_timeout_s(batching.batch_wait_timeout_s)


class RegisteredBooster:
    def __init__(
        self,
        model_name: str,
        alias: str = tracking.CHAMPION,
        home: str | None = None,
        version: str | None = None,
        device: str = "cpu",
    ) -> None:
        config = platform_config(home)
        self.registered = tracking.resolve(config.mlflow, model_name, alias=alias, version=version)
        self.booster, self.spec = mlflow_model.load_model(config.mlflow, self.registered)
        self.device = select_device(device)
        self.booster.set_param({"nthread": 1, "device": self.device})
        self.columns = list(self.spec.feature_columns)
        log.info("serving %s version %s on %s", model_name, self.registered.version, self.device)

    def enable_metrics(self) -> None:
        """Inside a replica only: ``ray.util.metrics`` needs a Ray worker."""
        serving_metrics().serving(self.registered.name, self.registered.version, self.device)

    def describe(self) -> dict[str, Any]:
        return {
            "model_name": self.registered.name,
            "model_version": self.registered.version,
            "feature_columns": self.columns,
            "feature_service": self.spec.feature_service,
            "objective": self.spec.objective,
            "threshold": self.spec.threshold,
            "device": self.device,
        }

    def score_now(self, matrix: np.ndarray) -> np.ndarray:
        """Unbatched scoring, for callers that already hold many rows."""
        return np.asarray(self.booster.inplace_predict(matrix))


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256)
class XGBoostModel:
    """A registered model as its own deployment, for callers that send feature matrices."""

    def __init__(
        self,
        model_name: str,
        alias: str = tracking.CHAMPION,
        home: str | None = None,
        version: str | None = None,
        device: str = "cpu",
    ) -> None:
        self.model = RegisteredBooster(model_name, alias, home, version, device)
        self.model.enable_metrics()
        self.batching = ScorerSettings()

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.batching = ScorerSettings.model_validate(user_config)
        configure_batch(self._score_batch, self.batching)

    def describe(self) -> dict[str, Any]:
        batching = self.batching.model_dump(include={"batching", "max_batch_size", "batch_wait_timeout_s"})
        return {**self.model.describe(), **batching}

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def _score_batch(self, matrices: list[np.ndarray]) -> list[np.ndarray]:
        sizes = [len(m) for m in matrices]
        joined = matrices[0] if len(matrices) == 1 else np.concatenate(matrices)
        serving_metrics().batch_size.observe(len(joined))
        scores = self.model.score_now(joined)
        return np.split(scores, np.cumsum(sizes)[:-1])

    async def predict(self, matrix: np.ndarray) -> dict[str, Any]:
        """Score rows whose columns follow ``describe()['feature_columns']``; a batch already skips the queue."""
        matrix = np.asarray(matrix, dtype=np.float32)
        if self.batching.skips_queue(len(matrix)):
            serving_metrics().batch_size.observe(len(matrix))
            scores = self.model.score_now(matrix)
        else:
            scores = await self._score_batch(matrix)
        return {"probabilities": scores.tolist(), "model_version": self.model.registered.version}
