"""The gateway holds the upstream's credential and sends it in place of the client's: the
upstream sees the gateway's secret, never the caller's token or a header the caller forged,
and the secret appears in no answer, record or log."""

from __future__ import annotations

import json

import pytest

from harness.stack import initialize_request, tools_call

pytestmark = pytest.mark.gateway

SECRET = "sk-upstream-4f1c9a7e2b6d8035"


def call_through(stack, headers: dict[str, str] | None = None):
    token = stack.token("alice", ["eng"])
    resp = stack.post(initialize_request(), token=token, headers=headers)
    assert resp.status_code == 200, resp.text
    answer = stack.post(tools_call("echo", {"message": "hi"}, request_id=2), token=token, headers=headers)
    assert answer.status_code == 200, answer.text
    return token, [resp, answer]


def test_a_static_header_credential_replaces_what_the_client_sent(make_stack, tmp_path):
    (tmp_path / "api-key").write_text(SECRET + "\n")
    stack = make_stack(
        upstream="echo",
        upstream_credentials={"type": "static_header", "header": "X-Api-Key", "value_file": str(tmp_path / "api-key")},
    )

    token, answers = call_through(stack, headers={"x-api-key": "forged-by-the-client"})

    received = stack.echo.received()
    assert [r.headers.get("x-api-key") for r in received] == [[SECRET], [SECRET]]
    for r in received:
        assert "authorization" not in r.headers, "the caller's token reached the upstream"
        assert token not in json.dumps(r.headers)
    request = stack.audit.request(answers[1].headers["x-gatehouse-request-id"])["request"]["data"]
    assert request["upstream_credential"] == {"type": "static_header", "header": "x-api-key"}
    for a in answers:
        assert SECRET not in a.text and SECRET not in json.dumps(dict(a.headers))
    stack.audit.wait_complete(answers[1].headers["x-gatehouse-request-id"])
    files = {**stack.trail_files(), **stack.gateway_logs()}
    leaked = [name for name, blob in files.items() if SECRET.encode() in blob]
    assert not leaked, f"the upstream credential leaked into {leaked}"


def test_a_bearer_credential_from_the_environment_replaces_the_callers_token(make_stack, monkeypatch):
    monkeypatch.setenv("GATEHOUSE_TEST_UPSTREAM_TOKEN", SECRET)
    stack = make_stack(
        upstream="echo",
        upstream_credentials={
            "type": "static_header",
            "header": "authorization",
            "value_env": "GATEHOUSE_TEST_UPSTREAM_TOKEN",
            "prefix": "Bearer ",
        },
    )

    token, _ = call_through(stack)

    for r in stack.echo.received():
        assert r.headers["authorization"] == [f"Bearer {SECRET}"], r.headers
        assert token not in json.dumps(r.headers)
