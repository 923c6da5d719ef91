"""One declaration, two paths: the values served from the stream equal the training values at the same times."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml_system.errors import DefinitionError
from ml_system.features import FeatureStore
from ml_system.features.streaming.group import open_ingestor
from ml_system.features.streaming.offline import build_offline
from ml_system.features.streaming.sources import open_stream_source
from ml_system.features.streaming.views import Aggregation, StreamFeatureView
from ml_system.features.streaming.windows import offline_rows
from tests.features.streaming.conftest import (
    MERCHANT,
    PAYMENTS,
    USER,
    RedisServer,
    as_messages,
    drain,
    payment_events,
    payment_views,
    same,
    stream_config,
)


def _arrival_order(events: pd.DataFrame, max_delay_s: int, seed: int = 3) -> pd.DataFrame:
    """Events as a broker would deliver them: each up to ``max_delay_s`` late, so many arrive out of order."""
    delay = pd.to_timedelta(np.random.default_rng(seed).integers(0, max_delay_s, len(events)), unit="s")
    return events.assign(_arrival=events["event_timestamp"] + delay).sort_values("_arrival").drop(columns="_arrival")


def _online_rows(store: FeatureStore, view: StreamFeatureView, keys: list[str]) -> dict[str, tuple[int, list]]:
    rows = store.online.read(view.name, keys)
    return {k: (r.event_ts, list(r.values)) for k, r in zip(keys, rows, strict=True) if r is not None}


def test_a_stream_view_is_registered_with_its_aggregations(tmp_path: Path, private_redis: RedisServer) -> None:
    store = FeatureStore(stream_config(tmp_path / "mlsys", private_redis.url))
    views = payment_views()
    store.apply([USER, MERCHANT, *views])
    back = store.registry.feature_views()["user_payments"]
    assert isinstance(back, StreamFeatureView)
    assert back.stream_dict() == views[0].stream_dict() and back.schema == views[0].schema
    assert back.feature_names[:2] == ("amount_count_1h", "amount_sum_1h")
    assert "flagged_mean_last5" in back.feature_names


def test_bad_aggregations_are_refused_where_they_are_written() -> None:
    with pytest.raises(DefinitionError, match="exactly one of window= or last_n="):
        Aggregation("amount", "sum")
    with pytest.raises(DefinitionError, match="function 'median'"):
        Aggregation("amount", "median", last_n=3)
    with pytest.raises(DefinitionError, match="'tip' is not a field of events 'payments'"):
        StreamFeatureView(
            name="v", entities=[USER], events=PAYMENTS, aggregations=[Aggregation("tip", "sum", last_n=2)]
        )


def test_stream_and_history_give_equal_values_at_the_same_times(
    tmp_path: Path, private_redis: RedisServer, ray_cluster: str
) -> None:
    config = stream_config(tmp_path / "mlsys", private_redis.url)
    store = FeatureStore(config)
    views = payment_views()
    store.apply([USER, MERCHANT, *views])
    events = payment_events(400)
    arrival = _arrival_order(events, max_delay_s=20 * 60)  # within the 30 minutes of allowed lateness
    assert (arrival["event_timestamp"].diff().dt.total_seconds() < 0).sum() > 50  # really out of order
    duplicates = arrival.sample(15, random_state=1)  # delivered twice
    source = open_stream_source(config.streaming)
    ingestor = open_ingestor(config, "only")

    delivered = pd.DataFrame()
    for chunk in np.array_split(np.arange(len(arrival)), 5):
        part = arrival.iloc[chunk]
        source.publish(as_messages(part))
        source.publish(as_messages(duplicates[duplicates["event_id"].isin(part["event_id"])]))
        drain(ingestor)
        delivered = pd.concat([delivered, part])
        # after every chunk, each entity's online row is its value at its newest event so far
        for view in views:
            expected = offline_rows(view, delivered)
            key_col = view.join_keys[0]
            keys = sorted(str(k) for k in delivered[key_col].unique())
            online = _online_rows(store, view, keys)
            assert set(online) == set(keys)
            for key, (ts, values) in online.items():
                at = expected[(expected[key_col].astype(str) == key)]
                assert ts == at["event_timestamp"].max().value
                row = at.loc[at["event_timestamp"].idxmax()]
                for name, value in zip(view.feature_names, values, strict=True):
                    assert same(value, row[name]), (view.name, key, name, value, row[name])
    assert ingestor.status.duplicates == len(duplicates)
    assert ingestor.status.dead_lettered == 0 and ingestor.status.events == len(events) + len(duplicates)

    # the training path: events' history in Delta, the view's table built from it, the point-in-time join
    store.offline.write_pandas(PAYMENTS.table, events)
    assert build_offline(store.registry, store.offline) == {v.name: len(offline_rows(v, events)) for v in views}
    user_view = views[0]
    keys = sorted(events["user_id"].unique())
    online = _online_rows(store, user_view, keys)
    entity_df = pd.DataFrame({"user_id": keys, "event_timestamp": [pd.Timestamp(online[k][0], tz="UTC") for k in keys]})
    refs = [f"user_payments:{f}" for f in user_view.feature_names]
    joined = store.get_historical_features(entity_df, refs).set_index("user_id")
    for key in keys:
        for name, value in zip(user_view.feature_names, online[key][1], strict=True):
            assert same(value, joined.loc[key, name]), (key, name, value, joined.loc[key, name])
