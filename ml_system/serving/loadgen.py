"""Driving a serving endpoint with ``wrk``: the request script and the reading of its report.

The serving benchmark and the load tests (failover, autoscaling) send the same thing: one real
row per ``POST /predict``, drawn at random from a mix, over keep-alive connections. ``wrk`` is a
C load generator that costs the machine a small fraction of what a Python client would, which
matters when client and server share two cores.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def lua_script(rows: list[dict[str, Any]], path: Path, items_field: str = "flights", route: str = "/predict") -> Path:
    """A ``wrk -s`` script posting ``{items_field: [row]}`` for a random row per request."""
    bodies = ",\n".join("[[" + json.dumps({items_field: [r]}) + "]]" for r in rows)
    path.write_text(
        "bodies = {\n" + bodies + "\n}\n"
        "init = function(args) math.randomseed(os.time() + tonumber(tostring({}):sub(8), 16)) end\n"
        "request = function()\n"
        f"  return wrk.format('POST', '{route}', {{['Content-Type'] = 'application/json'}},"
        " bodies[math.random(#bodies)])\n"
        "end\n"
    )
    return path


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def read_report(out: str) -> dict[str, float]:
    """requests, failed (non-2xx answers and socket errors), rps and, with ``--latency``, p50/p99 in ms."""
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    requests = re.search(r"(\d+) requests in", out)
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if requests is None or rps is None:
        raise ValueError(f"not a wrk report: {out[-500:]!r}")
    report = {
        "requests": float(requests.group(1)),
        "failed": float((int(bad.group(1)) if bad else 0) + (sum(int(g) for g in errs.groups()) if errs else 0)),
        "rps": float(rps.group(1)),
    }
    for pct in ("50", "99"):
        found = re.search(rf"\s{pct}%\s+(\S+)", out)
        if found:
            report[f"p{pct}_ms"] = _ms(found.group(1))
    return report


# ---- constant-rate load with every request logged -----------------------------------------------
# wrk alone is closed-loop: each connection sends its next request as soon as the last one is
# answered, so a slow transition lowers the load exactly when it should be measured. The script
# below paces each connection to a fixed schedule (``delay()``, with a clock read through LuaJIT's
# FFI) and logs every request it sends and every answer it gets, with CLOCK_MONOTONIC times that
# ``time.monotonic()`` reads too. One connection per wrk thread makes sends and answers alternate on
# a thread, so each answer's latency is known and a send never answered (socket error, reset,
# still hanging when the load stops) shows up as a send with no answer after it.
_PACED = """local ffi = require("ffi")
ffi.cdef[[ typedef struct { long s; long ns; } mlsys_ts; int clock_gettime(int, mlsys_ts *); ]]
local ts = ffi.new("mlsys_ts")
local function now_ms() ffi.C.clock_gettime(1, ts); return tonumber(ts.s) * 1000 + tonumber(ts.ns) / 1e6 end
local counter = 0
setup = function(thread) counter = counter + 1; thread:set("id", counter) end
local log, nextslot, sent_at, stopped, paced
init = function(args)
  math.randomseed(os.time() + id)
  log = io.open(LOG_PREFIX .. id, "w")
  log:setvbuf("line")  -- readable while the load runs
  nextslot = now_ms() + INTERVAL * id / THREADS  -- connections spread over one period
end
delay = function()
  if stopped then return 3600000 end
  local f = io.open(STOP_FILE, "r")
  if f then f:close(); stopped = true; return 3600000 end
  paced = true
  local t = now_ms()
  if nextslot < t - 1000 then nextslot = t end  -- after a stall, catch up at most one second of sends
  local wait = nextslot - t
  nextslot = nextslot + INTERVAL
  if wait < 0 then return 0 end
  return wait
