"""A paced load of MCP calls through a stack's gateway, in background threads."""

from __future__ import annotations

import threading
import time
from collections import Counter

import httpx

from .stack import tools_call


class Load:
    """`rate` calls a second of `echo` (each its own message) from `workers` threads until
    `stop()`; keeps each answer's status (or error) and request id."""

    def __init__(self, stack, rate: int, workers: int = 24) -> None:
        self.stack, self.rate, self.workers = stack, rate, workers
        self.token = stack.token()
        self.session = stack.initialize(self.token)
        self.answers: list[tuple[int | str, str]] = []
        self.started = time.monotonic()
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._work, args=(w,), daemon=True) for w in range(workers)]
        for thread in self.threads:
            thread.start()

    def _work(self, worker: int) -> None:
        headers = {
            "authorization": f"Bearer {self.token}",
            "mcp-session-id": self.session,
            "accept": "application/json, text/event-stream",
        }
        with httpx.Client(timeout=15) as client:
            n = 0
            while not self.done.is_set():
                # Paced: this worker's n-th call goes at its slot of the overall rate.
                due = self.started + (n * self.workers + worker) / self.rate
                if due > time.monotonic():
                    time.sleep(due - time.monotonic())
                n += 1
                body = tools_call("echo", {"message": f"w{worker}-{n}"}, request_id=n)
                try:
                    resp = client.post(self.stack.url, json=body, headers=headers)
                    self.answers.append((resp.status_code, resp.headers.get("x-gatehouse-request-id", "")))
                except httpx.HTTPError as exc:
                    self.answers.append((repr(exc), ""))

    def stop(self) -> Counter:
        self.done.set()
        for thread in self.threads:
            thread.join(60)
        return Counter(s for s, _ in self.answers)
