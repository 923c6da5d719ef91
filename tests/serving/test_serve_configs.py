"""Every shipped Serve config is accepted by Ray Serve's own schema, as ``serve deploy`` would check it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "serve_configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_validates_against_serve_schema(path: Path) -> None:
    doc = ServeDeploySchema.model_validate(yaml.safe_load(path.read_text()))
    (app,) = doc.applications
    assert app.import_path == "ml_system.serving.app:build_app"
    assert "Ingress" in {d.name for d in app.deployments}


def test_default_config_wires_serve_tracing() -> None:
    doc = ServeDeploySchema.model_validate(yaml.safe_load((CONFIGS[0].parent / "flight_delay.yaml").read_text()))
    assert doc.tracing_config is not None and doc.tracing_config.sampling_ratio == 0.01
