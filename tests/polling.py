"""Polling with a deadline for tests that wait on a cluster: the deadline only turns a hang into a failure."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


def wait_until(what: str, check: Callable[[], object], timeout_s: float = 120) -> None:
    """Poll ``check`` every half second until it is true, or fail naming ``what``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    pytest.fail(f"not reached within {timeout_s} s: {what}")
