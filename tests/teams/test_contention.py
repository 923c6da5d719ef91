"""Two teams over-submitting on a 2-node cluster: quotas hold, idle quota is lent and given back, priority orders.

The scenario (``contention_scenario.py``) runs in its own process on its own
``ray.cluster_utils.Cluster``; a second cluster in the pytest process would clash with the
session's ``ray_cluster``. Timings are printed for the record and checked only against the
stated give-back bound, which is generous on purpose.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]
REPO = Path(__file__).resolve().parents[2]


def test_two_teams_share_a_two_node_cluster_within_their_quotas(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLSYS_HOME")}
    out = subprocess.run(
        [sys.executable, "-m", "tests.teams.contention_scenario", str(tmp_path / "teams")],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(report, indent=1))
    assert report["nodes"] == 2 and report["cluster_cpus"] == 4

    contention = report["contention"]
    assert contention["tasks"] == {"search": 4, "pricing": 4}
    assert contention["samples_both_waiting"] > 0  # the window was observed, not skipped
    assert contention["max_used_while_other_waits"] == {"search": 2.0, "pricing": 2.0}
    assert contention["teams_seen_in_tasks"] == ["pricing", "search"]  # each task ran with its team's label
    assert len(contention["nodes_used"]) == 2

    borrowing = report["borrowing"]
    assert borrowing["pricing_borrowed_cpu_peak"] == 2.0 and borrowing["pricing_max_used"] == 4.0
    assert borrowing["search_max_used"] <= 2.0
    assert borrowing["pricing_preemptions"] >= 1 and borrowing["pricing_completed"] == 4  # preempted, requeued, done
    assert borrowing["owner_completed"] == 2
    bound = report["give_back_bound_s"]
    assert borrowing["give_back_ledger_s"] and max(borrowing["give_back_ledger_s"]) <= bound
    assert max(borrowing["owner_placed_after_s"]) <= bound

    priority = report["priority"]
    assert priority["granted_order"] == sorted(priority["submitted_priorities"], reverse=True)
