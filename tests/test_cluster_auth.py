"""Clusters we start check Ray's token: a job submitted without it is refused, with it runs."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from ray.exceptions import AuthenticationError
from ray.job_submission import JobStatus, JobSubmissionClient

from ml_system.cluster import HeadNode, auth_headers, ensure_auth_token, stop_head, use_token_auth
from ml_system.errors import ConfigError
from ml_system.serving.deploy import free_port
from tests.ray_head import PORT_OPTIONS, private_head

REPO = Path(__file__).resolve().parents[1]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_missing_token_is_made_owner_only_and_a_wider_one_is_narrowed(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    made = tmp_path / "ray" / "auth_token"
    token = ensure_auth_token(made)
    assert len(token) == 64 and made.read_text() == token and mode(made) == 0o600
    assert ensure_auth_token(made) == token  # an existing token is kept
    made.chmod(0o644)
    assert ensure_auth_token(made) == token and mode(made) == 0o600
    made.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        ensure_auth_token(made)


def test_clients_send_a_known_token_unless_a_mode_was_chosen(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "auth_token"))
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    assert use_token_auth() is False  # an explicit choice is respected
    monkeypatch.delenv("RAY_AUTH_MODE")
    assert use_token_auth() is False and "RAY_AUTH_MODE" not in os.environ  # no token known: nothing to send
    ensure_auth_token(tmp_path / "auth_token")
    assert auth_headers() == {"Authorization": f"Bearer {(tmp_path / 'auth_token').read_text()}"}


def submit_over_http(dashboard_url: str, headers: dict[str, str]) -> int:
    """POST a job as any HTTP client can (Ray's own client may add a token this process knows)."""
    body = json.dumps({"entrypoint": "echo anyone"}).encode()
    request = urllib.request.Request(f"{dashboard_url}/api/jobs/", data=body, method="POST", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def refused_then_accepted(dashboard_url: str, token_path: Path) -> None:
    assert submit_over_http(dashboard_url, {}) == 401
    assert submit_over_http(dashboard_url, {"Authorization": "Bearer guessed"}) == 403
    with pytest.raises(AuthenticationError, match="invalid"):
        JobSubmissionClient(dashboard_url, headers={"Authorization": "Bearer guessed"}).submit_job(entrypoint="echo x")
    client = JobSubmissionClient(dashboard_url, headers=auth_headers(token_path))
    job = client.submit_job(entrypoint="echo with-the-token")
    deadline = time.monotonic() + 120
    while not client.get_job_status(job).is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert client.get_job_status(job) == JobStatus.SUCCEEDED
    assert "with-the-token" in client.get_job_logs(job)
    assert [j.entrypoint for j in client.list_jobs()] == ["echo with-the-token"]  # the refused ones never ran


@pytest.mark.integration
def test_start_head_checks_the_token(monkeypatch) -> None:
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    with private_head(num_cpus=1, object_store_memory=200_000_000) as (head, token_path):
        assert mode(token_path) == 0o600
        refused_then_accepted(head.dashboard_url, token_path)


@pytest.mark.integration
def test_the_documented_start_script_checks_the_token_on_a_fresh_machine(monkeypatch) -> None:
    """``cluster/start_head.sh`` with no token anywhere and no RAY_AUTH_MODE: as a bare ``ray start`` would be."""
    temp_dir = tempfile.mkdtemp(prefix="/tmp/rh")
    token_path = Path(temp_dir) / "auth_token"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"RAY_AUTH_TOKEN_PATH": str(token_path), "PATH": f"{Path(sys.executable).parent}:{env['PATH']}"}
    port, dashboard = free_port(), free_port()
    args = [
        "--port",
        str(port),
        "--dashboard-port",
        str(dashboard),
        "--temp-dir",
        temp_dir,
        "--num-cpus",
        "1",
        "--object-store-memory",
        "200000000",
        "--dashboard-host",
        "127.0.0.1",
        "--disable-usage-stats",
    ]
    for option in PORT_OPTIONS:
        args += [f"--{option}", str(free_port())]
    head = HeadNode(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard}", temp_dir)
    try:
        out = subprocess.run(["bash", "cluster/start_head.sh", *args], capture_output=True, text=True, env=env,
                             cwd=REPO, timeout=180)  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        assert mode(token_path) == 0o600
        refused_then_accepted(head.dashboard_url, token_path)
    finally:
        stop_head(head)
        shutil.rmtree(temp_dir, ignore_errors=True)


LOCAL_START = """
import ray
from ml_system.cluster import connect
from ml_system.config import load_config

connect(load_config().ray)

@ray.remote
def ping() -> str:
    return "pong"

print(ray.get(ping.remote(), timeout=120))
"""


def test_a_local_start_wants_the_token_and_its_own_driver_sends_it(tmp_path: Path) -> None:
    """``mlsys quickstart``'s path: Ray has read its config on import, before ``connect`` turns token
    mode on; the driver must still present the token to the cluster it just started."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"RAY_AUTH_TOKEN_PATH": str(tmp_path / "auth_token"), "MLSYS_HOME": str(tmp_path / "home"),
            "MLSYS_RAY__NUM_CPUS": "1", "MLSYS_RAY__OBJECT_STORE_MEMORY": "100000000"}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", LOCAL_START], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=300)  # fmt: skip
    assert out.returncode == 0 and out.stdout.strip().endswith("pong"), out.stderr[-3000:]
    assert mode(tmp_path / "auth_token") == 0o600
