"""The mTLS between Envoy and the service survives a certificate rotation with neither
restarted: both take in new certificates — here under a new CA altogether — when their files
are replaced (renamed into place, as Kubernetes swaps a mounted Secret)."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from harness import paths
from harness.stack import tools_call

pytestmark = pytest.mark.gateway

FILES = ("grpc-ca.crt", "grpc-server.crt", "grpc-server.key", "grpc-client.crt", "grpc-client.key")


def handshake(port: int, ca: Path, cert: Path, key: Path) -> bool:
    """Whether a TLS client with this certificate, trusting `ca`, gets through to the service."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca)
    context.load_cert_chain(cert, key)
    context.check_hostname = False
    context.set_alpn_protocols(["h2"])
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, context.wrap_socket(raw) as tls:
            # TLS 1.3: a refused client certificate shows on the first read, not in the handshake.
            tls.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            tls.settimeout(2)
            return len(tls.recv(9)) > 0
    except (ssl.SSLError, OSError):
        return False


def test_certificates_rotate_without_a_restart_of_envoy_or_the_service(make_stack, tmp_path):
    stack = make_stack(upstream="echo")
    token = stack.token()
    session = stack.initialize(token)
    tls = stack.dir / "tls"
    old = tmp_path / "old"
    shutil.copytree(tls, old)

    # A new CA with new certificates for both sides, swapped in by renames.
    new = tmp_path / "new"
    subprocess.run(["bash", str(paths.gen_tls_script()), str(new)], check=True, capture_output=True)
    for name in FILES:
        shutil.copy(new / name, tls / f".{name}.next")
    for name in FILES:
        os.replace(tls / f".{name}.next", tls / name)

    # The service: new connections must use the new CA's certificates, and only those.
    deadline = time.monotonic() + 15
    while not handshake(stack.grpc_port, new / "grpc-ca.crt", new / "grpc-client.crt", new / "grpc-client.key"):
        assert time.monotonic() < deadline, "the service did not take the new certificates in"
        time.sleep(0.3)
    assert not handshake(stack.grpc_port, old / "grpc-ca.crt", old / "grpc-client.crt", old / "grpc-client.key"), (
        "the service still accepts a client certificate of the old CA"
    )

    # Envoy: it took the new client certificate and CA in by SDS ...
    deadline = time.monotonic() + 15
    while (
        stack.admin.stats("client_ssl_socket_factory.ssl_context_update_by_sds").get(
            "cluster.gatehouse_grpc.client_ssl_socket_factory.ssl_context_update_by_sds", 0
        )
        < 1
    ):
        assert time.monotonic() < deadline, "Envoy did not take the new certificates in"
        time.sleep(0.3)
    # ... and uses them: after the service drops every connection, Envoy's new ones must
    # present the new client certificate and accept the new server certificate.
    stack.restart_service()
    resp = stack.post(
        tools_call("echo", {"message": "after rotation"}), token=token, headers={"mcp-session-id": session}
    )
    assert resp.status_code == 200, resp.text
    record = stack.audit.wait_complete(resp.headers["x-gatehouse-request-id"])
    assert record["request"]["data"]["decision"] == "allow"
