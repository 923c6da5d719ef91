"""Cron schedules and drift checks, fired once per slot by a scheduler that may die at any moment.

Every slot of a schedule (a cron time) is claimed before it is run, by creating
``schedules/<name>/<slot>.claim.json`` exclusively in the pipelines' storage (``storage.create``:
one writer wins, locally and on S3), and finished by writing ``<slot>.done.json``. The
scheduler keeps nothing in memory that it needs later: after a restart it reads where each
schedule stands from those files. So:

- no slot runs twice: two schedulers (one started by mistake, or a restarted one beside a
  survivor) race for the claim and one loses;
- no slot is lost: each tick looks at every slot since the newest claimed one (or since the
  schedule was first seen); slots missed while no scheduler ran are run in order
  (``catchup: all``) or recorded as skipped, the newest one run (``catchup: skip``);
- a slot whose claimant died mid-run is taken over once its claimant's heartbeat is older than
  ``pipelines.lease_s``, by another exclusive create (``<slot>.takeover-<n>.json``), and resumed
  under the same run id: the steps that had finished come from the step cache.

On the cluster this runs in a detached, named Ray actor (``start_scheduler``), one tick every
``pipelines.tick_s``, with a heartbeat thread beside the ticks so that a long run does not look
like a dead scheduler. The state files are the whole truth; the actor can be killed and started
again (or restarted by Ray) at any time.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import ray
from croniter import croniter

from ml_system.config import PlatformConfig
from ml_system.config_pipelines import DriftTriggerConfig, ScheduleConfig
from ml_system.errors import MLSystemError, PipelineError
from ml_system.pipelines import history, steps
from ml_system.pipelines.runner import RunParams, run_pipeline
from ml_system.pipelines.storage import PipelineStorage, open_storage
from ml_system.usecase import load_usecase

SCHEDULES = "schedules"
HEARTBEATS = "schedulers"
ACTOR_NAME = "mlsys-scheduler"
NAMESPACE = "ml_system"


def slot_id(at: datetime) -> str:
    return f"{at.astimezone(UTC):%Y%m%dT%H%M%SZ}"


def slots_between(cron: str, after: datetime, until: datetime) -> list[datetime]:
    """Cron times in ``(after, until]``, in UTC."""
    it = croniter(cron, after.astimezone(UTC))
    out: list[datetime] = []
    while True:
        nxt = it.get_next(datetime)
        if nxt > until:
            return out
        out.append(nxt)


def next_slots(cron: str, after: datetime, n: int) -> list[datetime]:
    it = croniter(cron, after.astimezone(UTC))
    return [it.get_next(datetime) for _ in range(n)]


@dataclass(frozen=True)
class Job:
    """What a slot of a schedule or of a drift check does; ``kind`` is ``retrain``, ``materialize`` or ``check``."""

    name: str
    usecase: str
    cron: str
    kind: str
    catchup: str
    source: ScheduleConfig | DriftTriggerConfig


def jobs_of(config: PlatformConfig) -> list[Job]:
    jobs = [Job(s.name, s.usecase, s.cron, s.action, s.catchup, s) for s in config.pipelines.schedules if s.enabled]
    jobs += [Job(t.name, t.usecase, t.check_cron, "check", "skip", t) for t in config.pipelines.triggers]
    return jobs


def check_jobs(config: PlatformConfig) -> list[Job]:
    """Refuse, before anything runs, a schedule or trigger naming an unknown use case."""
    jobs = jobs_of(config)
    for job in jobs:
        try:
            load_usecase(job.usecase, config.usecases, check_all=False)
        except MLSystemError as exc:
            raise PipelineError(f"schedule '{job.name}': {exc}") from None
    return jobs


class SlotBook:
    """The durable state of one schedule's slots."""

    def __init__(self, storage: PipelineStorage, name: str) -> None:
        self.storage = storage
        self.prefix = f"{SCHEDULES}/{name}"

    def origin(self, now: datetime) -> datetime:
        """When the schedule was first seen: its slots count from then (created once, by whoever is first)."""
        key = f"{self.prefix}/origin.json"
        self.storage.create(key, json.dumps({"at": now.isoformat()}).encode())
        data = self.storage.read(key)
        assert data is not None
        return datetime.fromisoformat(json.loads(data)["at"])

    def _read(self, key: str) -> dict[str, Any] | None:
        data = self.storage.read(key)
        return None if data is None else json.loads(data)

    def slots(self) -> dict[str, dict[str, Any]]:
        """Per slot id: its claim, takeovers and done record."""
        found: dict[str, dict[str, Any]] = {}
        for key in self.storage.list(self.prefix):
            name = key.rsplit("/", 1)[-1]
            sid, _, kind = name.partition(".")
            if kind.endswith(".json") and kind != "json":
                found.setdefault(sid, {"takeovers": []})
                if kind == "claim.json":
                    found[sid]["claim"] = self._read(key)
                elif kind == "done.json":
                    found[sid]["done"] = self._read(key)
                elif kind.startswith("takeover-"):
                    found[sid]["takeovers"].append(self._read(key))
        return found

    def claim(self, sid: str, owner: str, action: str, run_id: str) -> bool:
        body = {"owner": owner, "action": action, "run_id": run_id, "at": datetime.now(UTC).isoformat()}
        return self.storage.create(f"{self.prefix}/{sid}.claim.json", json.dumps(body).encode())

    def take_over(self, sid: str, owner: str, n: int) -> bool:
        body = {"owner": owner, "at": datetime.now(UTC).isoformat()}
        return self.storage.create(f"{self.prefix}/{sid}.takeover-{n}.json", json.dumps(body).encode())

    def finish(self, sid: str, status: str, **extra: Any) -> None:
        body = {"status": status, "at": datetime.now(UTC).isoformat(), **extra}
        self.storage.write(f"{self.prefix}/{sid}.done.json", json.dumps(body, default=str).encode())


