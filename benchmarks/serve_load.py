"""Serving under load: the app as the README starts it, against bare uvicorn running the same handler.

Setups, driven by ``wrk`` (1 thread, 32 connections, one real flight per request, chosen at
random from a mix of flights):

- ``bare1``: ``uvicorn benchmarks.bare_app:app --workers 1`` (no Ray; the same body parsing,
  ``Scorer`` and response code as the app, the shipped ``user_config`` caches included);
- ``bareN``: the same with one worker per core (what a user running uvicorn would pick);
- ``ml_system``: ``ray start --head`` with the dashboard, the HAProxy ingress and Serve's
  throughput mode, then ``serve deploy`` of ``serve_configs/flight_delay.yaml`` as shipped
  (autoscaling from ``min_replicas``). It is measured twice: ``warm`` right after a stated warm-up
  under load, and ``steady`` after the autoscaler has had ``--settle`` more seconds of load.

Two request mixes: ``upcoming`` (the flights after the online store's cut-off, 2013-12-30 17:00
New York time, to the end of the data on 12-31: what clients would ask about) and ``december``
(flights drawn from all of December, most of them already departed, whose features are older).

Setups alternate round by round (the machine may be shared; drift hits all of them), each
started afresh per round. ``--profile`` also prints CPU milliseconds per request by process
(``/proc`` accounting: replica, HAProxy, each of Ray's own processes, wrk).

    python benchmarks/serve_load.py --home ~/.mlsys [--quick] [--rounds N] [--profile]

The last line is ``RESULT serve_load rps=... p99_ms=... ratio_vs_best_bare=...
p99_ratio_vs_best_bare=...`` for the steady state on the upcoming mix; the better bare setup is
the one with more req/s, and ``p99_ratio_vs_best_bare`` compares against that setup's p99.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import proc_cpu  # noqa: E402
from ml_system.serving.loadgen import lua_script, read_report  # noqa: E402
from ml_system.serving.local_cluster import SHIPPED, ServeCluster, shipped_user_config  # noqa: E402

CONNECTIONS = 32
MIX_SIZE = 500


@dataclass
class Run:
    setup: str
    mix: str
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    replicas: int = 0
    cpu_ms: dict[str, float] = field(default_factory=dict)
    scale_up_s: float = float("nan")


# ---- load ---------------------------------------------------------------------------------------
def wrk(url: str, script: Path, duration_s: int) -> dict[str, float]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{duration_s}s", "--timeout", "10s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return read_report(out)


def measure(setup: str, mix: str, url: str, script: Path, duration_s: int, roots: list[int],
            extra: list[int], replicas: int = 0) -> Run:  # fmt: skip
    """One wrk run, with the CPU every process of the setup (and wrk) spent on it."""
    before, wrk_before, busy0 = proc_cpu.snapshot(roots, extra), _children_cpu(), proc_cpu.machine_busy_s()
    out = wrk(url, script, duration_s)
    after, wrk_cpu, busy = proc_cpu.snapshot(roots, extra), _children_cpu() - wrk_before, proc_cpu.machine_busy_s()
    n = max(int(out["requests"]), 1)
    cpu = {role: 1000 * s / n for role, s in proc_cpu.by_role(before, after).items()}
    cpu["wrk"] = 1000 * wrk_cpu / n
    cpu["(machine, all users)"] = 1000 * (busy - busy0) / n
    return Run(setup, mix, out["rps"], out["p50_ms"], out["p99_ms"], int(out["failed"]), n, replicas, cpu)


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# ---- setups -------------------------------------------------------------------------------------
def serve_config(caches: str, folder: Path) -> Path:
    """The shipped Serve config, or a copy of it with the feature and prediction caches off."""
    if caches == "shipped":
        return SHIPPED
    doc = yaml.safe_load(SHIPPED.read_text())
    doc["applications"][0]["deployments"][0]["user_config"] |= {"feature_cache_ttl_s": 0, "prediction_cache_ttl_s": 0}
    path = folder / "flight_delay_no_caches.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def wait_http(url: str, timeout_s: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not become healthy")


def start_bare(home: str, workers: int, user_config: dict[str, Any]) -> tuple[subprocess.Popen[bytes], str]:
    from ml_system.serving.deploy import free_port

    port = free_port()
    env = {
        **os.environ,
        "MLSYS_HOME": home,
        "PYTHONPATH": str(ROOT),
        "BARE_USER_CONFIG": json.dumps(user_config),
    }
    cmd = [sys.executable, "-m", "uvicorn", "benchmarks.bare_app:app", "--port", str(port), "--workers", str(workers),
           "--log-level", "warning", "--loop", "uvloop", "--http", "httptools", "--no-access-log"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    wait_http(url)
    return proc, url


def stop_bare(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


def bare_round(
    name: str, workers: int, home: str, scripts: dict[str, Path], warmup_s: int, duration_s: int, config: Path
) -> list[Run]:
    proc, url = start_bare(home, workers, shipped_user_config(config))
    runs = []
    try:
        for mix, script in scripts.items():
            wrk(url, script, warmup_s)
            runs.append(measure(name, mix, url, script, duration_s, [proc.pid], []))
            report(runs[-1])
    finally:
        stop_bare(proc)
    return runs


def serve_round(
    home: str,
    scripts: dict[str, Path],
    warmup_s: int,
    duration_s: int,
    settle_s: int,
    config: Path,
    profile_dir: str | None = None,
) -> list[Run]:
    extra_env = {"MLSYS_SERVE_PROFILE_DIR": profile_dir} if profile_dir else None
    cluster = ServeCluster(home, extra_env=extra_env, config=config)
    runs = []
    try:
        cluster.start()
        cluster.deploy()
        upcoming = scripts["upcoming"]
        watch = ScaleWatch(cluster)
        wrk(cluster.url, upcoming, warmup_s)  # from min_replicas: the autoscaler sees the load from here on
        roots = [cluster.head.pid] if cluster.head else []
        runs.append(measure("ml_system warm", "upcoming", cluster.url, upcoming, duration_s, roots,
                            cluster.haproxy_pids(), len(cluster.replica_pids())))  # fmt: skip
        report(runs[-1])
        wrk(cluster.url, upcoming, settle_s)
        for mix, script in scripts.items():
            runs.append(measure("ml_system steady", mix, cluster.url, script, duration_s, roots,
                                cluster.haproxy_pids(), len(cluster.replica_pids())))  # fmt: skip
            report(runs[-1])
        watch.stop()
        print(f"  scale-up under load: {watch.summary()}", flush=True)
        for run in runs:
            run.scale_up_s = watch.reached_s()
    finally:
        cluster.stop()
    return runs


class ScaleWatch:
    """Replica processes counted every half second from the start of the load (a thread beside wrk)."""

    def __init__(self, cluster: ServeCluster) -> None:
        import threading

        self.cluster = cluster
        self.samples: list[tuple[float, int]] = []
        self.t0 = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.samples.append((time.monotonic() - self.t0, len(self.cluster.replica_pids())))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def reached_s(self) -> float:
        """Seconds of load until the most replicas seen were first running."""
        peak = max((n for _, n in self.samples), default=0)
        return next((t for t, n in self.samples if n == peak), float("nan"))

    def summary(self) -> str:
        first = self.samples[0][1] if self.samples else 0
        peak = max((n for _, n in self.samples), default=0)
        return f"{first} -> {peak} replica processes, the last one started after {self.reached_s():.1f} s of load"


def report(run: Run) -> None:
    replicas = f"  replicas {run.replicas}" if run.replicas else ""
    print(f"  {run.setup:17s} {run.mix:9s} {run.rps:7.0f} req/s  p50 {run.p50_ms:6.1f} ms  p99 {run.p99_ms:6.1f} ms  "
          f"errors {run.errors}{replicas}", flush=True)  # fmt: skip


# ---- data ---------------------------------------------------------------------------------------
def ensure_home(home: str | None) -> str:
    """A trained platform home: the given one, or a small one built here (2 trials, 50 rounds)."""
    from ml_system.config import load_config

    if home and (Path(home) / "online.db").exists():
        return home
    home = home or tempfile.mkdtemp(prefix="mlsys-bench-home-")
    print(f"building a small platform home in {home} (a few minutes)", flush=True)
    import ray

    from ml_system.pipelines import steps
    from ml_system.usecase import load_usecase
    from ml_system.usecases.flights.demo import DEMO_CUTOFF

    cfg = load_config(environ={"MLSYS_HOME": home})
    flights = load_usecase("flights")
    ray.init(address="local", num_cpus=2, object_store_memory=800_000_000, include_dashboard=False, log_to_driver=False)
    try:
        steps.build_features(cfg, flights)
        steps.train(cfg, flights, num_samples=2, num_boost_round=50)
        steps.materialize(cfg, end=DEMO_CUTOFF.to_pydatetime())
    finally:
        ray.shutdown()
    return home


def mixes(home: str) -> dict[str, list[dict[str, Any]]]:
    """``upcoming``: after the cut-off to the end of the data; ``december``: all of December."""
    import pandas as pd

    from ml_system.config import load_config
    from ml_system.usecases.flights.demo import DEMO_CUTOFF, demo_flights, flights_from_frame

    cfg = load_config(environ={"MLSYS_HOME": home})
    upcoming = flights_from_frame(demo_flights(cfg, DEMO_CUTOFF, hours=24 * 3))
    december = flights_from_frame(demo_flights(cfg, pd.Timestamp("2013-12-01", tz=DEMO_CUTOFF.tz), hours=24 * 31))
    rng = random.Random(2013)
    return {
        name: rng.sample(rows, min(MIX_SIZE, len(rows)))
        for name, rows in (("upcoming", upcoming), ("december", december))
    }


# ---- summary ------------------------------------------------------------------------------------
def med(runs: list[Run], setup: str, mix: str, attr: str) -> float:
    values = [getattr(r, attr) for r in runs if r.setup == setup and r.mix == mix]
    return statistics.median(values) if values else float("nan")


def cpu_per_request(runs: list[Run], setup: str, mix: str) -> float:
    """CPU ms the setup's processes and wrk spent per request (median): what a shared machine does not skew much."""
    vals = [
        sum(v for k, v in r.cpu_ms.items() if not k.startswith("(")) for r in runs if (r.setup, r.mix) == (setup, mix)
    ]
    return statistics.median(vals) if vals else float("nan")


