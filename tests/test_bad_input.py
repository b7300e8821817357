"""Malformed or hostile requests are answered by the gateway with a clear JSON-RPC error,
are never forwarded (Envoy's upstream counter and the echo upstream both stay still), and
leave a `request_rejected` audit record. Spoofed `x-gatehouse-*` headers and the client's
own token never reach the upstream.
"""

from __future__ import annotations

import json

import pytest

from harness.stack import REQUEST_ID_RE, Stack, tools_call

pytestmark = pytest.mark.gateway

MAX_REQUEST_BYTES = 64 * 1024
MODERN = "2026-07-28"
HEADER_MISMATCH = -32020  # JSON-RPC code the 2026-07-28 revision defines for a header/body mismatch


@pytest.fixture
def echo_stack(make_stack) -> Stack:
    return make_stack(upstream="echo", max_request_bytes=MAX_REQUEST_BYTES)


class Untouched:
    """Proves that nothing reached the upstream between `__init__` and `check()`."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.envoy_count = stack.upstream_requests()
        self.echo_count = len(stack.echo.received())
        self.rejected_seqs = {r["seq"] for r in stack.audit.records(kind="request_rejected", limit=1000)}

    def check(self) -> None:
        assert self.stack.upstream_requests() == self.envoy_count, "Envoy forwarded the request upstream"
        assert len(self.stack.echo.received()) == self.echo_count, "the upstream received the request"

    def new_rejection(self) -> dict:
        recs = self.stack.audit.wait_records(
            lambda rs: any(r["seq"] not in self.rejected_seqs for r in rs),
            "new request_rejected record",
            kind="request_rejected",
            limit=1000,
        )
        new = [r for r in recs if r["seq"] not in self.rejected_seqs]
        assert len(new) == 1, f"want exactly one new request_rejected record, got {new}"
        return new[0]


def assert_jsonrpc_error(resp, status: int, code: int | None, ids: tuple = (None,)) -> dict:
    """`ids`: the acceptable `id` values (null when the request's id could not be read)."""
    assert resp.status_code == status, f"want {status}, got {resp.status_code}: {resp.text}"
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert body.get("jsonrpc") == "2.0", body
    assert "id" in body and body["id"] in ids, body
    error = body.get("error")
    assert isinstance(error, dict) and isinstance(error.get("code"), int) and error.get("message"), body
    if code is not None:
        assert error["code"] == code, body
    return error


def test_valid_request_is_forwarded(echo_stack):
    """Control for the rest of this file: the same path does forward good requests."""
    before = echo_stack.upstream_requests()

    resp = echo_stack.post(tools_call("echo", {"message": "ok"}, request_id=1), token=echo_stack.token())

    assert resp.status_code == 200, resp.text
    assert resp.json()["id"] == 1
    assert echo_stack.upstream_requests() == before + 1
    assert echo_stack.echo.received()[-1].json()["params"]["arguments"] == {"message": "ok"}


def test_malformed_json_is_a_parse_error(echo_stack):
    untouched = Untouched(echo_stack)

    resp = echo_stack.post(None, token=echo_stack.token(), content=b'{"jsonrpc": "2.0", "id": 1, "method": ')

    assert_jsonrpc_error(resp, 400, -32700)
    untouched.check()
    rejected = untouched.new_rejection()["data"]
    assert rejected["http_status"] == 400 and rejected["jsonrpc_code"] == -32700


@pytest.mark.parametrize(
    "payload",
    [
        {"hello": "world"},
        {"jsonrpc": "1.0", "id": 1, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 1},
        {"jsonrpc": "2.0", "id": {"nested": True}, "method": "tools/list"},
        {"jsonrpc": "2.0", "id": 1, "method": 7},
        "just a string",
        42,
    ],
    ids=["no-jsonrpc", "version-1.0", "no-method", "object-id", "numeric-method", "string", "number"],
)
def test_json_that_is_not_jsonrpc_is_an_invalid_request(echo_stack, payload):
    untouched = Untouched(echo_stack)

    resp = echo_stack.post(payload, token=echo_stack.token())

    readable_id = payload.get("id") if isinstance(payload, dict) and isinstance(payload.get("id"), int) else None
    assert_jsonrpc_error(resp, 400, -32600, ids=(None, readable_id))
    untouched.check()
    rejected = untouched.new_rejection()["data"]
    assert rejected["http_status"] == 400 and rejected["jsonrpc_code"] == -32600


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", ""])
def test_wrong_content_type_is_415(echo_stack, content_type):
    untouched = Untouched(echo_stack)
    body = json.dumps(tools_call("echo", {"message": "x"}, request_id=5)).encode()

    resp = echo_stack.post(None, token=echo_stack.token(), content=body, headers={"content-type": content_type})

    assert_jsonrpc_error(resp, 415, None, ids=(None, 5))
    untouched.check()
    assert untouched.new_rejection()["data"]["http_status"] == 415


def test_oversize_body_is_413(echo_stack):
    untouched = Untouched(echo_stack)
    big = tools_call("echo", {"message": "x" * (MAX_REQUEST_BYTES + 1024)}, request_id=6)

    resp = echo_stack.post(big, token=echo_stack.token())

    assert_jsonrpc_error(resp, 413, None, ids=(None, 6))
    untouched.check()
    assert untouched.new_rejection()["data"]["http_status"] == 413


def modern_call(tool: str, request_id: int) -> dict:
    """A 2026-07-28 (stateless) tools/call: the envelope travels in params._meta."""
    msg = tools_call(tool, {"message": "m"}, request_id=request_id)
    msg["params"]["_meta"] = {
        "io.modelcontextprotocol/protocolVersion": MODERN,
        "io.modelcontextprotocol/clientCapabilities": {},
    }
    return msg


def test_modern_request_with_matching_headers_is_forwarded(echo_stack):
    before = echo_stack.upstream_requests()
    headers = {"mcp-protocol-version": MODERN, "mcp-method": "tools/call", "mcp-name": "echo"}

    resp = echo_stack.post(modern_call("echo", 8), token=echo_stack.token(), headers=headers)

    assert resp.status_code == 200, resp.text
    assert echo_stack.upstream_requests() == before + 1


@pytest.mark.parametrize(
    "headers",
    [
        {"mcp-method": "tools/list", "mcp-name": "echo"},
        {"mcp-method": "tools/call", "mcp-name": "delete-everything"},
        {"mcp-name": "echo"},
    ],
    ids=["method-mismatch", "name-mismatch", "method-missing"],
)
def test_modern_header_body_mismatch_is_400(echo_stack, headers):
    untouched = Untouched(echo_stack)

    resp = echo_stack.post(
        modern_call("echo", 9), token=echo_stack.token(), headers={"mcp-protocol-version": MODERN, **headers}
    )

    assert_jsonrpc_error(resp, 400, HEADER_MISMATCH, ids=(9,))
    untouched.check()
    rejected = untouched.new_rejection()["data"]
    assert rejected["http_status"] == 400 and rejected["jsonrpc_code"] == HEADER_MISMATCH


def test_spoofed_gatehouse_headers_and_client_token_never_reach_upstream(echo_stack):
    token = echo_stack.token("alice", ["eng"])
    spoofed = {
        "x-gatehouse-request-id": "f" * 32,
        "x-gatehouse-subject": "root",
        "X-Gatehouse-Groups": "admins",
        "x-gatehouse-decision": "allow",
        "x-gatehouse-approval-id": "approved-by-nobody",
    }

    resp = echo_stack.post(tools_call("echo", {"message": "hi"}, request_id=11), token=token, headers=spoofed)

    assert resp.status_code == 200, resp.text
    got = echo_stack.echo.received()[-1]
    gatehouse_headers = {k: v for k, v in got.headers.items() if k.startswith("x-gatehouse-")}
    assert set(gatehouse_headers) == {"x-gatehouse-request-id"}, (
        f"spoofed headers reached the upstream: {gatehouse_headers}"
    )
    (upstream_request_id,) = gatehouse_headers["x-gatehouse-request-id"]
    assert upstream_request_id != "f" * 32
    assert REQUEST_ID_RE.match(upstream_request_id)
    assert resp.headers["x-gatehouse-request-id"] == upstream_request_id

    all_upstream_header_values = json.dumps(got.headers)
    assert token not in all_upstream_header_values, "the client's bearer token was forwarded upstream"
    assert "root" not in all_upstream_header_values and "admins" not in all_upstream_header_values

    audited = echo_stack.audit.wait_complete(upstream_request_id)
    assert audited["request"]["data"]["subject"] == "alice"
    assert "admins" not in audited["request"]["data"]["groups"]
