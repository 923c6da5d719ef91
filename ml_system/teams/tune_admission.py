"""Tune trials on a team's quota: each trial starts on a lease and gives it back when asked.

Three Tune hooks share one ``TrialGate``:

- the search algorithm (``AdmittedVariantGenerator``) creates a trial only once the admission
  queue has granted it a lease. Gating the scheduler's ``choose_trial_to_run`` alone would not do:
  Tune starts every PENDING trial it has, whatever the scheduler chooses;
- the scheduler (``AdmittedScheduler``, around ASHA) pauses a trial whose borrowed lease is asked
  back, and resumes a paused trial only on a new lease. Tune pauses a function trainable by
  keeping its last reported checkpoint and resumes it with that checkpoint in
  ``tune.get_checkpoint()`` (``FunctionTrainable.save_checkpoint``/``load_checkpoint`` in Ray
  2.60; ``docs/teams.md`` quotes them), so a preempted trial loses at most the rounds since its
  last checkpoint. A trial that has not paused ``give_back_s`` after being asked is stopped
  without a new checkpoint and resumes from its previous one;
- the stopper ends the search when the experiment's CPU-seconds are spent or it is cancelled.

The gate polls the queue at most every ``POLL_S`` from the Tune driver's loop, which calls the
scheduler about ten times a second; a lease asked back is therefore paused within a poll, a
result, and the stop of the trial's actor.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray import tune
from ray.tune.experiment import Trial
from ray.tune.schedulers import TrialScheduler
from ray.tune.search.basic_variant import BasicVariantGenerator

from ml_system.teams.admission import AdmissionClient, current_job_id
from ml_system.teams.resources import Resources

POLL_S = 0.25
_DONE = (Trial.TERMINATED, Trial.ERROR)


@dataclass
class TrialAdmission:
    """How one Tune search runs on a team's quota."""

    client: AdmissionClient
    team: str
    priority: int = 0
    group: str = ""
    """The experiment the trials belong to (the queue can drop its waiting requests at once)."""
    per_trial: Resources = field(default_factory=lambda: Resources(cpu=1))
    concurrency: int = 0
    """Most trials at once (0: as many as leases allow)."""
    cpu_seconds: float | None = None
    """Budget: the search stops once its trials have held this many CPU-seconds."""
    cancelled: Callable[[], bool] | None = None
    checkpoint_every: int = 10
    """Boosting rounds between trial checkpoints: what a preempted trial may lose."""
    spent_cpu_seconds: float = 0.0
    """Written when the search ends: CPU-seconds its trials held."""
    preempted_trials: list[str] = field(default_factory=list)
    """Written when the search ends: trials paused to give borrowed quota back."""


