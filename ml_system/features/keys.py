"""Entity keys as the online stores see them: one canonical text per entity, whatever type it arrived in.

Both backends key a row by a string (a SQLite primary key, part of a Redis key), so
a request must build exactly the string the writer built. Each join key's value is
first normalised by the type its entity declares (``Entity.value_type``): an
``int64`` key that became a float offline (a column with a null turns pandas ints
into floats) is written as ``1``, not ``1.0``, and a request for ``1``, ``1.0`` or
``"1"`` finds it; a non-integral float for an integer key is refused, naming the
view. A ``string`` key (the default) is ``str(value)``; a float column for a
string key is refused too, since it is almost always an integer column that
picked up a null, and would otherwise be stored as ``"1.0"`` and never found.

Parts of a composite key are joined by ``entity_key`` (``online/base.py``), which
escapes the separator, so no two entities share a key. A null or empty part names
no entity: such rows are not written, and a lookup with one misses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from ml_system.errors import EntityDataError
from ml_system.features.definitions import FeatureView
from ml_system.features.online.base import entity_key

Normaliser = Callable[[Any], str]


def _as_text(value: Any) -> str:
    return "" if value is None else (value if type(value) is str else str(value))


def _int_text(value: Any, kind: str, view: str, key: str) -> str:
    if value is None or (isinstance(value, str) and not value):
        return ""
    if isinstance(value, (bool, np.bool_)):
        pass
    elif isinstance(value, (int, np.integer)):
        return str(int(value))
    elif isinstance(value, (float, np.floating)):
        if float(value).is_integer():
            return str(int(value))
    elif isinstance(value, str):
        try:
            return str(int(value))
        except ValueError:
            pass
    raise EntityDataError(f"feature view '{view}': join key '{key}' is declared {kind}, but got {value!r}")


def normaliser(kind: str, view: str, key: str) -> Normaliser:
    """The function that turns one request value of a join key into its stored text."""
    if kind == "string":
        return _as_text

    def as_int(value: Any) -> str:
        return str(value) if type(value) is int else _int_text(value, kind, view, key)

    return as_int


def key_builder(view: FeatureView) -> Callable[[list[dict[str, Any]]], list[str]]:
    """Keys of a batch of entity rows for one view; built once per reader, the serving hot path.

    A single string key (the common case) stays one list comprehension with no call per row.
    A missing join key raises ``KeyError`` with the key's name, for the caller to report.
    """
    join_keys, kinds = view.join_keys, view.key_types
    if len(join_keys) == 1:
        only = join_keys[0]
        if kinds[0] == "string":
            return lambda rows: ["" if (v := row[only]) is None else (v if type(v) is str else str(v)) for row in rows]
        norm = normaliser(kinds[0], view.name, only)
        return lambda rows: [str(v) if type(v := row[only]) is int else norm(v) for row in rows]
    pairs = [(k, normaliser(kind, view.name, k)) for k, kind in zip(join_keys, kinds, strict=True)]
    return lambda rows: [entity_key([norm(row[k]) for k, norm in pairs]) for row in rows]


def _column(values: pd.Series, kind: str, view: str, key: str) -> list[str]:
    """One join-key column as stored text, vectorised where the dtype allows (materialization's inner loop)."""
    dtype = values.dtype
    if kind == "string":
        if pd.api.types.is_float_dtype(dtype):
            first = values.iloc[0] if len(values) else None
            raise EntityDataError(
                f"feature view '{view}': join key '{key}' holds floats (e.g. {first!r}) but is declared string; "
                "declare value_type='int64' on its entity, or cast the column"
            )
        return [_as_text(v) for v in values.tolist()]
    if pd.api.types.is_bool_dtype(dtype):
        raise EntityDataError(f"feature view '{view}': join key '{key}' is declared {kind}, but holds booleans")
    if pd.api.types.is_integer_dtype(dtype):
        return [str(v) for v in values.tolist()]
    if pd.api.types.is_float_dtype(dtype):
        array = values.to_numpy(dtype="float64")
        bad = ~np.isfinite(array) | (array != np.trunc(array))
        if bad.any():
            i = int(np.argmax(bad))
            raise EntityDataError(
                f"feature view '{view}': join key '{key}' is declared {kind}, but row {values.index[i]!r} "
                f"holds {array[i]!r}"
            )
        return [str(v) for v in array.astype(np.int64).tolist()]
    norm = normaliser(kind, view, key)
    return [norm(v) for v in values.tolist()]


def frame_keys(df: pd.DataFrame, view: FeatureView) -> tuple[list[str], np.ndarray]:
    """Stored keys of a frame's rows, and which rows name an entity (no null or empty part).

    The frame's null keys must already be dropped (``latest_rows`` does).
    """
    columns = [_column(df[k], kind, view.name, k) for k, kind in zip(view.join_keys, view.key_types, strict=True)]
    named = np.ones(len(df), dtype=bool)
    for parts in columns:
        named &= np.fromiter((p != "" for p in parts), dtype=bool, count=len(parts))
    if len(columns) == 1:
        return columns[0], named
    return [entity_key(parts) for parts in zip(*columns, strict=True)], named


def request_keys(view: FeatureView, entity_rows: Sequence[dict[str, Any]]) -> list[str]:
    """Stored keys for entity rows given by a caller (``delete``), with a clear error for a missing key."""
    build = key_builder(view)
    try:
        return build(list(entity_rows))
    except KeyError as exc:
        missing = next(i for i, row in enumerate(entity_rows) if exc.args[0] not in row)
        raise EntityDataError(
            f"entity row {missing} lacks join key '{exc.args[0]}' needed by view '{view.name}'"
        ) from None
