"""The registry: lifecycle with history, plan diffs, consumers guarding retirement.
What every storage backend must do (concurrent applies, damaged versions) is in test_registry_storage."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from ml_system.errors import DefinitionError, StoreError
from ml_system.features import DeltaSource, Entity, FeatureService, FeatureStore, FeatureView, Field, Lifecycle
from ml_system.features.registry import Registry

driver = Entity("driver", ["driver_id"])


def view(name: str, fields: tuple[str, ...] = ("rate",), **kw: object) -> FeatureView:
    return FeatureView(name, [driver], [Field(f) for f in fields], DeltaSource(name), owner="team-a", **kw)  # type: ignore[arg-type]


@pytest.fixture()
def registry(tmp_path: Path) -> Registry:
    reg = Registry(str(tmp_path / "registry"))
    reg.apply([driver, view("stats", ("rate", "trips")), view("other", ("score",))], by="alice")
    return reg


def test_lifecycle_moves_are_checked_and_kept_with_who_and_when(registry: Registry) -> None:
    assert registry.feature_view("stats").lifecycle == Lifecycle.ACTIVE
    registry.set_lifecycle("stats", "deprecated", by="bob", reason="replaced by stats_v2")
    registry.set_lifecycle("stats", Lifecycle.RETIRED, by="carol")
    with pytest.raises(DefinitionError, match="retired to active"):
        registry.set_lifecycle("stats", "active", by="dave")
    with pytest.raises(DefinitionError, match="--by"):
        registry.set_lifecycle("other", "deprecated", by="")
    history = registry.history("stats")
    assert [(e.state.value, e.by) for e in history] == [
        ("active", "alice"),
        ("deprecated", "bob"),
        ("retired", "carol"),
    ]
    assert history[1].reason == "replaced by stats_v2"
    assert history[0].at <= history[1].at <= history[2].at
    # re-applying the module (lifecycle unset) keeps the registered state
    registry.apply([view("stats", ("rate", "trips"))], by="alice")
    assert registry.feature_view("stats").lifecycle == Lifecycle.RETIRED


def test_plan_shows_field_level_changes_and_writes_nothing(registry: Registry) -> None:
    before = registry.version
    changed = view("stats", ("rate", "trips", "miles"), ttl=timedelta(hours=2), tags={"tier": "gold"})
    plan = registry.plan([driver, changed, view("fresh")], prune=True)
    by_name = {(c.name, c.action): c for c in plan}
    assert set(by_name) == {("stats", "change"), ("fresh", "add"), ("other", "remove")}
    fields = by_name[("stats", "change")].fields
    assert "schema.miles added ('float64')" in fields
    assert "ttl_seconds: None -> 7200.0" in fields
    assert "tags.tier added ('gold')" in fields
    assert registry.version == before
    registry.apply([driver, changed, view("fresh")], by="alice", prune=True)
    assert sorted(registry.feature_views()) == ["fresh", "stats"]
    assert registry.plan([driver, changed, view("fresh")]) == []


def test_a_view_a_live_model_reads_cannot_be_retired_or_deleted(registry: Registry) -> None:
    registry.apply([FeatureService("svc", ["stats:rate"])], by="alice")
    registry.record_consumer("svc", "delay_model", 3)
    registry.set_lifecycle("stats", "deprecated", by="bob")  # deprecating warns nobody away yet
    with pytest.raises(DefinitionError, match=r"delay_model v3 \(service svc\)"):
        registry.set_lifecycle("stats", "retired", by="bob")
    with pytest.raises(DefinitionError, match="delay_model v3"):
        registry.apply([driver, view("other", ("score",)), FeatureService("svc", ["other:score"])], prune=True)
    with pytest.raises(DefinitionError, match="delay_model v3"):
        registry.delete_feature_view("stats", by="bob")
    assert [c.model for c in registry.consumers("stats")] == ["delay_model"]
    assert registry.consumers("other") == []
    registry.archive_consumer("delay_model", 3)
    # no model reads it now, but a feature service still does: retiring would break the service
    with pytest.raises(DefinitionError, match="service 'svc' reads retired"):
        registry.set_lifecycle("stats", "retired", by="bob")
    registry.apply([FeatureService("svc", ["other:score"])], by="alice")
    registry.set_lifecycle("stats", "retired", by="bob")
    with pytest.raises(DefinitionError, match="retired"):
        registry.apply([FeatureService("svc2", ["stats:trips"])])


def test_a_failed_apply_leaves_the_registry_as_it_was(registry: Registry, platform_config) -> None:
    before, doc = registry.version, registry.document()
    with pytest.raises(DefinitionError, match="nope"):
        registry.apply([view("good"), FeatureService("svc", ["good:rate", "stats:nope"])])
    assert registry.version == before
    assert registry.document() == doc
    rider = Entity("rider", ["rider_id"])
    orphan = FeatureView("trips", [rider], [Field("n")], DeltaSource("trips"), owner="team-a")
    with pytest.raises(DefinitionError, match="feature view 'trips' uses unregistered entity 'rider'"):
        registry.apply([orphan])
    with pytest.raises(DefinitionError, match="unregistered entity 'driver'"):
        registry.apply([view("stats", ("rate", "trips")), view("other", ("score",))], prune=True)  # drops driver
    assert registry.version == before
    # the same through the store, where the failure is the source table lacking a column
    store = FeatureStore(platform_config)
    store.apply([driver, view("stats", ("rate", "trips"))])
    frame = pd.DataFrame(
        {
            "driver_id": [1],
            "event_timestamp": [pd.Timestamp("2024-01-01", tz="UTC")],
            "created_timestamp": [pd.Timestamp("2024-01-01", tz="UTC")],
            "rate": [0.5],
        }
    )
    store.offline.write_pandas("stats", frame, mode="overwrite")
    before = store.registry.document()
    with pytest.raises(StoreError, match="trips"):
        store.apply([view("fine"), view("stats", ("rate", "trips"), description="now checked")])
    assert store.registry.document() == before
