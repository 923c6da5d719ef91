"""Entity keys normalised by their declared type; names checked by one rule everywhere they enter."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ml_system.errors import DefinitionError, EntityDataError
from ml_system.features import DeltaSource, Entity, FeatureService, FeatureStore, FeatureView, Field
from ml_system.features.registry import Registry
from tests.conftest import make_config

driver = Entity("driver", ["driver_id"], value_type="int64")
stats = FeatureView("stats", [driver], [Field("rate")], DeltaSource("stats"))


def frame(ids: list[float | None], rates: list[float]) -> pd.DataFrame:
    stamp = pd.Timestamp("2024-01-01", tz="UTC")
    n = len(ids)
    return pd.DataFrame(
        {"driver_id": ids, "event_timestamp": [stamp] * n, "created_timestamp": [stamp] * n, "rate": rates}
    )


def at(text: str) -> datetime:
    return pd.Timestamp(text, tz="UTC").to_pydatetime()


@pytest.mark.usefixtures("ray_cluster")
def test_an_int_key_that_became_float_offline_is_found_by_the_int(platform_config) -> None:
    store = FeatureStore(platform_config)
    rows = frame([1.0, 2.0, None], [0.1, 0.2, 0.3])  # a null made the column float
    assert rows["driver_id"].dtype == np.float64
    store.offline.write_pandas("stats", rows, mode="overwrite")
    store.apply([driver, stats])
    assert store.materialize(None, at("2024-01-02")) == {"stats": 2}
    read = store.get_online_features(["stats:rate"], [{"driver_id": 1}, {"driver_id": 2.0}, {"driver_id": "2"}])
    assert read.values["rate"] == [0.1, 0.2, 0.2]
    assert store.online.read("stats", ["1", "1.0"])[1] is None  # stored as the int's text only


def test_a_non_integral_float_for_an_int_key_is_refused_naming_the_view(platform_config) -> None:
    store = FeatureStore(platform_config)
    store.apply([driver, stats])
    with pytest.raises(EntityDataError, match=r"feature view 'stats': join key 'driver_id' is declared int64.*1\.5"):
        store.push("stats", frame([1.0, 1.5], [0.1, 0.2]).assign(event_timestamp=pd.Timestamp.now(tz="UTC")))
    loose = FeatureView("loose", [Entity("rider", ["rider_id"])], [Field("rate")], DeltaSource("loose"))
    store.apply([loose.entities[0], loose])
    floats = (
        frame([1.0], [0.1]).rename(columns={"driver_id": "rider_id"}).assign(event_timestamp=pd.Timestamp.now(tz="UTC"))
    )
    with pytest.raises(EntityDataError, match=r"'loose': join key 'rider_id' holds floats .* declared string"):
        store.push("loose", floats, to_offline=False)


def test_composite_keys_with_the_separator_inside_stay_apart(platform_config) -> None:
    pair = Entity("pair", ["left", "right"])
    view = FeatureView("pairs", [pair], [Field("v")], DeltaSource("pairs"))
    store = FeatureStore(platform_config)
    store.apply([pair, view])
    now = pd.Timestamp.now(tz="UTC")
    rows = pd.DataFrame(
        {"left": ["a|b", "a"], "right": ["c", "b|c"], "event_timestamp": [now] * 2, "created_timestamp": [now] * 2}
    ).assign(v=[1.0, 2.0])
    store.push("pairs", rows, to_offline=False)
    out = store.get_online_features(["pairs:v"], [{"left": "a|b", "right": "c"}, {"left": "a", "right": "b|c"}])
    assert out.values["v"] == [1.0, 2.0]


@pytest.mark.parametrize("name", ["Weather", "weather-v2", "../weather", "/abs/weather", "a__b", "1st", "", "a" * 64])
def test_one_name_rule_for_views_entities_services_and_tables(name: str) -> None:
    with pytest.raises(DefinitionError, match=r"name .* is not allowed"):
        FeatureView(name, [driver], [Field("rate")], DeltaSource("stats"))
    with pytest.raises(DefinitionError, match=r"name .* is not allowed"):
        Entity(name, ["driver_id"])
    with pytest.raises(DefinitionError, match=r"name .* is not allowed"):
        FeatureService(name, ["stats:rate"])
    with pytest.raises(DefinitionError, match=r"offline table name .* is not allowed"):
        DeltaSource(name)


def test_the_registry_refuses_a_bad_name_when_read(tmp_path: Path) -> None:
    """A version written by hand (or by an older release) with a bad name is named when read."""
    registry = Registry(str(tmp_path / "registry"))
    registry.apply([driver, stats], by="alice")
    doc = registry.document()
    doc["feature_views"]["Stats"] = {**doc["feature_views"]["stats"], "name": "Stats"}
    doc["version"] = 2
    assert registry.store.create(2, json.dumps(doc).encode())
    with pytest.raises(DefinitionError, match="feature view name 'Stats' is not allowed"):
        Registry(str(tmp_path / "registry")).feature_views()


def test_declared_key_types_are_registered_and_checked(tmp_path: Path) -> None:
    store = FeatureStore(make_config(tmp_path / "mlsys"))
    store.apply([driver, stats])
    assert store.registry.entities()["driver"].key_types == {"driver_id": "int64"}
    assert store.plan([Entity("driver", ["driver_id"]), stats], prune=False)  # back to string: a change
    with pytest.raises(DefinitionError, match="value_type 'float64' is not one of"):
        Entity("driver", ["driver_id"], value_type="float64")
    with pytest.raises(DefinitionError, match="join key 'driver_id' is int64 in one entity and string"):
        FeatureView("both", [driver, Entity("other", ["driver_id"])], [Field("x")], DeltaSource("both"))
