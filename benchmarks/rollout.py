"""Zero downtime under a constant load of real flights: every rollout transition, counted one by one.

    python benchmarks/rollout.py --home ~/.mlsys [--quick] [--rate 200] [--connections 32]

Needs a home with a champion and a materialized online store (``mlsys quickstart``); the benchmark
works on a copy of it. It starts a local Ray cluster and the flights app (one replica, following the
champion alias every 0.5 s) and keeps ``wrk`` posting the evening's real flights at a constant
``--rate`` (a fixed schedule per connection, not as fast as answers come back: a slow transition
does not lower the load it is measured under). Every request is logged with the time it was sent,
its status, latency, model version and arm; the run is cut into one window per transition:

1. ``steady``: nothing changes (the callers' p99 without a shadow);
2. a challenger identical in behaviour to the champion goes 10 -> 50 -> 100 % and is promoted
   (``mlsys rollout start --wait``): its start, each step and the promotion are windows of their own;
3. a challenger that predicts noise is rolled back automatically at its first step;
4. a blue-green switch to a new version, and the switch back (``mlsys rollout abort``);
5. a shadow started, running, and stopped with the CLI, then switched on and off in-process a few
   more times: the callers' p99 in the windows with the shadow against the alternating ones without;
6. ``serve deploy`` of the shipped config with a changed ``user_config`` (batch size).

A request fails when its answer is not a 200 (a 503 included), never comes (socket error, reset,
still unanswered when the load stops and drains) or takes longer than ``--timeout``. The last line
is ``RESULT rollout requests=... failed=... p99_ms=... rps=... shadow_p99_ratio=...``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

from ray import serve  # noqa: E402

from benchmarks import proc_cpu  # noqa: E402
from ml_system.config import load_config  # noqa: E402
from ml_system.rollout.controller import RolloutController  # noqa: E402
from ml_system.serving.deploy import deploy_config, free_port  # noqa: E402
from ml_system.serving.loadgen import PacedLoad, Sent, summarize  # noqa: E402
from ml_system.teams.groups import load_groups  # noqa: E402
from ml_system.teams.identity import TokenStore  # noqa: E402
from ml_system.training import tracking  # noqa: E402
from ml_system.usecase import load_usecase  # noqa: E402
from ml_system.usecases.flights.demo import demo_flights, flights_from_frame  # noqa: E402
from tests.serving.rollout_load import register_random  # noqa: E402
from tests.serving.test_live_model import copy_of_champion  # noqa: E402

NAME = "flight_delay"
CANARY = """steps: [10, 50, 100]
step_s: {step_s}
max_step_wait_s: 120
thresholds: {{min_requests: 40, max_error_rate: 0.0, max_p99_ratio: 3.0, max_psi: 0.5}}
"""
BLUE_GREEN = """strategy: blue_green
step_s: 3600
thresholds: {max_error_rate: 0.0, max_psi: 0.5}
"""
SHADOW = """strategy: shadow
steps: [100]
step_s: 3600
thresholds: {max_psi: 0.5}
"""
SWITCH_S = 3.0
"""How long a window lasts after a switch that no command waits for: six alias/plan polls of the replica."""


class Timeline:
    """Named, back-to-back windows of the one constant load (monotonic seconds), with the CPU seconds each
    process of this run (the Ray cluster, the CLI, wrk) spent in each, from ``/proc``."""

    def __init__(self) -> None:
        self.marks: list[tuple[str, float, float]] = []
        self.cpu: list[dict[str, float]] = []
        self.start = time.monotonic()
        self._snap = proc_cpu.snapshot([os.getpid()])

    def cut(self, name: str, at: float | None = None) -> None:
        """The window since the previous cut ends now (or ``at``) and is called ``name``."""
        end = time.monotonic() if at is None else at
        snap = proc_cpu.snapshot([os.getpid()])
        self.marks.append((name, self.start, end))
        self.cpu.append(proc_cpu.by_role(self._snap, snap))
        self.start, self._snap = end, snap


def mlsys(home: Path, token: str, *args: str, on_line: Callable[[str, float], None] | None = None) -> int:
    """The real CLI in a child process; each line it prints is echoed and handed to ``on_line`` with its time."""
    env = {**os.environ, "MLSYS_HOME": str(home), "MLSYS_TEAM_TOKEN": token, "COLUMNS": "160", "PYTHONUNBUFFERED": "1"}
    env.pop("MLSYS_CONFIG", None)
    print(f"$ mlsys {' '.join(args)}", flush=True)
    cmd = [sys.executable, "-m", "ml_system.cli", *args]
    with subprocess.Popen(cmd, env=env, cwd=ROOT, text=True, stdout=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            at = time.monotonic()
            print(line, end="", flush=True)
            if on_line is not None:
                on_line(line, at)
    return proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", default=os.environ.get("MLSYS_HOME", str(Path.home() / ".mlsys")))
    parser.add_argument("--quick", action="store_true", help="3 s canary steps, 5 s steady windows")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second, on a fixed schedule")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections (one wrk thread each)")
    parser.add_argument("--timeout", type=float, default=5.0, help="an answer slower than this (s) counts as failed")
    parser.add_argument("--shadow-pairs", type=int, default=2, help="more shadow on/off window pairs")
    parser.add_argument("--keep-home", action="store_true", help="keep the copied home (audit log, rollout state)")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("error: wrk is not installed (apt-get install wrk; scripts/setup.sh does it)")
    source = Path(args.home).expanduser().resolve()
    if not (source / "online.db").exists() and not (source / "mlflow.db").exists():
        parser.exit(2, f"error: {source} holds no platform; run `mlsys quickstart` first\n")
    step_s, steady_s = (3, 5) if args.quick else (15, 30)

    work = Path(tempfile.mkdtemp(prefix="mlsys-rollout-bench-"))
    home = work / "mlsys"
    shutil.copytree(source, home, ignore=shutil.ignore_patterns("ray_results", "rollout", "haproxy"))
    config = load_config(environ={"MLSYS_HOME": str(home)})
    token = TokenStore(config.teams.state_dir).issue("delays", load_groups(config.teams.resource_groups))[1]
    plans = {}
    for name, text in (("canary", CANARY.format(step_s=step_s)), ("blue_green", BLUE_GREEN), ("shadow", SHADOW)):
        plans[name] = work / f"{name}.yaml"
        plans[name].write_text(text)

    import httpx
    import ray

    ray.init(address="local", num_cpus=2, object_store_memory=500_000_000, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": free_port()})
    from ray.serve.context import _get_global_client

    port = ray.get(_get_global_client()._controller.get_http_config.remote()).port

    # the shipped Serve config, as `serve deploy` sends it: one replica, following the alias every 0.5 s
    doc = yaml.safe_load((ROOT / "serve_configs" / "flight_delay.yaml").read_text())
    doc["http_options"]["port"] = port
    app = doc["applications"][0]
    app.update({"route_prefix": "/flights"})
    app["args"]["home"] = str(home)
    deployment = app["deployments"][0]
    deployment.update({"autoscaling_config": None, "num_replicas": 1})
    deployment["user_config"]["alias_poll_s"] = 0.5
    url = deploy_config(doc)[NAME]
    items = flights_from_frame(demo_flights(config, hours=8))
    print(f"app at {url}, {len(items)} distinct flights, {args.rate:g} req/s over {args.connections} connections",
          flush=True)  # fmt: skip
    versions: dict[str, str] = {"v1": tracking.resolve(config.mlflow, NAME).version}
    load = PacedLoad(url, items, rate=args.rate, connections=args.connections, timeout_s=args.timeout).start()
    timeline = Timeline()
    sent: list[Sent] = []

    def canary_windows(prefix: str) -> Callable[[str, float], None]:
        """Cut a window at each judged step of ``mlsys rollout start --wait``'s output."""
        weights = [10, 50, 100]
        step = [0]

        def on_line(line: str, at: float) -> None:
            if "-> pass" in line and step[0] < len(weights):
                name = f"{prefix} start (10%)" if step[0] == 0 else f"{prefix} step {weights[step[0]]}%"
                timeline.cut(name, at)
                step[0] += 1
            elif "-> fail" in line:
                timeline.cut(f"{prefix} start (10%)", at)

        return on_line

    try:
        time.sleep(2)
        timeline.cut("(warm-up)")
        time.sleep(steady_s)
        timeline.cut("steady")

        good = copy_of_champion(config)
        tracking.client(config.mlflow).set_registered_model_alias(NAME, "challenger", good)
        code = mlsys(home, token, "rollout", "start", "--plan", str(plans["canary"]), "--wait", "--tick-s", "1",
                     on_line=canary_windows("canary"))  # fmt: skip
        assert code == 0, f"the canary of v{good} did not end in promotion (exit {code})"
        time.sleep(SWITCH_S)  # the replica adopts the promoted version within a poll period
        timeline.cut("canary promotion")
        versions["canary"] = good

        bad = register_random(config)
        code = mlsys(home, token, "rollout", "start", "--plan", str(plans["canary"]), "--wait", "--tick-s", "1",
                     on_line=canary_windows("bad canary"))  # fmt: skip
        assert code == 3, f"the canary of noisy v{bad} was not rolled back (exit {code})"
        time.sleep(SWITCH_S)
        timeline.cut("automatic rollback")
        versions["bad"] = bad

        green = copy_of_champion(config)
        tracking.client(config.mlflow).set_registered_model_alias(NAME, "challenger", green)
        assert mlsys(home, token, "rollout", "start", "--plan", str(plans["blue_green"])) == 0
        time.sleep(SWITCH_S)
        timeline.cut("blue-green switch")
        time.sleep(steady_s)
        timeline.cut("(green serving)")
        assert mlsys(home, token, "rollout", "abort", "--reason", "blue-green drill: switch back") == 0
        time.sleep(SWITCH_S)
        timeline.cut("blue-green switch back (abort)")
        versions["green"] = green

        time.sleep(steady_s)
        timeline.cut("(shadow off)")
        shadow = copy_of_champion(config)
        tracking.client(config.mlflow).set_registered_model_alias(NAME, "challenger", shadow)
        assert mlsys(home, token, "rollout", "start", "--plan", str(plans["shadow"])) == 0
        time.sleep(SWITCH_S)
        timeline.cut("shadow start")
        time.sleep(steady_s)
        timeline.cut("(shadow on)")
        assert mlsys(home, token, "rollout", "abort", "--reason", "shadow seen") == 0
        time.sleep(SWITCH_S)
        timeline.cut("shadow stop")
        time.sleep(steady_s)
        timeline.cut("(shadow off)")
        versions["shadow"] = shadow
        # more shadow on / off windows, switched in-process (no CLI start-up on the machine), so that the
        # callers' p99 with and without the shadow is compared on alternating windows, not one of each
        controller = RolloutController(config, load_usecase("flights"))
        for _ in range(args.shadow_pairs):
            controller.start(plans["shadow"], token)
            time.sleep(SWITCH_S)
            timeline.cut("(shadow switching)")
            time.sleep(steady_s)
            timeline.cut("(shadow on)")
            controller.abort(token, "shadow off")
            time.sleep(SWITCH_S)
            timeline.cut("(shadow switching)")
            time.sleep(steady_s)
            timeline.cut("(shadow off)")

        key = {"x-api-key": token}  # /info is behind the team key once the platform has team tokens
        before = httpx.get(f"{url}/info", headers=key, timeout=30).json()["served_by"]
        deployment["user_config"]["max_batch_size"] = 32
        deploy_config(doc)
        deadline = time.monotonic() + 120
        while (info := httpx.get(f"{url}/info", headers=key, timeout=30).json())["max_batch_size"] != 32:
            assert time.monotonic() < deadline, "the changed config never reached the replica"
            time.sleep(0.5)
        print(f"max_batch_size 64 -> 32 applied; replica restarted: {info['served_by'] != before}", flush=True)
        time.sleep(2)
        timeline.cut("serve deploy (changed config)")
        time.sleep(steady_s)
        timeline.cut("steady after")
    finally:
        sent = load.stop()
        serve.shutdown()
        ray.shutdown()
        if args.keep_home:
            print(f"home kept at {home}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    rows = [(name, summarize(sent, t0, t1)) for name, t0, t1 in timeline.marks]
    print(f"\nversions: {versions}; wrk's own count: {load.report}")
    print(
        f"{'transition':34} {'requests':>9} {'failed':>7} {'p99 ms':>8} {'req/s':>7} {'replica CPU ms/req':>19}"
        "  versions (arms)"
    )
    for (name, r), cpu in zip(rows, timeline.cpu, strict=True):
        replica = 1000 * cpu.get("replica", 0.0) / max(r["requests"], 1)
        print(f"{name:34} {r['requests']:>9} {r['failed']:>7} {r['p99_ms']:>8.1f} {r['rps']:>7.1f} {replica:>19.2f}  "
              f"{','.join(r['versions'])} ({','.join(r['arms'])})")  # fmt: skip
        for s in r["failures"]:
            what = f"answered {s.answered} after {s.ms:.0f} ms" if s.answered else "no answer"
            print(f"  failed: sent at +{s.at - timeline.marks[0][1]:.2f} s, {what}")
    pooled = {}
    for state in ("on", "off"):
        spans = [
            (t0, t1, cpu)
            for (n, t0, t1), cpu in zip(timeline.marks, timeline.cpu, strict=True)
            if n == f"(shadow {state})"
        ]
        mine = [s for s in sent if any(t0 <= s.at < t1 for t0, t1, _ in spans)]
        replica = 1000 * sum(cpu.get("replica", 0.0) for _, _, cpu in spans) / max(len(mine), 1)
        pooled[state] = (summarize(mine, 0, float("inf"))["p99_ms"], replica, len(spans))
    (on, on_cpu, n_on), (off, off_cpu, n_off) = pooled["on"], pooled["off"]
    total = summarize(sent, timeline.marks[1][1], timeline.marks[-1][2])
    print(f"callers' p99 with the shadow {on:.1f} ms ({n_on} windows), without {off:.1f} ms ({n_off} windows, "
          f"alternating): ratio {on / off:.2f}; replica CPU per caller request {on_cpu:.2f} ms with, "
          f"{off_cpu:.2f} ms without (shared machine)")  # fmt: skip
    print(
        f"RESULT rollout requests={total['requests']} failed={total['failed']} p99_ms={total['p99_ms']:.1f} "
        f"rps={total['rps']:.0f} min_window_rps={min(r['rps'] for _, r in rows):.0f} shadow_p99_ratio={on / off:.2f}"
    )


if __name__ == "__main__":
    main()
