"""Judging one rollout step from the prediction log: error rate, p99 latency, shift, and quality once labelled.

The evidence is what the replicas logged while the step ran (rows of this rollout's two versions
with ``logged_at`` after the step began), so the analysis needs no access to the replicas and
gives the same answer when a restarted controller runs it again. The champion arm, served in the
same step, is the reference for latency. Predictions are compared on the same requests: the
champion scores a mirror of every request the challenger answers (arm ``reference``), and a
shadow challenger scores a mirror of every request the champion answers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
from deltalake import DeltaTable

from ml_system.config import PlatformConfig
from ml_system.features import FeatureStore
from ml_system.rollout.config import Thresholds
from ml_system.training.evaluate import population_stability_index, score

Feedback = Callable[[pd.DataFrame], pd.Series]
"""Labels for logged rows (``entity`` JSON and ``event_timestamp``): NaN where not known yet."""


@dataclass
class ArmStats:
    requests: int = 0
    errors: int = 0
    rows: int = 0
    p99_ms: float | None = None
    labelled: int = 0
    metric: float | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass
class StepAnalysis:
    ready: bool
    """Enough requests per arm to judge."""
    passed: bool
    reasons: list[str]
    champion: ArmStats
    challenger: ArmStats
    psi: float | None = None
    paired_mean_abs_diff: float | None = None
    """Mean |challenger - champion| over the same requests' rows (shadow, or the canary's reference)."""
    notes: list[str] = field(default_factory=list)
    step: int = 0
    weight: float = 0.0
    """Which step this judged, at which weight (set by the controller)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        ch = self.challenger
        parts = [f"challenger {ch.requests} req, {ch.errors} errors, p99 {_ms(ch.p99_ms)}"]
        parts.append(f"champion {self.champion.requests} req, p99 {_ms(self.champion.p99_ms)}")
        if self.psi is not None:
            parts.append(f"psi {self.psi:.3f}")
        if self.paired_mean_abs_diff is not None:
            parts.append(f"mean |diff| on the same requests {self.paired_mean_abs_diff:.4f}")
        if ch.metric is not None and self.champion.metric is not None:
            parts.append(f"metric {ch.metric:.4f} vs {self.champion.metric:.4f}")
        verdict = "pass" if self.passed else ("fail: " + "; ".join(self.reasons) if self.ready else "waiting")
        return ", ".join(parts) + f" -> {verdict}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def read_log(config: PlatformConfig, model: str, versions: tuple[str, str], since: datetime) -> pd.DataFrame:
    """Rows of the two versions logged after ``since``."""
    offline = FeatureStore(config).offline
    table = config.rollout.prediction_log.table
    if not offline.exists(table):
        return pd.DataFrame(
            columns=["request_id", "logged_at", "model_version", "arm", "prediction", "status", "latency_ms"]
        )
    # filtered in the scan: each flush wrote its own file with min/max statistics of ``logged_at``, so
    # the files of earlier hours are skipped rather than read and dropped
    wanted = (
        (ds.field("model_name") == model)
        & ds.field("model_version").isin(list(versions))
        & (ds.field("logged_at") > pa.scalar(pd.Timestamp(since).to_pydatetime(), pa.timestamp("us", "UTC")))
    )
    dataset = DeltaTable(offline.table_uri(table), storage_options=offline.storage_options).to_pyarrow_dataset()
    return dataset.to_table(filter=wanted).to_pandas().reset_index(drop=True)


def arm_stats(rows: pd.DataFrame, metric: str, labels: pd.Series | None) -> ArmStats:
    if rows.empty:
        return ArmStats()
    per_request = rows.groupby("request_id").agg(status=("status", "first"), latency_ms=("latency_ms", "first"))
    stats = ArmStats(
        requests=len(per_request),
        errors=int((per_request["status"] != "ok").sum()),
        rows=len(rows),
        p99_ms=float(np.percentile(per_request["latency_ms"], 99)),
    )
    if labels is not None:
        ok = rows["status"] == "ok"
        known = labels[ok.to_numpy()].notna()
        truth = labels[ok.to_numpy()][known.to_numpy()]
        predicted = rows.loc[ok.to_numpy(), "prediction"][known.to_numpy()]
        stats.labelled = len(truth)
        if len(truth) and (metric != "auc" or truth.nunique() == 2):
            stats.metric = score(metric, truth.to_numpy(), predicted.to_numpy())
    return stats


