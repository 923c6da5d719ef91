"""`mlsys features delete` and `mlsys features snapshot gc` through the real CLI."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from ml_system.cli.main import app
from ml_system.features import DeltaSource, Entity, FeatureStore, FeatureView, Field, snapshots
from tests.conftest import make_config

runner = CliRunner()
driver = Entity("driver", ["driver_id"], value_type="int64")
trip = Entity("trip", ["driver_id", "city"], value_type={"driver_id": "int64"})


def test_delete_named_entities_from_the_command_line(tmp_path: Path) -> None:
    home = tmp_path / "mlsys"
    store = FeatureStore(make_config(home))
    views = [
        FeatureView("stats", [driver], [Field("rate")], DeltaSource("stats")),
        FeatureView("city", [trip], [Field("city_rate")], DeltaSource("city")),
    ]
    store.apply([driver, trip, *views])
    now = pd.Timestamp.now(tz="UTC")
    base = {"event_timestamp": [now, now], "created_timestamp": [now, now]}
    store.push("stats", pd.DataFrame({"driver_id": [1, 2], **base, "rate": [0.1, 0.2]}), to_offline=False)
    store.push(
        "city", pd.DataFrame({"driver_id": [1, 1], "city": ["nyc", "sf"], **base, "city_rate": [1.0, 2.0]}), False
    )

    out = runner.invoke(app, ["features", "delete", "stats", "--key", "driver_id=1", "--home", str(home)])
    assert out.exit_code == 0, out.output
    assert "stats: deleted 1 of 1 entities" in out.output
    out = runner.invoke(app, ["features", "delete", "city", "--key", "driver_id=1,city=sf", "--home", str(home)])
    assert out.exit_code == 0 and "deleted 1 of 1" in out.output
    rows = [{"driver_id": 1, "city": "nyc"}, {"driver_id": 1, "city": "sf"}, {"driver_id": 2, "city": "nyc"}]
    got = store.get_online_features(["stats:rate", "city:city_rate"], rows).values
    assert got == {"rate": [None, None, 0.2], "city_rate": [1.0, None, None]}

    bad = runner.invoke(app, ["features", "delete", "stats", "--key", "driver_id", "--home", str(home)])
    assert bad.exit_code == 2 and "must look like 'name=value'" in bad.output
    bad = runner.invoke(app, ["features", "delete", "stats", "--key", "driver_id=x", "--home", str(home)])
    assert bad.exit_code == 1 and "declared int64" in bad.output
    bad = runner.invoke(app, ["features", "delete", "nope", "--key", "a=1", "--home", str(home)])
    assert bad.exit_code == 1 and "no feature view named 'nope'" in bad.output


def test_snapshot_gc_from_the_command_line(tmp_path: Path) -> None:
    home = tmp_path / "mlsys"
    online = FeatureStore(make_config(home)).online
    for sid in ("sa", "sb", "sc"):
        snapshots.record(online, sid, "2024-01-01", "ready")
        snapshots.activate(online, sid)
    snapshots.record(online, "sfailed", "2024-01-01", "failed")
    out = runner.invoke(app, ["features", "snapshot", "gc", "--keep", "1", "--home", str(home)])
    assert out.exit_code == 0, out.output
    assert "reclaimed 2 snapshots: sa, sfailed" in out.output and "kept: sc, sb" in out.output
    refused = runner.invoke(app, ["features", "snapshot", "gc", "--keep", "0", "--home", str(home)])
    assert refused.exit_code == 2
