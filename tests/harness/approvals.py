"""Approvals from the outside: the approvers' REST API as one user, and calls that wait on it."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

from .masking import sse_messages
from .stack import Stack, tools_call

APPROVAL_REQUIRED = -32030

SESSION_RULE = {
    "id": "session",
    "methods": ["initialize", "notifications/*", "tools/list", "ping"],
    "outcome": "allow",
}


def approval_rule(rule_id: str = "echo-needs-approval", tools: tuple[str, ...] = ("echo",), **approval: Any) -> dict:
    """A rule: calls of `tools` need approval by `approvers` (more `approval:` fields as keywords)."""
    return {
        "id": rule_id,
        "tools": list(tools),
        "outcome": "approve",
        "approval": {"approver_group": "approvers", **approval},
    }


class Approver:
    """The approvals REST API with one user's approver token (the approvals audience)."""

    def __init__(
        self, stack: Stack, sub: str, groups: tuple[str, ...] = ("approvers",), rest_url: str | None = None
    ) -> None:
        """`rest_url`: another replica's REST API instead of the stack's service."""
        self.sub = sub
        token = stack.approver_token(sub, groups)
        self.http = httpx.Client(
            base_url=rest_url or stack.rest_url, headers={"authorization": f"Bearer {token}"}, timeout=10
        )

    def list(self, status: str | None = None) -> list[dict[str, Any]]:
        resp = self.http.get("/v1/approvals", params={"status": status} if status else {})
        assert resp.status_code == 200, f"GET /v1/approvals: {resp.status_code} {resp.text}"
        return resp.json()["approvals"]

    def get(self, approval_id: str) -> httpx.Response:
        return self.http.get(f"/v1/approvals/{approval_id}")

    def approve(self, approval_id: str, reason: str | None = "looks fine") -> httpx.Response:
        return self.http.post(f"/v1/approvals/{approval_id}/approve", json={"reason": reason} if reason else {})

    def deny(self, approval_id: str, reason: str | None) -> httpx.Response:
        return self.http.post(f"/v1/approvals/{approval_id}/deny", json={"reason": reason} if reason else {})

    def wait_pending(self, pred: Callable[[dict[str, Any]], bool] = lambda _a: True, timeout: float = 15) -> dict:
        """The first pending approval this user sees that satisfies `pred`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for a in self.list("pending"):
                if pred(a):
                    return a
            time.sleep(0.1)
        raise AssertionError(f"no pending approval appeared for {self.sub} within {timeout} s")

    def close(self) -> None:
        self.http.close()


class Caller:
    """One MCP session as one user, making tool calls that may wait for approval."""

    def __init__(self, stack: Stack, sub: str, groups: tuple[str, ...] = ("eng",)) -> None:
        self.stack = stack
        self.token = stack.token(sub, groups)
        self.session = stack.initialize(self.token)

    def call(self, tool: str, arguments: dict[str, Any], timeout: float = 40, url: str | None = None) -> httpx.Response:
        """`url`: through another Envoy (`Stack.envoy_for`) instead of the stack's."""
        return self.stack.post(
            tools_call(tool, arguments, request_id=7),
            token=self.token,
            headers={"mcp-session-id": self.session},
            timeout=timeout,
            url=url,
        )

    def call_in_background(
        self, tool: str, arguments: dict[str, Any], url: str | None = None
    ) -> Callable[[float], httpx.Response]:
        """Starts a call in a thread; the returned function waits for its answer."""
        out: dict[str, Any] = {}

        def run() -> None:
            try:
                out["resp"] = self.call(tool, arguments, url=url)
            except Exception as exc:  # noqa: BLE001 -- handed to the waiting test
                out["error"] = exc

        thread = threading.Thread(target=run, daemon=True)
        thread.start()

        def wait(timeout: float) -> httpx.Response:
            thread.join(timeout)
            assert not thread.is_alive(), f"the held call did not finish within {timeout} s"
            if "error" in out:
                raise out["error"]
            return out["resp"]

        return wait


class Webhook:
    """A local Slack-style webhook: answers `codes` in turn (then 200) and keeps what it got."""

    def __init__(self, codes: list[int]) -> None:
        self.codes, self.bodies = list(codes), []
        hook = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 -- http.server's name
                body = self.rfile.read(int(self.headers["content-length"]))
                hook.bodies.append(json.loads(body))
                self.send_response(hook.codes.pop(0) if hook.codes else 200)
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/B000/secret-part"

    def close(self) -> None:
        self.server.shutdown()


def messages(resp: httpx.Response) -> list[dict[str, Any]]:
    """The JSON-RPC messages of an answer (JSON or SSE)."""
    if resp.headers.get("content-type", "").startswith("text/event-stream"):
        return sse_messages(resp.content)
    return [resp.json()]


def answer(resp: httpx.Response) -> dict[str, Any]:
    """The JSON-RPC answer to the call (id 7)."""
    (found,) = [m for m in messages(resp) if m.get("id") == 7]
    return found


def pending_error(resp: httpx.Response) -> dict[str, Any]:
    """The approval in a 'waiting for approval' answer, checked for shape."""
    assert resp.status_code == 200, f"{resp.status_code} {resp.text}"
    error = answer(resp)["error"]
    assert error["code"] == APPROVAL_REQUIRED, error
    approval = error["data"]["approval"]
    assert approval["id"].startswith("apr_")
    assert approval["approver_url"].endswith(f"approval={approval['id']}")
    return approval
