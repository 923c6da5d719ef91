"""The point-in-time join's reference: row by row, straight from the documented semantics, for property tests."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd


def brute_force(
    left: pd.DataFrame, right: pd.DataFrame, keys: list[str], ttl: timedelta | None, bitemporal: bool
) -> list[float | None]:
    """Row by row, straight from the documented semantics (plus ``created <= t`` when bitemporal)."""
    out: list[float | None] = []
    right = right.assign(order=np.arange(len(right)))
    for _, row in left.iterrows():
        t = row["event_timestamp"]
        cand = right[(right["ts"] <= t)]
        for key in keys:
            cand = cand[cand[key] == row[key]]
        if ttl is not None:
            cand = cand[cand["ts"] > t - ttl]
        if bitemporal:
            cand = cand[cand["created"] <= t]
        if cand.empty:
            out.append(None)
            continue
        out.append(float(cand.sort_values(["ts", "created", "order"])["v"].iloc[-1]))
    return out
