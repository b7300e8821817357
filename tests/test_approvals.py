"""Just-in-time approvals end to end through real Envoy: calls held in the Check until an
approver decides over REST, retry mode, grants, expiry, who may decide, one decision
winning, a restart while pending, notifications, and every step in the audit trail."""

from __future__ import annotations

import json
import threading
import time
from typing import Any

import pytest

from harness.approvals import SESSION_RULE, Approver, Caller, Webhook, answer, approval_rule, pending_error

pytestmark = [pytest.mark.gateway, pytest.mark.both_backends]

OTHER_TOOLS = {"id": "other-tools", "tools": ["*"], "outcome": "allow"}


def approval_stack(make_stack, *, approvals: dict | None = None, **approval: Any):
    """server-everything where `echo` needs approval by `approvers` (hold 0 = retry mode unless given)."""
    approval.setdefault("hold_seconds", 0)
    return make_stack(
        policy=[SESSION_RULE, approval_rule(**approval), OTHER_TOOLS],
        approvals=approvals,
        ext_authz_timeout_ms=max(2000, approval["hold_seconds"] * 1000 + 5000),
    )


def approval_steps(stack, approval_id: str) -> list[dict[str, Any]]:
    records = stack.audit.records(kind="approval", limit=1000)
    return [r for r in records if r["data"]["approval_id"] == approval_id]


def events(stack, approval_id: str) -> list[str]:
    return [r["data"]["event"] for r in approval_steps(stack, approval_id)]


