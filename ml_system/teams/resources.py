"""An amount of cluster resources: what a quota grants and what a piece of work asks for.

Three dimensions, the ones Ray schedules by: CPUs, GPUs and memory (bytes, as Ray counts it).
Work fits when it fits in every dimension; a quota of 2 CPUs and no GPU cannot hold a task that
asks for a quarter of a GPU, however idle its CPUs are.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GIB = 1024**3
# Comparisons allow a rounding error: 0.1 + 0.2 CPUs must fit a quota of 0.3.
_EPS = 1e-9


@dataclass(frozen=True)
class Resources:
    cpu: float = 0.0
    gpu: float = 0.0
    memory: float = 0.0
    """Bytes, as Ray's ``memory`` resource counts them."""

    def __add__(self, other: Resources) -> Resources:
        return Resources(self.cpu + other.cpu, self.gpu + other.gpu, self.memory + other.memory)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(self.cpu - other.cpu, self.gpu - other.gpu, self.memory - other.memory)

    def scaled(self, factor: float) -> Resources:
        return Resources(self.cpu * factor, self.gpu * factor, self.memory * factor)

    def fits(self, room: Resources) -> bool:
        """Does this amount fit in ``room`` in every dimension?"""
        return self.cpu <= room.cpu + _EPS and self.gpu <= room.gpu + _EPS and self.memory <= room.memory + _EPS * GIB

    def positive_part(self) -> Resources:
        return Resources(max(self.cpu, 0.0), max(self.gpu, 0.0), max(self.memory, 0.0))

    def overlaps(self, need: Resources) -> bool:
        """Does this amount reduce some dimension that ``need`` still lacks?"""
        return (
            (need.cpu > _EPS and self.cpu > _EPS)
            or (need.gpu > _EPS and self.gpu > _EPS)
            or (need.memory > _EPS and self.memory > _EPS)
        )

    def is_zero(self) -> bool:
        return self.cpu <= _EPS and self.gpu <= _EPS and self.memory <= _EPS

    def bundle(self) -> dict[str, float]:
        """A placement-group bundle (Ray's names; zero dimensions left out, as Ray requires)."""
        out = {"CPU": self.cpu, "GPU": self.gpu, "memory": self.memory}
        return {k: v for k, v in out.items() if v > 0}

    def actor_options(self) -> dict[str, Any]:
        """``num_cpus``/``num_gpus``/``memory`` for ``.options(...)`` of a task, an actor or a job entrypoint."""
        out: dict[str, Any] = {"num_cpus": self.cpu, "num_gpus": self.gpu}
        if self.memory > 0:
            out["memory"] = int(self.memory)
        return out

    def as_dict(self) -> dict[str, float]:
        return {"cpu": self.cpu, "gpu": self.gpu, "memory": self.memory}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Resources:
        return cls(float(data.get("cpu", 0.0)), float(data.get("gpu", 0.0)), float(data.get("memory", 0.0)))

    @classmethod
    def from_ray(cls, resources: dict[str, float]) -> Resources:
        """From ``ray.cluster_resources()`` or a bundle."""
        return cls(float(resources.get("CPU", 0.0)), float(resources.get("GPU", 0.0)), resources.get("memory", 0.0))

    def describe(self) -> str:
        parts = [f"{self.cpu:g} CPU"]
        if self.gpu:
            parts.append(f"{self.gpu:g} GPU")
        if self.memory:
            parts.append(f"{self.memory / GIB:.3g} GiB")
        return ", ".join(parts)
