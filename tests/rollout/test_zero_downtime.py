"""Every rollout transition under one constant HTTP load of real flights, each counted on its own: canary
start, steps and promotion, automatic rollback, a blue-green switch and switch back, a shadow started
and stopped, and ``serve deploy`` of a changed config. Not one request may fail, and each transition
must show in what the callers were answered (or, for the shadow, in the prediction log).

The load is wrk on a fixed schedule (``PacedLoad``), which logs every request it sends, so a request
that never got an answer is counted as failed too. One app serves every transition."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from ray import serve

from ml_system.config import PlatformConfig
from ml_system.features import FeatureStore
from ml_system.rollout.config import RolloutConfig, Thresholds
from ml_system.rollout.controller import RolloutController
from ml_system.serving.deploy import deploy_config
from ml_system.serving.loadgen import PacedLoad, Sent, summarize
from ml_system.training import tracking
from ml_system.usecase import load_usecase
from ml_system.usecases.flights.demo import demo_flights, flights_from_frame
from tests.serving.rollout_load import register_random
from tests.serving.test_live_model import copy_of_champion
from tests.serving.test_live_rollout import champion_restored, token, wait_until  # noqa: F401 - fixtures
from tests.serving.test_reconfigure_and_autoscaling import document

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NAME = "flight_delay"
APP = "zerodown"
RATE = 60.0
LIMITS = Thresholds(min_requests=20, max_error_rate=0.0, max_p99_ratio=None, max_psi=0.5)


class Windows:
    """Back-to-back named windows of the load; ``settle`` waits for answers showing a transition is done."""

    def __init__(self, load: PacedLoad) -> None:
        self.load = load
        self.marks: list[tuple[str, float, float]] = []
        self.start = time.monotonic()

    def answered_since(self, t: float) -> list[Sent]:
        return [s for s in self.load.requests(t) if s.status]

    def settle(self, versions: set[str], arms: set[str] | None = None, answers: int = 40) -> None:
        """Wait for ``answers`` answers in a row all by ``versions`` (and ``arms``), then let them come."""

        def done() -> bool:
            last = self.answered_since(self.start)[-answers:]
            return (
                len(last) == answers
                and {s.version for s in last} <= versions
                and (arms is None or {s.arm for s in last} <= arms)
            )

        wait_until(done, what=f"answers all by v{sorted(versions)} {arms or ''}")

    def cut(self, name: str) -> None:
        end = time.monotonic()
        self.marks.append((name, self.start, end))
        self.start = end


def run_rollout(controller: RolloutController, windows: Windows, name: str) -> Any:
    """Tick the controller to the end, cutting a window at every weight it moves to."""
    deadline = time.monotonic() + 120
    weight = controller.status().weight  # type: ignore[union-attr]
    while time.monotonic() < deadline:
        state, _ = controller.tick()
        if state is not None and state.running and state.weight != weight:
            windows.cut(f"{name} at {weight}%")
            weight = state.weight
        if state is not None and not state.running:
            windows.cut(f"{name} at {weight}%")
            return state
        time.sleep(0.3)
    raise AssertionError(f"rollout did not finish: {controller.status()}")


@pytest.fixture()
def app_url(serve_port: int, served_home: PlatformConfig) -> Iterator[tuple[str, dict[str, Any]]]:
    doc = document(serve_port, served_home.home, APP, {"autoscaling_config": None, "num_replicas": 1})
    doc["applications"][0]["deployments"][0]["user_config"]["alias_poll_s"] = 0.2
    yield deploy_config(doc)[APP], doc
    serve.delete(APP)


def test_every_rollout_transition_under_constant_load_fails_no_request(
    app_url: tuple[str, dict[str, Any]],
    served_home: PlatformConfig,
    champion_restored: str,  # noqa: F811
    token: str,  # noqa: F811
) -> None:
    url, doc = app_url
    controller = RolloutController(served_home, load_usecase("flights"))
    alias = tracking.client(served_home.mlflow).set_registered_model_alias
    blue = champion_restored
    load = PacedLoad(url, flights_from_frame(demo_flights(served_home, hours=8)), rate=RATE, connections=8,
                     timeout_s=60).start()  # fmt: skip
    windows = Windows(load)
    try:
        windows.settle({blue})
        windows.cut("steady")

        # canary: start at 20 %, step to 100 %, promote
        good = copy_of_champion(served_home)
        alias(NAME, "challenger", good)
        controller.start(RolloutConfig(steps=[20, 100], step_s=2, max_step_wait_s=90, thresholds=LIMITS), token)
        assert run_rollout(controller, windows, "canary").status == "promoted"
        windows.settle({good})
        windows.cut("promotion")

        # a challenger predicting noise: rolled back at its first step
        bad = register_random(served_home)
        controller.start(RolloutConfig(steps=[30, 100], step_s=2, max_step_wait_s=90, thresholds=LIMITS), token)
        rolled = run_rollout(controller, windows, "bad canary")
        assert rolled.status == "rolled_back" and "PSI" in rolled.reason, rolled.reason
        windows.settle({good})
        windows.cut("automatic rollback")

        # blue-green: every request to green at once, then back to blue at once
        green = copy_of_champion(served_home)
        alias(NAME, "challenger", green)
        controller.start(RolloutConfig(strategy="blue_green", step_s=600, thresholds=LIMITS), token)
        windows.settle({green})
        windows.cut("blue-green switch")
        controller.abort(token, "switch back")
        windows.settle({good})
        windows.cut("blue-green switch back")

        # shadow: callers only ever see the champion, before, during and after
        shadow = copy_of_champion(served_home)
        alias(NAME, "challenger", shadow)
        controller.start(RolloutConfig(strategy="shadow", steps=[100], step_s=600, thresholds=LIMITS), token)
        windows.settle({good}, {"champion"}, answers=100)
        windows.cut("shadow start")
        controller.abort(token, "shadow seen")
        windows.settle({good}, {"champion"}, answers=40)
        windows.cut("shadow stop")

        # serve deploy of a changed user_config: applied in place, answers never stop
        doc["applications"][0]["deployments"][0]["user_config"]["max_batch_size"] = 16
        deploy_config(doc)
        wait_until(lambda: httpx.get(f"{url}/info", timeout=30).json()["max_batch_size"] == 16, what="new config")
        windows.settle({good})
        windows.cut("serve deploy")
    finally:
        sent = load.stop()

    rows = {name: summarize(sent, t0, t1) for name, t0, t1 in windows.marks}
    for name, row in rows.items():
        print(f"{name:28} {row['requests']:>6} requests {row['failed']:>3} failed {row['rps']:6.1f} req/s "
              f"versions {row['versions']} arms {row['arms']}")  # fmt: skip
    assert all(row["requests"] > 0 for row in rows.values()), rows
    failed = {name: row["failed"] for name, row in rows.items() if row["failed"]}
    assert not failed, f"failed requests per transition: {failed}"

    # each transition shows in the versions and arms the callers got
    assert rows["steady"]["versions"] == [blue]
    assert set(rows["canary at 20%"]["versions"]) == {blue, good}
    assert set(rows["canary at 20%"]["arms"]) == {"champion", "challenger"}
    assert good in rows["canary at 100%"]["versions"]
    assert set(rows["bad canary at 30%"]["versions"]) == {good, bad}
    assert green in rows["blue-green switch"]["versions"]  # and its last 40 answers were all green (settle)
    assert good in rows["blue-green switch back"]["versions"]  # and its last 40 all blue again
    assert rows["shadow start"]["versions"] == [good] and rows["shadow start"]["arms"] == ["champion"]
    assert rows["shadow stop"]["versions"] == [good]
    # the shadow scored a mirror of the callers' requests while it ran (the log is flushed every 2 s)
    table = FeatureStore(served_home).offline.read_pandas("prediction_log")
    assert (table[(table["arm"] == "shadow")]["model_version"] == shadow).any(), "the shadow never scored"


def test_the_load_counts_every_request_a_server_fails_or_drops() -> None:
    """Against a server that answers 503 to some requests and closes the connection on others without an
    answer, the load's count of failures is exactly the server's (the other tests rely on it)."""
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen = {"n": 0, "bad": 0, "dropped": 0}
    lock = threading.Lock()

    class Flaky(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["content-length"]))
            with lock:
                seen["n"] += 1
                n = seen["n"]
            if n % 13 == 0:
                with lock:
                    seen["dropped"] += 1
                self.close_connection = True  # no answer at all: the client sees a closed socket
                return
            status = 503 if n % 7 == 0 else 200
            with lock:
                seen["bad"] += status != 200
            body = json.dumps({"model_version": "7"}).encode()
            self.send_response(status)
            self.send_header("content-length", str(len(body)))
            self.send_header("x-model-arm", "champion")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        load = PacedLoad(f"http://127.0.0.1:{server.server_port}/app", [{"a": 1}], rate=100, connections=4,
                         drain_s=1).start()  # fmt: skip
        time.sleep(3)
        sent = load.stop()
    finally:
        server.shutdown()
    row = summarize(sent, 0, float("inf"))
    assert row["requests"] == seen["n"] > 100
    assert row["failed"] == seen["bad"] + seen["dropped"] and seen["bad"] > 0 and seen["dropped"] > 0
    assert sum(1 for s in sent if s.status == 0) == seen["dropped"]
    assert row["versions"] == ["7"] and row["arms"] == ["champion"]
