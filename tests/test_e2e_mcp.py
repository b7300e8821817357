"""A real MCP client through the whole gateway (Envoy + gatehouse.wasm + gatehouse service) to
the real server-everything: everything works as without the gateway, and every request
is audited: a request record (decision allow) committed before forwarding, and a final
response record, linked by the request id the client sees in `x-gatehouse-request-id`.
"""

from __future__ import annotations

import json
from collections import defaultdict

import pytest

from harness.masking import sse_messages
from harness.mcp_client import Recorder, run_session, sampling_answer, text_of, wait_for
from harness.stack import LATEST_PROTOCOL, REQUEST_ID_RE, tools_call

pytestmark = [pytest.mark.gateway, pytest.mark.both_backends]


def test_sdk_session_through_gateway_is_fully_audited(stack):
    progress: list[float] = []

    async def body(session, rec: Recorder):
        tools = {t.name for t in (await session.list_tools()).tools}
        echoed = await session.call_tool("echo", {"message": "through the gateway"})

        async def on_progress(p: float, total: float | None, message: str | None) -> None:
            progress.append(p)

        await session.call_tool(
            "trigger-long-running-operation", {"duration": 0.6, "steps": 3}, progress_callback=on_progress
        )
        await wait_for(lambda: any(e.method == "GET" for e in rec.exchanges), "the GET stream to open")
        return tools, echoed

    (tools, echoed), rec = run_session(stack.url, body, headers=stack.auth("alice", ["eng"]))

    # The client sees what it would see without the gateway.
    assert {"echo", "trigger-long-running-operation"} <= tools
    assert text_of(echoed) == "Echo: through the gateway"
    assert progress == [1, 2, 3], "progress notifications (SSE events) lost or reordered by the gateway"
    assert [e.content_type for e in rec.posts_of("tools/call")] == ["text/event-stream"] * 2
    assert [e.status for e in rec.by_method("GET")][:1] == [200]
    assert [e.status for e in rec.by_method("DELETE")] == [200]

    assert_every_exchange_audited(stack, rec, "alice")


def test_sampling_round_trip_through_gateway(stack):
    """The client's answer to a server request is a JSON-RPC response, POSTed: forwarded and audited."""

    async def body(session, rec: Recorder):
        return await session.call_tool("trigger-sampling-request", {"prompt": "abc", "maxTokens": 5})

    result, rec = run_session(stack.url, body, headers=stack.auth("alice", ["eng"]), sampling_callback=sampling_answer)

    assert "sampled:cba" in text_of(result)
    answers = [e for e in rec.by_method("POST") if e.rpc_method is None]
    assert [e.status for e in answers] == [202]
    assert_every_exchange_audited(stack, rec, "alice")


def assert_every_exchange_audited(stack, rec: Recorder, subject: str) -> None:
    """Each HTTP exchange has its own request id, a request record (allow) and one final response record."""
    ids = [e.response_headers.get("x-gatehouse-request-id", "") for e in rec.exchanges]
    assert all(REQUEST_ID_RE.match(i) for i in ids), f"missing/bad x-gatehouse-request-id: {ids}"
    assert len(set(ids)) == len(ids), "request ids must be unique per request"

    for exchange, request_id in zip(rec.exchanges, ids, strict=True):
        audited = stack.audit.wait_complete(request_id)
        req = audited["request"]
        assert req is not None and req["kind"] == "request"
        assert req["request_id"] == request_id
        data = req["data"]
        assert data["decision"] == "allow"
        assert data["subject"] == subject
        assert data["upstream"] == "everything"
        assert data["http_method"] == exchange.method
        if exchange.rpc_method:
            assert data["mcp_method"] == exchange.rpc_method
        finals = [r for r in audited["responses"] if r["data"].get("final")]
        assert len(finals) == 1, (
            f"{exchange.method} {exchange.rpc_method}: want one final response record, got {audited['responses']}"
        )
        assert all(r["kind"] == "response" and r["request_id"] == request_id for r in audited["responses"])
        if exchange.method == "POST":
            assert finals[0]["data"]["http_status"] == exchange.status


