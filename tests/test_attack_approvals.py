"""Attacks on approvals through real Envoy: an approver asked to approve text masking hid
from them, one caller flooding the gateway with held calls, and an agent approving with
the token it calls tools with."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from harness.approvals import SESSION_RULE, Approver, Caller, Webhook, answer, approval_rule, pending_error
from harness.stack import tools_call

pytestmark = [pytest.mark.gateway, pytest.mark.both_backends]

APPROVAL_LIMIT = -32032
FORBIDDEN = -32003
# A UNION between delimiters a detector may swallow whole, and a key any masker masks: an
# approver who reads the masked text cannot see what the query does.
SECRET = "AKIAIOSFODNN7EXAMPLE"
ATTACK_SQL = (
    "SELECT name FROM customers WHERE email = '-----BEGIN PRIVATE KEY-----' "
    f"UNION SELECT value FROM service_config WHERE key = '{SECRET}' OR '-----END PRIVATE KEY-----' <> ''"
)
PLACEHOLDER = re.compile(r"\[MASKED:[^\]]*\]")


def query_stack(make_stack, masked_arguments: str | None = None, approvals: dict | None = None):
    """The demo database, where `run_query` needs approval (retry mode)."""
    extra = {"masked_arguments": masked_arguments} if masked_arguments else {}
    rule = approval_rule("sql-needs-approval", ("run_query",), hold_seconds=0, **extra)
    return make_stack(upstream="demo", policy=[SESSION_RULE, rule], approvals=approvals)


def run_query(stack, caller: Caller, sql: str) -> httpx.Response:
    return stack.post(
        tools_call("run_query", {"sql": sql}, request_id=7),
        token=caller.token,
        headers={"mcp-session-id": caller.session},
    )


def pending_of(approver: Approver, subject: str) -> list[dict[str, Any]]:
    return [a for a in approver.list("pending") if a["subject"] == subject]


def wait_until(pred: Callable[[], bool], what: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.1)


def assert_report_is_true(clear: str, masked: str, spans: list[dict[str, Any]]) -> None:
    """The spans say exactly what masking did: the clear text with each span replaced by its
    placeholder, in order, is the masked text."""
    placeholders = PLACEHOLDER.findall(masked)
    assert spans and len(spans) == len(placeholders), (spans, masked)
    rebuilt, pos = "", 0
    for span, placeholder in zip(spans, placeholders, strict=True):
        assert span["pointer"] == "/sql"
        assert placeholder.startswith(f"[MASKED:{span['kind']}")
        rebuilt += clear[pos : span["offset"]] + placeholder
        pos = span["offset"] + span["length"]
    assert rebuilt + clear[pos:] == masked


def test_masked_arguments_are_refused_by_default_and_nothing_is_asked_or_forwarded(make_stack):
    stack = query_stack(make_stack)
    alice, bob = Caller(stack, "alice"), Approver(stack, "bob")
    before = stack.upstream_requests()

    resp = run_query(stack, alice, ATTACK_SQL)
    assert resp.status_code == 403, resp.text
    error = answer(resp)["error"]
    assert error["code"] == FORBIDDEN, error
    assert "masks some of its arguments" in error["message"] and "/sql" in error["message"], error
    assert error["data"]["approval_refused"]["masked"]["spans"], error
    assert SECRET not in resp.text and "UNION" not in resp.text
    # Nobody is asked to approve it, and it never reaches the database.
    assert bob.list() == []
    assert stack.upstream_requests() == before
    record = stack.audit.request(resp.headers["x-gatehouse-request-id"])["request"]["data"]
    assert record["decision"] == "deny" and "masked arguments" in record["reason"], record
    # A call masking leaves alone still asks as before.
    assert pending_error(run_query(stack, alice, "SELECT count(*) FROM customers"))["status"] == "pending"


def test_show_masked_tells_the_approver_what_was_masked_where_and_how_long(make_stack):
    hook = Webhook([])
    try:
        stack = query_stack(make_stack, "show_masked", approvals={"webhook": {"url": hook.url}})
        alice, bob = Caller(stack, "alice"), Approver(stack, "bob")
        approval = pending_error(run_query(stack, alice, ATTACK_SQL))
        shown = bob.get(approval["id"]).json()
        stack.audit.wait_records(
            lambda recs: any(r["data"].get("event") == "notified" for r in recs), "notified record", kind="approval"
        )
    finally:
        hook.close()
    masked_sql = shown["arguments"]["sql"]
    assert masked_sql != ATTACK_SQL
    assert shown["masked"]["mode"] == "show_masked"
    assert_report_is_true(ATTACK_SQL, masked_sql, shown["masked"]["spans"])
    assert "arguments_clear" not in shown
    assert shown["can_approve"] is True, "show_masked is the rule's word that masked values need no reading"
    # The `requested` record says the same, and holds no clear text.
    (requested,) = [r["data"] for r in stack.audit.records(kind="approval") if r["data"].get("event") == "requested"]
    assert requested["masked"]["spans"] == shown["masked"]["spans"]
    assert SECRET not in json.dumps(requested)
    # So does the webhook's text.
    (body,) = hook.bodies
    assert "WARNING: the arguments were changed by masking" in body["text"], body
    assert "argument /sql at character" in body["text"], body
    assert SECRET not in body["text"]


def test_show_clear_shows_the_clear_sql_to_the_approver_group_only_and_never_stores_it(make_stack):
    stack = query_stack(make_stack, "show_clear")
    alice, bob = Caller(stack, "alice"), Approver(stack, "bob")
    auditor, requester = Approver(stack, "ines", ("auditors",)), Approver(stack, "alice", ("eng",))
    approval = pending_error(run_query(stack, alice, ATTACK_SQL))

    shown = bob.get(approval["id"]).json()
    assert shown["arguments_clear"] == {"sql": ATTACK_SQL}, "the approver reads what would run"
    assert shown["arguments"]["sql"] != ATTACK_SQL and SECRET not in json.dumps(shown["arguments"])
    assert shown["masked"]["mode"] == "show_clear" and shown["masked"]["clear_available"] is True
    assert_report_is_true(ATTACK_SQL, shown["arguments"]["sql"], shown["masked"]["spans"])
    # Nobody else: not an auditor, not the caller's own view, not the list to others.
    for other in (auditor, requester):
        seen = other.get(approval["id"])
        assert seen.status_code == 200, seen.text
        assert "arguments_clear" not in seen.json() and SECRET not in seen.text
        listed = [a for a in other.list() if a["id"] == approval["id"]]
        assert listed and SECRET not in json.dumps(listed)
    assert [a["arguments_clear"] for a in bob.list("pending")] == [{"sql": ATTACK_SQL}]
    # Neither the trail nor the database holds it in clear, in any file.
    for name, data in stack.trail_files().items():
        assert SECRET.encode() not in data, f"the clear SQL is in {name}"

    assert bob.approve(approval["id"], "read it: it dumps service_config").status_code == 200
    allowed = answer(run_query(stack, alice, ATTACK_SQL))
    assert "error" not in allowed, allowed
    assert "arguments_clear" not in bob.get(approval["id"]).json(), "kept only while pending"


def test_show_clear_after_a_restart_cannot_be_approved_until_the_caller_sends_it_again(make_stack, audit_backend):
    stack = query_stack(make_stack, "show_clear")
    alice, bob = Caller(stack, "alice"), Approver(stack, "bob")
    approval = pending_error(run_query(stack, alice, ATTACK_SQL))
    stack.restart_service()
    if audit_backend == "postgres":
        # Sealed under the replicas' key from service.session_key_file: a restart (another
        # replica) still reads them. Under another key (a new key file) they do not open.
        assert bob.get(approval["id"]).json()["arguments_clear"] == {"sql": ATTACK_SQL}
        (stack.dir / "session.key").unlink()
        stack.restart_service()
        alice = Caller(stack, "alice")  # its session was bound under the old key
    # SQLite: sealed under a key of the process only, never written: gone with it.

    shown = bob.get(approval["id"]).json()
    assert shown["status"] == "pending" and "arguments_clear" not in shown
    assert (shown["can_decide"], shown["can_approve"], shown["masked"]["clear_available"]) == (True, False, False)
    refused = bob.approve(approval["id"])
    assert refused.status_code == 409 and "cannot be approved" in refused.json()["error"], refused.text
    # The caller's retry joins the approval and shows the text again.
    assert pending_error(run_query(stack, alice, ATTACK_SQL))["id"] == approval["id"]
    assert bob.get(approval["id"]).json()["arguments_clear"] == {"sql": ATTACK_SQL}
    assert bob.approve(approval["id"]).status_code == 200


def test_a_flood_of_held_calls_is_capped_and_other_callers_go_on(make_stack):
    hold, flood = 10, 30
    rules = [
        SESSION_RULE,
        approval_rule(hold_seconds=hold),
        {"id": "others", "tools": ["*"], "outcome": "allow"},
    ]
    stack = make_stack(policy=rules, ext_authz_timeout_ms=(hold + 5) * 1000)
    mallory, dora, carol = Caller(stack, "mallory"), Caller(stack, "dora"), Approver(stack, "carol")
    cap = 8  # approvals.max_held_per_caller's default

    with ThreadPoolExecutor(max_workers=flood) as pool:
        calls = [pool.submit(mallory.call, "echo", {"message": f"flood {i}"}) for i in range(flood)]
        # While the flood is held (its approvals are pending), another caller's calls go on:
        # an allowed tool, and their own held call.
        wait_until(lambda: len(pending_of(carol, "mallory")) >= cap, f"{cap} held calls of mallory")
        other = dora.call("get-sum", {"a": 1, "b": 2})
        assert other.status_code == 200 and "error" not in answer(other), other.text
        waiting = dora.call_in_background("echo", {"message": "dora's own"})
        mine = carol.wait_pending(lambda a: a["subject"] == "dora")
        assert carol.approve(mine["id"]).status_code == 200
        assert answer(waiting(hold + 5))["result"]["content"][0]["text"] == "Echo: dora's own"
        answers = [call.result() for call in calls]

    codes = [answer(a)["error"]["code"] for a in answers]
    assert codes.count(APPROVAL_LIMIT) == flood - cap, codes
    for resp in answers:
        error = answer(resp)["error"]
        if error["code"] == APPROVAL_LIMIT:
            assert resp.status_code == 429, resp.text
            assert "already have 8 calls waiting" in error["message"], error
        else:
            assert pending_error(resp)["status"] == "pending"
    # No more approvals than held calls: the refused ones asked nothing.
    assert len(pending_of(carol, "mallory")) == cap
    # Every flood call has its request record, the refused ones saying why.
    records = [stack.audit.request(a.headers["x-gatehouse-request-id"])["request"]["data"] for a in answers]
    assert sum("max_held_per_caller" in r["reason"] for r in records) == flood - cap, records


def test_distinct_pending_approvals_per_caller_are_capped(make_stack):
    stack = make_stack(policy=[SESSION_RULE, approval_rule(hold_seconds=0)], approvals={"max_pending_per_caller": 3})
    mallory, bob = Caller(stack, "mallory"), Approver(stack, "bob")
    asked = [pending_error(mallory.call("echo", {"message": f"spam {i}"}))["id"] for i in range(3)]
    over = mallory.call("echo", {"message": "spam 3"})
    assert over.status_code == 429, over.text
    assert answer(over)["error"]["code"] == APPROVAL_LIMIT
    assert answer(over)["error"]["data"]["approval_refused"] == {"limit": "max_pending_per_caller", "max": 3}
    assert sorted(a["id"] for a in bob.list("pending")) == sorted(asked), "no fourth approval (or webhook) for spam"
    # The same call joins its pending approval; once one is decided, a new one may be asked.
    assert pending_error(mallory.call("echo", {"message": "spam 0"}))["id"] == asked[0]
    assert bob.deny(asked[0], "spam").status_code == 200
    assert pending_error(mallory.call("echo", {"message": "spam 3"}))["id"] not in asked


def test_an_mcp_token_cannot_approve_and_an_approver_token_cannot_call_mcp(make_stack):
    stack = make_stack(policy=[SESSION_RULE, approval_rule(hold_seconds=0)])
    alice, bob = Caller(stack, "alice"), Approver(stack, "bob")
    approval = pending_error(alice.call("echo", {"message": "approve me"}))
    # An agent in the approvers group, holding its MCP token: refused on every endpoint.
    agent = httpx.Client(
        base_url=stack.rest_url, headers={"authorization": f"Bearer {stack.token('bob', ['approvers'])}"}, timeout=10
    )
    for method, path in [
        ("GET", "/v1/approvals"),
        ("GET", "/v1/approvals?status=pending"),
        ("GET", f"/v1/approvals/{approval['id']}"),
        ("POST", f"/v1/approvals/{approval['id']}/approve"),
        ("POST", f"/v1/approvals/{approval['id']}/deny"),
    ]:
        resp = agent.request(method, path, json={"reason": "agent"} if method == "POST" else None)
        assert resp.status_code == 401, f"{method} {path}: {resp.status_code} {resp.text}"
    agent.close()
    assert bob.get(approval["id"]).json()["status"] == "pending"
    # An approver's token is for approvals only: MCP refuses it.
    resp = stack.post(tools_call("echo", {"message": "x"}), token=stack.approver_token("bob"))
    assert resp.status_code == 401, resp.text


def test_a_call_released_by_an_approval_carries_neither_the_callers_nor_the_approvers_token(make_stack):
    """The Check that lets a held call through is the one that removes the client's
    credentials: the upstream sees no Authorization, and neither token in any header."""
    rule = approval_rule("deploy-needs-approval", ("deploy",), hold_seconds=10)
    stack = make_stack(upstream="echo", policy=[SESSION_RULE, rule], ext_authz_timeout_ms=15000)
    alice_token = stack.token("alice", ("eng",))
    bob = Approver(stack, "bob")
    bob_token = stack.approver_token("bob", ("approvers",))
    with ThreadPoolExecutor(1) as pool:
        held = pool.submit(
            stack.post,
            tools_call("deploy", {"service": "billing"}, request_id=3),
            token=alice_token,
        )
        pending = bob.wait_pending(lambda a: a["subject"] == "alice" and a["tool"] == "deploy")
        assert not stack.echo.received(), "the held call reached the upstream before its approval"
        assert bob.approve(pending["id"]).status_code == 200
        resp = held.result(timeout=30)
    assert resp.status_code == 200, resp.text
    (seen,) = stack.echo.received()
    assert "authorization" not in seen.header_names()
    for name, values in seen.headers.items():
        for value in values:
            for token in (alice_token, bob_token):
                assert token not in value and token.split(".")[2] not in value, (
                    f"a token reached the upstream in {name}"
                )
