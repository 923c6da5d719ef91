"""The Redis store's read path against a server that asks for a password, a database and TLS.

Reads skip redis-py's per-command machinery (a pinned connection per thread,
commands packed by the store), so what a production URL carries (password,
database number, ``rediss://``) must still reach the server: here one private
``redis-server`` with ``requirepass`` listens on a plain port and a TLS port (a
throwaway self-signed certificate), and the same rows are read through both.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from collections.abc import Iterator

import pytest
import redis

from ml_system.errors import StoreUnavailableError
from ml_system.features.online.redis import RedisOnlineStore
from ml_system.features.online.resp import RespLink, pack_command
from tests.conftest import free_port, wait_for_port

PASSWORD = "s3cret*pw"


@pytest.fixture(scope="module")
def guarded_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int]]:
    server, openssl = shutil.which("redis-server"), shutil.which("openssl")
    if server is None or openssl is None:
        pytest.fail("redis-server and openssl are needed; .ci/run installs redis-server")
    workdir = tmp_path_factory.mktemp("redis-tls")
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    # temporary paths hold no spaces: split command lines stay readable
    req = f"req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 -keyout {key} -out {cert}"
    subprocess.run([openssl, *req.split()], check=True, capture_output=True)
    port, tls_port = free_port(), free_port()
    args = (
        f"--port {port} --tls-port {tls_port} --bind 127.0.0.1 --tls-cert-file {cert} --tls-key-file {key} "
        f"--tls-ca-cert-file {cert} --tls-auth-clients no --requirepass {PASSWORD} --dir {workdir} --save"
    )
    proc = subprocess.Popen([server, *args.split(), ""], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, proc, "redis-server", 10)
    wait_for_port(tls_port, proc, "redis-server (TLS)", 10)
    yield port, tls_port
    proc.terminate()
    proc.wait(timeout=10)


def test_password_database_and_tls_reach_the_server(guarded_redis: tuple[int, int]) -> None:
    port, tls_port = guarded_redis
    prefix = f"t{uuid.uuid4().hex[:8]}"
    plain = RedisOnlineStore(f"redis://:{PASSWORD}@127.0.0.1:{port}/3", prefix=prefix)
    plain.write_batch("v", [("a", 5, 5, [1.25, "x"])], fields=["f", "g"])
    tls = RedisOnlineStore(f"rediss://:{PASSWORD}@127.0.0.1:{tls_port}/3?ssl_cert_reqs=none", prefix=prefix)
    for store in (plain, tls):
        (row,) = store.read_views([("v", ["a"])])[0]
        assert row is not None and row.values == [1.25, "x"] and row.event_ts == 5
        assert store.read("v", ["a", "b"])[1] is None
    # database 3, not 0: the SELECT was sent
    admin = redis.Redis(port=port, password=PASSWORD, db=0)
    assert admin.exists(f"{prefix}:v:a") == 0
    assert redis.Redis(port=port, password=PASSWORD, db=3).exists(f"{prefix}:v:a") == 1
    admin.close()
    plain.close()
    tls.close()


def test_a_wrong_password_is_refused_with_the_servers_reason(guarded_redis: tuple[int, int]) -> None:
    port, _ = guarded_redis
    for url, reason in (
        (f"redis://:wrong@127.0.0.1:{port}/0", "invalid username-password"),
        (f"redis://127.0.0.1:{port}/0", "NOAUTH"),
    ):
        store = RedisOnlineStore(url)
        with pytest.raises((redis.AuthenticationError, redis.ResponseError), match=reason):
            store.read_views([("v", ["a"])])
        store.close()


@pytest.mark.parametrize("fast_read_link", [True, False])
def test_a_server_that_is_gone_is_unavailable(fast_read_link: bool) -> None:
    store = RedisOnlineStore(f"redis://127.0.0.1:{free_port()}/0", fast_read_link=fast_read_link)
    with pytest.raises(StoreUnavailableError, match="did not answer"):
        store.read_views([("v", ["a"])])
    with pytest.raises(StoreUnavailableError):
        store.write_batch("v", [("a", 1, 1, [1.0])], fields=["f"])
    store.close()


@pytest.mark.parametrize("spin_us", [0, 100])
def test_spinning_and_sleeping_reads_answer_alike(redis_url: str, spin_us: int) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    store = RedisOnlineStore(redis_url, prefix=prefix, read_spin_us=spin_us)
    store.write_batch("v", [(str(i), i, i, [float(i), str(i)]) for i in range(500)], fields=["f", "g"])
    rows = store.read_views([("v", [str(i) for i in range(0, 600, 3)])])[0]  # a reply of several TCP segments
    assert [None if r is None else r.values for r in rows] == [
        [float(i), str(i)] if i < 500 else None for i in range(0, 600, 3)
    ]
    store.close()


def test_the_spin_pauses_when_replies_keep_arriving_after_it(redis_url: str) -> None:
    """A Redis too far away for the spin (here: paused by CLIENT PAUSE) stops costing spins."""
    link = RespLink(redis_url, spin_us=20)
    admin = redis.Redis.from_url(redis_url)
    assert link.call(pack_command([b"PING"])) == b"PONG" and link.spinning
    for _ in range(8):
        admin.client_pause(5)  # milliseconds: the reply comes long after a 20 µs spin gave up
        assert link.call(pack_command([b"PING"])) == b"PONG"
    assert not link.spinning
    link.close()
    admin.close()
