"""Serving under load: the project's endpoint against a bare process and a naive Serve setup.

Three setups answer the same ``POST /predict`` (one real flight per request,
rotating over the flights of the demo day, online features from SQLite and
the registered XGBoost model) and are driven by ``wrk`` with a Lua script at
32 and 128 connections:

- ``bare``: one uvicorn process, no Ray (``benchmarks/bare_app.py``), the baseline;
- ``serve``: the shipped configuration: HAProxy ingress and Serve's throughput mode, fused
  topology, ``@serve.batch``, ``--replicas`` replicas (2: what the shipped autoscaling target of
  16 ongoing requests per replica holds at 32 connections);
- ``naive``: the same app on Serve's default proxy with batching off.

Caches are off in every setup (a rotating set of flights would be answered
from the prediction cache and measure the cache, not the stack). Each Serve
setup runs in its own child process with its own local Ray cluster, stopped
before the next one starts, so no two setups share the two cores.

    python benchmarks/serve_load.py --home ~/.mlsys [--quick] [--rounds N] [--duration S]

Full mode (3 rounds of 15 s runs, each setup started afresh per round) takes
about 11 minutes here; ``--rounds`` and ``--duration`` size it.

The last line is ``RESULT serve_load rps=... p99_ms=... ratio_vs_bare=...
p99_ratio_vs_bare=... ratio_vs_naive=...`` (at 32 connections, medians of the
rounds).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NO_CACHE = {"feature_cache_ttl_s": 0, "prediction_cache_ttl_s": 0}
SETUPS = {
    "serve": {"ha_proxy": True, "user_config": {"max_batch_size": 64, "batch_wait_timeout_s": 0.002, **NO_CACHE}},
    "naive": {"ha_proxy": False, "user_config": {"batching": False, **NO_CACHE}},
}


# ---- child: one Serve setup on its own local cluster -------------------------------------------
def run_child(setup: str, home: str, port: int, replicas: int) -> None:
    spec = SETUPS[setup]
    if spec["ha_proxy"]:
        from ml_system.serving.deploy import fast_serving_env

        os.environ.update(fast_serving_env(Path(tempfile.mkdtemp(prefix="mlsys-haproxy-"))))
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    import ray

    from ml_system.config import ServingConfig
    from ml_system.serving.app import build_app
    from ml_system.serving.deploy import run_app

    ray.init(address="local", num_cpus=2, object_store_memory=500_000_000, include_dashboard=False, log_to_driver=False)
    from ray import serve

    try:
        app = build_app({"home": home, "user_config": spec["user_config"], "num_replicas": replicas})
        url = run_app(app, "flight_delay", ServingConfig(host="127.0.0.1", port=port))
        # /healthz answers as soon as one replica does; measure only once all of them are up, and give
        # HAProxy a moment to add the late ones to its backend
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = serve.status().applications["flight_delay"].deployments["Ingress"].replica_states
            if states.get("RUNNING", 0) >= replicas:
                break
            time.sleep(0.5)
        time.sleep(3)
        print(f"READY {url}", flush=True)
        sys.stdin.readline()  # the parent closes stdin when done
    finally:
        serve.shutdown()
        ray.shutdown()


# ---- parent -----------------------------------------------------------------------------------
@dataclass
class Run:
    setup: str
    connections: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def lua_script(rows: list[dict[str, Any]], path: Path) -> Path:
    bodies = ",\n".join("[[" + json.dumps({"flights": [r]}) + "]]" for r in rows)
    path.write_text(
        "bodies = {\n" + bodies + "\n}\n"
        "counter = 0\n"
        "request = function()\n"
        "  counter = counter + 1\n"
        "  return wrk.format('POST', '/predict', {['Content-Type'] = 'application/json'},"
        " bodies[(counter % #bodies) + 1])\n"
        "end\n"
    )
    return path


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, script: Path, connections: int, duration_s: int) -> tuple[float, float, float, int]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration_s}s", "--timeout", "10s", "--latency", "-s", str(script), url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    errors = (int(bad.group(1)) if bad else 0) + (sum(int(g) for g in errs.groups()) if errs else 0)
    return rps, p50, p99, errors


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


def start(setup: str, home: str, replicas: int) -> tuple[subprocess.Popen[str], str]:
    from ml_system.serving.deploy import free_port

    port = free_port()
    env = {**os.environ, "MLSYS_HOME": home, "PYTHONPATH": str(ROOT)}
    if setup == "bare":
        env["BARE_USER_CONFIG"] = json.dumps(NO_CACHE)
        cmd = [sys.executable, "-m", "uvicorn", "benchmarks.bare_app:app", "--port", str(port), "--log-level",
               "warning", "--loop", "uvloop", "--http", "httptools", "--no-access-log"]  # fmt: skip
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, text=True)
        url = f"http://127.0.0.1:{port}"
        wait_http(url)
        return proc, url
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", setup, "--home", home, "--port", str(port),
           "--replicas", str(replicas if setup == "serve" else 1)]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("READY "):
            return proc, line.split()[1]
    raise RuntimeError(f"setup {setup} exited with {proc.wait()} before it was ready")


def stop(proc: subprocess.Popen[str]) -> None:
    if proc.stdin:
        proc.stdin.close()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


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


def demo_rows(home: str, hours: int) -> list[dict[str, Any]]:
    from ml_system.config import load_config
    from ml_system.usecases.flights.demo import demo_flights, flights_from_frame

    return flights_from_frame(demo_flights(load_config(environ={"MLSYS_HOME": home}), hours=hours))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", default=os.environ.get("MLSYS_HOME"))
    parser.add_argument("--quick", action="store_true", help="5 s per run, 1 round (a few minutes in all)")
    parser.add_argument("--connections", default="32,128")
    parser.add_argument("--rounds", type=int, help="rounds of all three setups (full: 3, about 11 minutes here)")
    parser.add_argument("--duration", type=int, help="seconds per measured run (full: 15)")
    parser.add_argument(
        "--replicas", type=int, default=2, help="replicas of the project's endpoint (what autoscaling holds at c=32)"
    )
    parser.add_argument("--child", choices=sorted(SETUPS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_child(args.child, args.home, args.port, args.replicas)
        return
    if shutil.which("wrk") is None:
        sys.exit("error: wrk is not installed (apt-get install wrk; scripts/setup.sh does it)")
    duration, rounds, warmup = (5, 1, 3) if args.quick else (15, 3, 5)
    rounds = args.rounds or rounds
    duration = args.duration or duration
    conns = [int(c) for c in args.connections.split(",")]
    home = ensure_home(args.home)
    script = lua_script(demo_rows(home, hours=6), Path(tempfile.mkdtemp()) / "post.lua")
    runs: list[Run] = []
    for _ in range(rounds):  # setups alternate round by round, so drift on a shared machine hits all of them
        for setup in ("bare", "serve", "naive"):
            proc, url = start(setup, home, args.replicas)
            try:
                wrk(url, script, conns[0], warmup)
                for c in conns:
                    rps, p50, p99, errors = wrk(url, script, c, duration)
                    runs.append(Run(setup, c, rps, p50, p99, errors))
                    print(f"  {setup:6s} c={c:<4d} {rps:8.0f} req/s  p50 {p50:7.1f} ms  p99 {p99:7.1f} ms  "
                          f"errors {errors}", flush=True)  # fmt: skip
            finally:
                stop(proc)

    def med(setup: str, c: int, field: str) -> float:
        return statistics.median(getattr(r, field) for r in runs if r.setup == setup and r.connections == c)

    print(
        f"\nserve_load ({'quick' if args.quick else 'full'}: {rounds} round(s) of {duration} s, wrk -t1, medians; "
        f"bare: 1 uvicorn process, serve: {args.replicas} replica(s), naive: 1 replica)"
    )
    print(f"{'setup':8s} {'conns':>5s} {'req/s':>9s} {'p50 ms':>8s} {'p99 ms':>8s} {'errors':>7s} {'vs bare':>8s}")
    for setup in ("bare", "serve", "naive"):
        for c in conns:
            errors = sum(r.errors for r in runs if r.setup == setup and r.connections == c)
            ratio = med(setup, c, "rps") / med("bare", c, "rps")
            print(f"{setup:8s} {c:5d} {med(setup, c, 'rps'):9.0f} {med(setup, c, 'p50_ms'):8.1f} "
                  f"{med(setup, c, 'p99_ms'):8.1f} {errors:7d} {ratio:8.2f}")  # fmt: skip
    c0 = conns[0]
    result = {
        "rps": f"{med('serve', c0, 'rps'):.0f}",
        "p99_ms": f"{med('serve', c0, 'p99_ms'):.1f}",
        "ratio_vs_bare": f"{med('serve', c0, 'rps') / med('bare', c0, 'rps'):.2f}",
        "p99_ratio_vs_bare": f"{med('serve', c0, 'p99_ms') / med('bare', c0, 'p99_ms'):.2f}",
        "ratio_vs_naive": f"{med('serve', c0, 'rps') / med('naive', c0, 'rps'):.2f}",
    }
    for c in conns[1:]:
        result[f"rps_c{c}"] = f"{med('serve', c, 'rps'):.0f}"
        result[f"ratio_vs_bare_c{c}"] = f"{med('serve', c, 'rps') / med('bare', c, 'rps'):.2f}"
    result["errors"] = str(sum(r.errors for r in runs))
    print("RESULT serve_load " + " ".join(f"{k}={v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
