"""Fail closed (guarantees 1 and 6): when the service or the audit store is unavailable, a
request is denied, never forwarded unaudited, and the gateway recovers once it is back.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from harness.stack import Stack, tools_call

pytestmark = pytest.mark.gateway


@pytest.fixture
def echo_stack(make_stack) -> Stack:
    return make_stack(upstream="echo")


def forwarded(stack: Stack) -> tuple[int, int]:
    return stack.upstream_requests(), len(stack.echo.received())


def test_service_down_denies_with_503(echo_stack):
    token = echo_stack.token("alice", ["eng"])
    ok = echo_stack.post(tools_call("echo", {"message": "before"}), token=token)
    assert ok.status_code == 200, ok.text

    echo_stack.service.kill()
    before = forwarded(echo_stack)
    resp = echo_stack.post(tools_call("echo", {"message": "while the service is down"}), token=token)

    assert resp.status_code == 503, f"{resp.status_code} {resp.text}"
    assert forwarded(echo_stack) == before, "forwarded without the service's decision (fail open)"
    # Envoy's own ext_authz failure is rewritten into a JSON-RPC error an MCP client can show.
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert body["jsonrpc"] == "2.0" and body["error"]["code"] == -32603
    assert "not forwarded" in body["error"]["message"]


@contextmanager
def audit_store_locked(db_path) -> Iterator[None]:
    """Hold SQLite's write lock: every write of the service fails (SQLITE_BUSY) meanwhile.

    (A read-only directory or file would not do: the tests may run as root, whom
    permissions do not stop.)
    """
    conn = sqlite3.connect(db_path, timeout=10, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def test_unwritable_audit_store_denies_and_recovers(echo_stack):
    token = echo_stack.token("alice", ["eng"])
    ok = echo_stack.post(tools_call("echo", {"message": "before"}), token=token)
    assert ok.status_code == 200, ok.text
    assert echo_stack.db_path.exists()

    with audit_store_locked(echo_stack.db_path):
        before = forwarded(echo_stack)
        resp = echo_stack.post(tools_call("echo", {"message": "unaudited?"}, request_id=13), token=token)

        assert resp.status_code == 503, f"{resp.status_code} {resp.text}"
        assert forwarded(echo_stack) == before, "forwarded although its request record could not be stored"
        body = resp.json()
        assert body["jsonrpc"] == "2.0" and body["id"] == 13 and body["error"]["message"], body
        assert "unaudited?" not in resp.text

    again = echo_stack.post(tools_call("echo", {"message": "after"}), token=token)
    assert again.status_code == 200, again.text
    # The denied call left no "allow" record behind: the only allowed calls are before/after.
    allowed = [r for r in echo_stack.audit.records(kind="request", limit=1000) if r["data"]["decision"] == "allow"]
    assert sorted(r["data"]["arguments"]["message"] for r in allowed) == ["after", "before"]


def test_repeated_calls_stay_denied_until_the_service_is_back(echo_stack):
    """No cached "allow" while the service is gone; decisions resume after a restart."""
    token = echo_stack.token("alice", ["eng"])
    assert echo_stack.post(tools_call("echo", {"message": "a"}), token=token).status_code == 200

    echo_stack.service.stop()
    before = forwarded(echo_stack)
    for _ in range(3):
        assert echo_stack.post(tools_call("echo", {"message": "b"}), token=token).status_code == 503
    assert forwarded(echo_stack) == before

    echo_stack.restart_service()
    resp = echo_stack.post(tools_call("echo", {"message": "c"}), token=token)
    assert resp.status_code == 200, resp.text
    assert (
        echo_stack.audit.wait_complete(resp.headers["x-gatehouse-request-id"])["request"]["data"]["decision"] == "allow"
    )
