"""The models behind an app's ingress: the champion, and during a rollout the challenger beside it.

Ray Serve has had no traffic splitting since 1.x, so each replica splits on its own, the same way:
a request's key (the ``x-session-id`` header, else the entity of its first row, e.g. the flight)
is hashed to a bucket in [0, 100), and buckets below the plan's weight go to the challenger. The
same key lands on the same arm on every replica and every step, and raising the weight only moves
keys from champion to challenger, never back. A shadow plan answers with the champion and scores
the challenger on a copy in the background; both answers go to the prediction log. Likewise, a
request the challenger answers in a canary is scored by the champion in the background (arm
``reference``), so the analysis compares both models on the same inputs.

Every ``alias_poll_s`` a background task of the replica (1) resolves the champion alias and, when
it moved, loads the new version beside the serving one and swaps it in (``Scorer.switch``), and
(2) reads the route plan (``route_plan``) and loads or drops the challenger. A promoted challenger
that is already loaded becomes the champion by one attribute swap, so traffic never returns to the
old version in between. A request keeps the scorer it started with to its end.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from dataclasses import asdict
from typing import Any

from ml_system.errors import EntityDataError, MLSystemError, UnscorableError
from ml_system.features import FeatureStore
from ml_system.serving.prediction_log import LoggedPrediction, PredictionLog, now
from ml_system.serving.route_plan import RoutePlan, RoutePlanStore
from ml_system.serving.scorer import Scored, Scorer, ScoreRow
from ml_system.training import tracking

log = logging.getLogger("ml_system.serving")

CHAMPION_ARM, CHALLENGER_ARM, SHADOW_ARM, REFERENCE_ARM = "champion", "challenger", "shadow", "reference"
RESOLVE_TIMEOUT_S = 10.0
MAX_SHADOW_IN_FLIGHT = 256


def bucket(key: str) -> float:
    """A request key's place in [0, 100), the same on every replica."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") % 10_000 / 100.0


def request_key(rows: list[ScoreRow], session: str | None) -> str:
    return session or (json.dumps(rows[0].entity, sort_keys=True, default=str) if rows else "")


