"""Reading the session index (`/v1/sessions`) as an auditor."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

from harness.stack import Stack


def auditor(stack: Stack) -> httpx.Client:
    return httpx.Client(
        base_url=stack.rest_url, headers={"authorization": f"Bearer {stack.auditor_token()}"}, timeout=10
    )


def wait_sessions(client: httpx.Client, pred: Callable[[list[dict[str, Any]]], bool], **params: Any) -> list[dict]:
    """The sessions `params` select, once `pred` holds for them (the index follows the trail)."""
    deadline = time.monotonic() + 15
    while True:
        resp = client.get("/v1/sessions", params=params)
        assert resp.status_code == 200, resp.text
        sessions = resp.json()["sessions"]
        if pred(sessions):
            return sessions
        assert time.monotonic() < deadline, f"sessions never matched: {sessions}"
        time.sleep(0.2)
