"""The service's gRPC API called directly, as Envoy (or a local attacker) would: a
hand-rolled protobuf writer, enough for an IngestBatch, and mTLS channels."""

from __future__ import annotations

from pathlib import Path

import grpc

CHECK = "/envoy.service.auth.v3.Authorization/Check"
INGEST = "/gatehouse.audit.v1.AuditIngest/Ingest"


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, value: int | str | bytes) -> bytes:
    """One protobuf field: a varint for an int, else length-delimited."""
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    data = value.encode() if isinstance(value, str) else value
    return _varint(number << 3 | 2) + _varint(len(data)) + data


def rejection_batch(request_id: str, source: str = "attacker") -> bytes:
    """An IngestBatch holding one RequestRejected record (proto/gatehouse/audit/v1/ingest.proto)."""
    rejected = b"".join(
        [
            field(1, request_id),
            field(2, 400),
            field(3, 32600),
            field(4, "forged_by_a_local_process"),
            field(5, "POST"),
            field(6, "/mcp"),
        ]
    )
    return field(1, source) + field(3, rejected)


def call(channel: grpc.Channel, method: str, body: bytes) -> bytes:
    stub = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    return stub(body, timeout=5)


def tls_channel(port: int, tls_dir: Path, *, client: tuple[Path, Path] | None) -> grpc.Channel:
    """A channel to the gRPC listener on `port`, trusting `tls_dir`'s gRPC CA, presenting
    `client` (certificate, key) if given."""
    creds = grpc.ssl_channel_credentials(
        root_certificates=(tls_dir / "grpc-ca.crt").read_bytes(),
        private_key=client[1].read_bytes() if client else None,
        certificate_chain=client[0].read_bytes() if client else None,
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", creds, options=[("grpc.ssl_target_name_override", "localhost")])
