"""GPU scoring: runs where a CUDA device and a CUDA-enabled xgboost exist, skipped with the reason elsewhere."""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import xgboost as xgb

from ml_system.serving.model_deployment import select_device


def _gpu_reason() -> str | None:
    if not xgb.build_info().get("USE_CUDA"):
        return "this xgboost build has no CUDA support"
    if shutil.which("nvidia-smi") is None:
        return "no nvidia-smi: no NVIDIA driver on this machine"
    probe = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    if probe.returncode != 0 or "GPU" not in probe.stdout:
        return f"nvidia-smi lists no GPU: {probe.stdout.strip() or probe.stderr.strip()}"
    return None


REASON = _gpu_reason()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(REASON is not None, reason=f"needs a CUDA GPU: {REASON}")]


def test_cuda_scores_equal_cpu_scores() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 20)).astype(np.float32)
    y = (x[:, 0] + rng.normal(size=5000) > 0).astype(np.float32)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 6}, xgb.DMatrix(x, y), 200)
    assert select_device("cuda") == "cuda"
    cpu = booster.inplace_predict(x)
    booster.set_param({"device": "cuda"})
    gpu = booster.inplace_predict(x)
    np.testing.assert_allclose(gpu, cpu, rtol=1e-5, atol=1e-6)
