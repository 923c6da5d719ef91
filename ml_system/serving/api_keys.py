"""Team tokens as HTTP API keys: who is calling a serving app, in one dict lookup.

A request presents a team token as ``Authorization: Bearer <token>`` or ``x-api-key: <token>``.
The replica keeps ``SHA-256 -> (team, token id)`` for every token the platform knows (the teams
state folder's ``tokens.json`` and the ``token_sha256`` lists of ``resource_groups.yaml``), built
when it starts and rebuilt when ``tokens.json`` changes (its modification time is looked at once
every ``REFRESH_S`` seconds, never per request), so a check costs one SHA-256 of the presented
token and one dict lookup: no file read, no comparison loop. A dict lookup by a hash the caller
cannot steer toward a stored one (it would need a SHA-256 preimage) leaks nothing usable by its
timing, which is why ``identity.authenticate``'s compare-every-hash loop is not needed here.

When keys are needed: ``/push`` and ``/info`` always (``/info`` on a platform with no team token
at all stays open: there is no key to present); ``/predict`` per ``AppArgs.api_keys``: ``auto``
(default) when Serve's HTTP proxy binds an address other than loopback and the platform has team
tokens (with none it stays open, and a warning says so at replica start), ``required`` always,
``off`` never (``auto`` also turns it on where Serve's direct ingress gives replicas ports on every
interface); ``/healthz`` never (load balancers and Serve's own probes call it).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from pathlib import Path

from starlette.datastructures import Headers

from ml_system.config import PlatformConfig
from ml_system.serving.http import HTTPProblem
from ml_system.teams.access import Access, Actor
from ml_system.teams.identity import hash_token

log = logging.getLogger("ml_system.serving")

REFRESH_S = 5.0
CHALLENGE = {"WWW-Authenticate": 'Bearer realm="mlsys"'}


def is_loopback(host: str) -> bool:
    """``127.0.0.1``, ``::1``, ``localhost``; ``0.0.0.0`` and every other address are reachable from outside."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def proxy_host(default: str) -> str:
    """The address Serve's HTTP proxy binds (``http_options.host``); ``default`` outside a Serve cluster."""
    try:
        import ray
        from ray.serve.context import _get_global_client

        return str(ray.get(_get_global_client()._controller.get_http_config.remote(), timeout=10).host)
    except Exception:  # noqa: BLE001 - no Serve controller reachable: the platform config's host is the one used
        return default


def replicas_listen_widely() -> bool:
    """Serve's direct ingress (on with HAProxy) gives each replica an HTTP port on every interface, whatever
    ``http_options.host`` says: a request reaching it skips the proxy, so ``auto`` counts it as exposed."""
    try:
        from ray.serve._private import constants

        return bool(constants.RAY_SERVE_ENABLE_DIRECT_INGRESS)
    except Exception:  # noqa: BLE001 - a Serve without the setting has no direct ingress
        return False


def presented_token(headers: Headers) -> str | None:
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        return (value.strip() or None) if scheme.lower() == "bearer" else None
    return headers.get("x-api-key") or None


class ApiKeys:
    """The token hashes of a replica, and whether ``/predict`` needs one."""

    def __init__(self, config: PlatformConfig, mode: str, host: str) -> None:
        self.config = config
        self.host = host
        self.mode = mode
        self.exposed = not is_loopback(host) or replicas_listen_widely()
        self.tokens_file = Path(config.teams.state_dir) / "tokens.json"
        self._seen = self._stamp()
        self._next_look = time.monotonic() + REFRESH_S
        self.index: dict[str, tuple[str, str]] = {}
        self.load()
        if mode == "auto" and self.exposed and not self.index:
            log.warning(
                "the app is reachable from other machines (%s) but the platform has no team tokens: /predict "
                "answers without a key until one is issued (`mlsys groups token issue TEAM`)",
                host,
            )

    def _stamp(self) -> float:
        try:
            return self.tokens_file.stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def load(self) -> None:
        """Rebuild the hash table (at start, on reconfigure, and when ``tokens.json`` changed)."""
        try:
            self.index = Access.from_config(self.config).index()
        except Exception as exc:  # noqa: BLE001 - a broken groups file must not take the app down: no key passes
            log.error("team tokens could not be read (%s); every request that needs a key is refused", exc)
            self.index = {}

    def _refresh(self) -> None:
        now = time.monotonic()
        if now < self._next_look:
            return
        self._next_look = now + REFRESH_S
        stamp = self._stamp()
        if stamp != self._seen:
            self._seen = stamp
            self.load()

    @property
    def any_known(self) -> bool:
        self._refresh()
        return bool(self.index)

    @property
    def predict_needs_key(self) -> bool:
        """``required``; or ``auto`` on an exposed app of a platform that has team tokens (one that has none
        stays open, as the CLI does: the quickstart's app answers without a key)."""
        if self.mode == "required":
            return True
        return self.mode == "auto" and self.exposed and self.any_known

    def caller(self, headers: Headers) -> Actor:
        """The team calling, or a 401 problem saying what was wrong (never the token)."""
        self._refresh()
        token = presented_token(headers)
        if token is None:
            raise HTTPProblem(
                401, "an API key is required: send a team token as 'Authorization: Bearer <token>'", CHALLENGE
            )
        found = self.index.get(hash_token(token))
        if found is None:
            raise HTTPProblem(401, "the API key is not valid (revoked, mistyped, or of a removed team)", CHALLENGE)
        return Actor(*found)
