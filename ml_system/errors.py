"""One exception hierarchy, so the CLI and the HTTP layer can turn any platform
failure into a one-line reason (CLI) or a 4xx with the offending name (HTTP)
without catching bare ``Exception``."""

from __future__ import annotations


class MLSystemError(Exception):
    """Base of every error the platform raises on purpose."""


class ConfigError(MLSystemError):
    """The configuration file or an ``MLSYS_*`` variable is invalid."""


class DefinitionError(MLSystemError):
    """A feature definition (entity, view, service) is inconsistent."""


class FeatureReferenceError(MLSystemError):
    """A ``view:feature`` reference names nothing that is registered."""


class EntityDataError(MLSystemError):
    """An entity dataframe lacks a join key or carries naive timestamps."""


class StoreError(MLSystemError):
    """An offline or online store could not be read or written."""


class StoreUnavailableError(StoreError):
    """A store did not answer within its deadline or cannot be reached; retrying later may succeed."""


class ModelNotFoundError(MLSystemError):
    """No model version answers to the requested name, version or alias."""


class ModelSpecError(MLSystemError):
    """A model about to be logged disagrees with its spec (columns, objective) or its input example."""


class ModelIntegrityError(MLSystemError):
    """A registered model cannot be vouched for: no checksum, a changed file, or a spec its booster contradicts."""


class UseCaseError(MLSystemError):
    """A use case is unknown, lacks a required part or collides with another one."""


class UnscorableError(MLSystemError):
    """A request row the schema accepts but scoring cannot use (a date past what a clock can convert)."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(index, reason)
        self.index = index
        self.reason = reason

    def __str__(self) -> str:
        return f"row {self.index} cannot be scored: {self.reason}"


class PipelineError(MLSystemError):
    """A pipeline, a schedule or a run is invalid (a cycle, an unknown step or input) or has failed."""


class DataValidationError(PipelineError):
    """A batch of data broke its table's expectations; ``report`` says which checks failed, where."""

    def __init__(self, message: str, report: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.report = report or {}

    def __reduce__(self) -> tuple[object, ...]:
        # raised inside a Ray task and re-raised on the driver: the report must survive pickling
        return (type(self), (str(self), self.report))


class TeamError(MLSystemError):
    """A resource group, team or quota is invalid, unknown, or cannot hold what was asked of it."""


class AuthenticationError(MLSystemError):
    """A team token is missing, wrong, or belongs to another team; nothing was changed."""


class AdmissionError(MLSystemError):
    """The admission queue refused or lost a request (unknown request, cancelled, cluster unreachable)."""


class RolloutError(MLSystemError):
    """A promotion or rollout was refused (gate failed, bad rollout config, one already running); nothing moved."""
