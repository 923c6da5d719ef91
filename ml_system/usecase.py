"""The use-case contract, and the table that names the use cases.

A use case is what a team brings to the platform: a package (``ml_system/usecases/<name>/``, or
any installed package) whose ``usecase`` attribute is a ``UseCase``. It declares its feature
definitions, how its training rows and label are built, its request and response schema and
its model spec; the platform does the rest (point-in-time join, Tune, MLflow, online store,
Serve) the same way for every use case. The CLI, the jobs, the Serve builder and the quickstart
take a use case by name and never import one directly: the import-linter contracts forbid it,
so a use case can be added or removed without touching the platform.

Names come from one table, built the way Metaflow registers plugins (lazy ``name -> import
path`` entries, nothing imported until used): the built-in entries below, then Python entry
points in the group ``ml_system.usecases`` (an installed package adds its own), then the
``usecases`` mapping of the platform config. A later source overrides an earlier one.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Literal

from ml_system.errors import UseCaseError

if TYPE_CHECKING:  # the contract names these types; importing them would tie this module to the engine
    import pandas as pd
    from pydantic import BaseModel

    from ml_system.config import PlatformConfig
    from ml_system.features.expectations import TableExpectations

DEFAULT_USECASE = "flights"
ENTRY_POINT_GROUP = "ml_system.usecases"
BUILTIN_USECASES: dict[str, str] = {
    "flights": "ml_system.usecases.flights:usecase",
    "arrival_delay": "ml_system.usecases.arrival_delay:usecase",
}

# xgboost eval metric -> whether larger is better; the same name scores the test month
METRICS: dict[str, bool] = {"auc": True, "logloss": False, "mae": False, "rmse": False}


@dataclass(frozen=True)
class TrainingSpec:
    """The model spec: what is learned and how it is judged.

    ``objective`` and ``metric`` are XGBoost's names (``binary:logistic``, ``reg:squarederror``;
    ``auc``, ``mae``); ``search_space`` is a Ray Tune space merged over the platform's defaults
    (``ml_system.training.tune_xgb.DEFAULT_SPACE``). ``threshold`` turns a probability into a
    decision for classifiers and is None for regressions.
    """

    objective: str
    metric: str
    search_space: Mapping[str, Any] = field(default_factory=dict)
    num_boost_round: int = 200
    threshold: float | None = None

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise UseCaseError(f"model spec: metric '{self.metric}' is not one of {sorted(METRICS)}")
        if not (self.objective.startswith("binary:") or self.objective.startswith("reg:")):
            raise UseCaseError(f"model spec: objective '{self.objective}' is not a binary:* or reg:* objective")
        if self.is_classifier and self.threshold is None:
            object.__setattr__(self, "threshold", 0.5)

    @property
    def is_classifier(self) -> bool:
        return self.objective.startswith("binary:")

    @property
    def mode(self) -> Literal["max", "min"]:
        return "max" if METRICS[self.metric] else "min"


@dataclass(frozen=True)
class TrainingRows:
    """What a use case hands to training: one row per example, features still to be joined.

    ``frame`` holds the entity keys, the on-demand inputs, an aware ``event_timestamp`` (the
    prediction time), the label and a ``split`` column of ``train``/``valid``/``test``.
    ``table_versions`` are the Delta versions the rows were read from (lineage).
    """

    frame: pd.DataFrame
    label: str
    table_versions: dict[str, int] = field(default_factory=dict)
    split_column: str = "split"


@dataclass(frozen=True)
class ServingSpec:
    """The HTTP face of a use case: request and response schema, and how a request becomes entity rows.

    A request body is ``{items_field: [item, ...]}`` with each item a ``request_item``;
    ``entity_row(item)`` gives the join keys and on-demand inputs the feature service needs,
    ``event_time(item)`` the moment the prediction is for (features older than their view's TTL
    at that moment count as missing), and ``respond(item, score, decision)`` the use case's own
    fields of the answer, to which the platform adds ``missing_features``.
    """

    request_item: type[BaseModel]
    response_item: type[BaseModel]
    items_field: str
    entity_row: Callable[[Any], dict[str, Any]]
    event_time: Callable[[Any], datetime]
    respond: Callable[[Any, float, bool | None], dict[str, Any]]
    title: str = ""
    description: str = ""


@dataclass(frozen=True)
class StreamDemo:
    """What the quickstart streams once the app serves: events replayed, then a burst, then the same items re-scored.

    ``history`` (broker messages) brings the stream's window state to what the online store holds
    at the cut-off; ``burst`` is the news; ``items`` are scored before and after it.
    """

    label: str
    history: list[dict[str, str]]
    burst: list[dict[str, str]]
    items: list[dict[str, Any]]
    score_field: str
    """The answer's field compared before and after (``delay_probability``)."""


