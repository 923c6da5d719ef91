"""The model replica: one registered XGBoost version, scored in batches.

Requests from many callers are gathered by ``@serve.batch`` and scored in one
``inplace_predict`` call; batch size and wait are ``user_config`` knobs applied
in ``reconfigure``, so ``serve deploy`` changes them without a restart.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np
from ray import serve

from ml_system.config import load_config
from ml_system.training import tracking

log = logging.getLogger("ml_system.serving")


def platform_config(home: str | None) -> Any:
    environ = dict(os.environ)
    if home:
        environ["MLSYS_HOME"] = home
    return load_config(environ=environ)


@serve.deployment(ray_actor_options={"num_cpus": 0.25}, max_ongoing_requests=256)
class XGBoostModel:
    def __init__(
        self, model_name: str, alias: str = tracking.CHAMPION, home: str | None = None, version: str | None = None
    ) -> None:
        config = platform_config(home)
        self.registered = tracking.resolve(config.mlflow, model_name, alias=alias, version=version)
        self.booster, self.spec = tracking.load_registered(config.mlflow, self.registered)
        self.booster.set_param({"nthread": 1})
        self.columns = list(self.spec.feature_columns)
        self.batching: dict[str, Any] = {"max_batch_size": 64, "batch_wait_timeout_s": 0.002}
        log.info("serving %s version %s", model_name, self.registered.version)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.batching = {
            "max_batch_size": int(user_config.get("max_batch_size", 64)),
            "batch_wait_timeout_s": float(user_config.get("batch_wait_timeout_s", 0.002)),
        }
        self.predict_rows.set_max_batch_size(self.batching["max_batch_size"])
        self.predict_rows.set_batch_wait_timeout_s(self.batching["batch_wait_timeout_s"])

    def describe(self) -> dict[str, Any]:
        return {
            "model_name": self.registered.name,
            "model_version": self.registered.version,
            "feature_columns": self.columns,
            "feature_service": self.spec.feature_service,
            "threshold": self.spec.threshold,
            **self.batching,
        }

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
    async def predict_rows(self, matrices: list[np.ndarray]) -> list[np.ndarray]:
        sizes = [len(m) for m in matrices]
        scores = self.booster.inplace_predict(np.concatenate(matrices))
        return np.split(np.asarray(scores), np.cumsum(sizes)[:-1])

    async def predict(self, matrix: np.ndarray) -> dict[str, Any]:
        """Score rows whose columns follow ``describe()['feature_columns']``."""
        scores = await self.predict_rows(np.asarray(matrix, dtype=np.float32))
        return {"probabilities": scores.tolist(), "model_version": self.registered.version}
