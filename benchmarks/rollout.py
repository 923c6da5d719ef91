"""Zero downtime under constant load: canary start, steps and promotion, automatic rollback, and a
``serve deploy`` with a changed config, each counted (requests, failed, p99) while clients keep posting.

    python benchmarks/rollout.py --home ~/.mlsys [--quick] [--threads 8]

Needs a home with a champion and a materialized online store (``mlsys quickstart``); the benchmark
works on a copy of it. It starts a local Ray cluster and the flights app (one replica, following the
champion alias every 0.5 s), runs ``--threads`` HTTP clients over the evening's real flights, and
drives the transitions with the real CLI (``mlsys rollout start --wait``), whose output it prints:

1. a challenger identical in behaviour to the champion goes 10 -> 50 -> 100 % and is promoted;
2. a challenger that predicts noise is rolled back automatically at its first step;
3. ``serve deploy`` of the shipped config with a changed ``user_config`` (batch size), applied in place.

A request fails when it gets anything but a 200 (a 503 included) or no answer. The last line is
``RESULT rollout requests=... failed=... p99_ms=... rps=...``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")

from ray import serve  # noqa: E402

from ml_system.config import load_config  # noqa: E402
from ml_system.serving.deploy import deploy_config, free_port  # noqa: E402
from ml_system.teams.groups import load_groups  # noqa: E402
from ml_system.teams.identity import TokenStore  # noqa: E402
from ml_system.training import tracking  # noqa: E402
from ml_system.usecases.flights.demo import demo_flights, flights_from_frame  # noqa: E402
from tests.serving.rollout_load import Answer, Load, register_random  # noqa: E402
from tests.serving.test_live_model import copy_of_champion  # noqa: E402

NAME = "flight_delay"
PLAN = """steps: [10, 50, 100]
step_s: {step_s}
max_step_wait_s: 120
thresholds: {{min_requests: 40, max_error_rate: 0.0, max_p99_ratio: 3.0, max_psi: 0.5}}
"""


def summary(name: str, answers: list[Answer], seconds: float) -> dict[str, float | str]:
    ms = [a.ms for a in answers]
    return {
        "transition": name,
        "requests": len(answers),
        "failed": sum(1 for a in answers if a.status != 200),
        "p99_ms": float(np.percentile(ms, 99)) if ms else 0.0,
        "rps": len(answers) / seconds if seconds else 0.0,
        "versions": ",".join(sorted({a.version for a in answers if a.version})),
    }


def mlsys(home: Path, token: str, *args: str) -> int:
    env = {**os.environ, "MLSYS_HOME": str(home), "MLSYS_TEAM_TOKEN": token, "COLUMNS": "160"}
    env.pop("MLSYS_CONFIG", None)
    print(f"$ mlsys {' '.join(args)}", flush=True)
    done = subprocess.run([sys.executable, "-m", "ml_system.cli", *args], env=env, cwd=ROOT, text=True)
    return done.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--home", default=os.environ.get("MLSYS_HOME", str(Path.home() / ".mlsys")))
    parser.add_argument("--quick", action="store_true", help="3 s steps, 5 s steady windows")
    parser.add_argument("--threads", type=int, default=8, help="HTTP clients posting without pause")
    parser.add_argument("--keep-home", action="store_true", help="keep the copied home (audit log, rollout state)")
    args = parser.parse_args()
    source = Path(args.home).expanduser().resolve()
    if not (source / "online.db").exists() and not (source / "mlflow.db").exists():
        parser.exit(2, f"error: {source} holds no platform; run `mlsys quickstart` first\n")
    step_s, steady_s = (3, 5) if args.quick else (15, 30)

    work = Path(tempfile.mkdtemp(prefix="mlsys-rollout-bench-"))
    home = work / "mlsys"
    shutil.copytree(source, home, ignore=shutil.ignore_patterns("ray_results", "rollout", "haproxy"))
    config = load_config(environ={"MLSYS_HOME": str(home)})
    token = TokenStore(config.teams.state_dir).issue("delays", load_groups(config.teams.resource_groups))[1]
    plan = work / "canary.yaml"
    plan.write_text(PLAN.format(step_s=step_s))

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
    print(f"app at {url}, {len(items)} distinct flights, {args.threads} clients", flush=True)
    load = Load(url, items, threads=args.threads).start()
    results = []

    def window(name: str, action: object) -> None:
        t0 = time.monotonic()
        action()  # type: ignore[operator]
        results.append(summary(name, load.since(t0), time.monotonic() - t0))

    try:
        time.sleep(2)
        window("steady", lambda: time.sleep(steady_s))

        def canary() -> None:
            good = copy_of_champion(config)
            tracking.client(config.mlflow).set_registered_model_alias(NAME, "challenger", good)
            code = mlsys(home, token, "rollout", "start", "--plan", str(plan), "--wait", "--tick-s", "1")
            assert code == 0, f"the canary of v{good} did not end in promotion (exit {code})"
            time.sleep(1.5)  # the replica adopts the promoted version within a poll period

        window("canary start, steps, promotion", canary)

        def rollback() -> None:
            bad = register_random(config)
            code = mlsys(home, token, "rollout", "start", "--plan", str(plan), "--wait", "--tick-s", "1")
            assert code == 3, f"the canary of noisy v{bad} was not rolled back (exit {code})"
            time.sleep(1.5)

        window("automatic rollback", rollback)

        def redeploy() -> None:
            import httpx

            before = httpx.get(f"{url}/info", timeout=30).json()["served_by"]
            deployment["user_config"]["max_batch_size"] = 32
            deploy_config(doc)
            deadline = time.monotonic() + 120
            while (info := httpx.get(f"{url}/info", timeout=30).json())["max_batch_size"] != 32:
                assert time.monotonic() < deadline, "the changed config never reached the replica"
                time.sleep(0.5)
            print(f"max_batch_size 64 -> 32 applied; replica restarted: {info['served_by'] != before}", flush=True)
            time.sleep(2)

        window("serve deploy (changed config)", redeploy)
        window("steady after", lambda: time.sleep(steady_s))
    finally:
        answers = load.stop()
        serve.shutdown()
        ray.shutdown()
        if args.keep_home:
            print(f"home kept at {home}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\n{'transition':34} {'requests':>9} {'failed':>7} {'p99 ms':>8} {'req/s':>7}  versions")
    for r in results:
        row = f"{r['transition']:34} {r['requests']:>9} {r['failed']:>7} {r['p99_ms']:>8.1f} {r['rps']:>7.1f}"
        print(f"{row}  {r['versions']}")
    total = summary("all", answers, 1)
    rps = np.mean([float(r["rps"]) for r in results])
    print(
        f"RESULT rollout requests={total['requests']} failed={total['failed']} p99_ms={total['p99_ms']:.1f} "
        f"rps={rps:.0f}"
    )


if __name__ == "__main__":
    main()