@dataclass(frozen=True)
class Demo:
    """What the quickstart replays: features known at ``cutoff``, then real requests after it."""

    cutoff: datetime
    requests: Callable[[PlatformConfig], list[dict[str, Any]]]
    stream: Callable[[PlatformConfig], StreamDemo] | None = None
    """A burst streamed through the stream feature views after serving (none: the quickstart skips it)."""


@dataclass(frozen=True)
class RollingSplit:
    """How a training set built as of a moment is split: by trailing windows, not fixed dates.

    The newest kept row (at or before the moment) anchors it: the ``test`` before it is the test
    split, the ``valid`` before that validation, everything earlier training. A use case without
    one keeps its own split column, and a run whose cut empties a split fails naming the split.
    """

    valid: timedelta
    test: timedelta


@dataclass(frozen=True)
class PipelineStep:
    """One step of a use case's retraining pipeline, declared by what it reads and what it makes.

    ``fn(ctx, inputs) -> outputs`` gets a context (config, use case, run, artifact storage) and a
    dict of the declared ``inputs``, and returns a dict holding exactly the declared ``outputs``
    (JSON values; large results are written as artifacts and passed by location). A use case adds
    steps, or replaces a default one by giving its name, in ``UseCase.pipeline_steps``; the
    pipeline refuses unknown inputs and cycles before anything runs. With ``cache`` a step whose
    inputs and code are unchanged is not run again: its recorded outputs are used.
    ``retry_exceptions`` are the exception types worth another attempt (up to ``max_retries``);
    anything else fails the run at once.
    """

    name: str
    fn: Callable[[Any, dict[str, Any]], dict[str, Any]]
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    cache: bool = True
    max_retries: int = 2
    retry_exceptions: tuple[type[BaseException], ...] = (OSError, ConnectionError, TimeoutError)
    num_cpus: float = 1.0
    description: str = ""


_REQUIRED = ("name", "model_name", "definitions", "feature_service", "training_rows", "training", "serving")


