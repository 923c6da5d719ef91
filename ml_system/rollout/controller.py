"""The rollout controller: starts a rollout, judges each step, steps up, promotes or rolls back.

It holds nothing in memory that matters: each ``tick`` reads the durable state (``state.py``),
judges the current step from the prediction log (``analysis.py``) and writes the next state and the
route plan the replicas follow (``serving.route_plan``). Killing it at any moment and starting it
again (``jobs/rollout.py``, ``mlsys rollout start --wait`` or ``mlsys rollout resume``) continues
where it stopped; the replicas keep routing by the last plan meanwhile.

Order of writes: the state first, then the plan. A crash in between leaves a plan one step
behind the state, which the next ``tick`` rewrites from the state (``sync_plan``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from ml_system.config import PlatformConfig
from ml_system.errors import ModelNotFoundError, RolloutError
from ml_system.rollout import access
from ml_system.rollout.analysis import StepAnalysis, analyse, read_log
from ml_system.rollout.audit import AuditEntry, AuditLog
from ml_system.rollout.config import RolloutConfig, load_rollout
from ml_system.rollout.gate import HIGHER_IS_BETTER
from ml_system.rollout.promotion import move_champion
from ml_system.rollout.state import RolloutState, RolloutStore, now
from ml_system.serving.route_plan import RoutePlan, RoutePlanStore
from ml_system.training import tracking
from ml_system.usecase import UseCase

log = logging.getLogger("ml_system.rollout")
SYSTEM = "system"


class RolloutController:
    def __init__(self, config: PlatformConfig, usecase: UseCase) -> None:
        self.config = config
        self.usecase = usecase
        self.store = RolloutStore(config.rollout.uri)
        self.plans = RoutePlanStore(config.rollout.uri)
        self.audit = AuditLog(config.rollout.uri)

    # ---- actions a person takes (token checked, audited) ---------------------------------------
    def start(self, plan: RolloutConfig | Path, token: str | None) -> RolloutState:
        """Validate and begin a rollout (``plan`` given, or a YAML file); refused and audited before anything moves."""
        uc, model = self.usecase, self.usecase.model_name
        team = access.check(self.config, uc.name, token, "rollout_start", model)

        def refuse(why: str) -> RolloutError:
            self.audit.append(AuditEntry("rollout_start", uc.name, "refused", team.name, why, model))
            return RolloutError(f"rollout of '{model}' refused: {why}; nothing changed")

        if isinstance(plan, Path):
            try:
                plan = load_rollout(plan)
            except RolloutError as exc:
                raise refuse(str(exc)) from None

        if plan.usecase not in (None, uc.name):
            raise refuse(f"the rollout config names use case '{plan.usecase}', not '{uc.name}'")
        if plan.thresholds.max_metric_loss is not None and uc.feedback is None:
            raise refuse(f"thresholds.max_metric_loss needs labels, and use case '{uc.name}' has no feedback source")
        try:
            champion = tracking.resolve(self.config.mlflow, model, alias=tracking.CHAMPION)
            if plan.version is not None:
                challenger = tracking.resolve(self.config.mlflow, model, version=plan.version)
            else:
                challenger = tracking.resolve(self.config.mlflow, model, alias=tracking.CHALLENGER)
        except ModelNotFoundError as exc:
            raise refuse(str(exc)) from None
        if challenger.version == champion.version:
            raise refuse(f"v{challenger.version} is the champion already")
        state = RolloutState(
            id="",
            usecase=uc.name,
            model=model,
            strategy=plan.strategy,
            champion=champion.version,
            challenger=challenger.version,
            config=plan.model_dump(),
            started_by=team.name,
            weight=int(plan.steps[0]) if plan.strategy != "shadow" else 0,
        )
        try:
            state = self.store.begin(state)
        except RolloutError as exc:
            raise refuse(str(exc).split("; ")[0]) from None
        self.sync_plan(state)
        self.audit.append(
            AuditEntry(
                "rollout_start", uc.name, "done", team.name, f"{plan.strategy} {plan.steps}", model,
                champion.version, challenger.version, {"rollout": state.id},
            )
        )  # fmt: skip
        return state

    def promote(self, token: str | None, reason: str = "") -> RolloutState:
        """Skip the remaining steps: the challenger becomes champion now."""
        state = self._running()
        team = access.check(self.config, self.usecase.name, token, "rollout_promote", state.model)
        return self._finish(state, "promoted", team.name, reason or "promoted by hand")

    def abort(self, token: str | None, reason: str) -> RolloutState:
        """Stop the rollout and send all traffic back to the champion."""
        state = self._running()
        team = access.check(self.config, self.usecase.name, token, "abort", state.model)
        return self._finish(state, "aborted", team.name, reason or "aborted by hand")

    def status(self) -> RolloutState | None:
        return self.store.current(self.usecase.name)

    # ---- the loop ------------------------------------------------------------------------------
    def tick(self) -> tuple[RolloutState | None, StepAnalysis | None]:
        """Judge the current step once; step up, promote or roll back when it is decided."""
        state = self.store.active(self.usecase.name)
        if state is None:
            return None, None
        self.sync_plan(state)
        plan = RolloutConfig.model_validate(state.config)
        started = datetime.fromisoformat(state.step_started_at)
        elapsed = (datetime.now(UTC) - started).total_seconds()
        if elapsed < plan.step_s:
            return state, None
        everything = read_log(
            self.config, state.model, (state.champion, state.challenger), datetime.fromisoformat(state.started_at)
        )
        rows = everything[pd.to_datetime(everything["logged_at"], utc=True) > pd.Timestamp(started)]
        assert self.usecase.training is not None
        metric = self.usecase.training.metric
        feedback = None
        if self.usecase.feedback is not None:
            config, fb = self.config, self.usecase.feedback
            feedback = lambda frame: fb(config, frame)  # noqa: E731
        result = analyse(
            rows, state.champion, state.challenger, state.strategy == "shadow", plan.thresholds, metric,
            HIGHER_IS_BETTER.get(metric, True), feedback, everything,
        )  # fmt: skip
        result.step, result.weight = state.step, state.weight
        event = {"step": state.step, "weight": state.weight, "analysis": result.summary()}
        if not result.ready:
            if elapsed > plan.max_step_wait_s:
                why = f"step {state.step} ({state.weight}%) saw too little traffic: {'; '.join(result.notes)}"
                return self._finish(state, "rolled_back", SYSTEM, why, result), result
            return state, result
        if not result.passed:
            why = f"step {state.step} ({state.weight}%) failed: {'; '.join(result.reasons)}"
            return self._finish(state, "rolled_back", SYSTEM, why, result), result
        if state.step + 1 < len(plan.steps):
            nxt = state.step + 1
            weight = int(plan.steps[nxt]) if state.strategy != "shadow" else 0
            state = self.store.update(
                state.usecase, state.id, step=nxt, weight=weight, step_started_at=now(), event={**event, "to": weight}
            )
            self.sync_plan(state)
            self.audit.append(
                AuditEntry(
                    "rollout_step", state.usecase, "done", SYSTEM, result.summary(), state.model,
                    state.champion, state.challenger, {"rollout": state.id, "weight": weight},
                )
            )  # fmt: skip
            return state, result
        if not plan.auto_promote or state.strategy == "shadow":
            state = self.store.update(state.usecase, state.id, event={**event, "hold": True})
            return state, result
        return self._finish(state, "promoted", SYSTEM, f"every step passed: {result.summary()}", result), result

    def run(
        self,
        tick_s: float | None = None,
        on_tick: Callable[[RolloutState | None, StepAnalysis | None], None] | None = None,
    ) -> RolloutState | None:
        """Tick until the rollout finishes (or holds for a person, with ``auto_promote: false``)."""
        period = tick_s or self.config.rollout.tick_s
        while True:
            state, result = self.tick()
            if on_tick is not None:
                on_tick(state, result)
            if state is None or not state.running:
                return state if state is not None else self.status()
            if state.history and state.history[-1].get("hold"):
                return state
            time.sleep(period)

    # ---- writes --------------------------------------------------------------------------------
    def sync_plan(self, state: RolloutState) -> None:
        """Write the route plan the replicas follow, from the durable state."""
        if state.running:
            plan = RoutePlan(state.strategy, state.challenger, float(state.weight), state.id)  # type: ignore[arg-type]
        elif state.status == "promoted":
            plan = RoutePlan("none", "", 0.0, state.id, promoted_version=state.challenger)
        else:
            plan = RoutePlan("none", "", 0.0, state.id)
        if self.plans.read(state.usecase) != plan:
            self.plans.write(state.usecase, plan)

    def _running(self) -> RolloutState:
        state = self.store.active(self.usecase.name)
        if state is None:
            raise RolloutError(f"use case '{self.usecase.name}' has no rollout under way")
        return state

    def _finish(
        self, state: RolloutState, status: str, who: str, reason: str, result: StepAnalysis | None = None
    ) -> RolloutState:
        if status == "promoted":
            move_champion(self.config, state.model, state.challenger, state.champion, who)
        event = {"step": state.step, "weight": state.weight, "status": status, "reason": reason}
        if result is not None:
            event["analysis"] = result.to_dict()
        state = self.store.update(state.usecase, state.id, status=status, reason=reason, finished_at=now(), event=event)
        self.sync_plan(state)
        action = {"promoted": "rollout_promote", "rolled_back": "rollback", "aborted": "abort"}[status]
        self.audit.append(
            AuditEntry(
                action, state.usecase, "done", who, reason, state.model, state.champion, state.challenger,
                {"rollout": state.id, "weight": state.weight, "step": state.step},
            )
        )  # fmt: skip
        log.info("rollout %s of %s: %s (%s)", state.id, state.model, status, reason)
        return state


def start_from_pipeline(config: PlatformConfig, usecase: UseCase, model_version: str) -> str:
    """The retraining pipeline's ``pipelines.canary`` hook: a canary of the new challenger, default steps.

    The pipeline acts as the platform itself, so no team token is involved: the rollout's config comes
    from ``<rollout.uri>/<usecase>.yaml`` when present. The rollout then needs a controller
    (``jobs/rollout.py``) to advance.
    """
    path = Path(config.rollout.uri) / f"{usecase.name}.yaml"
    plan = load_rollout(path) if path.exists() else RolloutConfig(usecase=usecase.name)
    plan = plan.model_copy(update={"version": model_version, "usecase": usecase.name})
    controller = RolloutController(config, usecase)
    champion = tracking.resolve(config.mlflow, usecase.model_name, alias=tracking.CHAMPION)
    state = controller.store.begin(
        RolloutState(
            id="", usecase=usecase.name, model=usecase.model_name, strategy=plan.strategy, champion=champion.version,
            challenger=model_version, config=plan.model_dump(), started_by="pipeline",
            weight=int(plan.steps[0]) if plan.strategy != "shadow" else 0,
        )
    )  # fmt: skip
    controller.sync_plan(state)
    controller.audit.append(
        AuditEntry(
            "rollout_start", usecase.name, "done", "pipeline", f"{plan.strategy} {plan.steps}", usecase.model_name,
            champion.version, model_version, {"rollout": state.id},
        )
    )  # fmt: skip
    return f"rollout {state.id} started: {asdict(state)['strategy']} of v{model_version} at {state.weight}%"
