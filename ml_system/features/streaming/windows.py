"""The aggregation both paths run: offline over an entity's history, online over its recent events.

Training calls ``window_values`` over an entity's sorted events; the stream's consumers call
``latest_values`` over the same events as the window state holds them (columns of one list),
with the same windows, order, reductions and ``_reduce``, so a feature cannot mean one thing in
a training set and another at serving time; ``test_state_layout.py`` holds the two equal bit for
bit over random histories. Sums are ``math.fsum`` (exactly rounded,
whatever the order the events were added in), so an out-of-order arrival gives the bit-identical
value that the sorted history gives; pandas' rolling sums drift in the last bits with the order.
Missing values (empty, NaN) are skipped: ``count`` counts present values, ``mean``/``max``/``min``
of none are null, ``sum`` of none is 0.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from ml_system.features.keys import frame_keys
from ml_system.features.pit_join import timestamps_ns
from ml_system.features.streaming.views import StreamFeatureView


class Event(NamedTuple):
    """One event of one entity: time (ns since the epoch, UTC), id, and the view's value columns in order."""

    ts: int
    id: str
    values: tuple[float | None, ...]


class Plan(NamedTuple):
    """A view's aggregations compiled for the loop.

    Aggregations over the same column and the same window share one pass over the events (``count``,
    ``sum`` and ``max`` over one hour read the same slice): ``groups`` holds, per distinct (value
    index, window ns, last n), the output positions and functions fed from it. Computing each
    aggregation on its own slice cost the consumer about a third of its CPU per event.
    """

    columns: tuple[str, ...]
    steps: tuple[tuple[int, str, int | None, int | None], ...]
    """(value index, function, window ns or None, last n or None) per aggregation, in output order."""
    groups: tuple[tuple[int, int | None, int | None, tuple[tuple[int, str], ...]], ...]


def plan(view: StreamFeatureView) -> Plan:
    columns = view.value_columns
    steps = tuple(
        (
            columns.index(a.column),
            a.function,
            None if a.window is None else int(a.window.total_seconds()) * 1_000_000_000,
            a.last_n,
        )
        for a in view.aggregations
    )
    shared: dict[tuple[int, int | None, int | None], list[tuple[int, str]]] = {}
    for at, (index, function, window, last_n) in enumerate(steps):
        shared.setdefault((index, window, last_n), []).append((at, function))
    groups = tuple((index, window, last_n, tuple(outs)) for (index, window, last_n), outs in shared.items())
    return Plan(columns, steps, groups)


def _reduce(function: str, values: list[float]) -> float | int | None:
    if function == "count":
        return len(values)
    if function == "sum":
        return math.fsum(values)
    if not values:
        return None
    if function == "mean":
        return math.fsum(values) / len(values)
    return max(values) if function == "max" else min(values)


def window_values(p: Plan, events: Sequence[Event], times: Sequence[int], end: int) -> list[Any]:
    """The view's values at the time of ``events[end - 1]``: ``events`` sorted by (ts, id), ``times`` their ts."""
    t = times[end - 1]
    out: list[Any] = [None] * len(p.steps)
    for index, window, last_n, outs in p.groups:
        start = bisect_right(times, t - window, 0, end) if window is not None else max(0, end - (last_n or 0))
        present = [v for e in events[start:end] if (v := e.values[index]) is not None]
        for at, function in outs:
            out[at] = len(present) if function == "count" else _reduce(function, present)
    return out


def latest_values(p: Plan, state: list[Any], size: int) -> list[Any]:
    """The values at an entity's newest event, from the window state's list: what the online row holds.

    ``state`` is ``[newest_us, stamp_us, ids, ts_us, id, v1..vw, ts_us, id, ...]``, its events in
    (time, id) order, a missing value ``False`` (msgpack from Lua has no hole in a list); ``size`` is
    ``w + 2``. The columns are slices of the list, aggregated in C: the same windows, sums and
    order as ``window_values``, without building an event per held event (which cost about 2 us
    each). ``False in`` also matches a 0, which only sends that window to the filtering path.
    """
    times = state[3::size]
    end = len(times)
    newest = times[-1]
    out: list[Any] = [None] * len(p.steps)
    columns: dict[int, tuple[list[Any], bool]] = {}
    for index, window, last_n, outs in p.groups:
        if index not in columns:
            column = state[5 + index :: size]
            columns[index] = column, False in column
        column, gaps = columns[index]
        start = bisect_right(times, newest - window // 1000) if window is not None else max(0, end - (last_n or 0))
        present = column[start:] if start else column
        if gaps:
            present = [v for v in present if v is not False]
        for at, function in outs:
            out[at] = len(present) if function == "count" else _reduce(function, present)
    return out


def _number(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return None if math.isnan(number) else number


def offline_rows(view: StreamFeatureView, events: pd.DataFrame) -> pd.DataFrame:
    """The view's rows over a history of events: one per entity and distinct event time, as of that time.

    Events with the same id count once (the first), as they do online. ``created_timestamp`` is the
    event time: a row is known when its event is.
    """
    assert view.events is not None
    ts_field, id_field = view.events.timestamp_field, view.events.event_id_field
    p = plan(view)
    if events.empty:
        return _empty(view)
    events = events.drop_duplicates(id_field, keep="first").dropna(subset=list(view.join_keys))
    keys, named = frame_keys(events, view)
    work = pd.DataFrame(
        {"__key": keys, "__ts": timestamps_ns(events[ts_field], ts_field), "__id": events[id_field].astype(str)}
    )
    for i, column in enumerate(p.columns):
        work[f"__v{i}"] = pd.to_numeric(events[column], errors="coerce").astype("float64")
    for key in view.join_keys:
        work[key] = events[key].to_numpy()
    work = work[named].sort_values(["__key", "__ts", "__id"], kind="stable")
    value_cols = [f"__v{i}" for i in range(len(p.columns))]
    out_keys: list[list[Any]] = []
    out_ts: list[int] = []
    out_values: list[list[Any]] = []
    for _, group in work.groupby("__key", sort=False):
        times = group["__ts"].tolist()
        ids = group["__id"].tolist()
        columns = [[_number(v) for v in group[c].tolist()] for c in value_cols]
        sorted_events = [
            Event(t, i, tuple(col[n] for col in columns)) for n, (t, i) in enumerate(zip(times, ids, strict=True))
        ]
        first = group.iloc[0]
        key_values = [first[k] for k in view.join_keys]
        for end in range(1, len(times) + 1):
            if end < len(times) and times[end] == times[end - 1]:
                continue  # one row per distinct time, holding every event of that time
            out_keys.append(key_values)
            out_ts.append(times[end - 1])
            out_values.append(window_values(p, sorted_events, times, end))
    stamps = pd.to_datetime(np.asarray(out_ts, dtype="int64"), utc=True)
    frame = pd.DataFrame(out_keys, columns=list(view.join_keys))
    frame["event_timestamp"] = stamps
    frame["created_timestamp"] = stamps
    values = pd.DataFrame(out_values, columns=list(view.feature_names))
    for field in view.schema:
        frame[field.name] = values[field.name].astype("int64" if field.dtype == "int64" else "float64")
    return frame


def _empty(view: StreamFeatureView) -> pd.DataFrame:
    data: dict[str, Any] = {k: pd.Series(dtype="object") for k in view.join_keys}
    data["event_timestamp"] = pd.Series(dtype="datetime64[ns, UTC]")
    data["created_timestamp"] = pd.Series(dtype="datetime64[ns, UTC]")
    for field in view.schema:
        data[field.name] = pd.Series(dtype="int64" if field.dtype == "int64" else "float64")
    return pd.DataFrame(data)
