"""Every serving default in one place: the scoring replica's ``user_config`` and the HTTP limits.

``ScorerSettings`` is what ``user_config`` in a Serve YAML may hold. It is validated twice: by
the app builder for ``args.user_config``, and by each replica's ``reconfigure`` for a
deployment's ``user_config``, where a value that does not validate is refused and the replica
keeps the settings it had (a typo in a live ``serve deploy`` must not take the app down).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MAX_BODY_BYTES = 1_000_000
MAX_ROWS = 1000
RETRY_AFTER_S = 1
SCORER_TIMEOUT_S = 5.0  # a split ingress waits this long for its scorer deployment, then answers 503
SESSION_HEADER = "x-session-id"
TRACE_HEADER = "x-trace-id"
SERVED_BY_HEADER = "x-served-by"
ARM_HEADER = "x-model-arm"


class ScorerSettings(BaseModel):
    """Batching, caches and the pinned model version of a scoring replica, changed in place by ``serve deploy``.

    Batches of up to 64 rows gathered for 2 ms; caches bounded by a 1 s TTL (how long a streamed
    feature may lag behind the store) and keyed on model and data version. A TTL of 0 turns a
    cache off.
    """

    model_config = ConfigDict(extra="forbid")

    max_batch_size: int = Field(64, ge=1, le=4096)
    batch_wait_timeout_s: float = Field(0.002, ge=0, le=1)
    batching: bool = True
    feature_cache_ttl_s: float = Field(1.0, ge=0, le=3600)
    prediction_cache_ttl_s: float = Field(1.0, ge=0, le=3600)
    cache_max_entries: int = Field(100_000, ge=0, le=10_000_000)
    alias_poll_s: float = Field(5.0, ge=0.05, le=3600)
    """How often a replica checks the model alias and the rollout's route plan; a moved alias is loaded
    beside the serving version and swapped in without a restart (``serving/router.py``)."""
    model_version: str | None = Field(None, pattern=r"^[0-9]{1,9}$")
    """Pin a registered version; the replicas load it beside the one serving and swap without a restart
    (a version that does not load, or does not match its feature service, is refused and the old one stays)."""

    def skips_queue(self, rows: int) -> bool:
        """Batching off, or the request is a batch already."""
        return not self.batching or rows >= self.max_batch_size
