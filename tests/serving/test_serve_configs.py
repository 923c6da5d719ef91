"""Every shipped Serve config passes the full check (Serve's schema, autoscaling, our builder's args
and user_config), and a bad field is refused by name before anything is sent."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from ml_system.errors import ConfigError
from ml_system.serving.config_check import validate_document

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "serve_configs").glob("*.yaml"))
DEFAULT = CONFIGS[0].parent / "flight_delay.yaml"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_passes_the_full_check(path: Path) -> None:
    doc = validate_document(yaml.safe_load(path.read_text()))
    (app,) = doc.applications
    assert app.import_path == "ml_system.serving.app:build_app"
    assert "Ingress" in {d.name for d in app.deployments}


def test_default_config_wires_serve_tracing() -> None:
    doc = ServeDeploySchema.model_validate(yaml.safe_load(DEFAULT.read_text()))
    assert doc.tracing_config is not None and doc.tracing_config.sampling_ratio == 0.01


def _with(change: Any) -> dict[str, Any]:
    doc = copy.deepcopy(yaml.safe_load(DEFAULT.read_text()))
    change(doc["applications"][0])
    return doc


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda a: a["deployments"][0]["user_config"].update(max_batch_size="64x"), "user_config.max_batch_size"),
        (lambda a: a["deployments"][0]["user_config"].update(cache_ttl=1), "user_config.cache_ttl"),
        (lambda a: a["deployments"][0]["autoscaling_config"].update(min_replicas="x"), "min_replicas"),
        (lambda a: a["deployments"][0]["autoscaling_config"].update(min_replicas=9), "autoscaling_config"),
        (lambda a: a["args"].update(topology="fusd"), "args.topology"),
        (lambda a: a["args"].update(usecas="flights"), "args.usecas"),
    ],
    ids=["user-config-type", "user-config-unknown", "autoscaling-type", "autoscaling-min-over-max", "args", "arg-typo"],
)
def test_a_bad_field_is_refused_by_name_before_anything_is_sent(change: Any, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        validate_document(_with(change))


def test_cli_validates_with_a_one_line_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(_with(lambda a: a["deployments"][0]["user_config"].update(max_batch_size="64x"))))
    env = {**os.environ, "MLSYS_HOME": str(tmp_path), "COLUMNS": "200"}
    run = [sys.executable, "-m", "ml_system.cli", "serve", "validate"]
    good = subprocess.run([*run, str(DEFAULT)], capture_output=True, text=True, env=env, timeout=120)
    assert good.returncode == 0 and "valid" in good.stdout, good.stderr
    out = subprocess.run([*run, str(bad)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 1 and "user_config.max_batch_size" in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "Traceback" not in out.stderr
