"""A real OpenID Provider (tests/servers/oidc-provider.mjs: panva's oidc-provider on Node)
shaped like one of the IdPs the README documents, and the authorization code flow with PKCE
an MCP client runs against it (its login and consent pages, driven over HTTP).

Each shape puts the issuer, the access token's audience, the signing algorithm and the user's
groups where that IdP does; `groups_claim` is what gatehouse.yaml must say to find them.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import httpx

from . import paths
from .procs import ProcessSet, free_port

# Where the client sends its users back: a loopback redirect, as native and CLI clients use.
REDIRECT_URI = "http://127.0.0.1/callback"
# A second API on the same IdP: its tokens must not open the gateway.
OTHER_RESOURCE, OTHER_AUDIENCE = "urn:example:other-api", "other-api"
# The gateway's audit API (audit.audience), for the user "auditor" every provider has.
AUDIT_RESOURCE, AUDIT_AUDIENCE = "urn:gatehouse-audit", "gatehouse-audit"


@dataclass(frozen=True)
class IdpShape:
    name: str
    issuer_path: str  # the issuer URL's path on the provider
    client_id: str
    resource: str  # the resource indicator the client asks for
    audience: str  # the `aud` of the access tokens for that resource
    alg: str
    groups_claim: str  # gatehouse.yaml's identity.groups_claim for this IdP
    place_groups: Callable[[list[str]], dict[str, Any]]  # the user's groups as this IdP sends them


def _top(claim: str) -> Callable[[list[str]], dict[str, Any]]:
    return lambda groups: {claim: groups}


SHAPES = {
    # Okta's custom authorization server: a `groups` claim added to the access token.
    "okta": IdpShape(
        "okta",
        "/oauth2/default",
        "0oa1b2c3d4agent",
        "api://gatehouse",
        "api://gatehouse",
        "RS256",
        "groups",
        _top("groups"),
    ),
    # Entra ID v2 tokens: app roles in `roles`, issuer per tenant.
    "entra": IdpShape(
        "entra",
        "/9188040d-6c67-4c5b-b112-36a304b66dad/v2.0",
        "6731de76-14a6-49ae-97bc-6eba6914391e",
        "api://gatehouse",
        "api://gatehouse",
        "RS256",
        "roles",
        _top("roles"),
    ),
    # Keycloak: realm roles nested in `realm_access.roles`; an ES256 realm key.
    "keycloak": IdpShape(
        "keycloak",
        "/realms/acme",
        "mcp-agent",
        "urn:gatehouse",
        "gatehouse",
        "ES256",
        "realm_access.roles",
        lambda groups: {"realm_access": {"roles": groups}},
    ),
    # Dex: `groups` from the connector, the client id as the audience.
    "dex": IdpShape("dex", "/dex", "mcp-agent", "urn:mcp-agent", "mcp-agent", "RS256", "groups", _top("groups")),
    # Google: no groups at all, the client id as the audience.
    "google": IdpShape(
        "google",
        "",
        "1234567890-agent.apps.googleusercontent.com",
        "urn:google-client",
        "1234567890-agent.apps.googleusercontent.com",
        "RS256",
        "groups",
        lambda groups: {},
    ),
}


class OidcProvider:
    """One provider process; `login(user)` returns an access token for the gateway. Besides
    `accounts`, the user "auditor" is in the group "auditors" (for `AUDIT_RESOURCE`)."""

    def __init__(self, procs: ProcessSet, shape: IdpShape, accounts: Mapping[str, dict[str, Any]]) -> None:
        self.shape = shape
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}{shape.issuer_path}"
        self.audience = shape.audience
        self.groups_claim = shape.groups_claim
        config = {
            "port": self.port,
            "issuer_path": shape.issuer_path or "/",
            "issuer": self.issuer,
            "client_id": shape.client_id,
            "redirect_uri": REDIRECT_URI,
            "resources": {
                shape.resource: shape.audience,
                OTHER_RESOURCE: OTHER_AUDIENCE,
                AUDIT_RESOURCE: AUDIT_AUDIENCE,
            },
            "alg": shape.alg,
            "accounts": {"auditor": shape.place_groups(["auditors"]), **accounts},
        }
        script = paths.REPO / "tests" / "servers" / "oidc-provider.mjs"
        self.proc = procs.start(f"oidc-provider-{shape.name}", [paths.node22_bin(), script, json.dumps(config)])
        self.proc.wait_tcp(self.port)

    def login(self, user: str, resource: str | None = None, scopes: Sequence[str] = ("openid", "mcp")) -> str:
        """The authorization code flow with PKCE, signing in as `user` on the provider's pages."""
        resource = resource or self.shape.resource
        verifier = secrets.token_urlsafe(48)
        challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        with httpx.Client(timeout=10) as client:
            resp = client.get(
                f"{self.issuer}/auth",
                params={
                    "client_id": self.shape.client_id,
                    "response_type": "code",
                    "redirect_uri": REDIRECT_URI,
                    "scope": " ".join(scopes),
                    "code_challenge": challenge,
                    "code_challenge_method": "S256",
                    "resource": resource,
                    "state": secrets.token_urlsafe(8),
                },
            )
            code = self._sign_in(client, resp, user)
            token = client.post(
                f"{self.issuer}/token",
                data={
                    "grant_type": "authorization_code",
                    "code": code,
                    "redirect_uri": REDIRECT_URI,
                    "code_verifier": verifier,
                    "client_id": self.shape.client_id,
                    "resource": resource,
                },
            )
        assert token.status_code == 200, f"token endpoint: {token.status_code} {token.text}"
        return token.json()["access_token"]

    @staticmethod
    def _sign_in(client: httpx.Client, resp: httpx.Response, user: str) -> str:
        """Follows the provider's redirects and answers its login and consent forms."""
        for _ in range(12):
            if resp.is_redirect:
                location = urljoin(str(resp.url), resp.headers["location"])
                if location.startswith(REDIRECT_URI):
                    query = parse_qs(urlsplit(location).query)
                    assert "code" in query, f"the provider refused: {query}"
                    return query["code"][0]
                resp = client.get(location)
                continue
            form = re.search(r'<form[^>]*action="([^"]+)"', resp.text)
            prompt = re.search(r'name="prompt" value="(\w+)"', resp.text)
            assert resp.status_code == 200 and form and prompt, f"provider page: {resp.status_code} {resp.text[:800]}"
            fields = {"prompt": prompt.group(1)}
            if prompt.group(1) == "login":
                fields |= {"login": user, "password": "correct horse battery staple"}
            resp = client.post(urljoin(str(resp.url), html.unescape(form.group(1))), data=fields)
        raise AssertionError("the sign-in did not end in a redirect to the client")


def claims(token: str) -> dict[str, Any]:
    """A JWT's payload, unverified (to show what the IdP put in it)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