class TrialGate:
    """Leases of one Tune run, by trial; shared by its search algorithm, scheduler and stopper."""

    def __init__(self, admission: TrialAdmission) -> None:
        self.admission = admission
        self.client = admission.client
        self.job = current_job_id()
        self.started = time.time()
        self.leases: dict[str, str] = {}
        self.held_since: dict[str, float] = {}
        self.new_request: str | None = None
        self.resume_requests: dict[str, str] = {}
        self.pausing: dict[str, float] = {}
        self.states: dict[str, str] = {}
        self.last_poll = 0.0
        self.used_cpu_s = 0.0
        self.preempted: list[str] = []
        self.give_back_s = admission.client.groups.give_back_s

    # ---- queue ---------------------------------------------------------------------------------
    def _request(self, label: str) -> str:
        a = self.admission
        return self.client.submit(
            a.team, "trial", a.per_trial, priority=a.priority, label=label, group=a.group, submitted_at=self.started
        )

    def _poll(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last_poll < POLL_S:
            return
        self.last_poll = now
        ids = [*self.leases.values(), *self.resume_requests.values()]
        if self.new_request:
            ids.append(self.new_request)
        self.states = self.client.poll(ids) if ids else {}

    def _take(self, request: str, trial_id: str) -> None:
        self.leases[trial_id] = request
        self.held_since[request] = time.time()
        self.client.bind(request, {"job": self.job})

    def admit_new(self) -> str | None:
        """A granted lease for the next trial, or None (not yet, or the budget is spent)."""
        if self.exhausted():
            return None
        if self.new_request is None:
            self.new_request = self._request("trial")
            self._poll(force=True)
        self._poll()
        state = self.states.get(self.new_request)
        if state == "granted":
            granted, self.new_request = self.new_request, None
            return granted
        if state in ("reclaim", "released"):  # asked back before a trial took it, or dropped: ask again
            if state == "reclaim":
                self.client.release(self.new_request)
            self.new_request = None
        return None

    def attach(self, trial_id: str, lease: str) -> None:
        self._take(lease, trial_id)

    def unused(self, lease: str) -> None:
        self.client.release(lease)

    def admit_resume(self, trial_id: str) -> bool:
        request = self.resume_requests.get(trial_id)
        if request is None:
            self.resume_requests[trial_id] = self._request("trial-resume")
            self._poll(force=True)
            request = self.resume_requests[trial_id]
        self._poll()
        state = self.states.get(request)
        if state == "granted":
            del self.resume_requests[trial_id]
            self._take(request, trial_id)
            return True
        if state in ("reclaim", "released"):
            if state == "reclaim":
                self.client.release(request)
            del self.resume_requests[trial_id]
        return False

    def _give_back(self, trial_id: str) -> None:
        lease = self.leases.pop(trial_id, None)
        self.pausing.pop(trial_id, None)
        if lease is None:
            return
        self.used_cpu_s += (time.time() - self.held_since.pop(lease, time.time())) * self.admission.per_trial.cpu
        self.client.release(lease)

    def sync(self, controller: Any) -> None:
        """Pause trials whose lease is asked back; give back leases of paused and finished trials."""
        self._poll()
        now = time.monotonic()
        for trial in controller.get_trials():
            lease = self.leases.get(trial.trial_id)
            if lease is None:
                continue
            asked = self.states.get(lease) in ("reclaim", "released")
            if trial.status in _DONE or (trial.status == Trial.PAUSED and (asked or trial.trial_id in self.pausing)):
                # a paused trial holds nothing: Tune stopped its actor and keeps its last checkpoint
                self._give_back(trial.trial_id)
            elif asked and trial.status == Trial.PENDING:
                # still starting: nothing to save, it stops now (Tune ignores this until the trial is staged)
                controller.pause_trial(trial, should_checkpoint=False)
            elif asked and trial.status == Trial.RUNNING:
                since = self.pausing.get(trial.trial_id)
                if since is None:
                    self.pausing[trial.trial_id] = now
                    self.preempted.append(trial.trial_id)
                    controller.pause_trial(trial)
                elif now - since > self.give_back_s:
                    controller.pause_trial(trial, should_checkpoint=False)

    # ---- budget --------------------------------------------------------------------------------
    def cpu_seconds(self) -> float:
        now = time.time()
        running = sum(now - t for t in self.held_since.values()) * self.admission.per_trial.cpu
        return self.used_cpu_s + running

    def exhausted(self) -> bool:
        a = self.admission
        if a.cancelled is not None and a.cancelled():
            return True
        return a.cpu_seconds is not None and self.cpu_seconds() >= a.cpu_seconds

    def close(self) -> None:
        """Give everything back (the search ended, or failed)."""
        for trial_id in list(self.leases):
            self._give_back(trial_id)
        for request in [*self.resume_requests.values(), *([self.new_request] if self.new_request else [])]:
            self.client.release(request)
        self.resume_requests.clear()
        self.new_request = None
        self.admission.spent_cpu_seconds = self.used_cpu_s
        self.admission.preempted_trials = list(self.preempted)


class AdmittedVariantGenerator(BasicVariantGenerator):
    """Tune's default search, creating a trial only on a granted lease."""

    def __init__(self, gate: TrialGate, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.gate = gate
        self.created = 0

    def next_trial(self) -> Trial | None:
        if self.is_finished():
            return None
        if self.created >= self.total_samples or self.gate.exhausted():
            if self.gate.exhausted():
                self.set_finished()
            return super().next_trial()
        if self.max_concurrent > 0 and len(self._live_trials) >= self.max_concurrent:
            return None
        lease = self.gate.admit_new()
        if lease is None:
            return None
        trial = super().next_trial()
        if trial is None:
            self.gate.unused(lease)
            return None
        self.created += 1
        self.gate.attach(trial.trial_id, lease)
        return trial

    def get_state(self) -> dict[str, Any] | bool:
        # Tune saves the searcher's state beside the experiment; the gate is this process's connection
        state = super().get_state()
        return {k: v for k, v in state.items() if k != "gate"} if isinstance(state, dict) else state


class AdmittedScheduler(TrialScheduler):
    """Delegates to ``inner`` (ASHA); adds give-back on request and admission of resumed trials."""

    def __init__(self, gate: TrialGate, inner: TrialScheduler) -> None:
        super().__init__()
        self.gate = gate
        self.inner = inner

    @property
    def metric(self) -> str | None:
        return self.inner.metric

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return self.inner.set_search_properties(metric, mode, **spec)

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self.inner.on_trial_add(tune_controller, trial)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self.inner.on_trial_error(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> str:
        return self.inner.on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Trial, result: dict[str, Any]) -> None:
        self.inner.on_trial_complete(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Trial) -> None:
        self.inner.on_trial_remove(tune_controller, trial)

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        """PENDING trials hold their lease already; a PAUSED one runs again only on a new lease."""
        self.gate.sync(tune_controller)
        trials = tune_controller.get_trials()
        for trial in trials:
            if trial.status == Trial.PENDING:
                return trial
        for trial in trials:
            if trial.status == Trial.PAUSED and trial.trial_id not in self.gate.leases:
                if self.gate.admit_resume(trial.trial_id):
                    return trial
                return None  # resume in order: the first paused trial waits for its lease first
        return None

    def debug_string(self) -> str:
        return f"admitted on team '{self.gate.admission.team}': {self.inner.debug_string()}"

    def save(self, checkpoint_path: str) -> None:
        self.inner.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.inner.restore(checkpoint_path)


class BudgetStopper(tune.Stopper):
    """Ends the whole search once the experiment's CPU-seconds are spent or it was cancelled."""

    def __init__(self, gate: TrialGate) -> None:
        self.gate = gate

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.gate.exhausted()

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config into the experiment folder; the gate holds an actor handle
        return {}
