"""The registered model as its own deployment: batched scores equal the booster's own."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
from ray import serve

from ml_system.serving.model_deployment import RegisteredBooster, XGBoostModel

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_concurrent_calls_are_batched_and_scored_like_the_booster(serve_port: int, served_home: Any) -> None:
    app = XGBoostModel.options(
        ray_actor_options={"num_cpus": 0.1}, user_config={"max_batch_size": 8, "batch_wait_timeout_s": 0.05}
    ).bind("flight_delay", "champion", served_home.home)
    handle = serve.run(app, name="model", route_prefix=None)
    try:
        info = handle.describe.remote().result()
        assert (info["max_batch_size"], info["batch_wait_timeout_s"], info["device"]) == (8, 0.05, "cpu")
        rng = np.random.default_rng(0)
        matrices = [rng.normal(size=(1 + i % 3, len(info["feature_columns"]))).astype(np.float32) for i in range(12)]

        async def all_at_once() -> list[dict[str, Any]]:
            return list(await asyncio.gather(*(handle.predict.remote(m) for m in matrices)))

        answers = asyncio.run(all_at_once())
        local = RegisteredBooster("flight_delay", "champion", served_home.home)
        for matrix, answer in zip(matrices, answers, strict=True):
            assert answer["model_version"] == info["model_version"]
            np.testing.assert_allclose(answer["probabilities"], local.score_now(matrix), rtol=1e-6)
    finally:
        serve.delete("model")
