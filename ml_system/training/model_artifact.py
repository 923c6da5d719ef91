"""What a model needs besides its trees, and the checksum that vouches for all of it.

A model is only usable with its spec: the feature columns in the order the
booster was trained on, the objective that says how to read its output, the
decision threshold. The spec therefore travels inside the model (MLflow's
``MLmodel`` metadata, see ``mlflow_model``) and one checksum covers the whole
model directory: every file, by relative path and content. A digest of the
booster file alone (what we recorded before) let a spec with reversed columns
load under a valid checksum and score every row with the wrong features.

This module works on local files and boosters only; moving models through
MLflow is ``mlflow_model``'s job.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path
from typing import Any

import xgboost as xgb

from ml_system.errors import ModelIntegrityError

CHUNK = 1 << 20


@dataclass(frozen=True)
class ModelSpec:
    """What a caller must supply to use the model, and how to read what it returns.

    ``objective`` is XGBoost's (``binary:logistic``, ``reg:squarederror`` ...): it
    tells a probability from minutes, so a regression model is never served as
    a classifier. ``threshold`` only means something for a classifier.
    """

    feature_columns: list[str]
    feature_service: str
    label: str
    objective: str
    threshold: float = 0.5

    def to_metadata(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_metadata(cls, data: object, where: str) -> ModelSpec:
        """Parse a spec read from a model; ``where`` names the model in the error."""
        if not isinstance(data, dict):
            raise ModelIntegrityError(f"{where}: model spec is {type(data).__name__}, expected a mapping")
        known = {f.name for f in fields(cls)}
        required = {f.name for f in fields(cls) if f.default is MISSING}
        unknown = sorted(set(data) - known)
        missing = sorted(required - set(data))
        if unknown or missing:
            raise ModelIntegrityError(f"{where}: model spec has unknown keys {unknown} / lacks keys {missing}")
        columns = data["feature_columns"]
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns) or not columns:
            raise ModelIntegrityError(f"{where}: model spec's feature_columns must be a non-empty list of names")
        for key in ("feature_service", "label", "objective"):
            if not isinstance(data[key], str) or not data[key]:
                raise ModelIntegrityError(f"{where}: model spec's {key} must be a non-empty string")
        threshold = data.get("threshold", cls.threshold)
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise ModelIntegrityError(f"{where}: model spec's threshold must be a number, not {threshold!r}")
        return cls(**{**data, "threshold": float(threshold)})


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_digests(directory: str | Path, skip: frozenset[str] = frozenset()) -> dict[str, str]:
    """``{relative posix path: sha256}`` of every file under ``directory`` but the relative paths in ``skip``."""
    root = Path(directory)
    out: dict[str, str] = {}
    for folder, _dirs, files in os.walk(root):
        for name in files:
            path = Path(folder) / name
            relative = path.relative_to(root).as_posix()
            if relative not in skip:
                out[relative] = sha256_file(path)
    return out


def tree_digest(directory: str | Path, skip: frozenset[str] = frozenset()) -> str:
    """One SHA-256 over the sorted ``(relative path, file digest)`` pairs of a directory.

    Paths are part of the digest, so renaming, adding or removing a file changes
    it as surely as editing one; JSON encoding keeps the pairs unambiguous
    whatever characters a name holds. ``skip`` names files by exact relative
    path, for a file the store's own tooling writes after registration.
    """
    pairs = sorted(file_digests(directory, skip).items())
    return hashlib.sha256(json.dumps(pairs, separators=(",", ":")).encode()).hexdigest()


def booster_objective(booster: xgb.Booster) -> str:
    return str(json.loads(booster.save_config())["learner"]["objective"]["name"])


def spec_mismatch(booster: xgb.Booster, spec: ModelSpec) -> str | None:
    """Why ``booster`` cannot be used under ``spec``, or None when it can.

    XGBoost scores by position, not by name, so a column order that differs from
    the training order gives wrong answers without an error; the names the
    booster kept from training are the only witness of that order.
    """
    names = list(booster.feature_names or [])
    if names != list(spec.feature_columns):
        if not names:
            return "the booster has no feature names, so its column order cannot be checked"
        if sorted(names) == sorted(spec.feature_columns):
            return f"the booster's feature names are the spec's columns in another order: {names}"
        extra = sorted(set(names) - set(spec.feature_columns))
        lacking = sorted(set(spec.feature_columns) - set(names))
        return (
            f"the booster's feature names differ from the spec's columns (booster only: {extra}, spec only: {lacking})"
        )
    objective = booster_objective(booster)
    if objective != spec.objective:
        return f"the booster's objective is '{objective}', the spec says '{spec.objective}'"
    return None
