"""Driving a serving endpoint with ``wrk``: the request script and the reading of its report.

The serving benchmark and the load tests (failover, autoscaling) send the same thing: one real
row per ``POST /predict``, drawn at random from a mix, over keep-alive connections. ``wrk`` is a
C load generator that costs the machine a small fraction of what a Python client would, which
matters when client and server share two cores.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

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
