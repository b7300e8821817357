"""Attacks from a local process on the gateway host against the service and Envoy's admin.

A local process reaches every loopback port. The service's gRPC listener (ext_authz Check
and audit ingest) must take calls only from Envoy's client certificate, and Envoy's admin
interface, which shows the whole configuration, must hold no secret.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

import grpc
import httpx
import pytest

from harness.grpc_raw import CHECK, INGEST, call, field, rejection_batch
from harness.grpc_raw import tls_channel as raw_tls_channel
from harness.stack import Stack, tools_call

pytestmark = pytest.mark.gateway


def tls_channel(stack: Stack, *, client: tuple[Path, Path] | None) -> grpc.Channel:
    return raw_tls_channel(stack.grpc_port, stack.dir / "tls", client=client)


def foreign_client_certificate(out: Path) -> tuple[Path, Path]:
    """A client certificate from a CA the service does not trust (a self-signed one)."""
    cert, key = out / "foreign.crt", out / "foreign.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-days", "1", "-subj", "/CN=gatehouse-envoy", "-addext", "extendedKeyUsage=clientAuth",
            "-keyout", str(key), "-out", str(cert),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def test_the_grpc_listener_takes_calls_only_from_envoys_certificate(stack: Stack, tmp_path: Path) -> None:
    tls = stack.dir / "tls"
    envoys = (tls / "grpc-client.crt", tls / "grpc-client.key")
    attempts = {
        "plaintext": grpc.insecure_channel(f"127.0.0.1:{stack.grpc_port}"),
        "TLS without a client certificate": tls_channel(stack, client=None),
        "a certificate of another CA": tls_channel(stack, client=foreign_client_certificate(tmp_path)),
        # The HTTPS listener's own certificate is signed by the public listener's CA, not the gRPC one.
        "the HTTPS listener's certificate": tls_channel(stack, client=(tls / "server.crt", tls / "server.key")),
    }
    forged = {}
    for what, channel in attempts.items():
        with channel:
            for method in (CHECK, INGEST):
                request_id = uuid.uuid4().hex
                forged[what, method] = request_id
                body = rejection_batch(request_id) if method == INGEST else b""
                with pytest.raises(grpc.RpcError) as refused:
                    call(channel, method, body)
                assert refused.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNKNOWN), (what, method)

    # Control: Envoy's certificate gets through, and what it ingests is stored. So the refusals
    # above are the listener's doing, not a broken client.
    genuine = uuid.uuid4().hex
    with tls_channel(stack, client=envoys) as channel:
        call(channel, CHECK, b"")  # an empty Check is answered (with a denial), not refused
        ack = call(channel, INGEST, rejection_batch(genuine))
    assert ack == field(1, 1), ack  # IngestAck{accepted: 1}
    (stored,) = stack.audit.wait_records(bool, "the ingested record", request_id=genuine)
    assert stored["kind"] == "request_rejected" and stored["data"]["reason"] == "forged_by_a_local_process"

    for (what, method), request_id in forged.items():
        assert not stack.audit.records(request_id=request_id), f"{what} reached {method}"
    # The gateway still works end to end over mTLS.
    token = stack.token()
    stack.initialize(token)
    assert stack.audit.records(kind="request")


def test_envoy_admin_shows_no_masking_token_key(make_stack) -> None:
    stack = make_stack(
        upstream="demo",
        masking={"styles": {"email": "token"}, "token_key_file": "mask-token.key"},
    )
    key = (stack.dir / "mask-token.key").read_text().strip()
    assert len(bytes.fromhex(key)) >= 16

    # Everything the admin interface shows, including the rendered file it was started from.
    dump = httpx.get(f"http://127.0.0.1:{stack.admin_port}/config_dump?include_eds", timeout=10)
    assert dump.status_code == 200 and "gatehouse" in dump.text
    for shown in (dump.text, dump.text.lower(), (stack.dir / "envoy.yaml").read_text()):
        assert key not in shown and key.upper() not in shown
    assert "GATEHOUSE_MASK_TOKEN_KEY" in dump.text  # only the variable's name

    # The filter has the key nonetheless: e-mails come back as keyed tokens.
    token = stack.token()
    session = stack.initialize(token)
    answer = stack.post(
        tools_call("find_customer", {"name": ""}),
        token=token,
        headers={"mcp-session-id": session, "accept": "application/json, text/event-stream"},
    )
    assert answer.status_code == 200, answer.text
    tokens = re.findall(r"\[MASKED:email:(tok_[0-9a-f]{8,})\]", answer.text)
    assert tokens, answer.text[:2000]
    assert "@" not in json.dumps(tokens)
