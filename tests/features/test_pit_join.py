"""Point-in-time correctness: hand-built cases through the public FeatureStore
API on the shared Ray cluster, plus a property test of the partition join
against a brute-force reference."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest
import ray
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ml_system.errors import EntityDataError, FeatureReferenceError, StoreError
from ml_system.features import DeltaSource, Entity, FeatureStore, FeatureView, Field
from ml_system.features.pit_join import JoinSpec, asof_join
from tests.features.pit_reference import brute_force

pytestmark = pytest.mark.usefixtures("ray_cluster")


def ts(text: str) -> pd.Timestamp:
    return pd.Timestamp(text, tz="UTC")


driver = Entity("driver", ["driver_id"])
trip = Entity("trip", ["driver_id", "city"])


@pytest.fixture()
def store(platform_config) -> FeatureStore:
    store = FeatureStore(platform_config)
    stats = pd.DataFrame(
        {
            "driver_id": [1, 1, 1, 1, 2],
            "event_timestamp": [
                ts("2024-01-01 00:00"),
                ts("2024-01-02 00:00"),
                ts("2024-01-02 00:00"),
                ts("2024-01-04 00:00"),
                ts("2024-01-01 00:00"),
            ],
            "created_timestamp": [
                ts("2024-01-01"),
                ts("2024-01-02 01:00"),
                ts("2024-01-02 02:00"),
                ts("2024-01-04"),
                ts("2024-01-01"),
            ],
            "rate": [0.1, 0.2, 0.3, 0.4, 0.9],
            "trips": [10.0, 20.0, 30.0, 40.0, 90.0],
        }
    )
    store.offline.write_pandas("driver_stats", stats, mode="overwrite")
    city = pd.DataFrame(
        {
            "driver_id": [1, 1, 2],
            "city": ["nyc", "sf", "nyc"],
            "event_timestamp": [ts("2024-01-01"), ts("2024-01-01"), ts("2024-01-01")],
            "created_timestamp": [ts("2024-01-01")] * 3,
            "city_rate": [1.0, 2.0, 3.0],
        }
    )
    store.offline.write_pandas("driver_city", city, mode="overwrite")
    store.apply(
        [
            driver,
            trip,
            FeatureView(
                "driver_stats",
                [driver],
                [Field("rate"), Field("trips")],
                DeltaSource("driver_stats"),
                ttl=timedelta(days=1),
            ),
            FeatureView("driver_city", [trip], [Field("city_rate")], DeltaSource("driver_city"), ttl=None),
        ]
    )
    return store


def entity(rows: list[tuple[int, str, str]]) -> pd.DataFrame:
    return pd.DataFrame(
        {"driver_id": [r[0] for r in rows], "city": [r[1] for r in rows], "event_timestamp": [ts(r[2]) for r in rows]}
    )


def test_latest_row_at_or_before_t_and_never_from_the_future(store: FeatureStore) -> None:
    df = entity([(1, "nyc", "2024-01-01 12:00"), (1, "nyc", "2024-01-01 00:00"), (1, "nyc", "2023-12-31 23:59")])
    out = store.get_historical_features(df, ["driver_stats:rate"])
    assert out["rate"].tolist()[:2] == [0.1, 0.1]  # exact timestamp matches, later row does not leak
    assert pd.isna(out["rate"].iloc[2])


def test_ttl_is_exclusive_at_its_lower_bound(store: FeatureStore) -> None:
    # the 2024-01-02 row is valid while t - 1 day < 2024-01-02, i.e. up to (not at) 2024-01-03
    df = entity([(1, "nyc", "2024-01-02 23:59"), (1, "nyc", "2024-01-03 00:00"), (1, "nyc", "2024-01-04 00:00")])
    out = store.get_historical_features(df, ["driver_stats:rate"])
    assert out["rate"].iloc[0] == 0.3
    assert pd.isna(out["rate"].iloc[1])
    assert out["rate"].iloc[2] == 0.4


def test_ties_go_to_the_later_created_timestamp(store: FeatureStore) -> None:
    out = store.get_historical_features(
        entity([(1, "nyc", "2024-01-02 06:00")]), ["driver_stats:rate", "driver_stats:trips"]
    )
    assert out[["rate", "trips"]].iloc[0].tolist() == [0.3, 30.0]


def test_missing_entities_get_nulls_and_rows_keep_their_order(store: FeatureStore) -> None:
    df = entity([(3, "nyc", "2024-01-02"), (2, "nyc", "2024-01-01 06:00"), (1, "la", "2024-01-02")])
    out = store.get_historical_features(df, ["driver_stats:rate", "driver_city:city_rate"])
    assert out["driver_id"].tolist() == [3, 2, 1]
    assert pd.isna(out["rate"].iloc[0]) and pd.isna(out["city_rate"].iloc[0])
    assert out["rate"].iloc[1] == 0.9 and out["city_rate"].iloc[1] == 3.0
    assert out["rate"].iloc[2] == 0.2 or out["rate"].iloc[2] == 0.3
    assert pd.isna(out["city_rate"].iloc[2])


def test_composite_keys_and_several_views(store: FeatureStore) -> None:
    df = entity([(1, "sf", "2024-01-04 12:00"), (1, "nyc", "2024-01-05"), (2, "sf", "2024-01-05")])
    out = store.get_historical_features(df, ["driver_city:city_rate", "driver_stats:rate"])
    assert out["city_rate"].iloc[:2].tolist() == [2.0, 1.0]
    assert pd.isna(out["city_rate"].iloc[2])
    assert out["rate"].iloc[0] == 0.4
    assert pd.isna(out["rate"].iloc[1])  # the 2024-01-04 row expired a day later
    assert out.attrs["table_versions"] == {"driver_city": 0, "driver_stats": 0}


def test_entity_dataset_in_dataset_out(store: FeatureStore) -> None:
    df = entity([(1, "nyc", "2024-01-02 06:00"), (2, "nyc", "2024-01-01 06:00")])
    out = store.get_historical_features(ray.data.from_pandas(df), ["driver_stats:rate"])
    assert isinstance(out, ray.data.Dataset)
    got = out.to_pandas().sort_values("driver_id")
    assert got["rate"].tolist() == [0.3, 0.9]


def test_time_travel_returns_the_same_rows_after_an_append(store: FeatureStore) -> None:
    df = entity([(1, "nyc", "2024-01-04 12:00")])
    first = store.get_historical_features(df, ["driver_stats:rate"])
    late = pd.DataFrame(
        {
            "driver_id": [1],
            "event_timestamp": [ts("2024-01-04 06:00")],
            "created_timestamp": [ts("2024-01-05")],
            "rate": [0.5],
            "trips": [50.0],
        }
    )
    store.offline.write_pandas("driver_stats", late, mode="append")
    assert store.get_historical_features(df, ["driver_stats:rate"])["rate"].iloc[0] == 0.5
    again = store.get_historical_features(df, ["driver_stats:rate"], as_of=first.attrs["table_versions"])
    assert again["rate"].iloc[0] == first["rate"].iloc[0] == 0.4


def test_bitemporal_ignores_rows_written_after_t(store: FeatureStore) -> None:
    # the two 2024-01-02 rows were written at 01:00 and 02:00: at 01:30 only the first was known
    df = entity([(1, "nyc", "2024-01-02 01:30"), (1, "nyc", "2024-01-02 03:00")])
    plain = store.get_historical_features(df, ["driver_stats:rate"])
    assert plain["rate"].tolist() == [0.3, 0.3]
    known = store.get_historical_features(df, ["driver_stats:rate", "driver_city:city_rate"], bitemporal=True)
    assert known["rate"].tolist() == [0.2, 0.3]
    assert known["city_rate"].tolist() == [1.0, 1.0]
    as_dataset = store.get_historical_features(ray.data.from_pandas(df), ["driver_stats:rate"], bitemporal=True)
    assert sorted(as_dataset.to_pandas()["rate"].tolist()) == [0.2, 0.3]


def test_bad_input_is_refused_with_the_name(store: FeatureStore) -> None:
    naive = entity([(1, "nyc", "2024-01-02")])
    naive["event_timestamp"] = naive["event_timestamp"].dt.tz_localize(None)
    with pytest.raises(EntityDataError, match="event_timestamp"):
        store.get_historical_features(naive, ["driver_stats:rate"])
    with pytest.raises(EntityDataError, match="driver_id"):
        store.get_historical_features(
            entity([(1, "nyc", "2024-01-02")]).drop(columns=["driver_id"]), ["driver_stats:rate"]
        )
    with pytest.raises(EntityDataError, match="event_timestamp"):
        store.get_historical_features(
            entity([(1, "nyc", "2024-01-02")]).drop(columns=["event_timestamp"]), ["driver_stats:rate"]
        )
    with pytest.raises(FeatureReferenceError, match="nope"):
        store.get_historical_features(entity([(1, "nyc", "2024-01-02")]), ["driver_stats:nope"])
    with pytest.raises(FeatureReferenceError, match="'missing'"):
        store.get_historical_features(entity([(1, "nyc", "2024-01-02")]), ["missing:rate"])
    with pytest.raises(FeatureReferenceError, match="view:feature"):
        store.get_historical_features(entity([(1, "nyc", "2024-01-02")]), ["rate"])


def test_duplicate_feature_names_across_views_are_refused(store: FeatureStore) -> None:
    store.offline.write_pandas(
        "other",
        pd.DataFrame(
            {
                "driver_id": [1],
                "event_timestamp": [ts("2024-01-01")],
                "created_timestamp": [ts("2024-01-01")],
                "rate": [5.0],
            }
        ),
        mode="overwrite",
    )
    store.apply([FeatureView("other_stats", [driver], [Field("rate")], DeltaSource("other"))])
    with pytest.raises(FeatureReferenceError, match="'rate'"):
        store.get_historical_features(entity([(1, "nyc", "2024-01-02")]), ["driver_stats:rate", "other_stats:rate"])


def test_view_whose_source_lacks_a_column_is_refused(store: FeatureStore) -> None:
    bad = FeatureView("bad", [driver], [Field("not_there")], DeltaSource("driver_stats"))
    with pytest.raises(StoreError, match="not_there"):
        store.apply([bad])
    assert "bad" not in store.registry.feature_views()


# ---- property test of the partition join against a brute-force reference --------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    feats=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 20), st.integers(0, 3)), max_size=30),
    ents=st.lists(st.tuples(st.integers(0, 4), st.integers(0, 25)), min_size=1, max_size=20),
    ttl_hours=st.one_of(st.none(), st.integers(1, 10)),
)
def test_partition_join_matches_brute_force(feats, ents, ttl_hours) -> None:
    base = ts("2024-01-01")
    right = pd.DataFrame(
        {
            "k": [f[0] for f in feats],
            "ts": [base + pd.Timedelta(hours=f[1]) for f in feats],
            "created": [base + pd.Timedelta(hours=f[2]) for f in feats],
            "v": [float(i) for i in range(len(feats))],
        }
    ).astype({"k": "int64", "v": "float64"})
    right["ts"] = pd.to_datetime(right["ts"], utc=True)
    right["created"] = pd.to_datetime(right["created"], utc=True)
    left = pd.DataFrame(
        {
            "k": [e[0] for e in ents],
            "event_timestamp": pd.to_datetime([base + pd.Timedelta(hours=e[1]) for e in ents], utc=True),
        }
    )
    ttl = None if ttl_hours is None else timedelta(hours=ttl_hours)
    spec = JoinSpec(join_keys=("k",), features=("v",), timestamp_field="ts", created_timestamp_field="created", ttl=ttl)
    got = asof_join(left, right, spec, "event_timestamp")["v"].tolist()
    want = brute_force(left, right, ["k"], ttl, bitemporal=False)
    assert [None if pd.isna(g) else g for g in got] == want