@dataclass(frozen=True)
class UseCase:
    """One model's contribution to the platform; every platform entry point takes it by name.

    ``definitions`` are what ``mlsys features apply`` registers (entities, feature views,
    on-demand feature views, feature services); ``feature_service`` names the one the model is
    trained on and served with. ``build_features(config)`` writes the use case's offline tables
    (raw data and derived features) and returns their Delta versions; a use case that reads
    tables another one builds lists it in ``requires``.
    """

    name: str = ""
    model_name: str = ""
    definitions: Sequence[Any] = ()
    feature_service: str = ""
    training_rows: Callable[..., TrainingRows] | None = None
    training: TrainingSpec | None = None
    serving: ServingSpec | None = None
    build_features: Callable[[PlatformConfig], dict[str, int]] | None = None
    route_prefix: str = ""
    demo: Demo | None = None
    requires: tuple[str, ...] = ()
    description: str = ""
    expectations: Sequence[TableExpectations] = ()
    """What good data in the use case's source tables looks like; checked before every retraining."""
    pipeline_steps: tuple[PipelineStep, ...] = ()
    """Steps added to the default retraining pipeline, or replacing a default step of the same name."""
    rolling_split: RollingSplit | None = None
    """The split of training sets built as of a moment (scheduled runs, backfills)."""
    feedback: Callable[[PlatformConfig, Any], Any] | None = None
    """``feedback(config, logged_rows) -> labels``: the true outcome of served rows (a pandas Series
    aligned with the prediction log's rows, NaN where not known yet); rollouts judge quality with it."""

    @property
    def app_name(self) -> str:
        return self.model_name

    @property
    def route(self) -> str:
        return self.route_prefix or f"/{self.name}"

    def missing_parts(self) -> list[str]:
        missing = [name for name in _REQUIRED if not getattr(self, name)]
        if self.feature_service and self.definitions:
            services = [d for d in self.definitions if type(d).__name__ == "FeatureService"]
            if self.feature_service not in {s.name for s in services}:
                missing.append(f"feature_service '{self.feature_service}' among its definitions")
        return missing


def usecase_table(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Every known use case: built-in, then installed entry points, then the config's ``usecases``."""
    table = dict(BUILTIN_USECASES)
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        table[ep.name] = ep.value
    table.update(extra or {})
    return table


def _import(path: str, name: str) -> Any:
    module, _, attr = path.partition(":")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as exc:
        raise UseCaseError(f"use case '{name}': cannot import '{module}': {exc}") from exc
    for part in (attr or "usecase").split("."):
        if not hasattr(obj, part):
            raise UseCaseError(f"use case '{name}': '{module}' has no attribute '{part}' (expected a UseCase)")
        obj = getattr(obj, part)
    return obj


def load_usecase(name: str | None = None, extra: Mapping[str, str] | None = None, *, check_all: bool = True) -> UseCase:
    """The use case called ``name`` (flights by default), checked before anything runs.

    Refused with the name and what is wrong: an unknown name, a package that lacks a required
    part, a declared name that differs from its table entry, or (with ``check_all``) another use
    case of the table claiming the same route or model name.
    """
    name = name or DEFAULT_USECASE
    table = usecase_table(extra)
    if name not in table:
        raise UseCaseError(f"unknown use case '{name}' (known: {', '.join(sorted(table))})")
    usecase = _checked(name, table[name])
    if check_all:
        others = [_checked(other, path) for other, path in sorted(table.items()) if other != name]
        refuse_collisions([usecase, *others])
    return usecase


def load_all(extra: Mapping[str, str] | None = None) -> list[UseCase]:
    usecases = [_checked(name, path) for name, path in sorted(usecase_table(extra).items())]
    refuse_collisions(usecases)
    return usecases


def _checked(name: str, path: str) -> UseCase:
    obj = _import(path, name)
    if not isinstance(obj, UseCase):
        raise UseCaseError(f"use case '{name}': '{path}' is a {type(obj).__name__}, not a UseCase")
    missing = obj.missing_parts()
    if missing:
        raise UseCaseError(f"use case '{name}' ({path}) lacks: {', '.join(missing)}")
    if obj.name != name:
        raise UseCaseError(f"use case '{name}' ({path}) declares itself as '{obj.name}'")
    return obj


def refuse_collisions(usecases: Sequence[UseCase]) -> None:
    """Two use cases may not share a route, a model name or a Serve application name."""
    for attr in ("route", "model_name"):
        seen: dict[str, str] = {}
        for uc in usecases:
            value = getattr(uc, attr)
            if value in seen:
                raise UseCaseError(f"use cases '{seen[value]}' and '{uc.name}' both claim {attr} '{value}'")
            seen[value] = uc.name


def describe_parts() -> list[str]:
    """The contract's fields, for ``mlsys usecases describe`` and the docs."""
    return [f.name for f in fields(UseCase)]
