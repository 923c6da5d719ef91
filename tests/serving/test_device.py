"""Device choice: CUDA only where it can run, otherwise CPU with one log line saying why."""

from __future__ import annotations

import logging

import pytest
import xgboost as xgb

from ml_system.serving.model_deployment import gpu_visible, select_device


def test_cpu_is_cpu() -> None:
    assert select_device("cpu") == "cpu"


@pytest.mark.skipif(bool(xgb.build_info().get("USE_CUDA")) and gpu_visible(), reason="a GPU is usable here")
def test_cuda_falls_back_to_cpu_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ml_system.serving"):
        assert select_device("cuda") == "cpu"
    assert any("scoring on CPU" in r.getMessage() for r in caplog.records)