def analyse(
    rows: pd.DataFrame,
    champion: str,
    challenger: str,
    shadow: bool,
    thresholds: Thresholds,
    metric: str,
    higher_is_better: bool,
    feedback: Feedback | None = None,
    reference: pd.DataFrame | None = None,
) -> StepAnalysis:
    """Judge a step's rows; ``reference`` (the champion's rows of the whole rollout) stands in for the
    champion arm when the step gives it too little traffic: the 100 % step gives it none."""
    challenger_arm = "shadow" if shadow else "challenger"
    ours = rows[(rows["model_version"] == challenger) & (rows["arm"] == challenger_arm)].reset_index(drop=True)
    theirs = rows[(rows["model_version"] == champion) & (rows["arm"] == "champion")].reset_index(drop=True)
    if reference is not None and theirs["request_id"].nunique() < thresholds.min_requests:
        theirs = reference[(reference["model_version"] == champion) & (reference["arm"] == "champion")]
        theirs = theirs.reset_index(drop=True)
    judge_quality = thresholds.max_metric_loss is not None and feedback is not None
    ours_stats = arm_stats(ours, metric, feedback(ours) if judge_quality and not ours.empty else None)
    theirs_stats = arm_stats(theirs, metric, feedback(theirs) if judge_quality and not theirs.empty else None)
    result = StepAnalysis(False, False, [], theirs_stats, ours_stats)
    if ours_stats.requests < thresholds.min_requests or theirs_stats.requests < thresholds.min_requests:
        result.notes.append(
            f"waiting for {thresholds.min_requests} requests per arm "
            f"(challenger {ours_stats.requests}, champion {theirs_stats.requests})"
        )
        return result
    result.ready = True
    reasons = result.reasons
    t = thresholds
    if t.max_error_rate is not None and ours_stats.error_rate > t.max_error_rate:
        reasons.append(f"error rate {ours_stats.error_rate:.3f} above {t.max_error_rate}")
    if t.max_p99_ms is not None and ours_stats.p99_ms is not None and ours_stats.p99_ms > t.max_p99_ms:
        reasons.append(f"p99 {ours_stats.p99_ms:.1f} ms above {t.max_p99_ms} ms")
    if t.max_p99_ratio is not None and ours_stats.p99_ms and theirs_stats.p99_ms:
        ratio = ours_stats.p99_ms / theirs_stats.p99_ms
        if ratio > t.max_p99_ratio:
            reasons.append(f"p99 {ours_stats.p99_ms:.1f} ms is {ratio:.2f}x the champion's (limit {t.max_p99_ratio}x)")
    # the champion's answers to the same requests (shadow: its own arm; canary: the mirrored reference)
    same = theirs if shadow else rows[(rows["model_version"] == champion) & (rows["arm"] == "reference")]
    base = same if len(same) else theirs
    ok_ours = ours.loc[ours["status"] == "ok", "prediction"].to_numpy(dtype=float)
    ok_base = base.loc[base["status"] == "ok", "prediction"].to_numpy(dtype=float)
    if len(ok_ours) and len(ok_base):
        result.psi = population_stability_index(ok_base, ok_ours)
        if t.max_psi is not None and result.psi > t.max_psi:
            reasons.append(f"prediction shift PSI {result.psi:.3f} above {t.max_psi}")
    if len(same) and "input_sha256" in rows.columns:
        keys = ["request_id", "input_sha256"]
        pairs = ours[ours["status"] == "ok"].merge(same[same["status"] == "ok"], on=keys, suffixes=("", "_c"))
        if len(pairs):
            result.paired_mean_abs_diff = float((pairs["prediction"] - pairs["prediction_c"]).abs().mean())
    if judge_quality:
        if min(ours_stats.labelled, theirs_stats.labelled) < t.min_labels:
            result.notes.append(f"quality not judged: fewer than {t.min_labels} labelled rows per arm")
        elif ours_stats.metric is not None and theirs_stats.metric is not None:
            loss = theirs_stats.metric - ours_stats.metric
            loss = loss if higher_is_better else -loss
            assert t.max_metric_loss is not None
            if loss > t.max_metric_loss:
                reasons.append(
                    f"{metric} {ours_stats.metric:.4f} is {loss:.4f} worse than the champion's "
                    f"{theirs_stats.metric:.4f} on labelled rows"
                )
    result.passed = not reasons
    return result
