"""Bounded backfill from Kafka: a topic's retained events into the events' Delta table, with Ray Data.

``ray.data.read_kafka`` (Ray 2.60, confluent-kafka underneath) reads an offset or time range once,
one task per partition, so the history that training aggregates (``offline.build_offline``) can be
rebuilt from the same topic the consumers read, on the cluster. Entries that do not decode are
left out and counted, as the consumers would have parked them.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

import pandas as pd
import ray

from ml_system.config_streaming import StreamingConfig
from ml_system.features.streaming.views import StreamFeatureView

Offset = int | datetime | Literal["earliest", "latest"]


def _decode(batch: pd.DataFrame, view: StreamFeatureView) -> pd.DataFrame:
    events = view.events
    assert events is not None
    rows: list[dict[str, Any]] = []
    for value in batch["value"]:
        try:
            document = json.loads(value)
        except (TypeError, ValueError):
            continue
        if isinstance(document, dict):
            rows.append(document)
    frame = pd.DataFrame(rows)
    out = pd.DataFrame(index=frame.index)
    out[events.event_id_field] = frame.get(events.event_id_field, pd.Series(dtype="object")).astype("string")
    out[events.timestamp_field] = pd.to_datetime(
        frame.get(events.timestamp_field), utc=True, errors="coerce", format="ISO8601"
    )
    for key, kind in zip(view.join_keys, view.key_types, strict=True):
        column = frame.get(key, pd.Series(dtype="object"))
        out[key] = (
            pd.to_numeric(column, errors="coerce").astype("Int64") if kind != "string" else column.astype("string")
        )
    for field in events.schema:
        column = frame.get(field.name, pd.Series(dtype="object")).replace("", None)
        if field.dtype == "bool":
            out[field.name] = column.map({True: True, False: False, "true": True, "false": False}).astype("boolean")
        else:
            out[field.name] = pd.to_numeric(column, errors="coerce").astype("float64")
    required = [events.event_id_field, events.timestamp_field, *view.join_keys]
    return out.dropna(subset=required).reset_index(drop=True)


def kafka_events(
    config: StreamingConfig, view: StreamFeatureView, start: Offset = "earliest", end: Offset = "latest"
) -> ray.data.Dataset:
    """The view's events retained on ``config.stream`` between two offsets or times, decoded to columns."""
    raw = ray.data.read_kafka(
        config.stream,
        bootstrap_servers=config.broker_url,
        start_offset=start,
        end_offset=end,
        consumer_config=dict(config.kafka) or None,
    )
    return raw.map_batches(_decode, fn_args=(view,), batch_format="pandas")