end
request = function()
  -- wrk calls request() once on the first thread to check it, before any delay(): that one is never sent
  if paced then
    sent_at = now_ms()
    log:write(string.format("S %.3f\\n", sent_at))
  end
  return wrk.format("POST", ROUTE, {["Content-Type"] = "application/json"}, bodies[math.random(#bodies)])
end
response = function(status, headers, body)
  local t = now_ms()
  local version = string.match(body, '"model_version"%s*:%s*"([^"]*)"') or "-"
  local arm = headers["x-model-arm"] or headers["X-Model-Arm"] or "-"
  log:write(string.format("R %.3f %d %.3f %s %s\\n", t, status, t - sent_at, version, arm))
end
"""


@dataclass
class Sent:
    """One request of a :class:`PacedLoad`: ``status`` 0 when no answer came back in time; ``answered`` is the
    status of an answer that came late (0: none at all)."""

    at: float
    status: int = 0
    answered: int = 0
    ms: float = float("nan")
    version: str = ""
    arm: str = ""


@dataclass
class PacedLoad:
    """``rate`` requests per second, on a fixed schedule, over ``connections`` keep-alive connections.

    ``start()`` runs wrk; ``stop()`` stops new sends, lets the requests in flight finish for
    ``drain_s`` and returns every request sent, in order. A request fails when its answer is not a
    200, never comes, or takes longer than ``timeout_s``.
    """

    url: str
    rows: list[dict[str, Any]]
    rate: float = 200.0
    connections: int = 32
    timeout_s: float = 5.0
    items_field: str = "flights"
    route: str = "/predict"
    drain_s: float = 6.0
    _dir: Path | None = None
    _proc: subprocess.Popen[str] | None = None
    report: dict[str, float] = field(default_factory=dict)

    def start(self) -> PacedLoad:
        self._dir = Path(tempfile.mkdtemp(prefix="paced-load-"))
        script = self._dir / "paced.lua"
        bodies = ",\n".join("[[" + json.dumps({self.items_field: [r]}) + "]]" for r in self.rows)
        interval_ms = 1000.0 * self.connections / self.rate
        path = urlsplit(self.url).path.rstrip("/")  # wrk sends the script's path, not the URL's
        header = (
            f"LOG_PREFIX = {json.dumps(str(self._dir / 'log.'))}\nSTOP_FILE = {json.dumps(str(self._dir / 'stop'))}\n"
            f"INTERVAL = {interval_ms!r}\nTHREADS = {self.connections}\nROUTE = {json.dumps(path + self.route)}\n"
            f"bodies = {{\n{bodies}\n}}\n"
        )
        script.write_text(header + _PACED)
        n = self.connections
        cmd = ["wrk", f"-t{n}", f"-c{n}", "-d24h", "--timeout", f"{self.timeout_s:g}s", "--latency", "-s", str(script)]
        self._proc = subprocess.Popen([*cmd, self.url], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return self

    def stop(self) -> list[Sent]:
        assert self._proc is not None and self._dir is not None, "start() first"
        (self._dir / "stop").touch()
        time.sleep(self.drain_s)
        self._proc.send_signal(signal.SIGINT)
        out, _ = self._proc.communicate(timeout=60)
        self.report = read_report(out) if "requests in" in out else {}
        sent = self.requests()
        shutil.rmtree(self._dir, ignore_errors=True)
        return sent

    def requests(self, since: float = 0.0) -> list[Sent]:
        """The requests sent so far (from ``since``, monotonic seconds); those still in flight have status 0."""
        assert self._dir is not None, "start() first"
        sent: list[Sent] = []
        for log in self._dir.glob("log.*"):
            last: Sent | None = None
            for line in log.read_text().splitlines():
                parts = line.split() or ["-"]
                if parts[0] == "S" and len(parts) == 2:
                    last = Sent(float(parts[1]) / 1000.0)
                    sent.append(last)
                elif parts[0] == "R" and len(parts) == 6 and last is not None:
                    ms = float(parts[3])
                    last.answered = int(parts[2])
                    last.status = last.answered if ms <= self.timeout_s * 1000 else 0
                    last.ms, last.version, last.arm = ms, parts[4].strip("-"), parts[5].strip("-")
                    last = None
        return sorted((s for s in sent if s.at >= since), key=lambda s: s.at)


def summarize(sent: list[Sent], start: float, end: float) -> dict[str, Any]:
    """Requests sent in ``[start, end)`` (monotonic seconds): count, failed, p99 of the answers, rate, versions."""
    mine = [s for s in sent if start <= s.at < end]
    ms = sorted(s.ms for s in mine if s.status)
    p99 = ms[max(0, math.ceil(0.99 * len(ms)) - 1)] if ms else float("nan")  # nearest rank
    return {
        "requests": len(mine),
        "failed": sum(1 for s in mine if s.status != 200),
        "failures": [s for s in mine if s.status != 200][:10],
        "p99_ms": p99,
        "rps": len(mine) / (end - start) if end > start else 0.0,
        "versions": sorted({s.version for s in mine if s.version}),
        "arms": sorted({s.arm for s in mine if s.arm}),
    }
