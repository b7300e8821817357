"""Gatehouse behind a real OpenID Provider, shaped as each IdP the README documents (Okta,
Entra ID, Keycloak, Dex, Google): tokens come from the provider's own authorization code flow
with PKCE (its login and consent pages), and the gateway is configured as the README's table
says — issuer, audience, `groups_claim`. For each shape: a member of an allowed group gets
through; the same groups anywhere but where the config says do not count; a token the same IdP
issued for another API is refused; and the request record names the caller and the groups
read from the token."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.oidc_provider import OTHER_AUDIENCE, OTHER_RESOURCE, SHAPES, OidcProvider, claims
from harness.procs import ProcessSet
from harness.stack import Stack, tools_call

pytestmark = pytest.mark.gateway


def _misplaced(groups: list[str], right: str) -> dict[str, object]:
    """The same groups in a claim this IdP's config does not read."""
    return {"roles": groups} if right != "roles" else {"groups": groups}


@pytest.fixture(scope="module", params=sorted(SHAPES))
def idp(request, make_module_stack, tmp_path_factory) -> Iterator[tuple[Stack, OidcProvider]]:
    shape = SHAPES[request.param]
    procs = ProcessSet(tmp_path_factory.mktemp(f"idp-{shape.name}"))
    try:
        provider = OidcProvider(
            procs,
            shape,
            {
                "alice": shape.place_groups(["eng"]),
                "mallory": shape.place_groups(["sales"]),
                "carol": _misplaced(["eng"], shape.groups_claim),
            },
        )
        yield make_module_stack(upstream="echo", issuer=provider), provider
    finally:
        procs.stop_all()


def test_a_member_of_an_allowed_group_gets_through(idp):
    stack, provider = idp
    token = provider.login("alice")
    assert claims(token)["iss"] == provider.issuer and claims(token)["aud"] == provider.audience

    if provider.shape.name == "google":
        # Google's tokens carry no groups: verified, then refused by the upstream's group gate.
        resp = stack.post(tools_call("echo", {"message": "hi"}), token=token)
        assert resp.status_code == 403, resp.text
        assert "group" in resp.json()["error"]["data"]["reason"], resp.text
        return

    session = stack.initialize(token)
    before = stack.upstream_requests()
    resp = stack.post(tools_call("echo", {"message": "hi"}), token=token, headers={"mcp-session-id": session})
    assert resp.status_code == 200, resp.text
    assert "result" in resp.json(), resp.text
    assert stack.upstream_requests() == before + 1, "the allowed call did not reach the upstream"

    record = stack.audit.request(resp.headers["x-gatehouse-request-id"])["request"]["data"]
    assert record["subject"] == "alice"
    assert record["groups"] == ["eng"]
    assert record["decision"] == "allow"


def test_groups_count_only_where_the_config_reads_them(idp):
    stack, provider = idp
    before = stack.upstream_requests()
    for user in ("mallory", "carol"):  # a group not allowed; the allowed group in another claim
        resp = stack.post(tools_call("echo", {"message": "x"}), token=provider.login(user))
        assert resp.status_code == 403, f"{user}: {resp.status_code} {resp.text}"
    assert stack.upstream_requests() == before, "a refused call reached the upstream"


def test_a_token_for_another_api_of_the_same_idp_is_refused(idp):
    stack, provider = idp
    token = provider.login("alice", resource=OTHER_RESOURCE)
    assert claims(token)["aud"] == OTHER_AUDIENCE

    before = stack.upstream_requests()
    resp = stack.post(tools_call("echo", {"message": "x"}), token=token)

    assert resp.status_code == 401, resp.text
    assert "www-authenticate" in resp.headers
    assert stack.upstream_requests() == before
