"""The ``pipelines`` section of the platform config: durable state, schedules and drift triggers.

Kept beside ``config`` (which imports it) so that each module stays one screenful of concern; cron
expressions are checked here, when the file is loaded, so a bad one fails before anything runs.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


def scheme_of(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else ""


DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(value: Any) -> float:
    """``"90s"``, ``"15m"``, ``"6h"``, ``"7d"`` or a number of seconds."""
    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    if text and text[-1] in DURATION_UNITS:
        try:
            return float(text[:-1]) * DURATION_UNITS[text[-1]]
        except ValueError:
            pass
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"'{value}' is not a duration (write 90s, 15m, 6h or 7d)") from None


def _check_cron(expression: str) -> str:
    # croniter is a dependency of the pipelines, not of the engine this module must not import
    from croniter import croniter

    if not croniter.is_valid(expression):
        raise ValueError(f"'{expression}' is not a valid cron expression (five fields, or six with seconds last)")
    return expression


class ScheduleConfig(_Section):
    """A cron schedule of one use case's retraining or materialization.

    ``catchup`` decides the slots missed while no scheduler ran: ``all`` runs each of them in order,
    ``skip`` records them as skipped and runs only the newest. ``as_of: slot`` builds a retraining's
    training set as of the slot's time; ``latest`` uses everything known when it runs.
    """

    name: str
    usecase: str = "flights"
    cron: str
    action: Literal["retrain", "materialize"] = "retrain"
    catchup: Literal["all", "skip"] = "skip"
    as_of: Literal["slot", "latest"] = "slot"
    trials: int = Field(8, ge=1)
    rounds: int | None = Field(None, ge=1)
    enabled: bool = True

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        return _check_cron(value)


class DriftTriggerConfig(_Section):
    """Retrain when the predictions of a use case's champion drift or its quality drops.

    Checked on ``check_cron``; compares the prediction log's last ``window`` with the distribution the
    champion was registered with. Any threshold left None is not checked.
    """

    name: str
    usecase: str = "flights"
    check_cron: str = "0 * * * *"
    window_s: Annotated[float, BeforeValidator(parse_duration)] = 86_400.0
    prediction_log: str = "prediction_log"
    """Delta table of the offline store holding scored rows (``model_name``, ``model_version``,
    ``event_timestamp``, ``prediction`` and, once known, ``label``)."""
    min_rows: int = Field(200, ge=1)
    max_psi: float | None = 0.2
    max_ks: float | None = None
    max_metric_drop: float | None = None
    trials: int = Field(8, ge=1)
    rounds: int | None = Field(None, ge=1)

    @field_validator("check_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        return _check_cron(value)


class PipelinesConfig(_Section):
    """Where pipeline runs keep their durable state, and what runs them on a clock or on drift."""

    uri: str = ""
    """Run history, step cache, artifacts and scheduler state; default ``<home>/pipelines``, or
    ``s3://bucket/prefix`` (with ``storage_options`` as the offline store takes them)."""
    storage_options: dict[str, str] = Field(default_factory=dict)
    schedules: list[ScheduleConfig] = Field(default_factory=list)
    triggers: list[DriftTriggerConfig] = Field(default_factory=list)
    tick_s: float = Field(15.0, gt=0)
    """How often the scheduler looks for due slots."""
    lease_s: float = Field(120.0, gt=0)
    """A slot claimed by a scheduler that has not been heard from for this long is taken over and resumed."""
    canary: str = ""
    """``package.module:function(config, usecase, model_version) -> str`` started after a challenger is
    registered; empty: no canary is started (promotion stays a person's or the rollout gate's decision)."""

    @field_validator("storage_options")
    @classmethod
    def _upper_keys(cls, options: dict[str, str]) -> dict[str, str]:
        return {key.upper(): value for key, value in options.items()}

    @field_validator("uri")
    @classmethod
    def _known_scheme(cls, uri: str) -> str:
        if scheme_of(uri) not in ("", "file", "s3", "s3a"):
            raise ValueError(f"'{uri}': pipelines state lives in a local path or under s3://")
        return uri.removeprefix("file://")

    @field_validator("schedules", "triggers")
    @classmethod
    def _unique_names(cls, items: list[Any]) -> list[Any]:
        names = [item.name for item in items]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"names {twice} are used twice")
        return items

    @property
    def local_path(self) -> str | None:
        return None if scheme_of(self.uri) in ("s3", "s3a") else self.uri
