"""Config deploys: batching knobs change in place, and replicas scale with load and back."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from ray import serve

from ml_system.serving.deploy import deploy_config
from ml_system.serving.loadgen import lua_script

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CONFIG = Path(__file__).resolve().parents[2] / "serve_configs" / "flight_delay.yaml"


def document(serve_port: int, home: str, name: str, deployment: dict[str, Any]) -> dict[str, Any]:
    """The shipped YAML, pointed at the test home, port and prefix, with deployment overrides."""
    doc = yaml.safe_load(CONFIG.read_text())
    doc["http_options"]["port"] = serve_port
    app = doc["applications"][0]
    app["name"] = name
    app["route_prefix"] = f"/{name}"
    app["args"]["home"] = home
    app["deployments"][0].update(deployment)
    app["deployments"][0]["ray_actor_options"] = {"num_cpus": 0.1}
    return doc


def test_user_config_changes_batching_without_restart(serve_port: int, served_home: Any) -> None:
    doc = document(serve_port, served_home.home, "reconf", {"autoscaling_config": None, "num_replicas": 1})
    url = deploy_config(doc)["reconf"]
    try:
        before = httpx.get(f"{url}/info", timeout=30).json()
        assert (before["max_batch_size"], before["batch_wait_timeout_s"]) == (64, 0.002)
        doc["applications"][0]["deployments"][0]["user_config"].update(
            {"max_batch_size": 16, "batch_wait_timeout_s": 0.01}
        )
        deploy_config(doc)
        after: dict[str, Any] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            after = httpx.get(f"{url}/info", timeout=30).json()
            if after["max_batch_size"] == 16:
                break
            time.sleep(0.5)
        assert (after["max_batch_size"], after["batch_wait_timeout_s"]) == (16, 0.01)
        assert after["served_by"] == before["served_by"]  # same replica id and pid: nothing restarted
    finally:
        serve.delete("reconf")


def replicas(name: str) -> int:
    status = serve.status().applications[name].deployments["Ingress"]
    return int(status.replica_states.get("RUNNING", 0))


def test_replicas_scale_up_under_load_and_back_down(
    serve_port: int, served_home: Any, demo_rows: list[dict[str, Any]]
) -> None:
    autoscaling = {
        "min_replicas": 1,
        "max_replicas": 2,
        "target_ongoing_requests": 1,
        "upscale_delay_s": 1,
        "downscale_delay_s": 3,
        "metrics_interval_s": 0.5,
        "look_back_period_s": 1,
    }
    slow = {"max_batch_size": 64, "batch_wait_timeout_s": 0.2, "feature_cache_ttl_s": 0, "prediction_cache_ttl_s": 0}
    doc = document(serve_port, served_home.home, "autoscale", {"autoscaling_config": autoscaling, "user_config": slow})
    url = deploy_config(doc)["autoscale"]
    stop = threading.Event()
    codes: list[int] = []

    def load() -> None:
        with httpx.Client(timeout=30) as client:
            while not stop.is_set():
                codes.append(client.post(f"{url}/predict", json={"flights": demo_rows[:1]}).status_code)

    workers = [threading.Thread(target=load) for _ in range(6)]
    try:
        assert replicas("autoscale") == 1
        for w in workers:
            w.start()
        peak = 1
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and peak < 2:
            peak = max(peak, replicas("autoscale"))
            time.sleep(0.5)
        assert peak == 2, "no upscale under load"
        stop.set()
        for w in workers:
            w.join()
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and replicas("autoscale") > 1:
            time.sleep(0.5)
        assert replicas("autoscale") == 1, "no downscale after load"
        assert codes and set(codes) == {200}, set(codes)
    finally:
        stop.set()
        serve.delete("autoscale")


def test_the_shipped_autoscaling_follows_a_step_to_64_connections_and_back(
    serve_port: int, served_home: Any, demo_rows: list[dict[str, Any]], tmp_path: Path
) -> None:
    """The shipped ``autoscaling_config`` as it is (only the CPU reservation shrunk to fit the test cluster):
    32 connections are what one replica holds (32 ongoing requests each); a step from idle to 64 needs a
    second replica, and idle needs one again."""
    import shutil
    import signal
    import subprocess

    if shutil.which("wrk") is None:
        pytest.fail("wrk is not installed; scripts/setup.sh installs it")
    doc = document(serve_port, served_home.home, "stepload", {})
    shipped = doc["applications"][0]["deployments"][0]["autoscaling_config"]
    assert (shipped["min_replicas"], shipped["target_ongoing_requests"]) == (1, 32)
    url = deploy_config(doc)["stepload"]
    script = lua_script(demo_rows, tmp_path / "predict.lua", route="/stepload/predict")
    try:
        assert replicas("stepload") == 1
        load = subprocess.Popen(
            ["wrk", "-t1", "-c64", "-d60s", "--timeout", "10s", "-s", str(script), url],
            stdout=subprocess.PIPE,
            text=True,
        )
        peak, started = 1, time.monotonic()
        while load.poll() is None:
            now = replicas("stepload")
            if now >= 2 > peak:
                print(f"second replica serving {time.monotonic() - started:.1f} s after the step to 64 connections")
            peak = max(peak, now)
            if peak >= 2 and time.monotonic() - started > 20:
                load.send_signal(signal.SIGINT)  # wrk stops and prints what it counted
                break
            time.sleep(0.5)
        out = load.communicate(timeout=30)[0]
        assert peak >= 2, f"64 connections did not bring a second replica\n{out}"
        assert " requests in " in out and "Non-2xx" not in out and "Socket errors" not in out, out
        deadline = time.monotonic() + shipped["downscale_delay_s"] + 180
        while time.monotonic() < deadline and replicas("stepload") > 1:
            time.sleep(1)
        assert replicas("stepload") == 1, "no downscale after the load stopped"
    finally:
        serve.delete("stepload")
