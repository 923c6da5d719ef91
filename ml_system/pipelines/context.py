"""What a step function gets besides its inputs: the platform, the use case, and artifact storage.

Step outputs are small JSON values (versions, digests, scores), because they become cache entries
and history records; anything large (a training set, a booster) is written as an artifact under
the pipelines' storage and passed on by key. Artifacts are keyed by the step's cache key, so a
cached step's outputs keep pointing at the files it wrote.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ml_system.config import PlatformConfig
from ml_system.errors import PipelineError
from ml_system.pipelines.storage import PipelineStorage, open_storage
from ml_system.usecase import UseCase


@dataclass
class StepContext:
    config: PlatformConfig
    usecase: UseCase
    run_id: str
    step: str
    key: str
    """The step's cache key: a digest of its inputs and the code version."""
    _storage: PipelineStorage | None = field(default=None, repr=False)

    @property
    def storage(self) -> PipelineStorage:
        if self._storage is None:
            self._storage = open_storage(self.config)
        return self._storage

    def put_artifact(self, name: str, data: bytes) -> str:
        key = f"artifacts/{self.usecase.name}/{self.step}/{self.key[:20]}/{name}"
        self.storage.write(key, data)
        return key

    def get_artifact(self, key: str) -> bytes:
        data = self.storage.read(key)
        if data is None:
            raise PipelineError(f"step '{self.step}': artifact {self.storage.location(key)} is missing")
        return data


def parse_as_of(value: Any) -> datetime | None:
    return None if value in (None, "") else datetime.fromisoformat(str(value))
