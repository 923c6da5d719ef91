"""Constant HTTP load for rollout tests and the rollout benchmark: every answer recorded, failures counted."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class Answer:
    at: float
    key: int
    status: int
    version: str
    arm: str
    ms: float


@dataclass
class Load:
    """``threads`` clients posting one flight each, round robin over ``items``, until ``stop``."""

    url: str
    items: list[dict[str, Any]]
    threads: int = 4
    answers: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        for n in range(self.threads):
            worker = threading.Thread(target=self._run, args=(n,), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def _run(self, n: int) -> None:
        i = n
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                key = i % len(self.items)
                t0 = time.perf_counter()
                try:
                    r = client.post(f"{self.url}/predict", json={"flights": [self.items[key]]})
                    body = r.json() if r.status_code == 200 else {}
                    answer = Answer(
                        time.monotonic(), key, r.status_code, str(body.get("model_version", "")),
                        r.headers.get("x-model-arm", ""), (time.perf_counter() - t0) * 1000,
                    )  # fmt: skip
                except httpx.HTTPError:
                    answer = Answer(time.monotonic(), key, 0, "", "", (time.perf_counter() - t0) * 1000)
                with self._lock:
                    self.answers.append(answer)
                i += self.threads

    def stop(self) -> list[Answer]:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=60)
        return self.answers

    def since(self, t: float) -> list[Answer]:
        with self._lock:
            return [a for a in self.answers if a.at >= t]

    def failed(self) -> list[Answer]:
        return [a for a in self.answers if a.status != 200]