def test_tool_call_records_hold_arguments_and_result(stack):
    token = stack.token("alice", ["eng"])
    session = stack.initialize(token)

    resp = stack.post(
        tools_call("echo", {"message": "audit me"}, request_id=42), token=token, headers={"mcp-session-id": session}
    )

    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    (answer,) = [m for m in sse_messages(resp.text) if m.get("id") == 42]
    assert answer["result"]["content"][0]["text"] == "Echo: audit me"

    request_id = resp.headers["x-gatehouse-request-id"]
    audited = stack.audit.wait_complete(request_id)
    data = audited["request"]["data"]
    assert data["mcp_method"] == "tools/call"
    assert data["tool"] == "echo"
    assert data["arguments"] == {"message": "audit me"}
    assert data["jsonrpc_id"] == 42
    # The client holds the session id tagged for its caller; the record keeps the upstream's.
    assert data["session_id"] == session.split(".", 1)[1]
    assert data["protocol_version"] == LATEST_PROTOCOL
    assert data["path"] == stack.mcp_path
    final = [r for r in audited["responses"] if r["data"]["final"]][-1]["data"]
    assert final["http_status"] == 200
    assert final["content_type"].startswith("text/event-stream")
    assert "Echo: audit me" in json.dumps(audited["responses"]), "the answer is not in the response records"


def test_request_record_is_committed_before_the_upstream_sees_the_request(make_stack):
    """Guarantee 1: while the upstream handles a request, its request record is already stored."""
    stack = make_stack(upstream="echo")
    stack.echo.on_request = lambda req: stack.audit.request(req.headers["x-gatehouse-request-id"][0])

    resp = stack.post(tools_call("echo", {"message": "x"}), token=stack.token("alice", ["eng"]))

    assert resp.status_code == 200
    (seen_by_upstream,) = stack.echo.hook_results
    assert not isinstance(seen_by_upstream, Exception), seen_by_upstream
    assert seen_by_upstream["request"] is not None, "request record not committed when the upstream got the call"
    assert seen_by_upstream["request"]["data"]["decision"] == "allow"
    assert seen_by_upstream["request"]["request_id"] == resp.headers["x-gatehouse-request-id"]


def test_audit_records_form_a_hash_chain_per_writer(stack):
    token = stack.token("alice", ["eng"])
    session = stack.initialize(token)
    for i in range(3):
        resp = stack.post(tools_call("echo", {"message": f"m{i}"}), token=token, headers={"mcp-session-id": session})
        stack.audit.wait_complete(resp.headers["x-gatehouse-request-id"])

    by_writer: dict[str, list[dict]] = defaultdict(list)
    for rec in stack.audit.records(limit=1000):
        by_writer[rec["writer"]].append(rec)

    assert sum(len(v) for v in by_writer.values()) >= 8  # initialize + notification + 3 calls, each request+response
    for writer, recs in by_writer.items():
        recs.sort(key=lambda r: r["seq"])
        for prev, cur in zip(recs, recs[1:], strict=False):
            assert cur["seq"] > prev["seq"]
            assert cur["prev_hash"] == prev["hash"], f"writer {writer}: chain broken at seq {cur['seq']}"
        assert len({r["hash"] for r in recs}) == len(recs)


def test_https_listener_serves_mcp_with_the_dev_ca(stack):
    async def body(session, rec: Recorder):
        return {t.name for t in (await session.list_tools()).tools}

    tools, rec = run_session(stack.https_url, body, headers=stack.auth("bob", ["approvers"]), ca=stack.ca_cert)

    assert "echo" in tools
    request_id = rec.posts_of("tools/list")[0].response_headers["x-gatehouse-request-id"]
    assert stack.audit.wait_complete(request_id)["request"]["data"]["subject"] == "bob"


def test_notifications_are_forwarded_and_audited(stack):
    token = stack.token("alice", ["eng"])
    session = stack.initialize(token)
    before = stack.upstream_requests()

    resp = stack.post(
        {"jsonrpc": "2.0", "method": "notifications/roots/list_changed"},
        token=token,
        headers={"mcp-session-id": session},
    )

    assert resp.status_code == 202
    assert stack.upstream_requests() == before + 1
    audited = stack.audit.wait_complete(resp.headers["x-gatehouse-request-id"])
    assert audited["request"]["data"]["mcp_method"] == "notifications/roots/list_changed"
    assert audited["request"]["data"]["jsonrpc_id"] is None
