"""The admission queue: one detached, named Ray actor per platform home, in front of every team's work.

Jobs, Tune trials, tasks and Serve replicas of a team ask it for a *lease* before they take any
resources; it answers from the ledger (``ledger.py``) and Ray's scheduler backs what it grants:
the work then runs in a placement group reserving exactly the lease (``work.py``), in the
placement group Tune makes for each trial, or with the job's entrypoint resources. Why
placement groups rather than custom resources or node labels is in ``docs/teams.md``.

Durability: every change is written to ``<state_dir>/admission.json`` before it is answered,
and the actor restarts itself (``max_restarts=-1``) from that file, so admitted and waiting work
survives a crash of the actor. Leases know what keeps them alive (a placement group, a Ray job);
every second the actor releases leases and drops requests whose holder or requester is gone, so
a killed driver cannot hold quota forever. A new cluster (another Ray session) finds the file of
the old one and drops its leases: their work died with that cluster.

The actor asks for no CPU and is pinned to the head node, where ``state_dir`` is; on a cluster
whose head may be replaced, put ``MLSYS_HOME`` on a disk that outlives it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray

from ml_system.errors import AdmissionError, MLSystemError, TeamError
from ml_system.teams.durable import read_json, write_json
from ml_system.teams.groups import ResourceGroups, parse_groups
from ml_system.teams.ledger import Ledger, Request
from ml_system.teams.resources import Resources

log = logging.getLogger(__name__)

NAMESPACE = "mlsys"
TICK_S = 0.2
REAP_EVERY_S = 1.0
BIND_TIMEOUT_S = 600.0
"""A granted lease not bound to a holder by then (a job that never started) is released."""


def actor_name(state_dir: str | Path) -> str:
    """One queue per state folder: several platform homes may share one cluster (tests do)."""
    digest = hashlib.sha256(str(Path(state_dir).resolve()).encode()).hexdigest()[:10]
    return f"mlsys_admission_{digest}"


def current_job_id() -> str:
    return ray.get_runtime_context().get_job_id()


def _session_name() -> str:
    node = ray._private.worker.global_worker.node  # type: ignore[attr-defined]
    return str(getattr(node, "session_name", "") or "")


def _dead_jobs() -> set[str]:
    # the GCS job table: the one place that knows whether a driver (a job) has exited
    return {j["JobID"] for j in ray._private.state.jobs() if j.get("IsDead")}  # type: ignore[attr-defined]


def _live_placement_groups() -> set[str]:
    table = ray.util.placement_group_table()
    return {pg_id for pg_id, info in table.items() if info.get("state") != "REMOVED"}


def _serve_applications() -> set[str] | None:
    """Applications Serve runs now; None when that cannot be told (then nothing is released for it)."""
    try:
        from ray import serve

        return set(serve.status().applications)
    except Exception:  # noqa: BLE001 - Serve not started, or its controller restarting
        return None


def _remove_placement_group(pg_id: str) -> None:
    from ray.util.placement_group import PlacementGroup

    with contextlib.suppress(Exception):  # already gone is what we want
        ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID(bytes.fromhex(pg_id))))


@ray.remote(num_cpus=0, max_restarts=-1, max_task_retries=-1, resources={"node:__internal_head__": 0.001})
class AdmissionQueue:
    """The actor. Methods answer plain dicts; refusals come back as ``{"error": ...}``."""

    def __init__(self, state_dir: str, groups: dict[str, Any]) -> None:
        self.path = Path(state_dir) / "admission.json"
        self.session = _session_name()
        stored = read_json(self.path, None)
        if stored is not None:
            self.groups = parse_groups(stored["groups"], f"state file {self.path}")
            self.ledger = Ledger.from_dict(self.groups, stored["ledger"])
            if stored.get("session") != self.session:
                # another cluster's leases: their work ended with it
                self.ledger.waiting.clear()
                self.ledger.leases.clear()
        else:
            self.groups = parse_groups(groups)
            self.ledger = Ledger(self.groups)
        self.grants: list[dict[str, Any]] = list(stored.get("grants", [])) if stored else []
        self.changed = asyncio.Condition()
        self.loop: asyncio.Task[None] | None = None
        self.last_reap = 0.0
        self._persist()

    # ---- the loop ------------------------------------------------------------------------------
    def _ensure_loop(self) -> None:
        if self.loop is None or self.loop.done():
            self.loop = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self._tick()
            except Exception:
                log.exception("admission step failed")
            await asyncio.sleep(TICK_S)

    async def _tick(self) -> None:
        now = time.time()
        dirty = False
        if now - self.last_reap >= REAP_EVERY_S:
            self.last_reap = now
            dirty = self._reap(now)
        decisions = self.ledger.step(now)
        for lease in decisions.granted:
            self.grants.append(
                {"id": lease.id, "team": lease.team, "label": lease.request.label, "at": now, "lender": lease.lender}
            )
        del self.grants[:-500]
        for lease in decisions.reclaimed + decisions.overdue:
            # tasks hold no state worth saving: their placement group goes at once (Ray kills what runs
            # in it) and they queue again; a trial pauses at its next result (``tune_admission.py``)
            pg = lease.holder.get("pg")
            if lease.request.kind == "task" and (pg or not lease.holder):
                if pg:
                    _remove_placement_group(pg)
                self.ledger.release(lease.id, now)
        if decisions.granted or decisions.reclaimed or dirty:
            self._persist()
            async with self.changed:
                self.changed.notify_all()

    def _reap(self, now: float) -> bool:
        """Release what nothing holds any more; drop requests of drivers that exited."""
        dead = _dead_jobs()
        holders = [x.holder for x in self.ledger.leases.values()]
        live_pgs = _live_placement_groups() if any("pg" in h for h in holders) else set()
        apps = _serve_applications() if any("serve" in h for h in holders) else None
        gone = [r.id for r in self.ledger.waiting.values() if r.owner_job in dead]
        for rid in gone:
            self.ledger.cancel(rid)
        released = []
        for lease in list(self.ledger.leases.values()):
            holder = lease.holder
            if (
                ("pg" in holder and holder["pg"] not in live_pgs)
                or ("job" in holder and holder["job"] in dead)
                or (not holder and lease.request.owner_job in dead)
                or ("submission" in holder and now - lease.granted_at > BIND_TIMEOUT_S)
                or ("serve" in holder and apps is not None and holder["serve"] not in apps)
            ):
                self.ledger.release(lease.id, now)
                released.append(lease.id)
        return bool(gone or released)

    def _persist(self) -> None:
        write_json(
            self.path,
            {
                "session": self.session,
                "groups": self.groups.document(),
                "ledger": self.ledger.as_dict(),
                "grants": self.grants,
            },
        )

    def _state(self, request_id: str) -> str:
        if request_id in self.ledger.waiting:
            return "waiting"
        lease = self.ledger.leases.get(request_id)
        if lease is None:
            return "released"
        return "reclaim" if lease.reclaim_at is not None else "granted"

    async def _changed(self) -> None:
        self._persist()
        async with self.changed:
            self.changed.notify_all()

    # ---- API -----------------------------------------------------------------------------------
    async def ping(self) -> str:
        self._ensure_loop()
        return self.session

    async def submit(self, request: dict[str, Any]) -> dict[str, Any]:
        self._ensure_loop()
        req = Request.from_dict(request)
        if req.id in self.ledger.waiting or req.id in self.ledger.leases:
            return {"id": req.id, "state": self._state(req.id)}  # a retried call after a restart
        try:
            self.ledger.submit(req)
        except MLSystemError as exc:
            return {"error": str(exc), "type": type(exc).__name__}
        await self._changed()
        return {"id": req.id, "state": "waiting"}

    async def wait(self, ids: list[str], timeout_s: float) -> dict[str, str]:
        """States of ``ids`` once any of them is no longer waiting, or after ``timeout_s``."""
        self._ensure_loop()
        deadline = time.monotonic() + timeout_s
        async with self.changed:
            while all(self._state(i) == "waiting" for i in ids):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), left)
        return {i: self._state(i) for i in ids}

    async def poll(self, ids: list[str]) -> dict[str, str]:
        self._ensure_loop()
        return {i: self._state(i) for i in ids}

    async def bind(self, request_id: str, holder: dict[str, str]) -> str:
        state = self._state(request_id)
        if state != "granted":
            if state == "reclaim":
                self.ledger.release(request_id, time.time())
                await self._changed()
            return state
        self.ledger.bind(request_id, holder)
        await self._changed()
        return "granted"

    async def release(self, request_id: str) -> None:
        if request_id in self.ledger.waiting:
            self.ledger.cancel(request_id)
        else:
            self.ledger.release(request_id, time.time())
        await self._changed()

    async def cancel_group(self, group: str) -> list[str]:
        """Drop every waiting request of ``group`` (a cancelled experiment); running work ends on its own."""
        ids = [r.id for r in self.ledger.waiting.values() if r.group == group]
        for rid in ids:
            self.ledger.cancel(rid)
        await self._changed()
        return ids

    async def status(self) -> dict[str, Any]:
        self._ensure_loop()
        usage = {
            team: {k: (v.as_dict() if isinstance(v, Resources) else v) for k, v in u.__dict__.items()}
            for team, u in self.ledger.usage().items()
        }
        return {
            "session": self.session,
            "groups": self.groups.document(),
            "usage": usage,
            "leases": [x.as_dict() for x in self.ledger.leases.values()],
            "waiting": [r.as_dict() for r in self.ledger.waiting.values()],
            "give_backs": [g.__dict__ for g in self.ledger.give_backs],
            "borrow_grants": dict(self.ledger.borrow_grants),
            "grants": list(self.grants),
        }

    async def apply_groups(self, groups: dict[str, Any], capacity: dict[str, float]) -> dict[str, Any]:
        try:
            parsed = parse_groups(groups)
            parsed.check_capacity(Resources.from_dict(capacity))
        except MLSystemError as exc:
            return {"error": str(exc), "type": type(exc).__name__}
        missing = {x.team for x in self.ledger.leases.values()} - set(parsed.teams)
        if missing:
            return {"error": f"teams {sorted(missing)} still hold leases; remove them once their work ends"}
        self.groups = parsed
        self.ledger.groups = parsed
        await self._changed()
        return {"teams": sorted(parsed.teams)}


def _answer(reply: dict[str, Any]) -> dict[str, Any]:
    if "error" in reply:
        kind = TeamError if reply.get("type") == "TeamError" else AdmissionError
        raise kind(reply["error"])
    return reply


@dataclass
class AdmissionClient:
    """What drivers, the CLI and Tune use to talk to the queue."""

    handle: Any
    groups: ResourceGroups

    @classmethod
    def connect(cls, state_dir: str | Path, groups: ResourceGroups) -> AdmissionClient:
        """The running queue of ``state_dir``, or a new one after checking the quotas against the cluster."""
        name = actor_name(state_dir)
        try:
            handle = ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:
            groups.check_capacity(Resources.from_ray(ray.cluster_resources()))
            handle = AdmissionQueue.options(  # type: ignore[attr-defined]
                name=name, namespace=NAMESPACE, lifetime="detached", get_if_exists=True
            ).remote(str(state_dir), groups.document())
        client = cls(handle, groups)
        ray.get(handle.ping.remote(), timeout=60)
        live = client.status()["groups"]
        client.groups = parse_groups(live)
        return client

    @classmethod
    def attach(cls, state_dir: str | Path) -> AdmissionClient:
        """The queue already running for ``state_dir`` (a job's driver, a Tune run inside a job)."""
        try:
            handle = ray.get_actor(actor_name(state_dir), namespace=NAMESPACE)
        except ValueError:
            raise AdmissionError(f"no admission queue runs for {state_dir}; `mlsys groups status` starts one") from None
        return cls(handle, parse_groups(ray.get(handle.status.remote(), timeout=60)["groups"]))

    def submit(
        self,
        team: str,
        kind: str,
        resources: Resources,
        *,
        priority: int = 0,
        label: str = "",
        group: str = "",
        submitted_at: float | None = None,
    ) -> str:
        request = Request(
            id=f"{team}-{uuid.uuid4().hex[:12]}",
            team=team,
            kind=kind,
            resources=resources,
            priority=priority,
            label=label,
            group=group,
            submitted_at=time.time() if submitted_at is None else submitted_at,
            owner_job=current_job_id(),
        )
        return str(_answer(ray.get(self.handle.submit.remote(request.as_dict()), timeout=60))["id"])

    def wait_granted(self, request_id: str, timeout_s: float | None = None) -> str:
        """Block until the request is granted (or released); ``AdmissionError`` past ``timeout_s``."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            step = 5.0 if deadline is None else max(0.0, min(5.0, deadline - time.monotonic()))
            state = ray.get(self.handle.wait.remote([request_id], step), timeout=step + 60)[request_id]
            if state != "waiting":
                return str(state)
            if deadline is not None and time.monotonic() >= deadline:
                raise AdmissionError(f"request '{request_id}' still waits for quota after {timeout_s:g} s")

    def poll(self, ids: list[str]) -> dict[str, str]:
        return dict(ray.get(self.handle.poll.remote(ids), timeout=60))

    def bind(self, request_id: str, holder: dict[str, str]) -> str:
        return str(ray.get(self.handle.bind.remote(request_id, holder), timeout=60))

    def release(self, request_id: str) -> None:
        ray.get(self.handle.release.remote(request_id), timeout=60)

    def cancel_group(self, group: str) -> list[str]:
        return list(ray.get(self.handle.cancel_group.remote(group), timeout=60))

    def status(self) -> dict[str, Any]:
        return dict(ray.get(self.handle.status.remote(), timeout=60))

    def apply(self, groups: ResourceGroups) -> list[str]:
        capacity = Resources.from_ray(ray.cluster_resources()).as_dict()
        reply = _answer(ray.get(self.handle.apply_groups.remote(groups.document(), capacity), timeout=60))
        self.groups = groups
        return list(reply["teams"])

    def shutdown(self) -> None:
        """Stop the actor (its state stays on disk; the next ``connect`` starts from it)."""
        ray.kill(self.handle, no_restart=True)
