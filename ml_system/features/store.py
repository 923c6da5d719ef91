"""``FeatureStore``: the facade users call, delegating to small modules.

Feast's verbs (apply, get_historical_features, get_online_features,
materialize, materialize_incremental, push) on Ray: joins and materialization
run as cluster jobs; the facade only resolves definitions and wires inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pandas as pd
import pyarrow as pa
import ray

from ml_system.cluster import refuse_node_local
from ml_system.config import PlatformConfig
from ml_system.errors import DefinitionError, EntityDataError, StoreError
from ml_system.features import push as pushing
from ml_system.features import snapshots
from ml_system.features.definitions import (
    Entity,
    FeatureService,
    FeatureView,
    OnDemandFeatureView,
    group_refs,
)
from ml_system.features.materialize import Stores, WriteLatest, materialize_view, watermark_key, window_ns
from ml_system.features.offline import OfflineStore, open_offline_store
from ml_system.features.online import OnlineStore, open_online_store
from ml_system.features.online_reader import OnlineFeatureReader, OnlineFeatures
from ml_system.features.partitioning import KeyKind, arrow_key_kind, common_kinds, key_kind
from ml_system.features.pit_join import JoinSpec, join_blocks, join_pandas
from ml_system.features.registry import Change, Definition, Guard, Registry


@dataclass(frozen=True)
class Freshness:
    latest_event: datetime | None
    materialized_until: datetime | None


def _column_kind(entity_df: pd.DataFrame | ray.data.Dataset, column: str) -> KeyKind:
    if isinstance(entity_df, pd.DataFrame):
        return key_kind(entity_df[column].dtype)
    base = entity_df.schema().base_schema
    if isinstance(base, pa.Schema):
        return arrow_key_kind(base.field(column).type)
    return key_kind(base.types[base.names.index(column)])


def _timestamp_tz(ds: ray.data.Dataset, column: str) -> str | None:
    """Time zone of a Dataset column, whether its blocks are Arrow or pandas."""
    base = ds.schema().base_schema
    if isinstance(base, pa.Schema):
        return getattr(base.field(column).type, "tz", None)
    dtype = base.types[base.names.index(column)]
    if isinstance(dtype, pd.ArrowDtype):
        return getattr(dtype.pyarrow_dtype, "tz", None)
    return str(getattr(dtype, "tz", None) or "") or None


def _with_ondemand(frame: pd.DataFrame, computed: list[tuple[OnDemandFeatureView, list[str]]]) -> pd.DataFrame:
    """Add each on-demand view's requested outputs, computed by its batch transform from the input columns."""
    for odfv, feats in computed:
        out = odfv.batch_function()(frame[list(odfv.input_names)])
        missing = [f for f in feats if f not in out.columns]
        if missing:
            raise DefinitionError(f"on-demand feature view '{odfv.name}': its transform returned no {missing}")
        for name in feats:
            frame[name] = out[name].to_numpy()
    return frame