def wait_event(stack, approval_id: str, event: str, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while event not in events(stack, approval_id):
        assert time.monotonic() < deadline, f"no {event} record: {events(stack, approval_id)}"
        time.sleep(0.2)


def test_held_call_completes_after_an_approval_over_rest(make_stack):
    stack = approval_stack(make_stack, hold_seconds=20, masked_arguments="show_masked")
    alice, bob = Caller(stack, "alice"), Approver(stack, "bob")
    before = stack.upstream_requests()

    started = time.monotonic()
    wait = alice.call_in_background("echo", {"message": "drop table for alice@example.com"})
    # Once the held call says it waits on it (a moment after the approval is asked).
    pending = bob.wait_pending(lambda a: a["waiting"] is not None)
    assert (pending["subject"], pending["upstream"], pending["tool"]) == ("alice", "everything", "echo")
    assert pending["rule"] == "echo-needs-approval"
    assert pending["can_decide"] is True
    # Approvers see the arguments masked, like the trail.
    assert "alice@example.com" not in json.dumps(pending)
    assert "[MASKED:email" in pending["arguments"]["message"]
    # ... and told so: the kind, where and how long (show_masked: no clear text anywhere).
    assert pending["masked"]["mode"] == "show_masked"
    assert pending["masked"]["spans"] == [{"kind": "email", "pointer": "/message", "offset": 15, "length": 17}], (
        pending["masked"]
    )
    assert "arguments_clear" not in pending
    assert stack.upstream_requests() == before, "the held call reached the upstream before its approval"
    # The caller is held right now: one call, waiting since about when it was asked.
    assert pending["waiting"]["calls"] == 1, pending
    assert pending["waiting"]["since"] >= pending["requested_at"][:19], pending

    decided = bob.approve(pending["id"], "ticket OPS-12")
    assert decided.status_code == 200, decided.text
    # The decision as made: approved by bob, not yet used (the held call uses it next).
    body = decided.json()
    assert (body["status"], body["decided_by"], body["reason"], body["uses"]) == (
        "approved",
        "bob",
        "ticket OPS-12",
        0,
    ), body
    resp = wait(15)

    assert resp.status_code == 200, resp.text
    # The answer is masked like any other.
    assert answer(resp)["result"]["content"][0]["text"] == "Echo: drop table for [MASKED:email]"
    assert time.monotonic() - started < 15
    request = stack.audit.request(resp.headers["x-gatehouse-request-id"])["request"]["data"]
    assert request["decision"] == "allow"
    assert request["approval"] == {"id": pending["id"], "status": "used", "rule": "echo-needs-approval"}
    assert events(stack, pending["id"]) == ["requested", "approved", "used"]
    approved = approval_steps(stack, pending["id"])[1]["data"]
    assert (approved["approver"], approved["reason"]) == ("bob", "ticket OPS-12")
    assert bob.get(pending["id"]).json()["status"] == "used"
    assert stack.verify().returncode == 0


def test_retry_mode_answers_with_the_approval_and_lets_the_same_call_through_once(make_stack):
    stack = approval_stack(make_stack, hold_seconds=0)
    alice, bob = Caller(stack, "alice"), Approver(stack, "bob")
    before = stack.upstream_requests()

    first = pending_error(alice.call("echo", {"message": "one"}))
    assert first["status"] == "pending"
    assert first["approver_group"] == "approvers"
    # The same call joins the pending approval; other arguments ask anew.
    assert pending_error(alice.call("echo", {"message": "one"}))["id"] == first["id"]
    other = pending_error(alice.call("echo", {"message": "two"}))
    assert other["id"] != first["id"]
    assert stack.upstream_requests() == before, "a call waiting for approval was forwarded"
    # Retry mode holds nothing: no caller is waiting on the approval while it is pending.
    assert bob.get(first["id"]).json()["waiting"] is None

    assert bob.approve(first["id"]).status_code == 200
    allowed = alice.call("echo", {"message": "one"})
    assert answer(allowed)["result"]["content"][0]["text"] == "Echo: one"
    # Single use: the next identical call needs a new approval.
    again = pending_error(alice.call("echo", {"message": "one"}))
    assert again["id"] not in (first["id"], other["id"])
    # Another user's identical call is another approval.
    assert pending_error(Caller(stack, "dave").call("echo", {"message": "one"}))["id"] != again["id"]
    assert events(stack, first["id"]) == ["requested", "approved", "used"]


def test_a_grant_lets_the_same_call_through_for_its_lifetime(make_stack):
    stack = approval_stack(make_stack, hold_seconds=0, single_use=False, grant_seconds=60)
    alice, bob = Caller(stack, "alice"), Approver(stack, "bob")
    approval = pending_error(alice.call("echo", {"message": "x"}))
    assert bob.approve(approval["id"]).status_code == 200

    for _ in range(3):
        assert answer(alice.call("echo", {"message": "x"}))["result"]["content"][0]["text"] == "Echo: x"
    assert bob.get(approval["id"]).json()["uses"] == 3
    assert events(stack, approval["id"]) == ["requested", "approved", "used", "used", "used"]


def test_a_denial_reaches_the_held_call_with_its_reason_and_stands(make_stack):
    stack = approval_stack(make_stack, hold_seconds=20)
    alice, bob = Caller(stack, "alice"), Approver(stack, "bob")
    before = stack.upstream_requests()
    wait = alice.call_in_background("echo", {"message": "rm -rf"})
    pending = bob.wait_pending()

    assert bob.deny(pending["id"], None).status_code == 400, "a denial needs a reason"
    assert bob.deny(pending["id"], "not during the freeze").status_code == 200
    resp = wait(15)

    assert resp.status_code == 403
    error = answer(resp)["error"]
    assert "not during the freeze" in error["message"]
    assert error["data"]["approval"]["status"] == "denied"
    # The same call again is refused without bothering the approvers anew.
    again = alice.call("echo", {"message": "rm -rf"})
    assert again.status_code == 403
    assert answer(again)["error"]["data"]["approval"]["id"] == pending["id"]
    assert bob.list("pending") == []
    assert stack.upstream_requests() == before
    assert events(stack, pending["id"]) == ["requested", "denied"]


def test_approvals_expire(make_stack):
    stack = approval_stack(make_stack, hold_seconds=0, expires_seconds=1)
    alice, bob = Caller(stack, "alice"), Approver(stack, "bob")
    approval = pending_error(alice.call("echo", {"message": "late"}))

    deadline = time.monotonic() + 10
    while bob.get(approval["id"]).json()["status"] != "expired":
        assert time.monotonic() < deadline, "the approval did not expire"
        time.sleep(0.2)
    late = bob.approve(approval["id"])
    assert late.status_code == 409
    assert late.json()["approval"]["status"] == "expired"
    assert events(stack, approval["id"]) == ["requested", "expired"]
    # Asking again makes a new approval.
    assert pending_error(alice.call("echo", {"message": "late"}))["id"] != approval["id"]


def test_a_held_call_is_told_when_its_approval_expires(make_stack):
    stack = approval_stack(make_stack, hold_seconds=10, expires_seconds=2)
    resp = Caller(stack, "alice").call("echo", {"message": "slow"})
    approval = pending_error(resp)
    assert approval["status"] == "expired"


def test_only_others_in_the_approver_group_may_decide(make_stack):
    stack = approval_stack(make_stack, hold_seconds=0)
    # alice is an approver herself, but not for her own call.
    alice = Caller(stack, "alice", ("eng", "approvers"))
    approval = pending_error(alice.call("echo", {"message": "mine"}))

    as_alice = Approver(stack, "alice", ("eng", "approvers"))
    (mine,) = as_alice.list("pending")
    assert mine["can_decide"] is False
    own = as_alice.approve(approval["id"])
    assert own.status_code == 403
    assert "own" in own.json()["error"]

    eve = Approver(stack, "eve", ("eng",))
    assert eve.approve(approval["id"]).status_code == 403
    assert eve.get(approval["id"]).status_code == 404, "outsiders must not read other people's approvals"
    assert eve.list() == []
    assert Approver(stack, "auditor", ("auditors",)).get(approval["id"]).status_code == 200

    assert bob_approves(stack, approval["id"])
    assert events(stack, approval["id"]) == ["requested", "approved"]


def bob_approves(stack, approval_id: str) -> bool:
    return Approver(stack, "bob").approve(approval_id).status_code == 200


def test_two_concurrent_decisions_one_wins(make_stack):
    stack = approval_stack(make_stack, hold_seconds=0)
    alice = Caller(stack, "alice")
    for round_ in range(5):
        approval = pending_error(alice.call("echo", {"message": f"race {round_}"}))
        results = race_decisions(stack, approval["id"])
        codes = sorted(r.status_code for r in results)
        assert codes == [200, 409], [r.text for r in results]
        winner = next(r for r in results if r.status_code == 200).json()["status"]
        loser = next(r for r in results if r.status_code == 409).json()
        assert loser["approval"]["status"] == winner
        steps = events(stack, approval["id"])
        assert steps == ["requested", winner], steps


def race_decisions(stack, approval_id: str) -> list[Any]:
    """bob approves and carol denies at the same moment; both answers."""
    bob, carol = Approver(stack, "bob"), Approver(stack, "carol")
    barrier = threading.Barrier(2)
    results: list[Any] = [None, None]

    def approve() -> None:
        barrier.wait()
        results[0] = bob.approve(approval_id, "go")

    def deny() -> None:
        barrier.wait()
        results[1] = carol.deny(approval_id, "stop")

    threads = [threading.Thread(target=approve), threading.Thread(target=deny)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    return results


def test_pending_approvals_survive_a_restart(make_stack):
    stack = approval_stack(make_stack, hold_seconds=0)
    alice = Caller(stack, "alice")
    approval = pending_error(alice.call("echo", {"message": "after restart"}))

    stack.restart_service()

    bob = Approver(stack, "bob")
    assert [a["id"] for a in bob.list("pending")] == [approval["id"]]
    assert pending_error(alice.call("echo", {"message": "after restart"}))["id"] == approval["id"]
    assert bob.approve(approval["id"]).status_code == 200
    assert answer(alice.call("echo", {"message": "after restart"}))["result"]["content"][0]["text"] == (
        "Echo: after restart"
    )
    assert stack.verify().returncode == 0


def test_calls_needing_approval_must_come_alone(make_stack):
    stack = approval_stack(make_stack, hold_seconds=0)
    alice = Caller(stack, "alice")
    batch = [
        {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "a"}}},
        {"jsonrpc": "2.0", "id": 8, "method": "tools/list"},
    ]
    # Batches exist up to revision 2025-03-26.
    headers = {"mcp-session-id": alice.session, "mcp-protocol-version": "2025-03-26"}
    resp = stack.post(batch, token=alice.token, headers=headers)
    assert resp.status_code == 403, resp.text
    assert "alone" in resp.json()["error"]["message"]
    note = {"jsonrpc": "2.0", "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "a"}}}
    resp = stack.post(note, token=alice.token, headers={"mcp-session-id": alice.session})
    assert resp.status_code == 403, resp.text
    assert Approver(stack, "bob").list() == []


def test_approver_endpoints_refuse_bad_input(make_stack):
    stack = approval_stack(make_stack, hold_seconds=0)
    approval = pending_error(Caller(stack, "alice").call("echo", {"message": "x"}))
    bob = Approver(stack, "bob")
    base = f"/v1/approvals/{approval['id']}"

    assert bob.http.get("/v1/approvals", headers={"authorization": ""}).status_code == 401
    assert bob.http.get("/v1/approvals", headers={"authorization": "Bearer not-a-jwt"}).status_code == 401
    assert bob.http.get("/v1/approvals", params={"status": "maybe"}).status_code == 400
    assert bob.get("apr_000000000000000000000000").status_code == 404
    bad_json = bob.http.post(f"{base}/deny", content=b"{not json", headers={"content-type": "application/json"})
    assert bad_json.status_code == 400
    assert bob.http.post(f"{base}/deny", json={"reason": "x", "extra": 1}).status_code == 400
    assert bob.deny(approval["id"], "   ").status_code == 400
    assert bob.deny(approval["id"], "x" * 1001).status_code == 400
    assert bob.get(approval["id"]).json()["status"] == "pending", "a refused decision changed the approval"
    assert bob.http.post(f"{base}/approve").status_code == 200, "an approval needs no body"


def notify_through(make_stack, codes: list[int], attempts: int, event: str):
    """alice's call asks for an approval while the webhook answers `codes` in turn; once the
    `event` step is recorded: the stack, the approval, that step's data, the bodies posted."""
    hook = Webhook(codes)
    try:
        stack = approval_stack(
            make_stack, hold_seconds=0, approvals={"webhook": {"url": hook.url, "attempts": attempts}}
        )
        approval = pending_error(Caller(stack, "alice").call("echo", {"message": "notify"}))
        wait_event(stack, approval["id"], event)
        step = approval_steps(stack, approval["id"])[-1]["data"]
    finally:
        hook.close()
    assert b"secret-part" not in b"".join(stack.gateway_logs().values()), "the webhook URL was logged"
    return stack, approval, step, hook.bodies


def test_approvers_are_notified_by_webhook_with_retries(make_stack):
    _, approval, notified, bodies = notify_through(make_stack, [500, 503], attempts=4, event="notified")
    assert notified["attempts"] == 3
    assert len(bodies) == 3
    text = bodies[-1]["text"]
    assert "alice" in text and "echo" in text and approval["id"] in text


def test_a_failed_notification_is_recorded(make_stack):
    stack, approval, failed, _ = notify_through(make_stack, [500, 500], attempts=2, event="notify_failed")
    assert failed["attempts"] == 2
    assert "500" in failed["error"]
    # The approval itself still works.
    assert Approver(stack, "bob").approve(approval["id"]).status_code == 200


def test_other_methods_are_approved_for_exactly_what_they_act_on(make_stack):
    rule = {
        "id": "prompts-need-approval",
        "methods": ["prompts/get"],
        "outcome": "approve",
        "approval": {"approver_group": "approvers", "hold_seconds": 0},
    }
    stack = make_stack(policy=[SESSION_RULE, rule])
    alice, bob = Caller(stack, "alice"), Approver(stack, "bob")

    def get_prompt(name: str, arguments: dict | None = None):
        params = {"name": name, **({"arguments": arguments} if arguments else {})}
        message = {"jsonrpc": "2.0", "id": 7, "method": "prompts/get", "params": params}
        return stack.post(message, token=alice.token, headers={"mcp-session-id": alice.session})

    simple = pending_error(get_prompt("simple-prompt"))
    assert bob.approve(simple["id"]).status_code == 200
    # The grant is for that prompt only: another prompt, or other arguments, ask anew.
    other = pending_error(get_prompt("args-prompt", {"city": "Paris"}))
    assert other["id"] != simple["id"]
    assert pending_error(get_prompt("args-prompt", {"city": "Lyon"}))["id"] not in (simple["id"], other["id"])
    (shown,) = [a for a in bob.list("pending") if a["id"] == other["id"]]
    assert shown["method"] == "prompts/get"
    assert shown["arguments"] == {"name": "args-prompt", "arguments": {"city": "Paris"}}
    before = stack.upstream_requests()
    allowed = answer(get_prompt("simple-prompt"))
    # Let through to the upstream, and its answer is the prompt (not any other error).
    assert "error" not in allowed, allowed
    assert allowed["result"]["messages"][0]["content"]["text"], allowed
    assert stack.upstream_requests() == before + 1
    used = bob.get(simple["id"]).json()
    assert (used["status"], used["uses"]) == ("used", 1), used