class Router:
    def __init__(self, scorer_args: dict[str, Any]) -> None:
        self.scorer_args = scorer_args
        self.primary = Scorer(**scorer_args)
        self.usecase = self.primary.usecase
        config = self.primary.config
        self.plans = RoutePlanStore(config.rollout.uri)
        self.plan = RoutePlan()
        self.candidate: Scorer | None = None
        self.refused: dict[str, str] = {}
        """Versions that failed to load, and why: not tried again by the poll."""
        offline = FeatureStore(config).offline if config.rollout.prediction_log.enabled else None
        self.log = PredictionLog(offline, config.rollout.prediction_log)
        self._watch: asyncio.Task[None] | None = None
        self._shadows: set[asyncio.Task[None]] = set()
        self.shadow_skipped = 0

    # ---- what the ingress uses (the same names as ``Scorer``) ----------------------------------
    @property
    def model_name(self) -> str:
        return self.primary.model_name

    @property
    def unready(self) -> str:
        return self.primary.unready

    def check(self) -> str:
        return self.primary.check()

    def enable_metrics(self) -> None:
        self.primary.enable_metrics()

    def describe(self) -> dict[str, Any]:
        candidate = self.candidate.version if self.candidate is not None else None
        return {
            **self.primary.describe(),
            "route_plan": asdict(self.plan),
            "challenger_version": candidate,
            "refused_versions": self.refused,
            **self.log.describe(),
        }

    async def apply(self, user_config: dict[str, Any]) -> None:
        await self.primary.apply(user_config)
        if self.candidate is not None:
            self.candidate.reconfigure({**user_config, "model_version": None})
        self.start()

    # ---- following the alias and the route plan ------------------------------------------------
    def start(self) -> None:
        if self._watch is None or self._watch.done():
            self._watch = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        while True:
            await asyncio.sleep(self.primary.settings.alias_poll_s)
            try:
                await self.refresh()
            except Exception:
                log.exception("route refresh failed; serving as before")

    async def refresh(self) -> None:
        await self._follow_alias()
        await self._follow_plan()

    async def _follow_alias(self) -> None:
        primary = self.primary
        if primary.wanted_version() is not None:  # pinned by the Serve config
            return
        resolve = asyncio.to_thread(tracking.resolve, primary.config.mlflow, primary.model_name_wanted, primary.alias)
        version = (await asyncio.wait_for(resolve, RESOLVE_TIMEOUT_S)).version
        if version == primary.version or version in self.refused:
            return
        if self.candidate is not None and self.candidate.version == version:
            self._adopt_candidate()
            return
        await primary.switch(primary.alias, version)
        if primary.version != version:
            self.refused[version] = primary.config_error

    def _adopt_candidate(self) -> None:
        """The loaded challenger became champion: it serves on as the primary, without a reload."""
        candidate, old = self.candidate, self.primary
        assert candidate is not None
        candidate.alias, candidate.pinned = old.alias, None
        if old._metrics_on:
            candidate.enable_metrics()
        self.primary, self.candidate = candidate, None
        log.info("challenger version %s is champion now", candidate.version)

    async def _follow_plan(self) -> None:
        plan = await asyncio.to_thread(self.plans.read, self.usecase.name)
        wanted = plan.challenger_version if plan.routes else ""
        promoted = self.candidate is not None and plan.promoted_version == self.candidate.version
        if wanted and wanted != self.primary.version and wanted not in self.refused:
            if self.candidate is None or self.candidate.version != wanted:
                self.candidate = await self._load(wanted)
        elif not promoted:
            self.candidate = None
        self.plan = plan

    async def _load(self, version: str) -> Scorer | None:
        try:
            scorer = await asyncio.to_thread(Scorer, **{**self.scorer_args, "version": version})
        except MLSystemError as exc:
            self.refused[version] = str(exc)
            log.error("challenger version %s refused: %s", version, exc)
            return None
        scorer.reconfigure({**self.primary.settings.model_dump(), "model_version": None})
        return scorer

    # ---- scoring -------------------------------------------------------------------------------
    def choose(self, rows: list[ScoreRow], session: str | None) -> tuple[Scorer, str, Scorer | None]:
        """The scorer that answers, its arm, and a shadow to score a copy (or None).

        The request's key is only computed when a challenger is loaded: outside a rollout it would
        be a JSON dump per request for nothing.
        """
        plan, candidate = self.plan, self.candidate
        if candidate is None:
            return self.primary, CHAMPION_ARM, None
        if plan.strategy == "shadow":
            return self.primary, CHAMPION_ARM, candidate
        if plan.promoted_version == candidate.version or bucket(request_key(rows, session)) < plan.weight:
            return candidate, CHALLENGER_ARM, None
        return self.primary, CHAMPION_ARM, None

    async def score(self, rows: list[ScoreRow], session: str | None, request_id: str) -> tuple[Scored, str]:
        if self._watch is None:
            self.start()
        scorer, arm, shadow = self.choose(rows, session)
        t0 = time.perf_counter()
        try:
            scored = await scorer.score(rows)
        except (UnscorableError, EntityDataError):
            raise  # the caller's mistake, not the model's: no error counted against an arm
        except Exception:
            self._record(rows, None, scorer, arm, request_id, t0)
            raise
        self._record(rows, scored, scorer, arm, request_id, t0)
        if shadow is not None:
            self._mirror(shadow, rows, request_id, SHADOW_ARM)
        elif arm == CHALLENGER_ARM and self.plan.routes and self.log.enabled:
            # the champion's answer to the same rows, logged only: the analysis compares the two
            # models on the same inputs rather than on two different samples of traffic
            self._mirror(self.primary, rows, request_id, REFERENCE_ARM)
        return scored, arm

    def _mirror(self, shadow: Scorer, rows: list[ScoreRow], request_id: str, arm: str) -> None:
        if len(self._shadows) >= MAX_SHADOW_IN_FLIGHT:
            self.shadow_skipped += 1
            return

        async def run() -> None:
            t0 = time.perf_counter()
            try:
                scored = await shadow.score(rows)
            except Exception:  # noqa: BLE001 - a shadow's failure is recorded, never seen by the caller
                self._record(rows, None, shadow, arm, request_id, t0)
                return
            self._record(rows, scored, shadow, arm, request_id, t0)

        task = asyncio.get_running_loop().create_task(run())
        self._shadows.add(task)
        task.add_done_callback(self._shadows.discard)

    def _record(
        self, rows: list[ScoreRow], scored: Scored | None, scorer: Scorer, arm: str, request_id: str, t0: float
    ) -> None:
        if not self.log.enabled:
            return
        ms = (time.perf_counter() - t0) * 1000
        at, name = now(), scorer.model_name
        version = scored.version if scored is not None else scorer.version
        out = []
        digest_of = self.log.digest
        for i, row in enumerate(rows):
            entity, digest = digest_of(row.entity, row.at)
            value = scored.scores[i] if scored is not None else float("nan")
            status = "ok" if scored is not None else "error"
            out.append(LoggedPrediction(request_id, at, row.at, name, version, arm, entity, digest, value, status, ms))
        self.log.add(out)
