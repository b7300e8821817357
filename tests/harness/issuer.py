"""A test OIDC issuer served from the test process: discovery + JWKS, RS256 and ES256 keys.

It mints good tokens and every kind of bad one the gateway must refuse (expired, wrong
issuer, wrong audience, `alg: none`, HS256 signed with the public key, unknown key).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from .procs import free_port


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class TestIssuer:
    __test__ = False  # not a pytest test class

    def __init__(self, audience: str = "gatehouse") -> None:
        self.port = free_port()
        self.issuer = f"http://127.0.0.1:{self.port}/issuer"
        self.audience = audience
        self.rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec_key = ec.generate_private_key(ec.SECP256R1())
        # Same kid as the RSA key, different key: a forged token must fail the signature check.
        self.rogue_rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.jwks = {
            "keys": [
                self._jwk(self.rsa_key.public_key(), "rs-1", "RS256"),
                self._jwk(self.ec_key.public_key(), "ec-1", "ES256"),
            ]
        }
        self.requests: list[str] = []
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="test-issuer", daemon=True).start()

    @staticmethod
    def _jwk(public_key: Any, kid: str, alg: str) -> dict[str, Any]:
        algo = RSAAlgorithm if alg.startswith("RS") else ECAlgorithm
        jwk = json.loads(algo.to_jwk(public_key))
        jwk.update({"kid": kid, "alg": alg, "use": "sig"})
        return jwk

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def do_GET(self) -> None:  # noqa: N802
                issuer.requests.append(self.path)
                if self.path == "/issuer/.well-known/openid-configuration":
                    body: Any = {
                        "issuer": issuer.issuer,
                        "jwks_uri": f"{issuer.issuer}/jwks.json",
                        "id_token_signing_alg_values_supported": ["RS256", "ES256"],
                        "response_types_supported": ["code"],
                        "subject_types_supported": ["public"],
                    }
                elif self.path == "/issuer/jwks.json":
                    body = issuer.jwks
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler

    # --- tokens -----------------------------------------------------------------

    def claims(self, sub: str, groups: list[str], **overrides: Any) -> dict[str, Any]:
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "aud": self.audience,
            "sub": sub,
            "groups": groups,
            "iat": now,
            "nbf": now,
            "exp": now + 600,
        }
        claims.update(overrides)
        return claims

    def token(self, sub: str = "alice", groups: list[str] | None = None, alg: str = "RS256", **overrides: Any) -> str:
        claims = self.claims(sub, groups if groups is not None else ["eng"], **overrides)
        if alg == "RS256":
            return jwt.encode(claims, self.rsa_key, algorithm="RS256", headers={"kid": "rs-1"})
        if alg == "ES256":
            return jwt.encode(claims, self.ec_key, algorithm="ES256", headers={"kid": "ec-1"})
        raise ValueError(alg)

    def token_alg_none(self, sub: str = "alice", groups: list[str] | None = None) -> str:
        header = {"alg": "none", "typ": "JWT", "kid": "rs-1"}
        claims = self.claims(sub, groups or ["eng"])
        return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}."

    def token_hs256_with_public_key(self, sub: str = "alice", groups: list[str] | None = None) -> str:
        """The classic key-confusion forgery: HMAC-SHA256 keyed with the RSA public key PEM."""
        secret = self.rsa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = {"alg": "HS256", "typ": "JWT", "kid": "rs-1"}
        signing_input = (
            f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(self.claims(sub, groups or ['eng'])).encode())}"
        )
        sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{b64url(sig)}"

    def token_unknown_key(self, sub: str = "alice", groups: list[str] | None = None) -> str:
        return jwt.encode(
            self.claims(sub, groups or ["eng"]), self.rogue_rsa_key, algorithm="RS256", headers={"kid": "rs-1"}
        )
