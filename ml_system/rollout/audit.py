"""The audit log of model promotions and rollouts: who did what, when, why, and what came of it.

One JSON object per line in ``<rollout.uri>/audit.log``, only ever appended (opened ``"a"``, written
under an exclusive ``flock`` and fsynced), so a reader during an incident uses ``cat`` or ``jq``.
Each entry carries the SHA-256 of the line before it: an entry edited or removed later breaks the
chain, which ``verify`` reports. Refusals are written too: a wrong token, a failed gate or a bad
rollout config leave a line even though nothing moved.

A database table was the alternative; an append-only file on the platform's storage needs no
server and is what an operator can read when everything else is down.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

GENESIS = "0" * 64


@dataclass(frozen=True)
class AuditEntry:
    action: str
    """``promote``, ``force_promote``, ``rollout_start``, ``rollout_step``, ``rollout_promote``, ``rollback``,
    ``abort``."""
    usecase: str
    outcome: str
    """``done`` or ``refused``."""
    who: str
    """The team the token belongs to, or ``system`` for the controller, ``unknown`` for a refused token."""
    reason: str = ""
    model: str = ""
    from_version: str = ""
    to_version: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    at: str = ""
    prev_sha256: str = ""


def _digest(line: str) -> str:
    return hashlib.sha256(line.encode()).hexdigest()


class AuditLog:
    def __init__(self, folder: str | Path) -> None:
        self.path = Path(folder) / "audit.log"

    def append(self, entry: AuditEntry) -> AuditEntry:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a+") as out:
            fcntl.flock(out, fcntl.LOCK_EX)
            try:
                out.seek(0)
                lines = out.read().splitlines()
                prev = _digest(lines[-1]) if lines else GENESIS
                stamped = AuditEntry(
                    **{**asdict(entry), "at": datetime.now(UTC).isoformat(timespec="milliseconds"), "prev_sha256": prev}
                )
                out.write(json.dumps(asdict(stamped), sort_keys=True, default=str) + "\n")
                out.flush()
                os.fsync(out.fileno())
            finally:
                fcntl.flock(out, fcntl.LOCK_UN)
        return stamped

    def entries(self, usecase: str | None = None) -> list[AuditEntry]:
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = [AuditEntry(**json.loads(line)) for line in lines if line.strip()]
        return [e for e in out if usecase is None or e.usecase == usecase]

    def verify(self) -> list[int]:
        """Line numbers (1-based) whose ``prev_sha256`` does not match the line before: edits or deletions."""
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            return []
        broken = []
        prev = GENESIS
        for i, line in enumerate(lines, 1):
            if json.loads(line).get("prev_sha256") != prev:
                broken.append(i)
            prev = _digest(line)
        return broken
