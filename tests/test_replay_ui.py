"""The auditors' replay page (`/ui/sessions`) in Debian's headless Chromium through the real
service: search finds a session by a word of a masked answer and never by the clear secret,
play steps through the exchanges in order, a deep link opens its exchange, an open session is
followed live, the export downloads, and anyone but an auditor sees nothing."""

from __future__ import annotations

import time

import pytest

from harness.browser import Browser
from harness.sessions import auditor, wait_sessions
from harness.stack import Stack, tools_call

pytestmark = pytest.mark.gateway

SECRET = "AKIAIOSFODNN7EXAMPLE"
TOKEN_KEY = "gatehouse.auditor-token"  # sessions.js's sessionStorage key
ROWS = '[data-testid="session-row"]'
EXCHANGES = '[data-testid="exchange"]'


def call(stack: Stack, token: str, session: str, message: str) -> None:
    resp = stack.post(
        tools_call("echo", {"message": message}, request_id=7), token=token, headers={"mcp-session-id": session}
    )
    assert resp.status_code == 200, resp.text


@pytest.fixture
def recorded(make_stack) -> tuple[Stack, str, str, str]:
    """alice's session (initialize, initialized, three calls with gaps, one answer holding a
    secret) and bob's, both indexed."""
    stack = make_stack(upstream="echo")
    alice, bob = stack.token("alice"), stack.token("bob")
    session = stack.initialize(alice)
    for message in ("first step", f"deploy kiwi-7 with {SECRET}", "last step"):
        time.sleep(0.3)
        call(stack, alice, session, message)
    call(stack, bob, stack.initialize(bob), "bob was here")
    with auditor(stack) as audit:
        (mine,) = wait_sessions(audit, lambda s: bool(s) and s[0]["calls"] == 3, user="alice")
        wait_sessions(audit, lambda s: bool(s), user="bob")
    return stack, alice, session, mine["id"]


def sign_in(browser: Browser, token: str) -> None:
    browser.fill('[data-testid="token-input"]', token)
    browser.click('[data-testid="token-save"]')


def search(browser: Browser, words: str) -> list[str]:
    browser.fill('[data-testid="filter-q"]', words)
    browser.evaluate("document.getElementById('sessions').dataset.loaded = 'false'")
    browser.click('[data-testid="search"]')
    browser.wait_for('#sessions[data-loaded="true"]', state="attached")
    return browser.evaluate(
        "[...document.querySelectorAll('[data-testid=\"session-row\"]')].map(r => r.dataset.sessionId)"
    )


def wait_js(browser: Browser, expression: str, timeout: float = 15) -> None:
    """Polls a JavaScript expression (the page's CSP forbids the string evaluation that
    waitForFunction uses)."""
    deadline = time.monotonic() + timeout
    while not browser.evaluate(expression):
        assert time.monotonic() < deadline, f"never true: {expression}"
        time.sleep(0.1)


def problems(browser: Browser) -> list[str]:
    return [
        line
        for line in browser.console()
        if line.startswith("pageerror") or "Content Security Policy" in line or "Refused to" in line
    ]


def test_search_finds_masked_words_never_the_secret_and_play_steps_in_order(recorded, browser: Browser):
    stack, _, _, sid = recorded
    browser.goto(f"{stack.rest_url}/ui/sessions")
    sign_in(browser, stack.auditor_token())
    browser.wait_for('#sessions[data-loaded="true"]', state="attached")
    assert browser.count(ROWS) == 2
    assert search(browser, "kiwi-7") == [sid], "a word of the masked call and answer"
    assert search(browser, SECRET) == [], "the clear secret is never searchable"
    assert browser.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')"), "the token stays in the tab"

    browser.goto(f"{stack.rest_url}/ui/sessions/{sid}")
    browser.wait_for('[data-testid="session-view"][data-loaded="true"]')
    assert browser.count(EXCHANGES) == 5
    assert SECRET not in browser.evaluate("document.body.innerText")
    assert browser.count("mark.masked") >= 2, "masked values are marked (in the call and its answer)"
    assert "alice" in browser.text('[data-testid="session-meta"]')

    browser.evaluate("document.getElementById('speed').value = '16'")
    browser.click('[data-testid="play"]')
    wait_js(browser, "document.body.dataset.played === '5'")
    assert browser.evaluate("document.body.dataset.playLog") == "0,1,2,3,4"
    assert browser.evaluate("location.hash") == "#exchange-4"
    browser.click('[data-testid="step"]')  # at the end: nothing more
    assert browser.evaluate("document.body.dataset.played") == "5"
    assert problems(browser) == []


def test_a_deep_link_opens_its_exchange_and_an_open_session_is_followed(recorded, browser: Browser):
    stack, alice, session, sid = recorded
    browser.goto(f"{stack.rest_url}/ui/sessions")
    sign_in(browser, stack.auditor_token())
    browser.wait_for('#sessions[data-loaded="true"]', state="attached")

    browser.goto(f"{stack.rest_url}/ui/sessions/{sid}#exchange-3")
    browser.wait_for('[data-testid="session-view"][data-loaded="true"]')
    assert browser.evaluate("document.getElementById('exchange-3').open") is True
    assert browser.evaluate("document.getElementById('exchange-3').classList.contains('current')") is True
    assert browser.evaluate("document.getElementById('exchange-2').open") is False
    assert "kiwi-7" in browser.text("#exchange-3")

    # Live tail: a call made now appears without a reload.
    assert not browser.evaluate("document.getElementById('tail').hidden")
    call(stack, alice, session, "a late call")
    wait_js(browser, f"document.querySelectorAll('{EXCHANGES}').length === 6")
    assert "a late call" in browser.text("#exchange-5")

    # The export downloads through the API with the token (a fetch, not a link with the token).
    browser.click('[data-testid="download"]')
    wait_js(browser, "!document.getElementById('download').disabled")
    exports = [r for r in browser.requests() if "/export" in r.get("url", "")]
    assert exports and all("token" not in r["url"] for r in exports), exports
    assert browser.evaluate("document.getElementById('error').hidden") is True
    assert problems(browser) == []


def test_anyone_but_an_auditor_sees_nothing(recorded, browser: Browser):
    stack, alice, _, sid = recorded
    for token, says in (
        (stack.auditor_token("eve", ("eng",)), "for the auditor group only"),
        (alice, "refused"),
        (stack.approver_token("carol"), "refused"),
    ):
        for path in ("/ui/sessions", f"/ui/sessions/{sid}"):
            browser.goto(f"{stack.rest_url}{path}")
            browser.evaluate("sessionStorage.clear()")
            browser.goto(f"{stack.rest_url}{path}")
            sign_in(browser, token)
            browser.wait_for('[data-testid="error"]')
            assert says in browser.text('[data-testid="error"]')
            assert browser.count(ROWS) == 0 and browser.count(EXCHANGES) == 0
            assert "alice" not in browser.evaluate("document.body.innerText")
            assert browser.evaluate(f"sessionStorage.getItem('{TOKEN_KEY}')") is None, "a refused token is dropped"
