"""The admission ledger: who waits, who runs on which quota, and what must be given back.

Pure bookkeeping without Ray, so every rule is tested in milliseconds; ``admission.py`` runs it
inside a Ray actor and carries out its decisions. The rules:

- A request waits in one queue, ordered by team priority, then request priority, then arrival.
  A request that cannot run yet keeps its place: what it needs is set aside from its team's
  free quota, so smaller requests behind it may run beside it (backfill) but never delay it.
- A request runs on its team's own quota when that has room (``lender`` None).
- A request that would fit its own quota if borrowers gave it back asks for it back: borrowed
  leases on that quota are marked for reclaim, lowest borrower priority first, then lowest
  request priority, newest first, until enough will come back. They must be released within
  the groups' ``give_back_s``; overdue ones are reported every step until they are.
- Otherwise, a request that may borrow runs on the idle quota of a team that lends and has
  nothing waiting itself (the one with most idle CPU), and is then preemptible. Serve replicas
  and job drivers never borrow: preempting them would fail requests or lose a whole job.
- A request larger than its team's quota is refused at once: it could never run.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from ml_system.errors import AdmissionError, TeamError
from ml_system.teams.groups import ResourceGroups
from ml_system.teams.resources import Resources

Kind = Literal["task", "trial", "job", "serve"]
KINDS: tuple[str, ...] = ("task", "trial", "job", "serve")
NEVER_BORROW: frozenset[str] = frozenset({"job", "serve"})


@dataclass
class Request:
    id: str
    team: str
    kind: str
    resources: Resources
    priority: int = 0
    label: str = ""
    group: str = ""
    """What the work belongs to (an experiment, a Tune run), for accounting and cancellation."""
    submitted_at: float = 0.0
    owner_job: str = ""
    """Ray job id of the driver that asked; a request outlives it by nothing (``admission.py``)."""
    may_borrow: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "resources": self.resources.as_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Request:
        return cls(**{**data, "resources": Resources.from_dict(data["resources"])})


@dataclass
class Lease:
    request: Request
    granted_at: float
    lender: str | None = None
    """Whose quota it runs on when borrowed; None on the team's own quota."""
    holder: dict[str, str] = field(default_factory=dict)
    """What keeps it alive: ``{"pg": id}``, ``{"job": id}``, ``{"submission": id}`` or ``{"serve": app}``."""
    reclaim_at: float | None = None

    @property
    def id(self) -> str:
        return self.request.id

    @property
    def team(self) -> str:
        return self.request.team

    @property
    def resources(self) -> Resources:
        return self.request.resources

    def as_dict(self) -> dict[str, Any]:
        return {
            "request": self.request.as_dict(),
            "granted_at": self.granted_at,
            "lender": self.lender,
            "holder": dict(self.holder),
            "reclaim_at": self.reclaim_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lease:
        return cls(**{**data, "request": Request.from_dict(data["request"])})


@dataclass
class GiveBack:
    lease: str
    borrower: str
    lender: str
    seconds: float


@dataclass
class Decisions:
    granted: list[Lease] = field(default_factory=list)
    reclaimed: list[Lease] = field(default_factory=list)
    """Newly asked to give their quota back."""
    overdue: list[Lease] = field(default_factory=list)
    """Asked longer than ``give_back_s`` ago and still held: to be released by force."""


@dataclass
class TeamUsage:
    quota: Resources
    own: Resources
    borrowed: Resources
    lent: Resources
    waiting: int
    waiting_resources: Resources
    reclaiming: int


class Ledger:
    def __init__(self, groups: ResourceGroups) -> None:
        self.groups = groups
        self.waiting: dict[str, Request] = {}
        self.leases: dict[str, Lease] = {}
        self.give_backs: list[GiveBack] = []
        self.borrow_grants: dict[str, int] = {}
        self._seq = itertools.count()
        self._order: dict[str, int] = {}

    # ---- requests ------------------------------------------------------------------------------
    def submit(self, request: Request) -> None:
        if request.kind not in KINDS:
            raise AdmissionError(f"request '{request.id}': kind '{request.kind}' is not one of {KINDS}")
        if request.id in self.waiting or request.id in self.leases:
            raise AdmissionError(f"request '{request.id}' was already submitted")
        quota = self.groups.quota(request.team)
        if not request.resources.fits(quota):
            raise TeamError(
                f"team '{request.team}': '{request.label or request.kind}' asks for {request.resources.describe()}, "
                f"more than the team's quota ({quota.describe()}); it could never run"
            )
        if request.kind in NEVER_BORROW:
            request.may_borrow = False
        self.waiting[request.id] = request
        self._order[request.id] = next(self._seq)

    def cancel(self, request_id: str) -> Lease | None:
        """Drop a waiting request, or release a lease; returns the lease if one was running."""
        self.waiting.pop(request_id, None)
        self._order.pop(request_id, None)
        return self.release(request_id, now=None)

    def release(self, request_id: str, now: float | None) -> Lease | None:
        lease = self.leases.pop(request_id, None)
        if lease is not None and lease.reclaim_at is not None and lease.lender is not None and now is not None:
            self.give_backs.append(GiveBack(lease.id, lease.team, lease.lender, now - lease.reclaim_at))
            del self.give_backs[:-200]
        return lease

    def bind(self, request_id: str, holder: dict[str, str]) -> Lease:
        lease = self.leases.get(request_id)
        if lease is None:
            raise AdmissionError(f"lease '{request_id}' is not held (released, preempted or never granted)")
        lease.holder = dict(holder)
        return lease

    # ---- accounting ----------------------------------------------------------------------------
    def own_use(self, team: str) -> Resources:
        return _total(x.resources for x in self.leases.values() if x.team == team and x.lender is None)

    def borrowed(self, team: str) -> Resources:
        return _total(x.resources for x in self.leases.values() if x.team == team and x.lender is not None)

    def lent(self, team: str) -> Resources:
        return _total(x.resources for x in self.leases.values() if x.lender == team)

    def usage(self) -> dict[str, TeamUsage]:
        out = {}
        for name in self.groups.teams:
            waiting = [r for r in self.waiting.values() if r.team == name]
            out[name] = TeamUsage(
                quota=self.groups.quota(name),
                own=self.own_use(name),
                borrowed=self.borrowed(name),
                lent=self.lent(name),
                waiting=len(waiting),
                waiting_resources=_total(r.resources for r in waiting),
                reclaiming=sum(1 for lease in self.leases.values() if lease.lender == name and lease.reclaim_at),
            )
        return out

    # ---- decisions -----------------------------------------------------------------------------
    def _queue(self) -> list[Request]:
        def key(r: Request) -> tuple[int, int, float, int]:
            return (-self.groups.teams[r.team].priority, -r.priority, r.submitted_at, self._order.get(r.id, 0))

        return sorted((r for r in self.waiting.values() if r.team in self.groups.teams), key=key)

    def _reclaim_candidates(self, lender: str) -> list[Lease]:
        mine = [lease for lease in self.leases.values() if lease.lender == lender and lease.reclaim_at is None]
        return sorted(
            mine,
            key=lambda lease: (
                self.groups.teams[lease.team].priority if lease.team in self.groups.teams else -1,
                lease.request.priority,
                -lease.granted_at,
                -lease.request.submitted_at,
            ),
        )

    def step(self, now: float) -> Decisions:
        """Grant what fits, ask borrowers to give back what owners need, report overdue give-backs."""
        decisions = Decisions()
        teams = self.groups.teams
        free = {t: self.groups.quota(t) - self.own_use(t) - self.lent(t) for t in teams}
        lent = {t: self.lent(t) for t in teams}
        coming = {
            t: _total(x.resources for x in self.leases.values() if x.lender == t and x.reclaim_at is not None)
            for t in teams
        }
        demanding = {r.team for r in self.waiting.values()}
        for req in self._queue():
            t, need = req.team, req.resources
            if need.fits(free[t]):
                decisions.granted.append(self._grant(req, now, None))
                free[t] = free[t] - need
                continue
            if need.fits(free[t] + lent[t]):
                # fits the team's own quota once borrowers give it back
                deficit = (need - free[t] - coming[t]).positive_part()
                for lease in self._reclaim_candidates(t) if not deficit.is_zero() else []:
                    if not lease.resources.overlaps(deficit):
                        continue
                    lease.reclaim_at = now
                    decisions.reclaimed.append(lease)
                    coming[t] = coming[t] + lease.resources
                    deficit = (deficit - lease.resources).positive_part()
                    if deficit.is_zero():
                        break
                free[t] = free[t] - need
                continue
            lender = self._lender_for(req, free, demanding) if req.may_borrow and teams[t].can_borrow else None
            if lender is not None:
                decisions.granted.append(self._grant(req, now, lender))
                free[lender] = free[lender] - need
                lent[lender] = lent[lender] + need
                self.borrow_grants[t] = self.borrow_grants.get(t, 0) + 1
                continue
            free[t] = free[t] - need  # keep its place: nothing behind it takes what it waits for
        limit = self.groups.give_back_s
        decisions.overdue = [x for x in self.leases.values() if x.reclaim_at is not None and now - x.reclaim_at > limit]
        return decisions

    def _lender_for(self, req: Request, free: dict[str, Resources], demanding: set[str]) -> str | None:
        lenders = [
            t
            for t, spec in self.groups.teams.items()
            if t != req.team and spec.can_lend and t not in demanding and req.resources.fits(free[t])
        ]
        return max(lenders, key=lambda t: (free[t].cpu, free[t].gpu), default=None)

    def _grant(self, req: Request, now: float, lender: str | None) -> Lease:
        del self.waiting[req.id]
        self._order.pop(req.id, None)
        lease = Lease(request=req, granted_at=now, lender=lender)
        self.leases[req.id] = lease
        return lease

    # ---- persistence ---------------------------------------------------------------------------
    def as_dict(self) -> dict[str, Any]:
        return {
            "waiting": [r.as_dict() for r in self._queue_in_arrival_order()],
            "leases": [lease.as_dict() for lease in self.leases.values()],
            "give_backs": [g.__dict__ for g in self.give_backs],
            "borrow_grants": dict(self.borrow_grants),
        }

    def _queue_in_arrival_order(self) -> list[Request]:
        return sorted(self.waiting.values(), key=lambda r: self._order.get(r.id, 0))

    @classmethod
    def from_dict(cls, groups: ResourceGroups, data: dict[str, Any]) -> Ledger:
        ledger = cls(groups)
        for row in data.get("waiting", []):
            req = Request.from_dict(row)
            ledger.waiting[req.id] = req
            ledger._order[req.id] = next(ledger._seq)
        for row in data.get("leases", []):
            lease = Lease.from_dict(row)
            ledger.leases[lease.id] = lease
        ledger.give_backs = [GiveBack(**g) for g in data.get("give_backs", [])]
        ledger.borrow_grants = dict(data.get("borrow_grants", {}))
        return ledger


def _total(amounts: Iterable[Resources]) -> Resources:
    total = Resources()
    for amount in amounts:
        total = total + amount
    return total
