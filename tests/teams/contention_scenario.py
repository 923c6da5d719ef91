"""Two teams on a 2-node ``ray.cluster_utils.Cluster``: contention, borrowing, give-back, priority order.

Run by ``test_contention.py`` in its own process (a second cluster must not share the pytest
process with the session's), it prints one JSON document on its last line. Usage is sampled
every 50 ms from Ray itself: the placement groups in state CREATED whose names carry the team
(``mlsys:<team>:...``), i.e. what Ray has reserved for each team, beside the admission queue's
view of who waits.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

import ray
from ray.cluster_utils import Cluster

from ml_system.teams.admission import AdmissionClient
from ml_system.teams.groups import parse_groups
from ml_system.teams.resources import Resources
from ml_system.teams.work import TeamSession

GIVE_BACK_S = 30.0
GROUPS = {
    "give_back_s": GIVE_BACK_S,
    "teams": {
        "search": {"quota": {"cpu": 2}, "priority": 10},
        "pricing": {"quota": {"cpu": 2}, "priority": 5},
    },
}
QUOTA = {"search": 2.0, "pricing": 2.0}


@ray.remote
def hold(seconds: float, tag: str) -> dict[str, Any]:
    import os

    start = time.time()
    time.sleep(seconds)
    return {"tag": tag, "team": os.environ.get("MLSYS_TEAM"), "node": ray.get_runtime_context().get_node_id()[:8],
            "start": start, "end": time.time()}  # fmt: skip


class Sampler(threading.Thread):
    """Per-team CPUs that Ray holds in the teams' placement groups, and who waits in the queue."""

    def __init__(self, client: AdmissionClient) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.samples: list[dict[str, Any]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            status = self.client.status()
            waiting = {t: u["waiting"] for t, u in status["usage"].items()}
            used = dict.fromkeys(QUOTA, 0.0)
            for info in ray.util.placement_group_table().values():
                parts = (info.get("name") or "").split(":")
                if info.get("state") == "CREATED" and parts[0] == "mlsys" and parts[1] in used:
                    used[parts[1]] += sum(b.get("CPU", 0.0) for b in info["bundles"].values())
            self.samples.append({"t": time.time(), "used": used, "waiting": waiting})
            self.halt.wait(0.05)

    def window(self, start: float, end: float) -> list[dict[str, Any]]:
        return [s for s in self.samples if start <= s["t"] <= end]


def phase_contention(sessions: dict[str, TeamSession], sampler: Sampler) -> dict[str, Any]:
    """Both teams submit twice their quota at once: each runs at most its quota while the other waits."""
    start = time.time()
    futures = {t: [s.submit(hold, 1.5, f"{t}-c{i}", resources=Resources(cpu=1), label=f"c{i}") for i in range(4)]
               for t, s in sessions.items()}  # fmt: skip
    results = {t: [f.result(timeout=240) for f in fs] for t, fs in futures.items()}
    end = time.time()
    both_waiting = [s for s in sampler.window(start, end) if all(s["waiting"][t] > 0 for t in QUOTA)]
    return {
        "seconds": round(end - start, 2),
        "tasks": {t: len(r) for t, r in results.items()},
        "samples_both_waiting": len(both_waiting),
        "max_used_while_other_waits": {
            t: max([s["used"][t] for s in sampler.window(start, end) if s["waiting"][other] > 0] or [0.0])
            for t, other in (("search", "pricing"), ("pricing", "search"))
        },
        "teams_seen_in_tasks": sorted({r.value["team"] for rs in results.values() for r in rs}),
        "nodes_used": sorted({r.value["node"] for rs in results.values() for r in rs}),
        "preemptions": sum(r.preemptions for rs in results.values() for r in rs),
    }


def phase_borrow_and_give_back(sessions: dict[str, TeamSession], sampler: Sampler) -> dict[str, Any]:
    """Search is idle: pricing borrows it; then search asks, and gets its quota back."""
    client = sessions["search"].client
    start = time.time()
    pricing = [sessions["pricing"].submit(hold, 4.0, f"pricing-b{i}", resources=Resources(cpu=1), label=f"b{i}")
               for i in range(4)]  # fmt: skip
    deadline = time.monotonic() + 120
    while client.status()["usage"]["pricing"]["borrowed"]["cpu"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    borrowed_peak = client.status()["usage"]["pricing"]["borrowed"]["cpu"]
    time.sleep(0.5)  # let the borrowed tasks run for a moment
    asked_at = time.time()
    started: list[float] = []

    def placed(_lease: str) -> None:
        started.append(time.time())

    owner = [
        sessions["search"].submit(hold, 1.0, f"search-o{i}", resources=Resources(cpu=1), label=f"o{i}", on_start=placed)
        for i in range(2)
    ]
    owner_results = [f.result(timeout=240) for f in owner]
    pricing_results = [f.result(timeout=240) for f in pricing]
    end = time.time()
    give_backs = [g for g in client.status()["give_backs"] if g["borrower"] == "pricing" and g["lender"] == "search"]
    window = sampler.window(start, end)
    return {
        "pricing_borrowed_cpu_peak": borrowed_peak,
        "pricing_max_used": max(s["used"]["pricing"] for s in window),
        "owner_placed_after_s": [round(t - asked_at, 2) for t in sorted(started)],
        "give_back_ledger_s": [round(g["seconds"], 3) for g in give_backs],
        "pricing_preemptions": sum(r.preemptions for r in pricing_results),
        "pricing_completed": len(pricing_results),
        "owner_completed": len(owner_results),
        "search_max_used": max(s["used"]["search"] for s in window),
    }


def phase_priority_order(sessions: dict[str, TeamSession]) -> dict[str, Any]:
    """Search's quota is full and pricing has none idle: search's queue runs by priority."""
    client = sessions["search"].client
    pricing_busy = [sessions["pricing"].submit(hold, 6.0, f"pricing-p{i}", resources=Resources(cpu=1), label=f"p{i}")
                    for i in range(2)]  # fmt: skip
    blockers = [sessions["search"].submit(hold, 2.0, f"search-blk{i}", resources=Resources(cpu=1), label=f"blk{i}")
                for i in range(2)]  # fmt: skip
    deadline = time.monotonic() + 120
    while client.status()["usage"]["search"]["own"]["cpu"] < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    submitted = [1, 5, 3, 9]
    queued = [
        sessions["search"].submit(hold, 0.3, f"prio{p}", resources=Resources(cpu=1), priority=p, label=f"prio{p}")
        for p in submitted
    ]
    for f in queued + blockers + pricing_busy:
        f.result(timeout=240)
    grants = [g for g in client.status()["grants"] if g["team"] == "search" and g["label"].startswith("prio")]
    return {"submitted_priorities": submitted, "granted_order": [int(g["label"][4:]) for g in grants]}


def main(state_dir: str) -> None:
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "object_store_memory": 150_000_000, "include_dashboard": False},
    )
    cluster.add_node(num_cpus=2, object_store_memory=150_000_000)
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        cluster.wait_for_nodes()
        groups = parse_groups(GROUPS)
        client = AdmissionClient.connect(state_dir, groups)
        sessions = {t: TeamSession(client, t) for t in QUOTA}
        sampler = Sampler(client)
        sampler.start()
        report = {
            "nodes": len(ray.nodes()),
            "cluster_cpus": ray.cluster_resources().get("CPU"),
            "quota": QUOTA,
            "give_back_bound_s": GIVE_BACK_S,
            "contention": phase_contention(sessions, sampler),
            "borrowing": phase_borrow_and_give_back(sessions, sampler),
            "priority": phase_priority_order(sessions),
        }
        sampler.halt.set()
        sampler.join(timeout=10)
        report["samples"] = len(sampler.samples)
        report["max_used"] = {t: max(s["used"][t] for s in sampler.samples) for t in QUOTA}
        for s in sessions.values():
            s.close()
        client.shutdown()
        print(json.dumps(report), flush=True)
    finally:
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    main(str(Path(sys.argv[1]).resolve()))
