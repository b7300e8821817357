"""The auditors' REST API: only members of `audit.auditor_group` read records; filters work."""

from __future__ import annotations

import httpx
import pytest

from harness.stack import tools_call

pytestmark = [pytest.mark.gateway, pytest.mark.both_backends]


def test_health_and_metrics_answer(stack):
    assert httpx.get(f"{stack.rest_url}/healthz", timeout=5).status_code == 200
    metrics = httpx.get(f"{stack.rest_url}/metrics", timeout=5)
    assert metrics.status_code == 200 and metrics.text.strip()


def test_audit_api_needs_an_auditor(stack):
    resp = stack.post(tools_call("echo", {"message": "secret-ish"}), token=stack.token("alice", ["eng"]))
    request_id = resp.headers["x-gatehouse-request-id"]
    stack.audit.wait_complete(request_id)

    for path in ("/v1/audit/records", f"/v1/audit/requests/{request_id}"):
        url = stack.rest_url + path
        assert httpx.get(url, timeout=5).status_code == 401
        # An audit-audience token of someone outside the auditor group: refused as such.
        alice_auth = {"authorization": f"Bearer {stack.auditor_token('alice', ['eng'])}"}
        alice = httpx.get(url, headers=alice_auth, timeout=5)
        assert alice.status_code == 403
        assert "secret-ish" not in alice.text
        # An auditor's MCP token (what an agent acting for them holds) cannot read the trail.
        mcp_token = httpx.get(url, headers=stack.auth("ines", ["auditors"]), timeout=5)
        assert mcp_token.status_code == 401, mcp_token.text
        assert "secret-ish" not in mcp_token.text
        auditor = httpx.get(url, headers={"authorization": f"Bearer {stack.auditor_token('ines')}"}, timeout=5)
        assert auditor.status_code == 200
        assert "secret-ish" in auditor.text


def test_unknown_request_id_is_404(stack):
    auth = {"authorization": f"Bearer {stack.auditor_token('ines')}"}
    resp = httpx.get(f"{stack.rest_url}/v1/audit/requests/{'0' * 32}", headers=auth)
    assert resp.status_code == 404


def test_record_filters(stack):
    alice, bob = stack.token("alice", ["eng"]), stack.token("bob", ["approvers"])
    ids = []
    for token, tool, args in ((alice, "echo", {"message": "a"}), (bob, "get-sum", {"a": 1, "b": 2})):
        session = stack.initialize(token)
        resp = stack.post(tools_call(tool, args), token=token, headers={"mcp-session-id": session})
        assert resp.status_code == 200
        ids.append(resp.headers["x-gatehouse-request-id"])
    for request_id in ids:
        stack.audit.wait_complete(request_id)

    bobs = stack.audit.records(user="bob", kind="request", limit=1000)
    assert bobs and {r["data"]["subject"] for r in bobs} == {"bob"}
    assert any(r["data"]["tool"] == "get-sum" for r in bobs)

    echoes = stack.audit.records(tool="echo", kind="request", limit=1000)
    assert [r["request_id"] for r in echoes] == [ids[0]]

    responses = stack.audit.records(kind="response", limit=1000)
    assert responses and {r["kind"] for r in responses} == {"response"}

    assert len(stack.audit.records(limit=1)) == 1
    # Request records carry the upstream (response records are found through their request).
    everything = stack.audit.records(upstream="everything", limit=1000)
    assert len([r for r in everything if r["kind"] == "request"]) == 6  # 2 x (initialize, initialized, call)
    assert stack.audit.records(upstream="no-such-upstream", limit=1000) == []
