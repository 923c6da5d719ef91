"""The admission ledger's rules, without Ray: quotas, backfill, borrowing, give-back order, persistence."""

from __future__ import annotations

import itertools

import pytest

from ml_system.errors import AdmissionError, TeamError
from ml_system.teams.groups import parse_groups
from ml_system.teams.ledger import Ledger, Request
from ml_system.teams.resources import GIB, Resources

_ids = itertools.count()


def groups(**overrides: dict) -> object:
    teams = {
        "a": {"quota": {"cpu": 2}, "priority": 10},
        "b": {"quota": {"cpu": 2}, "priority": 5},
        "c": {"quota": {"cpu": 1, "gpu": 1}, "priority": 1, "can_lend": False},
    }
    for name, spec in overrides.items():
        teams[name] = {**teams.get(name, {}), **spec}
    return parse_groups({"give_back_s": 10, "teams": teams})


def req(team: str, cpu: float = 1, prio: int = 0, at: float = 0.0, kind: str = "task", gpu: float = 0) -> Request:
    return Request(f"{team}-{next(_ids)}", team, kind, Resources(cpu=cpu, gpu=gpu), priority=prio, submitted_at=at)


def running(ledger: Ledger, team: str) -> float:
    return ledger.own_use(team).cpu + ledger.borrowed(team).cpu


def test_a_team_runs_up_to_its_quota_and_the_rest_waits_while_the_other_team_also_waits() -> None:
    ledger = Ledger(groups())
    for team in ("a", "b"):
        for _ in range(4):
            ledger.submit(req(team))
    ledger.step(now=1.0)
    assert running(ledger, "a") == 2 and running(ledger, "b") == 2
    assert ledger.borrowed("a").is_zero() and ledger.borrowed("b").is_zero()  # nobody lends while it waits itself
    assert len(ledger.waiting) == 4


def test_idle_quota_is_borrowed_and_asked_back_lowest_priority_newest_first() -> None:
    ledger = Ledger(groups())
    older, newer = req("b", prio=0, at=1), req("b", prio=0, at=2)
    important = req("b", prio=9, at=3)
    for r in (req("b", at=0), req("b", at=0), older, newer):
        ledger.submit(r)
    ledger.step(now=1.0)  # b runs 2 own + 2 borrowed from a (a is idle; c does not lend)
    ledger.submit(important)
    ledger.step(now=1.5)
    assert ledger.borrowed("b").cpu == 2 and ledger.lent("a").cpu == 2
    assert ledger.leases[older.id].lender == "a" and ledger.leases[newer.id].lender == "a"

    ledger.submit(req("a", at=5))  # the owner wants one CPU back
    decisions = ledger.step(now=6.0)
    assert [x.id for x in decisions.reclaimed] == [newer.id]  # one CPU is enough; the newest borrowed goes
    assert ledger.leases[newer.id].reclaim_at == 6.0
    assert ledger.step(now=7.0).reclaimed == []  # asked once, not again every step
    ledger.release(newer.id, now=8.5)
    ledger.step(now=8.6)
    assert ledger.own_use("a").cpu == 1
    assert ledger.give_backs[-1].seconds == pytest.approx(2.5)


def test_a_lower_priority_borrower_gives_back_before_a_higher_one() -> None:
    ledger = Ledger(
        parse_groups(
            {
                "teams": {
                    "owner": {"quota": {"cpu": 2}, "priority": 0},
                    "high": {"quota": {"cpu": 1}, "priority": 9},
                    "low": {"quota": {"cpu": 1}, "priority": 1},
                }
            }
        )
    )
    for team in ("high", "high", "low", "low"):
        ledger.submit(req(team))
    ledger.step(now=0)
    assert ledger.borrowed("high").cpu == 1 and ledger.borrowed("low").cpu == 1
    ledger.submit(req("owner"))
    reclaimed = ledger.step(now=1).reclaimed
    assert [x.team for x in reclaimed] == ["low"]


