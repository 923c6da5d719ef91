"""CPU seconds per process from ``/proc``, grouped by role, for the serving benchmark's profile.

py-spy and perf are not on every machine; ``/proc/<pid>/stat`` is. A snapshot of utime+stime
of every process below a root (and any extra pids) before and after a measured run, divided by
the requests that run answered, says where a request's CPU went: the replica, HAProxy, or Ray's
own processes (GCS, raylet, dashboard, agents, Serve controller).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

TICKS = os.sysconf("SC_CLK_TCK")

# first match wins; matched against the process's command line
ROLES = [
    ("ServeReplica", "replica"),
    ("haproxy", "haproxy"),
    ("ServeController", "serve controller"),
    ("ProxyActor", "serve proxy actor"),
    ("gcs_server", "gcs"),
    ("raylet", "raylet"),
    ("dashboard/agent.py", "dashboard agent"),
    ("runtime_env/agent", "runtime env agent"),
    ("dashboard.py", "dashboard"),
    ("dashboard/", "dashboard (subprocess)"),
    ("log_monitor", "log monitor"),
    ("monitor.py", "monitor"),
    ("uvicorn", "uvicorn"),
    ("multiprocessing", "spawned child (uvicorn worker, dashboard module)"),
    ("ray::", "ray worker (idle/other)"),
    ("default_worker", "ray worker (idle/other)"),
]


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    role: str
    cpu_s: float


def _read(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode(errors="replace")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    rest = stat[stat.rindex(")") + 2 :].split()
    ppid = int(rest[1])
    cpu = (int(rest[11]) + int(rest[12])) / TICKS
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    role = next((name for key, name in ROLES if key in cmd or key in comm), comm or "?")
    return Proc(pid, ppid, role, cpu)


def snapshot(roots: Iterable[int], extra: Iterable[int] = ()) -> dict[int, Proc]:
    """Every live process below ``roots`` (the roots included) and the ``extra`` pids."""
    procs = {p.pid: p for p in (_read(int(d)) for d in os.listdir("/proc") if d.isdigit()) if p is not None}
    children: dict[int, list[int]] = {}
    for p in procs.values():
        children.setdefault(p.ppid, []).append(p.pid)
    keep: dict[int, Proc] = {}
    todo = [r for r in roots if r in procs] + [e for e in extra if e in procs]
    while todo:
        pid = todo.pop()
        if pid in keep:
            continue
        keep[pid] = procs[pid]
        todo.extend(children.get(pid, []))
    return keep


def by_role(before: dict[int, Proc], after: dict[int, Proc]) -> dict[str, float]:
    """CPU seconds spent between two snapshots, per role (processes born in between count from 0)."""
    out: dict[str, float] = {}
    for pid, proc in after.items():
        spent = proc.cpu_s - (before[pid].cpu_s if pid in before else 0.0)
        out[proc.role] = out.get(proc.role, 0.0) + max(spent, 0.0)
    return out


def pids_matching(text: str) -> list[int]:
    """Pids whose command line contains ``text`` (a private path: the processes of one benchmark run only)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                if text in f.read().replace(b"\0", b" ").decode(errors="replace"):
                    out.append(int(d))
        except OSError:
            continue
    return out


def machine_busy_s() -> float:
    """CPU seconds the whole machine was busy since boot (other users of the machine included)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / TICKS
