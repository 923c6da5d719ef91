"""The one piece of global state: the connection to the Ray cluster; and starting one with token auth on.

Ray 2.60 checks a bearer token on every gRPC and dashboard (job submission) request when
``RAY_AUTH_MODE=token``, but ``ray start`` turns that on by itself only when a token file is
already there: on a fresh machine it starts a cluster that runs any job from anyone who reaches
the dashboard port. So every cluster we start gets ``RAY_AUTH_MODE=token`` and a token (created
owner-only when missing, where Ray looks for it), and every client we run sends it.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import ray

from ml_system.config import RayConfig
from ml_system.errors import ConfigError

log = logging.getLogger(__name__)


def quiet() -> None:
    """Keep Ray's and MLflow's INFO chatter out of a terminal that shows our own progress."""
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    for name in ("ray", "ray.data", "ray.tune", "ray.serve", "ray.train", "mlflow", "alembic"):
        logging.getLogger(name).setLevel(logging.WARNING)
    try:
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


AUTH_MODE_ENV = "RAY_AUTH_MODE"


def auth_token_path() -> Path:
    """Where Ray reads the token from: ``RAY_AUTH_TOKEN_PATH``, else ``~/.ray/auth_token``."""
    return Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()


def auth_token() -> str | None:
    """The token a client sends: ``RAY_AUTH_TOKEN``, else the token file's content."""
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    path = auth_token_path()
    return (path.read_text().strip() or None) if path.is_file() else None