def print_profile(runs: list[Run]) -> None:
    print("\nCPU ms per request by process (medians; 'machine' counts every process on the box)")
    keys = sorted({k for r in runs for k in r.cpu_ms}, key=lambda k: (k.startswith("("), k))
    setups = sorted({(r.setup, r.mix) for r in runs})
    print(f"{'process':26s}" + "".join(f"{s[:17] + '/' + m[:3]:>22s}" for s, m in setups))
    for key in keys:
        row = []
        for s, m in setups:
            vals = [r.cpu_ms.get(key, 0.0) for r in runs if (r.setup, r.mix) == (s, m)]
            row.append(f"{statistics.median(vals):22.3f}")
        print(f"{key:26s}" + "".join(row))
    totals = []
    for s, m in setups:
        vals = [
            sum(v for k, v in r.cpu_ms.items() if not k.startswith("(")) for r in runs if (r.setup, r.mix) == (s, m)
        ]
        totals.append(f"{statistics.median(vals):22.3f}")
    print(f"{'total (setup + wrk)':26s}" + "".join(totals))


def print_replica_profile(folder: Path, top: int = 30) -> None:
    import pstats

    files = sorted(folder.glob("*.prof"), key=lambda p: p.stat().st_size)
    if not files:
        print(f"no replica profile in {folder}")
        return
    print(f"\nreplica cProfile ({files[-1].name}), by own time")
    stats = pstats.Stats(str(files[-1]))
    stats.sort_stats("tottime").print_stats(top)
    stats.sort_stats("cumulative").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", default=os.environ.get("MLSYS_HOME"))
    parser.add_argument("--quick", action="store_true", help="1 round, 10 s runs, 15 s warm-up, 30 s settle")
    parser.add_argument("--rounds", type=int, help="rounds of all setups (full: 3)")
    parser.add_argument("--duration", type=int, help="seconds per measured run (full: 20)")
    parser.add_argument("--warmup", type=int, help="seconds of load before the first measured run (full: 15)")
    parser.add_argument("--settle", type=int, help="more seconds of load before the steady-state runs (full: 60)")
    parser.add_argument("--profile", action="store_true", help="print CPU ms per request by process")
    parser.add_argument("--setups", default="bare1,bareN,ml_system")
    parser.add_argument("--cprofile", metavar="DIR", help="cProfile replicas into DIR, print top functions")
    parser.add_argument(
        "--caches",
        choices=["off", "shipped"],
        default="off",
        help="off (default): every request looks up its features and runs the model, in every setup; "
        "shipped: the shipped 1 s feature and prediction caches, which answer nearly every request of a "
        "500-flight mix from memory, so the run measures HTTP handling alone",
    )
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("error: wrk is not installed (apt-get install wrk; scripts/setup.sh does it)")
    rounds, duration, warmup, settle = (1, 10, 15, 30) if args.quick else (3, 20, 15, 60)
    rounds, duration = args.rounds or rounds, args.duration or duration
    warmup, settle = args.warmup or warmup, args.settle or settle
    cores = os.cpu_count() or 2
    home = ensure_home(args.home)
    tmp = Path(tempfile.mkdtemp(prefix="serve-load-"))
    scripts = {name: lua_script(rows, tmp / f"{name}.lua") for name, rows in mixes(home).items()}
    chosen = args.setups.split(",")
    config = serve_config(args.caches, tmp)
    runs: list[Run] = []
    for i in range(rounds):
        print(f"round {i + 1}/{rounds}", flush=True)
        if "bare1" in chosen:
            runs += bare_round("bare1", 1, home, scripts, 5, duration, config)
        if "bareN" in chosen:
            runs += bare_round("bareN", cores, home, scripts, 5, duration, config)
        if "ml_system" in chosen:
            runs += serve_round(home, scripts, warmup, duration, settle, config, args.cprofile)

    mode = "quick" if args.quick else "full"
    print(f"\nserve_load ({mode}: {rounds} round(s), {duration} s runs, wrk -t1 -c{CONNECTIONS}, "
          f"medians; bare1: uvicorn --workers 1, bareN: --workers {cores}; ml_system: shipped config, warm = after "
          f"{warmup} s of load from min_replicas, steady = after {warmup + duration + settle} s; "
          f"caches {args.caches} in every setup)")  # fmt: skip
    print(f"{'setup':18s} {'mix':9s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>7s} {'replicas':>9s}")
    for setup, mix in sorted({(r.setup, r.mix) for r in runs}):
        errors = sum(r.errors for r in runs if (r.setup, r.mix) == (setup, mix))
        reps = med(runs, setup, mix, "replicas")
        print(f"{setup:18s} {mix:9s} {med(runs, setup, mix, 'rps'):8.0f} {med(runs, setup, mix, 'p50_ms'):8.1f} "
              f"{med(runs, setup, mix, 'p99_ms'):8.1f} {errors:7d} {reps if reps else '':>9}")  # fmt: skip
    if args.profile:
        print_profile(runs)
    if args.cprofile:
        print_replica_profile(Path(args.cprofile))
    if not {"bare1", "bareN", "ml_system"} <= set(chosen):
        return
    result: dict[str, str] = {}
    for mix, suffix in (("upcoming", ""), ("december", "_december")):
        best = max(("bare1", "bareN"), key=lambda s: med(runs, s, mix, "rps"))
        rps, p99 = med(runs, "ml_system steady", mix, "rps"), med(runs, "ml_system steady", mix, "p99_ms")
        result |= {
            f"rps{suffix}": f"{rps:.0f}",
            f"p99_ms{suffix}": f"{p99:.1f}",
            f"ratio_vs_best_bare{suffix}": f"{rps / med(runs, best, mix, 'rps'):.2f}",
            f"p99_ratio_vs_best_bare{suffix}": f"{p99 / med(runs, best, mix, 'p99_ms'):.2f}",
        }
        if not suffix:
            result["best_bare"] = best
            result["ratio_vs_bare"] = f"{rps / med(runs, 'bare1', mix, 'rps'):.2f}"
            result["p99_ratio_vs_bare"] = f"{p99 / med(runs, 'bare1', mix, 'p99_ms'):.2f}"
            warm = med(runs, "ml_system warm", mix, "rps")
            result["warm_ratio_vs_best_bare"] = f"{warm / med(runs, best, mix, 'rps'):.2f}"
            result["warm_p99_ms"] = f"{med(runs, 'ml_system warm', mix, 'p99_ms'):.1f}"
            result["replicas"] = f"{med(runs, 'ml_system steady', mix, 'replicas'):.0f}"
            result["scale_up_s"] = f"{med(runs, 'ml_system steady', mix, 'scale_up_s'):.1f}"
    result["cpu_ms_per_req"] = f"{cpu_per_request(runs, 'ml_system steady', 'upcoming'):.3f}"
    result["cpu_ms_per_req_best_bare"] = f"{cpu_per_request(runs, result['best_bare'], 'upcoming'):.3f}"
    result["errors"] = str(sum(r.errors for r in runs))
    result["caches"] = args.caches
    print("RESULT serve_load " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
