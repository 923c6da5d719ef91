"""Schedules fire each slot exactly once: across two schedulers, across a scheduler's death and restart."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import ray

from ml_system.pipelines import history
from ml_system.pipelines.scheduler import (
    ACTOR_NAME,
    NAMESPACE,
    Job,
    Scheduler,
    SlotBook,
    slot_id,
    slots_between,
    start_scheduler,
    stop_scheduler,
    wait_for,
)
from ml_system.pipelines.storage import open_storage
from tests.pipelines.conftest import TinyRun, copy_home, tiny_config

T0 = datetime(2026, 1, 1, tzinfo=UTC)
HOURLY = {"name": "hourly", "usecase": "tiny", "cron": "0 * * * *"}


class Recorder:
    """Stands in for what a slot does (the slot machinery is the part under test here)."""

    def __init__(self) -> None:
        self.fired: list[tuple[str, str, str]] = []

    def __call__(self, job: Job, at: datetime, run_id: str) -> dict[str, Any]:
        self.fired.append((job.name, slot_id(at), run_id))
        return {"status": "succeeded"}


def test_two_schedulers_never_fire_one_slot_twice_and_miss_none(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, schedules=[{**HOURLY, "catchup": "all"}])
    runs = Recorder()
    a, b = Scheduler(config, runs, owner="a"), Scheduler(config, runs, owner="b")
    a.tick(T0)  # first sight: the schedule counts from now
    for hours in (1, 2, 5):
        now = T0 + timedelta(hours=hours, minutes=1)
        b.tick(now)
        a.tick(now)
    slots = [s for _, s, _ in runs.fired]
    assert slots == [slot_id(T0 + timedelta(hours=h)) for h in range(1, 6)]
    book = SlotBook(open_storage(config), "hourly").slots()
    assert all(state["done"]["status"] == "succeeded" for state in book.values())


def test_slots_missed_while_down_are_skipped_by_the_skip_policy(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, schedules=[{**HOURLY, "catchup": "skip"}])
    runs = Recorder()
    scheduler = Scheduler(config, runs, owner="a")
    scheduler.tick(T0)
    scheduler.tick(T0 + timedelta(hours=4, minutes=1))
    assert [s for _, s, _ in runs.fired] == [slot_id(T0 + timedelta(hours=4))]
    book = SlotBook(open_storage(config), "hourly").slots()
    skipped = sorted(sid for sid, state in book.items() if state["done"]["status"] == "skipped")
    assert skipped == [slot_id(T0 + timedelta(hours=h)) for h in (1, 2, 3)]


def test_a_slot_whose_scheduler_died_is_taken_over_once_and_resumed_under_its_run_id(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, schedules=[HOURLY])
    storage = open_storage(config)
    slot = T0 + timedelta(hours=1)
    book = SlotBook(storage, "hourly")
    book.origin(T0)
    assert book.claim(slot_id(slot), "dead", "run", "the-run-id")  # claimed, then its scheduler died
    runs = Recorder()
    b, c = Scheduler(config, runs, owner="b"), Scheduler(config, runs, owner="c")
    b.tick(slot + timedelta(minutes=1))
    c.tick(slot + timedelta(minutes=1))
    assert runs.fired == [("hourly", slot_id(slot), "the-run-id")]
    state = book.slots()[slot_id(slot)]
    assert [t["owner"] for t in state["takeovers"]] == ["b"] and state["done"]["status"] == "succeeded"


def test_a_live_claim_is_left_to_its_scheduler(tmp_path: Path) -> None:
    config = tiny_config(tmp_path, schedules=[HOURLY])
    slot = T0 + timedelta(hours=1)
    busy = Scheduler(config, Recorder(), owner="busy")
    busy.heartbeat()
    book = SlotBook(open_storage(config), "hourly")
    book.origin(T0)
    book.claim(slot_id(slot), "busy", "run", "r")
    runs = Recorder()
    Scheduler(config, runs, owner="other").tick(slot + timedelta(minutes=1))
    assert runs.fired == []


@pytest.mark.integration
@pytest.mark.slow
def test_the_scheduler_actor_fires_every_slot_once_across_a_kill_and_a_restart(
    tiny_run: TinyRun, tmp_path: Path
) -> None:
    """Every 2 s a retraining of the tiny use case (steps cached: a few tasks each); killed, restarted."""
    home = copy_home(tiny_run.config, tmp_path / "mlsys")
    schedule = {"name": "every2s", "usecase": "tiny", "cron": "* * * * * */2", "catchup": "all", "as_of": "latest"}
    config = tiny_config(Path(home.home), schedules=[{**schedule, "trials": 2, "rounds": 20}])
    storage = open_storage(config)
    book = SlotBook(storage, "every2s")

    def finished() -> int:
        return sum(1 for s in book.slots().values() if "done" in s)

    actor = start_scheduler(config)
    try:
        wait_for(lambda: finished() >= 2, 90, "two slots before the kill")
        ray.kill(actor, no_restart=True)
        killed_at = datetime.now(UTC)
        wait_for(lambda: datetime.now(UTC) > killed_at + timedelta(seconds=3), 10, "slots to be missed")
        done_before = finished()
        actor = start_scheduler(config)
        wait_for(lambda: finished() >= done_before + 3, 120, "three more slots after the restart")
    finally:
        stop_scheduler()
    with pytest.raises(ValueError):
        ray.get_actor(ACTOR_NAME, namespace=NAMESPACE)
    slots = book.slots()
    claimed = sorted(sid for sid, s in slots.items() if "claim" in s)
    first = datetime.strptime(claimed[0], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    last = datetime.strptime(claimed[-1], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    expected = [slot_id(first), *(slot_id(t) for t in slots_between("* * * * * */2", first, last))]
    assert claimed == expected  # none skipped, including those due while no scheduler ran
    for sid in claimed:
        if "done" not in slots[sid]:
            continue  # the last one may still be running when the scheduler was stopped
        assert slots[sid]["done"]["status"] == "succeeded", slots[sid]
        record = history.load(storage, slots[sid]["claim"]["run_id"])  # one run id, one record per slot
        assert record.status == "succeeded" and record.trigger == "schedule:every2s"
    owners = {s["claim"]["owner"] for s in slots.values()}
    runs = [slots[sid]["claim"]["run_id"] for sid in claimed]
    print(f"slots claimed {len(claimed)}, run ids {len(set(runs))}, done {finished()}, schedulers {len(owners)}")
    assert len(owners) == 2  # the first scheduler's slots, then the restarted one's
