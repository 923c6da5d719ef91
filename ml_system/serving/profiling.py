"""Opt-in cProfile of a serving replica, to see where a request's CPU goes inside it.

``MLSYS_SERVE_PROFILE_DIR=/dir`` in the cluster's environment makes each replica profile the
thread that builds it (in Serve's throughput mode that is the thread whose event loop also runs
Serve's request handling, so Serve's own per-request work shows beside ours) and write
``/dir/<pid>.prof`` every few seconds; ``python -m pstats`` reads it. py-spy would see every
thread without a hook, but is not installed everywhere; off, this costs one environment lookup
per replica start.
"""

from __future__ import annotations

import asyncio
import atexit
import cProfile
import os
from pathlib import Path

ENV = "MLSYS_SERVE_PROFILE_DIR"
DUMP_EVERY_S = 5.0


def start_if_asked() -> None:
    """Start profiling this thread when ``MLSYS_SERVE_PROFILE_DIR`` is set; dump from its event loop."""
    folder = os.environ.get(ENV)
    if not folder:
        return
    Path(folder).mkdir(parents=True, exist_ok=True)
    profile = cProfile.Profile()
    target = Path(folder) / f"{os.getpid()}.prof"

    async def dump() -> None:
        while True:
            await asyncio.sleep(DUMP_EVERY_S)
            profile.disable()
            profile.dump_stats(target)
            profile.enable()

    profile.enable()
    try:
        asyncio.get_running_loop().create_task(dump())
    except RuntimeError:  # built outside an event loop: write once, at exit
        atexit.register(profile.dump_stats, target)