class FeatureStore:
    def __init__(self, config: PlatformConfig) -> None:
        self.config = config
        self.registry = Registry(config.registry, shared_paths=config.ray.shared_paths)
        self.offline: OfflineStore = open_offline_store(config.offline_store, config.ray.shared_paths)
        self._online: OnlineStore | None = None

    def _check_placement(self, action: str, parts: tuple[str, ...]) -> None:
        """Refuse ``action`` on a multi-node cluster while one of ``parts`` lives on one node's disk."""
        refuse_node_local(action, self.config.node_local_locations(parts))

    @property
    def online(self) -> OnlineStore:
        if self._online is None:
            self._online = open_online_store(self.config.online_store)
        return self._online

    # ---- registry -------------------------------------------------------
    def apply(self, objects: list[Definition], *, by: str = "", prune: bool = False, guard: Guard | None = None) -> int:
        """Check sources, then record the definitions as one registry version (or none on any error)."""
        self._check_placement("apply feature definitions", ("registry",))
        for obj in objects:
            if isinstance(obj, FeatureView):
                self._check_source(obj)
        self._name_legacy_rows(objects)
        return self.registry.apply(objects, by=by, prune=prune, guard=guard)

    def _name_legacy_rows(self, objects: list[Definition]) -> None:
        """Before a view's fields change, record what the values of its pre-layout online rows are called.

        Rows written by versions without layouts carry no field names; until a view's schema
        changes, they are in its registered order, so that order is recorded (once) first.
        """
        registered = self.registry.feature_views()
        for obj in objects:
            old = registered.get(obj.name) if isinstance(obj, FeatureView) else None
            if old is not None and old.feature_names != obj.feature_names:  # type: ignore[union-attr]
                self.online.record_legacy_layout(old.name, old.feature_names)

    def plan(self, objects: list[Definition], *, prune: bool = True) -> list[Change]:
        for obj in objects:
            if isinstance(obj, FeatureView):
                self._check_source(obj)
        return self.registry.plan(objects, prune=prune)

    def _check_source(self, view: FeatureView, require_table: bool = False) -> None:
        """Refuse a view whose Delta table lacks a declared column (or, unless required, does not exist yet)."""
        if not self.offline.exists(view.source.table):
            if require_table:
                raise StoreError(
                    f"feature view '{view.name}': source table '{view.source.table}' does not exist "
                    f"under {self.offline.root}"
                )
            return
        have = set(self.offline.schema(view.source.table).names)
        need = [*view.join_keys, view.source.timestamp_field, *view.feature_names]
        if view.source.created_timestamp_field:
            need.append(view.source.created_timestamp_field)
        missing = [c for c in need if c not in have]
        if missing:
            raise StoreError(f"feature view '{view.name}': source table '{view.source.table}' lacks columns {missing}")

    def list_feature_views(self) -> list[FeatureView]:
        return list(self.registry.feature_views().values())

    def list_entities(self) -> list[Entity]:
        return list(self.registry.entities().values())

    def _resolve(self, features: list[str] | None, feature_service: FeatureService | str | None) -> list[str]:
        if feature_service is not None:
            svc = (
                self.registry.feature_service(feature_service) if isinstance(feature_service, str) else feature_service
            )
            return list(svc.features)
        if not features:
            raise EntityDataError("pass features=[...] or feature_service=...")
        return list(features)

    # ---- offline --------------------------------------------------------
    def table_versions(
        self, features: list[str] | None = None, feature_service: FeatureService | str | None = None
    ) -> dict[str, int]:
        views = self.registry.feature_views()
        grouped, _ = self._group(self._resolve(features, feature_service), views)
        return {views[v].source.table: self.offline.version(views[v].source.table) for v in grouped}

    def _group(
        self, refs: list[str], views: dict[str, FeatureView]
    ) -> tuple[dict[str, list[str]], list[tuple[OnDemandFeatureView, list[str]]]]:
        """References grouped by stored view, and by on-demand view (computed, not read)."""
        ondemand = self.registry.on_demand_feature_views()
        grouped = group_refs(refs, {**views, **ondemand})
        stored = {v: f for v, f in grouped.items() if v not in ondemand}
        computed = [(ondemand[v], f) for v, f in grouped.items() if v in ondemand]
        return stored, computed

    def get_historical_features(
        self,
        entity_df: pd.DataFrame | ray.data.Dataset,
        features: list[str] | None = None,
        feature_service: FeatureService | str | None = None,
        *,
        as_of: dict[str, int] | None = None,
        timestamp_column: str = "event_timestamp",
        num_partitions: int | None = None,
        bitemporal: bool = False,
    ) -> pd.DataFrame | ray.data.Dataset:
        """Point-in-time-correct training rows; the output type follows ``entity_df``.

        ``as_of`` pins Delta table versions (as recorded from an earlier call's
        ``attrs["table_versions"]``) so the same rows come back after appends.
        ``bitemporal=True`` also hides rows whose ``created_timestamp`` is after
        the entity row's time: corrections and backfills written later do not
        leak into training (a view without a created timestamp is unaffected).
        ``num_partitions`` defaults to two per cluster CPU.
        """
        refs = self._resolve(features, feature_service)
        views = self.registry.feature_views()
        grouped, computed = self._group(refs, views)
        is_pandas = isinstance(entity_df, pd.DataFrame)
        columns = list(entity_df.columns) if is_pandas else list(entity_df.schema().names)
        if timestamp_column not in columns:
            raise EntityDataError(f"entity_df lacks the timestamp column '{timestamp_column}'")
        for view_name in grouped:
            for key in views[view_name].join_keys:
                if key not in columns:
                    raise EntityDataError(f"entity_df lacks join key '{key}' needed by view '{view_name}'")
        for odfv, _ in computed:
            for key in odfv.input_names:
                if key not in columns:
                    raise EntityDataError(
                        f"entity_df lacks input '{key}' needed by on-demand feature view '{odfv.name}'"
                    )
        for view_name, feats in [*grouped.items(), *((o.name, f) for o, f in computed)]:
            clash = [f for f in feats if f in columns]
            if clash:
                raise EntityDataError(f"entity_df already has columns {clash} that view '{view_name}' would add")

        versions: dict[str, int] = {}
        stages: list[tuple[JoinSpec, list[ray.ObjectRef]]] = []
        kinds: dict[tuple[str, ...], tuple[KeyKind, ...]] = {}
        for view_name, feats in grouped.items():
            view = views[view_name]
            table = view.source.table
            version = (as_of or {}).get(table)
            if version is None:
                version = self.offline.version(table)
            versions[table] = version
            src_cols = [*view.join_keys, view.source.timestamp_field, *feats]
            if view.source.created_timestamp_field:
                src_cols.append(view.source.created_timestamp_field)
            schema = self.offline.schema(table, version)
            have = set(schema.names)
            missing = [c for c in src_cols if c not in have]
            if missing:
                raise StoreError(f"feature view '{view_name}': source table '{table}' lacks columns {missing}")
            spec = JoinSpec(
                join_keys=view.join_keys,
                features=tuple(feats),
                timestamp_field=view.source.timestamp_field,
                created_timestamp_field=view.source.created_timestamp_field,
                ttl=view.ttl,
            )
            right_kinds = [arrow_key_kind(schema.field(k).type) for k in view.join_keys]
            left_kinds = [_column_kind(entity_df, k) for k in view.join_keys]
            agreed = common_kinds(left_kinds, right_kinds)
            # views sharing keys share one shuffle, so they must agree on how keys hash
            previous = kinds.get(view.join_keys)
            kinds[view.join_keys] = agreed if previous in (None, agreed) else ("any",) * len(agreed)
            blocks = self.offline.read_dataset(table, version=version, columns=src_cols).to_pandas_refs()
            stages.append((spec, blocks))

        if is_pandas:
            if stages:
                result = join_pandas(entity_df, stages, kinds, timestamp_column, num_partitions, bitemporal)
            else:
                result = entity_df.copy()
            result = _with_ondemand(result, computed)
            result.attrs["table_versions"] = versions
            return result
        if _timestamp_tz(entity_df, timestamp_column) is None:
            raise EntityDataError(f"column '{timestamp_column}' holds naive timestamps; make them timezone-aware")
        if stages:
            out_refs = join_blocks(
                entity_df.to_pandas_refs(), stages, kinds, timestamp_column, num_partitions, bitemporal
            )
            joined = ray.data.from_pandas_refs(out_refs)
        else:
            joined = entity_df
        if not computed:
            return joined
        return joined.map_batches(_with_ondemand, fn_args=(computed,), batch_format="pandas")

    # ---- online ---------------------------------------------------------
    def online_reader(
        self, features: list[str] | None = None, feature_service: FeatureService | str | None = None
    ) -> OnlineFeatureReader:
        return OnlineFeatureReader(
            self.online,
            self.registry.feature_views(),
            self._resolve(features, feature_service),
            self.registry.on_demand_feature_views(),
        )

    def get_online_features(
        self,
        features: list[str] | FeatureService | str,
        entity_rows: list[dict[str, Any]],
        now: datetime | list[datetime] | None = None,
    ) -> OnlineFeatures:
        if isinstance(features, (FeatureService, str)):
            reader = self.online_reader(feature_service=features)
        else:
            reader = self.online_reader(features=list(features))
        return reader.read(entity_rows, now)

    def _views(self, views: list[str] | None) -> list[FeatureView]:
        registered = self.registry.feature_views()
        unknown = sorted(set(views or []) - set(registered))
        if unknown:
            raise DefinitionError(f"no feature views named {unknown} are registered (have {sorted(registered)})")
        return [v for v in registered.values() if views is None or v.name in views]

    def materialize(
        self,
        start: datetime | None,
        end: datetime,
        views: list[str] | None = None,
        *,
        snapshot: str | None = None,
        writer: type[WriteLatest] = WriteLatest,
    ) -> dict[str, int]:
        """Write the newest value per entity with ``start < event_timestamp <= end``; returns rows written per view.

        Every view's source is checked before anything is written, so bad input leaves the online
        store as it was. A view's ``materialized_until`` moves only once all of its blocks are
        written, and never backwards: a run that dies part-way is resumed by running again, and the
        upsert-if-newer write makes the repeated blocks land as no-ops. An ``end`` beyond the clock
        (plus ``features.max_future_skew_s``) is refused. ``snapshot`` picks the namespace (default:
        the active one); ``writer`` is the Ray Data batch callable, replaceable for custom sinks or to
        inject faults.
        """
        start_ns, end_ns = window_ns(start, end, self.config.features.max_future_skew_s)
        selected = self._checked_views(views)
        namespace = self.online.active_snapshot() if snapshot is None else snapshot
        return {
            view.name: materialize_view(self._sources(), view, start_ns, end_ns, namespace, writer, incremental=False)
            for view in selected
        }

    def _sources(self) -> Stores:
        return Stores(self.offline, self.online, self.config.online_store)

    def _checked_views(self, views: list[str] | None) -> list[FeatureView]:
        """The selected views, every source and every store's placement checked before anything is written."""
        self._check_placement("materialize", ("registry", "online_store"))
        selected = self._views(views)
        for view in selected:
            self._check_source(view, require_table=True)
        return selected

    def materialized_until(self, view: str, snapshot: str | None = None) -> datetime | None:
        namespace = self.online.active_snapshot() if snapshot is None else snapshot
        last = self.online.get_meta(watermark_key(view, namespace))
        return None if last is None else pd.Timestamp(int(last), tz="UTC").to_pydatetime()

    def materialize_incremental(
        self, end: datetime, views: list[str] | None = None, *, writer: type[WriteLatest] = WriteLatest
    ) -> dict[str, int]:
        """Each view resumes where its last run into the active snapshot ended, in event time and in ingestion.

        Rows past the view's ``materialized_until`` are taken up to ``end``, and so is every row of
        the data files added to the source since the last run, however old its event time (late
        rows, corrections, backfills). An ``end`` before the mark writes only such late rows and
        leaves the mark where it was.
        """
        _, end_ns = window_ns(None, end, self.config.features.max_future_skew_s)
        selected = self._checked_views(views)
        namespace = self.online.active_snapshot()
        return {
            view.name: materialize_view(self._sources(), view, None, end_ns, namespace, writer, incremental=True)
            for view in selected
        }

    def freshness(self, view_name: str) -> Freshness:
        """Newest event in the offline table (from Delta's file statistics) and the online watermark."""
        view = self.registry.feature_view(view_name)
        latest = None
        if self.offline.exists(view.source.table):
            latest = self.offline.max_timestamp(view.source.table, view.source.timestamp_field)
        return Freshness(latest, self.materialized_until(view_name))

    # ---- online data rollout ---------------------------------------------
    def load_snapshot(self, end: datetime, views: list[str] | None = None) -> str:
        """Materialize everything up to ``end`` into a new snapshot that no reader sees yet."""
        self._check_placement("load a snapshot", ("registry", "online_store"))
        sid = snapshots.new_snapshot_id()
        snapshots.record(self.online, sid, end.isoformat(), "loading")
        heartbeat = snapshots.Heartbeat(self.online, sid, self.config.features.snapshot_heartbeat_s)
        try:
            self.materialize(None, end, views, snapshot=sid)
        except BaseException:
            heartbeat.stop()
            self.online.drop_snapshot(sid)
            snapshots.record(self.online, sid, end.isoformat(), "failed")
            raise
        heartbeat.stop()
        snapshots.record(self.online, sid, end.isoformat(), "ready", expect=("loading",))
        return sid

    def activate_snapshot(self, snapshot: str) -> str:
        """Switch every reader to ``snapshot`` at once; returns the id served before."""
        return snapshots.activate(self.online, snapshot)

    def rollback_snapshot(self) -> str:
        """Switch back to the previously active snapshot; returns its id."""
        return snapshots.rollback(self.online)

    def list_snapshots(self) -> list[snapshots.SnapshotInfo]:
        return snapshots.listing(self.online)

    def gc_snapshots(self, keep: int = 1, abandoned_after_s: float | None = None) -> snapshots.GcReport:
        """Reclaim replaced snapshots beyond the ``keep`` newest rollback targets, and failed or abandoned loads.

        Never the active snapshot or a kept rollback target (``snapshots.gc`` says exactly what is kept).
        """
        after = self.config.features.snapshot_abandoned_after_s if abandoned_after_s is None else abandoned_after_s
        return snapshots.gc(self.online, keep=keep, abandoned_after_s=after)

    def push(
        self, view_name: str, rows: pd.DataFrame, to_offline: bool = True, *, idempotency_key: str | None = None
    ) -> int:
        """Write fresh rows (e.g. from a stream) offline for training, then online; returns online rows written.

        Safe to retry: ``idempotency_key`` (default: a hash of ``rows``) is recorded with the Delta
        commit, so a retry appends nothing twice. Online, rows go into every snapshot a reader may
        be switched to, so a push during a snapshot load survives its activation. Rows dated more
        than ``features.max_future_skew_s`` ahead of now are refused (``push.py``).
        """
        return pushing.push(
            self.online,
            self.offline,
            self.registry.feature_view(view_name),
            rows,
            to_offline=to_offline,
            idempotency_key=idempotency_key,
            max_future_skew_s=self.config.features.max_future_skew_s,
        )

    def delete(self, view_name: str, entity_rows: list[dict[str, Any]]) -> int:
        """Delete entities' online rows (every switchable snapshot); returns how many were served.

        The offline history is kept; a later materialization can bring a row back only if it is
        newer than the deleted one was.
        """
        return pushing.delete(self.online, self.registry.feature_view(view_name), entity_rows)
