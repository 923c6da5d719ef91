"""The serving fast path computes the same on-demand features as training (pandas)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ml_system.usecases.flights.features import flight_time_frame, flight_time_row


def test_scalar_matches_pandas_across_a_year_and_dst_changes() -> None:
    stamps = pd.Series(pd.date_range("2013-01-01", "2014-01-02", freq="37min", tz="UTC"))
    stamps = pd.concat([stamps, pd.Series(pd.to_datetime(["2013-03-10T06:59:00Z", "2013-11-03T05:30:00Z"], utc=True))])
    expected = flight_time_frame(pd.DataFrame({"sched_dep_time": stamps}))[["dep_hour", "weekday", "month"]]
    got = np.array([flight_time_row(t.to_pydatetime()) for t in stamps])
    np.testing.assert_array_equal(got, expected.to_numpy())


def test_offsets_other_than_new_york_are_converted() -> None:
    t = pd.Timestamp("2013-12-30T23:30:00+01:00").to_pydatetime()  # 17:30 in New York
    assert flight_time_row(t) == (17.5, 0.0, 12.0)
