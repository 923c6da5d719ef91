"""The ``streaming`` section of the platform config: which broker feeds the stream feature views.

Kept beside ``config`` (which imports it), as ``config_pipelines`` is. ``type`` names a broker in
the table of ``ml_system.features.streaming.sources`` (``redis``, ``kafka``) or is a class path; the
engine is named only as strings here, so loading the config imports no broker client.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class StreamingConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: str = "redis"
    """Broker backend: ``redis`` (Redis Streams), ``kafka`` or a ``package.module.Class`` path."""
    broker_url: str = "redis://127.0.0.1:6379/0"
    """``redis://host:port/db`` for Redis Streams; ``host:port[,host:port]`` (bootstrap servers) for Kafka."""
    stream: str = "mlsys:events"
    """The stream (Redis key) or topic the events arrive on."""
    group: str = "mlsys-ingest"
    """Consumer group: every consumer of the group shares the stream's entries, each delivered to one of them."""
    dead_letter_stream: str = ""
    """Where refused events go with their reason (default ``<stream>:dead-letter``)."""
    state_url: str = ""
    """Redis holding the window state (recent events per entity, seen event ids); default ``broker_url``
    when the broker is Redis. Consumers keep no state of their own, so any of them may take over."""
    state_prefix: str = "mlsys:stream"
    views: list[str] = Field(default_factory=list)
    """Stream feature views fed from this stream; empty: every registered one whose events name this stream."""
    consumers: int = Field(2, ge=1, le=256)
    """Size of the consumer group (Ray actors) that ``mlsys stream start`` starts."""
    consumer_cpus: float = Field(0.5, gt=0)
    batch_size: int = Field(1000, ge=1, le=100_000)
    """Most entries one read takes; a batch is written and acknowledged as one."""
    block_ms: int = Field(100, ge=0, le=60_000)
    """How long a read waits for new entries before the consumer looks for abandoned ones."""
    claim_idle_ms: int = Field(5_000, ge=1)
    """An entry delivered this long ago and still unacknowledged is taken over (its consumer is presumed dead)."""
    claim_every_s: float = Field(1.0, gt=0)
    dedup_ttl_s: int = Field(3_600, ge=1)
    """Unused: duplicates are now found among the events each entity holds (``allowed_lateness`` and its
    windows bound how long); kept so that configs naming it still load."""
    max_deliveries: int = Field(10, ge=1)
    """An entry delivered this many times without success goes to the dead letter (a poison message)."""
    retry_initial_s: float = Field(0.1, gt=0)
    retry_max_s: float = Field(5.0, gt=0)
    """Backoff bounds while the broker or a store does not answer; the consumer keeps trying, never exits."""
    request_timeout_s: float = Field(5.0, gt=0)
    """Deadline of each broker and state call."""
    kafka: dict[str, str] = Field(default_factory=dict)
    """Extra librdkafka settings (``security.protocol``, ``test.mock.num.brokers`` ...)."""

    @model_validator(mode="after")
    def _defaults(self) -> StreamingConfig:
        if not self.dead_letter_stream:
            sep = ":" if self.type == "redis" else "."  # Kafka topic names allow no ':'
            self.dead_letter_stream = f"{self.stream}{sep}dead-letter"
        if not self.state_url and self.type == "redis":
            self.state_url = self.broker_url
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError("retry_max_s must be at least retry_initial_s")
        return self