def test_a_waiting_request_keeps_its_place_smaller_ones_backfill_beside_it() -> None:
    ledger = Ledger(groups(a={"can_borrow": False}))
    blocker = req("a", cpu=1)
    ledger.submit(blocker)
    ledger.step(now=0)
    big, small = req("a", cpu=2, prio=9), req("a", cpu=1, prio=1)
    ledger.submit(big)
    ledger.submit(small)
    ledger.step(now=1)
    assert big.id in ledger.waiting and small.id in ledger.waiting  # the free CPU is kept for `big`
    ledger.release(blocker.id, now=2)
    ledger.step(now=2)
    assert big.id in ledger.leases and small.id in ledger.waiting


def test_higher_priority_requests_are_granted_first_within_a_team() -> None:
    ledger = Ledger(groups(a={"can_borrow": False}))
    fill = [req("a"), req("a")]
    for r in fill:
        ledger.submit(r)
    ledger.step(now=0)
    queued = {p: req("a", prio=p, at=1) for p in (1, 5, 3, 9)}
    for r in queued.values():
        ledger.submit(r)
    order = []
    for i, r in enumerate(fill + [None] * 4):
        if r is not None:
            ledger.release(r.id, now=2 + i)
        granted = ledger.step(now=2 + i).granted
        order += [g.request.priority for g in granted]
        for g in granted:
            ledger.release(g.id, now=2 + i)
    assert order == [9, 5, 3, 1]


def test_serve_and_job_leases_never_borrow() -> None:
    ledger = Ledger(groups())
    ledger.submit(req("b", cpu=2, kind="serve"))
    ledger.submit(req("b", cpu=1, kind="job"))
    ledger.step(now=0)
    assert ledger.own_use("b").cpu == 2 and ledger.borrowed("b").is_zero() and len(ledger.waiting) == 1


def test_a_team_that_does_not_lend_keeps_its_idle_quota() -> None:
    ledger = Ledger(groups(a={"can_lend": False}))
    for _ in range(4):
        ledger.submit(req("b"))
    ledger.step(now=0)
    assert ledger.borrowed("b").is_zero()


def test_overdue_give_backs_are_reported_until_released() -> None:
    ledger = Ledger(groups())
    for _ in range(3):
        ledger.submit(req("b", kind="trial"))
    ledger.step(now=0)
    ledger.submit(req("a", cpu=2))
    (lease,) = ledger.step(now=1).reclaimed
    assert ledger.step(now=5).overdue == []
    assert [x.id for x in ledger.step(now=11.5).overdue] == [lease.id]


def test_every_dimension_must_fit() -> None:
    ledger = Ledger(groups())
    with pytest.raises(TeamError, match=r"team 'a'.*0\.5 GPU.*more than the team's quota"):
        ledger.submit(req("a", cpu=1, gpu=0.5))
    gpu_job = req("c", cpu=1, gpu=1)
    ledger.submit(gpu_job)
    ledger.step(now=0)
    assert gpu_job.id in ledger.leases


def test_requests_are_refused_when_they_could_never_run_or_are_malformed() -> None:
    ledger = Ledger(groups())
    with pytest.raises(TeamError, match="more than the team's quota"):
        ledger.submit(req("a", cpu=3))
    with pytest.raises(TeamError, match="unknown team 'zeta'"):
        ledger.submit(req("zeta"))
    with pytest.raises(AdmissionError, match="kind 'batch'"):
        ledger.submit(req("a", kind="batch"))
    r = req("a")
    ledger.submit(r)
    with pytest.raises(AdmissionError, match="already submitted"):
        ledger.submit(r)
    assert len(ledger.waiting) == 1


def test_the_ledger_survives_a_round_trip_through_its_document() -> None:
    ledger = Ledger(groups(a={"quota": {"cpu": 2, "memory_gb": 4}}))
    for _ in range(3):
        ledger.submit(req("b", cpu=1))
    ledger.submit(Request("a-mem", "a", "task", Resources(cpu=1, memory=2 * GIB), priority=3, group="exp-1"))
    ledger.step(now=1)
    ledger.bind(next(iter(ledger.leases)), {"pg": "ab12"})
    again = Ledger.from_dict(ledger.groups, ledger.as_dict())
    assert again.as_dict() == ledger.as_dict()
    assert again.usage() == ledger.usage()
