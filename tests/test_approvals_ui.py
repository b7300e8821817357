"""The approvers' page (`/ui`) in headless Chromium through the real service: a held call
completes after a click on Approve, an approver's own request cannot be decided, caller text
is shown as text, and the token is asked for, kept per tab and dropped when refused.

Chromium is Debian's `chromium`, driven by playwright-core (harness/browser.py); when it is
missing these tests fail with the reason rather than skip: CI installs it."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from harness.approvals import SESSION_RULE, Approver, Caller, answer, approval_rule
from harness.browser import Browser

pytestmark = pytest.mark.gateway

HOLD = 20
TOKEN_KEY = "gatehouse.approver-token"  # the page's sessionStorage key (authz-service/src/rest/ui/app.js)


def approval_stack(make_stack, masked_arguments: str = "show_masked"):
    """server-everything where `echo` waits up to HOLD s in the Check for an approver of `approvers`."""
    rule = approval_rule(hold_seconds=HOLD, masked_arguments=masked_arguments)
    return make_stack(policy=[SESSION_RULE, rule], ext_authz_timeout_ms=30000)


def row(approval_id: str) -> str:
    return f'[data-testid="approval-row"][data-approval-id="{approval_id}"]'


def in_row(approval_id: str, testid: str) -> str:
    return f'{row(approval_id)} [data-testid="{testid}"]'


def recent_row(approval_id: str) -> str:
    return f'[data-testid="recent-row"][data-approval-id="{approval_id}"]'


def page_problems(browser: Browser) -> list[str]:
    """Script errors and CSP violations the page has seen."""
    return [
        line
        for line in browser.console()
        if line.startswith("pageerror") or "Content Security Policy" in line or "Refused to" in line
    ]


def assert_token_never_in_a_url(browser: Browser, token: str) -> None:
    reqs = browser.requests()
    assert reqs, "the page made no request"
    assert not [r["url"] for r in reqs if token in r["url"]], "the token was sent in a URL"
    api = [r for r in reqs if "/v1/" in r["url"]]
    assert api and all(r["headers"].get("authorization", "").startswith("Bearer ") for r in api)
    assert any(r["headers"]["authorization"] == f"Bearer {token}" for r in api)


def test_a_held_call_completes_after_approve_is_clicked(browser, make_stack):
    stack = approval_stack(make_stack)
    alice, bob = Caller(stack, "alice"), Approver(stack, "bob")
    bob_token = stack.approver_token("bob")

    wait = alice.call_in_background("echo", {"message": "approved on the page, mail ops@example.com"})
    pending = bob.wait_pending(lambda a: (a["subject"], a["tool"]) == ("alice", "echo") and a["waiting"] is not None)
    assert pending["can_decide"] is True

    browser.goto(f"{stack.rest_url}/ui#token={bob_token}")
    browser.wait_for(row(pending["id"]))
    assert "token" not in browser.evaluate("location.href"), "the #token= fragment stays in the address bar"
    assert browser.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") == bob_token
    assert browser.text(in_row(pending["id"], "approval-subject")) == "alice"
    assert browser.text(in_row(pending["id"], "approval-tool")) == "echo"
    assert browser.text(in_row(pending["id"], "approval-upstream")) == "everything"
    assert browser.text(in_row(pending["id"], "approval-rule")) == "echo-needs-approval"
    assert browser.text(in_row(pending["id"], "approval-request-id")) == pending["request_id"]
    assert browser.text(in_row(pending["id"], "approval-age")).endswith(("ago", "just now"))
    # Alice's call is held in the gateway right now: the approver is told, with how long.
    assert pending["waiting"]["calls"] == 1, pending
    waiting = browser.text(in_row(pending["id"], "approval-waiting"))
    assert waiting.startswith("alice is waiting (") and waiting.endswith(" s)"), waiting
    assert browser.text(in_row(pending["id"], "approval-expires")).startswith("expires in")
    shown = browser.text(in_row(pending["id"], "approval-arguments"))
    assert json.loads(shown) == pending["arguments"]
    assert "ops@example.com" not in shown and "[MASKED:email" in shown, "approvers see the arguments masked"
    # ... and are told plainly that, what, where and how long.
    summary = browser.text(in_row(pending["id"], "approval-masked-summary"))
    assert "Masking changed these arguments" in summary and "You see them masked" in summary, summary
    spans = browser.text(in_row(pending["id"], "approval-masked-spans"))
    assert "email in /message, at character 27, 15 characters" in spans, spans
    browser.wait_for(in_row(pending["id"], "approval-arguments-clear"), state="hidden")

    browser.fill(in_row(pending["id"], "reason-input"), "ticket OPS-7")
    clicked = time.monotonic()
    browser.click(in_row(pending["id"], "approve-button"))
    browser.wait_for(row(pending["id"]), state="detached")

    resp = wait(HOLD)
    assert resp.status_code == 200, resp.text
    assert answer(resp)["result"]["content"][0]["text"].startswith("Echo: approved on the page")
    assert time.monotonic() - clicked < 10, "the held call did not go on right after the click"
    decided = bob.get(pending["id"]).json()
    assert decided["status"] in ("approved", "used"), decided
    assert (decided["decided_by"], decided["reason"]) == ("bob", "ticket OPS-7")

    # The page moves it to the recent decisions without a reload.
    browser.wait_for(recent_row(pending["id"]))
    assert "bob" in browser.text(recent_row(pending["id"]))
    assert "Approved" in browser.text('[data-testid="flash"]')
    assert_token_never_in_a_url(browser, bob_token)
    assert page_problems(browser) == []


def test_an_approver_cannot_decide_their_own_request(browser, make_stack):
    stack = approval_stack(make_stack)
    dora = Caller(stack, "dora", ("eng", "approvers"))
    bob = Approver(stack, "bob")

    wait = dora.call_in_background("echo", {"message": "my own"})
    pending = bob.wait_pending(lambda a: a["subject"] == "dora")
    # A newer request dora may decide: it is listed before her own.
    alice = Caller(stack, "alice")
    wait_alice = alice.call_in_background("echo", {"message": "for dora to decide"})
    other = bob.wait_pending(lambda a: a["subject"] == "alice")

    browser.goto(f"{stack.rest_url}/ui#token={stack.approver_token('dora', ('eng', 'approvers'))}")
    browser.wait_for(row(pending["id"]))
    browser.wait_for(row(other["id"]))
    order = browser.evaluate(
        "[...document.querySelectorAll('[data-testid=approval-row]')].map((e) => e.dataset.approvalId)"
    )
    assert order == [other["id"], pending["id"]], "what the approver can decide comes first"
    assert browser.attribute(row(pending["id"]), "data-can-decide") == "false"
    assert browser.is_disabled(in_row(pending["id"], "approve-button"))
    assert browser.is_disabled(in_row(pending["id"], "deny-button"))
    assert browser.is_disabled(in_row(pending["id"], "reason-input"))
    assert "your own request" in browser.text(in_row(pending["id"], "decide-note"))

    # Another approver decides; dora's page drops the row and shows the decision, no reload.
    assert bob.deny(pending["id"], "not on a Friday").status_code == 200
    browser.wait_for(row(pending["id"]), state="detached")
    browser.wait_for(recent_row(pending["id"]))
    decided = browser.text(recent_row(pending["id"]))
    assert "denied" in decided and "not on a Friday" in decided, decided

    resp = wait(15)
    assert resp.status_code == 403, resp.text
    assert "not on a Friday" in answer(resp)["error"]["message"]
    assert bob.deny(other["id"], "not needed").status_code == 200
    assert wait_alice(15).status_code == 403
    assert page_problems(browser) == []


def test_the_page_fits_a_laptop_and_a_phone(browser, make_stack, tmp_path):
    """At 1280×800 and at a phone's 390×844: nothing scrolls sideways, the call and the caller
    lead each request, the buttons are on screen (screenshots kept with the test's files)."""
    stack = approval_stack(make_stack)
    alice, bob = Caller(stack, "alice"), Approver(stack, "bob")
    long_text = "SELECT " + ", ".join(f"column_number_{i}" for i in range(60)) + " FROM a_table_with_a_long_name"
    wait = alice.call_in_background("echo", {"message": long_text})
    pending = bob.wait_pending(lambda a: a["subject"] == "alice")
    browser.goto(f"{stack.rest_url}/ui#token={stack.approver_token('bob')}")
    browser.wait_for(row(pending["id"]))
    for width, height in ((1280, 800), (390, 844)):
        browser.set_viewport(width, height)
        browser.screenshot(tmp_path / f"approvals-{width}x{height}.png")
        fits = browser.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1")
        assert fits, f"the page scrolls sideways at {width}px"
        right = browser.evaluate(
            f"document.querySelector('{in_row(pending['id'], 'approve-button')}').getBoundingClientRect().right"
        )
        assert right <= width, f"the approve button is off screen at {width}px"
        first = browser.evaluate(f"document.querySelector('{row(pending['id'])}').innerText.trim().split('\\n')[0]")
        assert first == "echo on everything", first
    assert bob.approve(pending["id"]).status_code == 200
    assert wait(15).status_code == 200
    assert page_problems(browser) == []


MARKUP = '<img src=x onerror="window.__gatehousePwned=1"><script>window.__gatehousePwned=2</script>'


def test_caller_text_is_shown_as_text_and_deny_needs_a_reason(browser, make_stack):
    stack = approval_stack(make_stack)
    alice, bob = Caller(stack, "alice"), Approver(stack, "bob")
    bob_token = stack.approver_token("bob")

    wait = alice.call_in_background("echo", {"message": MARKUP})
    pending = bob.wait_pending(lambda a: a["subject"] == "alice")

    browser.goto(f"{stack.rest_url}/ui#token={bob_token}")
    browser.wait_for(row(pending["id"]))
    assert MARKUP in json.loads(browser.text(in_row(pending["id"], "approval-arguments")))["message"]
    assert browser.evaluate("document.querySelectorAll('img').length") == 0
    assert browser.evaluate("document.querySelectorAll('script').length") == 1  # /ui/app.js
    assert browser.evaluate("window.__gatehousePwned === undefined")

    # Deny without a reason: refused on the page, nothing sent.
    browser.click(in_row(pending["id"], "deny-button"))
    assert browser.text(in_row(pending["id"], "row-error")) == "Give a reason to deny."
    assert bob.get(pending["id"]).json()["status"] == "pending"

    browser.fill(in_row(pending["id"], "reason-input"), "no markup, please")
    browser.click(in_row(pending["id"], "deny-button"))
    browser.wait_for(row(pending["id"]), state="detached")
    resp = wait(15)
    assert resp.status_code == 403, resp.text
    assert "no markup, please" in answer(resp)["error"]["message"]
    assert bob.get(pending["id"]).json()["status"] == "denied"

    browser.wait_for(recent_row(pending["id"]))
    assert browser.evaluate("window.__gatehousePwned === undefined")
    assert browser.evaluate("document.querySelectorAll('img').length") == 0
    assert page_problems(browser) == []


def test_the_page_asks_for_a_token_and_drops_a_refused_one(browser, make_stack):
    stack = approval_stack(make_stack)
    bob_token = stack.approver_token("bob")

    page = httpx.get(f"{stack.rest_url}/ui", timeout=5)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["cache-control"] == "no-store"

    browser.goto(f"{stack.rest_url}/ui")
    browser.wait_for('[data-testid="token-panel"]')
    # Garbage, and a valid token for MCP (not the approvals audience), are both refused.
    for refused in ("not-a-token", stack.token("bob", ["approvers"])):
        browser.fill('[data-testid="token-input"]', refused)
        browser.click('[data-testid="token-save"]')
        browser.wait_for('[data-testid="token-message"]')
        assert "refused" in browser.text('[data-testid="token-message"]')
        assert browser.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None
        browser.evaluate("document.querySelector('[data-testid=\"token-message\"]').hidden = true")

    browser.fill('[data-testid="token-input"]', f"Bearer {bob_token}")
    browser.click('[data-testid="token-save"]')
    browser.wait_for('[data-testid="pending-section"][data-loaded="true"]')
    browser.wait_for('[data-testid="pending-empty"]')
    assert browser.text('[data-testid="whoami"]').startswith("Signed in as bob")
    assert browser.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") == bob_token

    # Kept for the tab: a reload needs no token again; "Forget token" drops it.
    browser.goto(f"{stack.rest_url}/ui")
    browser.wait_for('[data-testid="pending-section"][data-loaded="true"]')
    browser.wait_for('[data-testid="token-panel"]', state="hidden")
    browser.click('[data-testid="forget-token"]')
    browser.wait_for('[data-testid="token-panel"]')
    assert browser.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None
    assert_token_never_in_a_url(browser, bob_token)
    assert page_problems(browser) == []


def test_with_show_clear_the_approver_reads_the_clear_arguments_on_the_page(browser, make_stack):
    stack = approval_stack(make_stack, masked_arguments="show_clear")
    alice, bob = Caller(stack, "alice"), Approver(stack, "bob")
    message = "send the report to ops@example.com"

    wait = alice.call_in_background("echo", {"message": message})
    pending = bob.wait_pending(lambda a: (a["subject"], a["tool"]) == ("alice", "echo") and a["waiting"] is not None)
    browser.goto(f"{stack.rest_url}/ui#token={stack.approver_token('bob')}")
    browser.wait_for(row(pending["id"]))
    assert "Read the clear arguments below" in browser.text(in_row(pending["id"], "approval-masked-summary"))
    assert json.loads(browser.text(in_row(pending["id"], "approval-arguments-clear"))) == {"message": message}
    assert "ops@example.com" not in browser.text(in_row(pending["id"], "approval-arguments"))

    browser.click(in_row(pending["id"], "approve-button"))
    resp = wait(HOLD)
    assert answer(resp)["result"]["content"][0]["text"].startswith("Echo: send the report to")
    assert page_problems(browser) == []
