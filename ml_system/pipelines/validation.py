"""The validation step: a use case's source tables against their expectations, with pandera.

pandera (a maintained, pandas-native validation library) runs the checks and reports every
failing value at once (``lazy=True``): column presence and kind, null fraction, value range, row
count and freshness. The expectations themselves are plain dataclasses kept with the use case's
definitions (``ml_system.features.expectations``), so use cases do not import pandera and the
cache key of this step is their JSON form.

What is checked: each table at the Delta version the run pinned, only the rows not after the
run's as-of moment (the clock for a run without one), and, when the expectation has a
``window``, only the newest rows within it: a bad day in a year of good rows would otherwise
hide under a low average null rate. Freshness is the newest row's age at that moment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from ml_system.errors import DataValidationError
from ml_system.features.expectations import ColumnExpectation, TableExpectations
from ml_system.features.offline import OfflineStore

KIND_TESTS = {
    "float": pd.api.types.is_float_dtype,
    "int": pd.api.types.is_integer_dtype,
    "string": lambda dtype: pd.api.types.is_string_dtype(dtype) or pd.api.types.is_object_dtype(dtype),
    "bool": pd.api.types.is_bool_dtype,
    "timestamp": pd.api.types.is_datetime64_any_dtype,
}
EXAMPLES = 3


@dataclass
class Failure:
    table: str
    column: str
    check: str
    failed_rows: int
    examples: list[str] = field(default_factory=list)

    def line(self) -> str:
        where = f"{self.table}.{self.column}" if self.column else self.table
        shown = f" (e.g. {', '.join(self.examples)})" if self.examples else ""
        return f"{where}: {self.check} failed for {self.failed_rows} row(s){shown}"


@dataclass
class TableReport:
    table: str
    version: int
    rows_checked: int
    failures: list[Failure] = field(default_factory=list)


def _column_schema(name: str, col: ColumnExpectation) -> pa.Column:
    checks = [pa.Check(lambda s, k=col.kind: bool(KIND_TESTS[k](s.dtype)), name=f"kind is {col.kind}")]
    if 0.0 < col.max_null_fraction < 1.0:
        frac = col.max_null_fraction
        null_check = pa.Check(
            lambda s, f=frac: bool(s.isna().mean() <= f), name=f"null fraction <= {frac:g}", ignore_na=False
        )
        checks.append(null_check)
    if col.min_value is not None and col.max_value is not None:
        checks.append(pa.Check.in_range(col.min_value, col.max_value))
    elif col.min_value is not None:
        checks.append(pa.Check.ge(col.min_value))
    elif col.max_value is not None:
        checks.append(pa.Check.le(col.max_value))
    return pa.Column(name=name, checks=checks, nullable=col.max_null_fraction > 0.0, required=True)


def schema_for(expect: TableExpectations, reference: datetime) -> pa.DataFrameSchema:
    columns = {name: _column_schema(name, col) for name, col in expect.columns.items()}
    frame_checks = [pa.Check(lambda df, n=expect.min_rows: len(df) >= n, name=f"row count >= {expect.min_rows}")]
    if expect.max_staleness is not None:
        oldest = pd.Timestamp(reference) - pd.Timedelta(expect.max_staleness)
        ts = expect.timestamp_field
        frame_checks.append(
            pa.Check(
                lambda df, o=oldest, c=ts: len(df) > 0 and df[c].max() >= o,
                name=f"newest {ts} at or after {oldest.isoformat()} (max staleness {expect.max_staleness})",
            )
        )
    return pa.DataFrameSchema(columns, checks=frame_checks, strict=False, coerce=False, name=expect.table)


def rows_to_check(frame: pd.DataFrame, expect: TableExpectations, reference: datetime) -> pd.DataFrame:
    times = pd.to_datetime(frame[expect.timestamp_field], utc=True)
    keep = times <= pd.Timestamp(reference)
    if expect.window is not None:
        keep &= times > pd.Timestamp(reference) - pd.Timedelta(expect.window)
    return frame[keep.to_numpy()].reset_index(drop=True)


def _failures(table: str, errors: SchemaErrors) -> list[Failure]:
    cases = errors.failure_cases
    out = []
    for (column, check), group in cases.groupby(["column", "check"], dropna=False, sort=False):
        values = [str(v) for v in group["failure_case"].head(EXAMPLES)]
        rows = int(group["index"].notna().sum()) or len(group)
        name = "" if pd.isna(column) or column == table else str(column)
        out.append(Failure(table, name, str(check), rows, values if group["index"].notna().any() else []))
    return out


def validate_table(offline: OfflineStore, expect: TableExpectations, version: int, reference: datetime) -> TableReport:
    have = set(offline.schema(expect.table, version).names)
    wanted = [c for c in dict.fromkeys([expect.timestamp_field, *expect.columns]) if c in have]
    if expect.timestamp_field not in have:
        failure = Failure(expect.table, expect.timestamp_field, "column present", 0)
        return TableReport(expect.table, version, 0, [failure])
    frame = rows_to_check(offline.read_pandas(expect.table, version=version, columns=wanted), expect, reference)
    report = TableReport(expect.table, version, len(frame))
    try:
        schema_for(expect, reference).validate(frame, lazy=True)
    except SchemaErrors as exc:
        report.failures = _failures(expect.table, exc)
    return report


def validate(
    offline: OfflineStore,
    expectations: list[TableExpectations],
    versions: dict[str, int],
    as_of: datetime | None = None,
) -> dict[str, Any]:
    """Check every table; raise ``DataValidationError`` naming each failed check, else return the report."""
    reference = as_of or datetime.now(UTC)
    reports = []
    for expect in expectations:
        version = versions.get(expect.table)
        if version is None:
            version = offline.version(expect.table)
        reports.append(validate_table(offline, expect, version, reference))
    summary = {
        "reference": reference.isoformat(),
        "tables": {
            r.table: {"version": r.version, "rows_checked": r.rows_checked, "failures": [vars(f) for f in r.failures]}
            for r in reports
        },
    }
    failed = [f for r in reports for f in r.failures]
    if failed:
        lines = "; ".join(f.line() for f in failed)
        raise DataValidationError(f"data validation failed ({len(failed)} check(s)): {lines}", summary)
    return summary
