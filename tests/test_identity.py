"""Identity and authorization at the gateway: OAuth 2.1 resource-server behaviour, OIDC JWT
validation against a real issuer (discovery + JWKS, RS256 and ES256), group policy.
Nothing that is refused reaches the upstream.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator

import httpx
import pytest

from harness.issuer import TestIssuer
from harness.stack import REQUEST_ID_RE, Stack, tools_call

pytestmark = pytest.mark.gateway


def resource_metadata_url(resp: httpx.Response) -> str:
    challenge = resp.headers.get("www-authenticate", "")
    assert challenge.lower().startswith("bearer"), f"no Bearer challenge: {resp.headers}"
    m = re.search(r'resource_metadata="([^"]+)"', challenge)
    assert m, f"no resource_metadata in WWW-Authenticate: {challenge}"
    return m.group(1)


# --- dev issuer stack -----------------------------------------------------------------


def test_no_token_is_401_with_resource_metadata(stack):
    before = stack.upstream_requests()

    resp = stack.post(tools_call("echo", {"message": "x"}, request_id=1))

    assert resp.status_code == 401
    metadata_url = resource_metadata_url(resp)
    assert metadata_url.startswith(stack.public_url + "/.well-known/oauth-protected-resource")
    assert stack.upstream_requests() == before

    # The metadata is served through the gateway, without a token (RFC 9728).
    metadata = httpx.get(metadata_url, timeout=10)
    assert metadata.status_code == 200
    doc = metadata.json()
    assert doc["resource"].startswith(stack.public_url)
    assert f"http://127.0.0.1:{stack.rest_port}/dev" in doc["authorization_servers"]


@pytest.mark.parametrize("authorization", ["Bearer not-a-jwt", "Bearer", "Basic YWxpY2U6c2VjcmV0", "bearer a.b.c"])
def test_unusable_credentials_are_401(stack, authorization):
    before = stack.upstream_requests()

    resp = stack.post(tools_call("echo", {"message": "x"}), headers={"authorization": authorization})

    assert resp.status_code == 401
    resource_metadata_url(resp)
    assert stack.upstream_requests() == before


def test_wrong_group_is_403_jsonrpc_error_and_audited_as_deny(stack):
    token = stack.token("mallory", ["sales"])
    before = stack.upstream_requests()

    resp = stack.post(tools_call("echo", {"message": "let me in"}, request_id=77), token=token)

    assert resp.status_code == 403
    body = resp.json()
    assert body["jsonrpc"] == "2.0" and body["id"] == 77
    assert isinstance(body["error"]["code"], int) and body["error"]["message"]
    assert "let me in" not in resp.text
    assert stack.upstream_requests() == before

    request_id = resp.headers["x-gatehouse-request-id"]
    assert REQUEST_ID_RE.match(request_id)
    record = stack.audit.request(request_id)["request"]
    assert record["data"]["decision"] == "deny"
    assert record["data"]["subject"] == "mallory"
    assert record["data"]["tool"] == "echo"


def test_group_membership_is_what_counts(stack):
    """Same call, same user name: allowed with an allowed group, refused without."""
    allowed_token = stack.token("carol", ["approvers"])
    session = stack.initialize(allowed_token)
    headers = {"mcp-session-id": session}
    allowed = stack.post(tools_call("echo", {"message": "x"}), token=allowed_token, headers=headers)
    before = stack.upstream_requests()
    refused = stack.post(
        tools_call("echo", {"message": "x"}), token=stack.token("carol", ["sales", "ops"]), headers=headers
    )

    # The allowed call ran: the echo tool's answer came back.
    assert allowed.status_code == 200, allowed.text
    assert "Echo: x" in allowed.text, allowed.text
    assert refused.status_code == 403, refused.text
    assert stack.upstream_requests() == before, "a refused call reached the upstream"


def test_token_for_another_audience_is_401(stack):
    token = stack.token("alice", ["eng"], aud="some-other-api")
    before = stack.upstream_requests()

    resp = stack.post(tools_call("echo", {"message": "x"}), token=token)

    assert resp.status_code == 401
    assert stack.upstream_requests() == before


# --- external OIDC issuer -----------------------------------------------------------------


@pytest.fixture(scope="module")
def issuer_stack(make_module_stack) -> Iterator[tuple[Stack, TestIssuer]]:
    issuer = TestIssuer()
    try:
        yield make_module_stack(upstream="echo", issuer=issuer), issuer
    finally:
        issuer.close()


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_valid_issuer_tokens_are_accepted(issuer_stack, alg):
    stack, issuer = issuer_stack
    before = len(stack.echo.received())

    resp = stack.post(tools_call("echo", {"message": "x"}, request_id=3), token=issuer.token("dana", ["eng"], alg=alg))

    assert resp.status_code == 200, resp.text
    assert len(stack.echo.received()) == before + 1
    assert any(path.endswith("/jwks.json") for path in issuer.requests), "the JWKS was never fetched"


BAD_TOKENS = {
    "expired": lambda i: i.token(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200, nbf=int(time.time()) - 7200),
    "not-yet-valid": lambda i: i.token(nbf=int(time.time()) + 3600),
    "wrong-issuer": lambda i: i.token(iss="http://127.0.0.1:1/not-the-issuer"),
    "wrong-audience": lambda i: i.token(aud="another-service"),
    "no-audience": lambda i: i.token(aud=None),
    "alg-none": lambda i: i.token_alg_none(),
    "hs256-with-public-key": lambda i: i.token_hs256_with_public_key(),
    "unknown-signing-key": lambda i: i.token_unknown_key(),
    "tampered-claims": lambda i: _tamper(i.token("dana", ["sales"])),
}


def _tamper(token: str) -> str:
    """Swap the payload for one claiming group eng, keeping the original signature."""
    header, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["groups"] = ["eng"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{sig}"


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
def test_bad_tokens_are_rejected(issuer_stack, kind):
    stack, issuer = issuer_stack
    token = BAD_TOKENS[kind](issuer)
    before_envoy, before_echo = stack.upstream_requests(), len(stack.echo.received())

    resp = stack.post(tools_call("echo", {"message": "x"}), token=token)

    assert resp.status_code == 401, f"{kind} token: {resp.status_code} {resp.text}"
    assert 'error="invalid_token"' in resp.headers.get("www-authenticate", ""), resp.headers
    resource_metadata_url(resp)
    assert stack.upstream_requests() == before_envoy
    assert len(stack.echo.received()) == before_echo
