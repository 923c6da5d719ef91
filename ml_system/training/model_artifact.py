"""XGBoost models as native JSON with a SHA-256 checksum, never pickle.

The checksum is recorded with the model version at registration and verified
on every load, so a truncated download or a swapped file fails loudly instead
of serving wrong predictions.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import xgboost as xgb

from ml_system.errors import ModelIntegrityError

MODEL_FILE = "model.json"
SPEC_FILE = "model_spec.json"


@dataclass(frozen=True)
class ModelSpec:
    """What a caller must supply to use the model: feature columns in order, and their origin."""

    feature_columns: list[str]
    feature_service: str
    label: str
    threshold: float = 0.5


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_model(booster: xgb.Booster, spec: ModelSpec, directory: str | Path) -> str:
    """Write model + spec into ``directory``; returns the model file's checksum."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    booster.save_model(directory / MODEL_FILE)
    (directory / SPEC_FILE).write_text(json.dumps(spec.__dict__, indent=2))
    return sha256_file(directory / MODEL_FILE)


def load_model(directory: str | Path, expected_sha256: str | None) -> tuple[xgb.Booster, ModelSpec]:
    directory = Path(directory)
    model_path = directory / MODEL_FILE
    if not model_path.exists():
        raise ModelIntegrityError(f"no {MODEL_FILE} in {directory}")
    if expected_sha256 is not None:
        actual = sha256_file(model_path)
        if actual != expected_sha256:
            raise ModelIntegrityError(
                f"model file {model_path} has checksum {actual[:12]}…, the registry recorded {expected_sha256[:12]}…"
            )
    booster = xgb.Booster()
    booster.load_model(model_path)
    spec = ModelSpec(**json.loads((directory / SPEC_FILE).read_text()))
    return booster, spec