def ensure_auth_token(path: Path | None = None) -> str:
    """The cluster's token, made when there is none: 32 random bytes in a file only its owner reads.

    Created exclusively (``O_EXCL``), so two starts racing on one machine end with one token; an
    existing file readable by others is narrowed to 0600.
    """
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token and path is None:
        return token
    path = path or auth_token_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if path.stat().st_mode & 0o077:
            path.chmod(0o600)
        token = path.read_text().strip()
        if not token:
            raise ConfigError(f"Ray token file {path} is empty: delete it and start again to make a new one") from None
        return token
    token = secrets.token_hex(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(token)
    log.info("made a Ray authentication token in %s (mode 0600)", path)
    return token


def token_auth_env(token_path: Path | None = None) -> dict[str, str]:
    """Environment of a cluster start (``ray start``, ``ray.init``): token auth on, a token in place."""
    ensure_auth_token(token_path)
    return {AUTH_MODE_ENV: "token", **({"RAY_AUTH_TOKEN_PATH": str(token_path)} if token_path else {})}


def use_token_auth() -> bool:
    """Make this process's Ray clients send the token when one is known and no mode is chosen.

    Ray only turns token mode on by itself for a cluster it finds on this machine; with an explicit
    address (``RAY_ADDRESS``, a job submission URL) a client sends nothing unless the mode is set.
    An explicit ``RAY_AUTH_MODE`` is respected.
    """
    if AUTH_MODE_ENV in os.environ:
        return os.environ[AUTH_MODE_ENV].lower() == "token"
    if auth_token() is None:
        return False
    os.environ[AUTH_MODE_ENV] = "token"
    _reread_ray_config()
    return True


def _reread_ray_config() -> None:
    """Ray reads its config (the auth mode among it) once per process, often on import: re-read it,
    or this process would start a cluster that wants a token and then connect without one."""
    try:
        from ray._raylet import Config

        Config.initialize("")
    except Exception:  # the environment alone holds for processes started from here
        log.debug("could not refresh Ray's config", exc_info=True)


def auth_headers(token_path: Path | None = None) -> dict[str, str]:
    """HTTP headers of a request to the dashboard (job submission), with the token when there is one."""
    token = auth_token() if token_path is None else (token_path.read_text().strip() or None)
    return {"Authorization": f"Bearer {token}"} if token else {}


def _local_cluster_alive(timeout_s: float = 1.0) -> bool:
    """Is the cluster that ``ray start`` recorded on this machine still listening?

    ``ray.init(address="auto")`` trusts that record, and a record left by a
    killed cluster makes it wait for a dead node instead of starting a new one.
    """
    record = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    try:
        host, _, port = record.read_text().strip().rpartition(":")
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return True
    except (OSError, ValueError):
        return False


def connect(config: RayConfig) -> str:
    """Attach to the configured or running cluster, else start a local one.

    Returns the dashboard URL. A local start pins ``object_store_memory``:
    Ray's default took 7.5 GB of this 24 GB machine.
    """
    if not ray.is_initialized():
        address = config.address or os.environ.get("RAY_ADDRESS")
        if address or _local_cluster_alive():
            use_token_auth()
        else:
            for name, value in token_auth_env().items():
                os.environ.setdefault(name, value)
            _reread_ray_config()
        if address:
            # attaching prints two INFO lines on stderr, which would break a command's one-line error
            ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        elif _local_cluster_alive():
            ray.init(address="auto", log_to_driver=False, logging_level=logging.WARNING)
            log.info("attached to the running local Ray cluster")
        else:
            ray.init(
                address="local",
                num_cpus=config.num_cpus,
                object_store_memory=config.object_store_memory,
                include_dashboard=True,
                dashboard_host=config.dashboard_host,
                log_to_driver=False,
            )
    ctx = ray.get_runtime_context()
    url = getattr(ctx, "dashboard_url", None) or ""
    if not url:
        try:
            url = ray._private.worker.global_worker.node.address_info.get("webui_url", "") or ""  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - the URL is informative only
            url = ""
    return url if not url or url.startswith("http") else f"http://{url}"


def alive_nodes() -> int:
    """Nodes of the connected cluster that are alive; 1 when this process has not joined one (a
    Ray call made then starts a local, single-node cluster)."""
    if not ray.is_initialized():
        return 1
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def refuse_node_local(action: str, locations: list[str]) -> None:
    """Refuse ``action`` on a cluster of several nodes while ``locations`` live on one node's disk.

    Tasks on another node would write and read their own copies there (an ``online.db``, Delta data
    files the driver's log names but cannot see) and nothing would fail. Checked before anything is
    written; one GCS call (``ray.nodes``), which is nothing beside the work it guards.
    """
    if not locations:
        return
    nodes = alive_nodes()
    if nodes > 1:
        raise ConfigError(
            f"cannot {action} on a cluster of {nodes} nodes: {'; '.join(locations)} "
            "is on one node's disk. Use s3:// locations and online_store.type redis, or list a mount that "
            "every node shares (NFS) in ray.shared_paths"
        )


@dataclass(frozen=True)
class HeadNode:
    """A head node started by ``start_head``; ``temp_dir`` tells its processes apart from any other cluster's."""

    gcs_address: str
    dashboard_url: str
    temp_dir: str


def head_command(
    *, port: int, dashboard_port: int, num_cpus: int, object_store_memory: int, temp_dir: str, ports: dict[str, int]
) -> list[str]:
    """``ray start --head`` of this Python's Ray on the given ports (``ports``: option name -> port)."""
    ray_cli = str(Path(sys.executable).with_name("ray"))
    command = [ray_cli, "start", "--head", "--port", str(port), "--dashboard-port", str(dashboard_port)]
    command += ["--dashboard-host", "127.0.0.1", "--include-dashboard", "true", "--num-cpus", str(num_cpus)]
    command += ["--object-store-memory", str(object_store_memory), "--temp-dir", temp_dir, "--disable-usage-stats"]
    for option, value in ports.items():
        command += [f"--{option}", str(value)]
    return command


def start_head(
    *,
    port: int,
    dashboard_port: int,
    num_cpus: int,
    object_store_memory: int,
    temp_dir: str,
    ports: dict[str, int] | None = None,
    env: dict[str, str] | None = None,
    token_path: Path | None = None,
    timeout_s: float = 120,
) -> HeadNode:
    """Start a head node with token authentication on and wait until its job API answers.

    The token is ``token_path`` (made when missing), else where Ray looks for it. Jobs run with this
    Python (its folder leads ``PATH``). ``temp_dir`` must be short (Ray puts Unix sockets under it).
    A start that fails or whose dashboard does not answer within ``timeout_s`` is stopped again and
    raises ``ConfigError``.
    """
    command = head_command(
        port=port, dashboard_port=dashboard_port, num_cpus=num_cpus, object_store_memory=object_store_memory,
        temp_dir=temp_dir, ports=ports or {},
    )  # fmt: skip
    environ = {**os.environ, **(env or {}), **token_auth_env(token_path)}
    environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{environ.get('PATH', '')}"
    head = HeadNode(f"127.0.0.1:{port}", f"http://127.0.0.1:{dashboard_port}", temp_dir)
    try:
        out = subprocess.run(command, capture_output=True, text=True, env=environ, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_head(head)
        raise ConfigError(f"ray start --head did not return within {timeout_s:.0f} s") from None
    if out.returncode != 0:
        stop_head(head)
        reason = (out.stderr.strip() or out.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise ConfigError(f"ray start --head failed (exit {out.returncode}): {reason[0]}")
    deadline = time.monotonic() + timeout_s
    request = urllib.request.Request(f"{head.dashboard_url}/api/jobs/", headers=auth_headers(token_path))
    while True:
        try:
            with urllib.request.urlopen(request, timeout=5):
                return head
        except (urllib.error.URLError, OSError) as exc:
            if time.monotonic() > deadline:
                stop_head(head)
                raise ConfigError(
                    f"the job API at {head.dashboard_url} did not answer within {timeout_s:.0f} s: {exc}"
                ) from None
            time.sleep(0.5)


def stop_head(head: HeadNode, grace_s: float = 10) -> int:
    """Stop the processes of this cluster only (``ray stop`` would stop every cluster on the machine).

    They are found by ``temp_dir`` on their command lines; returns how many were signalled.
    """
    mine = os.getpid()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == mine:
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(head.temp_dir.encode() in arg for arg in args):
            pids.append(int(entry.name))
    signalled = len(pids)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        alive = []
        for pid in pids:
            try:
                os.kill(pid, sig)
                alive.append(pid)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if Path(f"/proc/{p}").exists() and not _zombie(p)]
            time.sleep(0.2)
        pids = alive
        if not pids:
            break
    return signalled


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (OSError, IndexError):
        return True