SlotRunner = Callable[[Job, datetime, str], dict[str, Any]]


class Scheduler:
    """One scheduler instance; ``tick(now)`` does everything due at ``now`` and returns what it did."""

    def __init__(self, config: PlatformConfig, run_slot: SlotRunner | None = None, owner: str = "") -> None:
        self.config = config
        self.jobs = check_jobs(config)
        self.storage = open_storage(config)
        self.owner = owner or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.run_slot = run_slot or self._run_slot
        self.lease = timedelta(seconds=config.pipelines.lease_s)

    # ---- liveness ----------------------------------------------------------------------------
    def heartbeat(self) -> None:
        body = json.dumps({"owner": self.owner, "at": datetime.now(UTC).isoformat()}).encode()
        self.storage.write(f"{HEARTBEATS}/{self.owner}.json", body)

    def _alive(self, owner: str, now: datetime) -> bool:
        if owner == self.owner:
            return True
        data = self.storage.read(f"{HEARTBEATS}/{owner}.json")
        if data is None:
            return False
        return now - datetime.fromisoformat(json.loads(data)["at"]) < self.lease

    # ---- ticks ---------------------------------------------------------------------------------
    def tick(self, now: datetime | None = None) -> list[dict[str, Any]]:
        now = now or datetime.now(UTC)
        self.heartbeat()
        events: list[dict[str, Any]] = []
        for job in self.jobs:
            events += self._tick_job(job, now)
        return events

    def _tick_job(self, job: Job, now: datetime) -> list[dict[str, Any]]:
        book = SlotBook(self.storage, job.name)
        known = book.slots()
        events = self._resume_abandoned(job, book, known, now)
        claimed = [sid for sid, s in known.items() if "claim" in s]
        cursor = max(
            [book.origin(now), *(datetime.strptime(sid, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC) for sid in claimed)]
        )
        due = slots_between(job.cron, cursor, now)
        for i, at in enumerate(due):
            sid = slot_id(at)
            skip = job.catchup == "skip" and i < len(due) - 1
            run_id = f"{sid}-{job.name}"
            if not book.claim(sid, self.owner, "skip" if skip else "run", run_id):
                continue  # another scheduler has it
            if skip:
                book.finish(sid, "skipped", reason="missed while no scheduler ran (catchup: skip)")
                events.append({"job": job.name, "slot": sid, "status": "skipped"})
                continue
            events.append(self._execute(job, book, at, run_id))
        return events

    def _resume_abandoned(
        self, job: Job, book: SlotBook, known: dict[str, dict[str, Any]], now: datetime
    ) -> list[dict[str, Any]]:
        events = []
        for sid, state in sorted(known.items()):
            claim = state.get("claim")
            if claim is None or "done" in state or claim["action"] != "run":
                continue
            holder = state["takeovers"][-1]["owner"] if state["takeovers"] else claim["owner"]
            if self._alive(holder, now):
                continue
            if not book.take_over(sid, self.owner, len(state["takeovers"]) + 1):
                continue
            at = datetime.strptime(sid, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
            events.append({**self._execute(job, book, at, claim["run_id"]), "resumed_from": holder})
        return events

    def _execute(self, job: Job, book: SlotBook, at: datetime, run_id: str) -> dict[str, Any]:
        sid = slot_id(at)
        try:
            outcome = self.run_slot(job, at, run_id)
        except MLSystemError as exc:
            outcome = {"status": "failed", "error": str(exc)}
        book.finish(
            sid,
            outcome.get("status", "succeeded"),
            run_id=run_id,
            **{k: v for k, v in outcome.items() if k != "status"},
        )
        return {"job": job.name, "slot": sid, "run_id": run_id, **outcome}

    # ---- what a slot does ----------------------------------------------------------------------
    def _run_slot(self, job: Job, at: datetime, run_id: str) -> dict[str, Any]:
        usecase = load_usecase(job.usecase, self.config.usecases, check_all=False)
        source = job.source
        if job.kind == "materialize":
            written = steps.materialize(self.config, end=at, incremental=True, usecase=usecase)
            return {"status": "succeeded", "written": written}
        if job.kind == "check":
            from ml_system.pipelines.triggers import check_drift

            assert isinstance(source, DriftTriggerConfig)
            verdict = check_drift(self.config, usecase, source, at)
            if not verdict.drifted:
                return {"status": "succeeded", "drift": verdict.to_dict()}
            params = RunParams(trials=source.trials, rounds=source.rounds)
            record = run_pipeline(
                self.config, usecase, params=params, trigger=f"drift:{job.name}: {verdict.reason}", run_id=run_id
            )
            return {"status": record.status, "drift": verdict.to_dict(), "error": record.error}
        assert isinstance(source, ScheduleConfig)
        params = RunParams(trials=source.trials, rounds=source.rounds)
        as_of = at if source.as_of == "slot" else None
        record = run_pipeline(
            self.config, usecase, params=params, as_of=as_of, trigger=f"schedule:{job.name}", run_id=run_id
        )
        return {"status": record.status, "error": record.error}

    def upcoming(self, now: datetime, n: int = 3) -> list[dict[str, Any]]:
        """Per schedule: the next slots and the newest recorded one (``mlsys pipeline schedule``)."""
        rows = []
        for job in self.jobs:
            known = SlotBook(self.storage, job.name).slots()
            last = max(known) if known else ""
            rows.append(
                {
                    "name": job.name,
                    "usecase": job.usecase,
                    "kind": job.kind,
                    "cron": job.cron,
                    "catchup": job.catchup,
                    "next": [s.isoformat() for s in next_slots(job.cron, now, n)],
                    "last_slot": last,
                    "last_status": known[last].get("done", {}).get("status", "running") if last else "",
                }
            )
        return rows


@ray.remote(num_cpus=0, max_concurrency=4)
class SchedulerActor:
    """The scheduler on the cluster: ticks and heartbeats in threads of a detached, named actor."""

    def __init__(self, config: PlatformConfig) -> None:
        self.scheduler = Scheduler(config)
        self.stopped = threading.Event()
        self.events: list[dict[str, Any]] = []
        self.errors: list[str] = []
        threading.Thread(target=self._beat, daemon=True).start()
        threading.Thread(target=self._loop, daemon=True).start()

    def _beat(self) -> None:
        while not self.stopped.wait(self.scheduler.lease.total_seconds() / 4):
            self.scheduler.heartbeat()

    def _loop(self) -> None:
        tick_s = self.scheduler.config.pipelines.tick_s
        while not self.stopped.is_set():
            try:
                self.events += self.scheduler.tick()
            except MLSystemError as exc:
                self.errors.append(str(exc))
            self.stopped.wait(tick_s)

    def status(self) -> dict[str, Any]:
        return {"owner": self.scheduler.owner, "events": self.events[-50:], "errors": self.errors[-10:]}

    def stop(self) -> None:
        self.stopped.set()


def start_scheduler(config: PlatformConfig, name: str = ACTOR_NAME) -> Any:
    """The detached scheduler actor (started unless it runs already); it outlives the caller."""
    check_jobs(config)
    return SchedulerActor.options(  # type: ignore[attr-defined]
        name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
    ).remote(config)


def stop_scheduler(name: str = ACTOR_NAME) -> bool:
    try:
        actor = ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return False
    ray.get(actor.stop.remote(), timeout=30)
    ray.kill(actor, no_restart=True)
    return True


def backfill(
    config: PlatformConfig,
    usecase_name: str,
    start: datetime,
    end: datetime,
    cron: str,
    params: RunParams,
    on_run: Callable[[history.RunRecord], None] | None = None,
) -> list[history.RunRecord]:
    """A run per slot in ``[start, end]``, each as of its slot; rerunning a range resumes it (same run ids)."""
    if start.tzinfo is None or end.tzinfo is None:
        raise PipelineError("backfill --start and --end need a UTC offset")
    if end < start:
        raise PipelineError(f"backfill: --end {end.isoformat()} is before --start {start.isoformat()}")
    if end > datetime.now(UTC):
        raise PipelineError(f"backfill: --end {end.isoformat()} is in the future")
    if not croniter.is_valid(cron):
        raise PipelineError(f"backfill: '{cron}' is not a valid cron expression")
    usecase = load_usecase(usecase_name, config.usecases)
    slots = slots_between(cron, start - timedelta(microseconds=1), end)
    if not slots:
        raise PipelineError(f"backfill: no slot of '{cron}' lies between {start.isoformat()} and {end.isoformat()}")
    records = []
    for at in slots:
        record = run_pipeline(
            config,
            usecase,
            params=params,
            as_of=at,
            trigger=f"backfill {slot_id(at)}",
            run_id=f"{slot_id(at)}-backfill-{usecase.name}",
        )
        records.append(record)
        if on_run:
            on_run(record)
    return records


def wait_for(predicate: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll until ``predicate`` holds; fail naming ``what`` after ``seconds``."""
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise PipelineError(f"timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(0.2)
