"""harness/siem.py itself, without the gateway: the OTLP receiver decodes a hand-built
`ExportLogsServiceRequest`, the HEC receiver takes a gzip'd batch with the right token and
refuses the wrong one as Splunk does, rsyslog parses an octet-counted RFC 5424 message sent
over TLS, and each one's outage switch works.

rsyslog is Debian's `rsyslog` and `rsyslog-openssl` packages; when they are missing the
rsyslog test fails with the reason rather than skip: CI installs them."""

from __future__ import annotations

import gzip
import json
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from harness.siem import HecReceiver, OtlpReceiver, Rsyslog, parse_structured_data
from harness.stack import gen_tls


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("siem") / "tls"
    gen_tls(out)
    return out


def _client(tls_dir: Path) -> httpx.Client:
    return httpx.Client(verify=ssl.create_default_context(cafile=str(tls_dir / "ca.crt")), timeout=5)


def _otlp_request(*bodies: str) -> ExportLogsServiceRequest:
    request = ExportLogsServiceRequest()
    resource_logs = request.resource_logs.add()
    resource_logs.resource.attributes.append(KeyValue(key="service.name", value=AnyValue(string_value="gatehouse")))
    scope_logs = resource_logs.scope_logs.add()
    scope_logs.scope.name = "gatehouse.audit"
    for i, body in enumerate(bodies):
        record = scope_logs.log_records.add()
        record.time_unix_nano = 1_772_600_767_089_000_000 + i
        record.severity_number = 9
        record.severity_text = "INFO"
        record.body.string_value = body
        record.attributes.append(KeyValue(key="gatehouse.record.id", value=AnyValue(string_value=f"w:{i + 1}")))
        record.attributes.append(KeyValue(key="seq", value=AnyValue(int_value=i + 1)))
    return request


@pytest.mark.parametrize("tls", [True, False], ids=["https", "http"])
def test_otlp_receiver_decodes_records_and_fails_on_demand(tls_dir: Path, tls: bool) -> None:
    with OtlpReceiver(tls_dir if tls else None) as otlp, _client(tls_dir) as http:
        assert otlp.url == f"{'https' if tls else 'http'}://127.0.0.1:{otlp.port}/v1/logs"
        headers = {"content-type": "application/x-protobuf", "api-key": "k"}

        resp = http.post(otlp.url, content=_otlp_request('{"a":1}', '{"b":2}').SerializeToString(), headers=headers)
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"] == "application/x-protobuf"
        assert not ExportLogsServiceResponse.FromString(resp.content).HasField("partial_success")
        first, second = otlp.wait_for(2)
        assert first["body"] == '{"a":1}' and second["body"] == '{"b":2}'
        assert first["attributes"] == {"gatehouse.record.id": "w:1", "seq": 1}
        assert first["resource"] == {"service.name": "gatehouse"}
        assert first["scope"] == "gatehouse.audit"
        assert (first["time_unix_nano"], first["severity_number"], first["severity_text"]) == (
            1_772_600_767_089_000_000,
            9,
            "INFO",
        )
        assert otlp.requests[0]["headers"]["api-key"] == "k"

        # gzip'd bodies are decoded too.
        zipped = gzip.compress(_otlp_request('{"c":3}').SerializeToString())
        resp = http.post(otlp.url, content=zipped, headers={**headers, "content-encoding": "gzip"})
        assert resp.status_code == 200 and otlp.records[-1]["body"] == '{"c":3}'
        assert otlp.requests[-1]["gzip"] is True

        body = _otlp_request('{"d":4}').SerializeToString()
        otlp.fail_next(2)
        assert [http.post(otlp.url, content=body, headers=headers).status_code for _ in range(3)] == [503, 503, 200]
        otlp.reject_next(1)
        resp = http.post(otlp.url, content=body, headers=headers)
        assert ExportLogsServiceResponse.FromString(resp.content).partial_success.rejected_log_records == 1
        assert [r["body"] for r in otlp.records].count('{"d":4}') == 1, "failed and rejected requests keep nothing"

        otlp.down()
        with pytest.raises(httpx.ConnectError):
            http.post(otlp.url, content=body, headers=headers)
        otlp.up()
        assert http.post(otlp.url, content=body, headers=headers).status_code == 200
        assert len(otlp.records) == 5

        resp = http.post(otlp.url, content=b"\xff\xff not protobuf", headers=headers)
        assert resp.status_code == 400


def _hec_batch(*ids: str) -> bytes:
    events = [{"time": 1772600767.089, "host": "w", "event": {"n": i}, "fields": {"gatehouse_id": i}} for i in ids]
    return "\n".join(json.dumps(e) for e in events).encode()


def test_hec_receiver_checks_the_token_and_takes_gzipped_batches(tls_dir: Path) -> None:
    token = "11111111-2222-3333-4444-555555555555"
    with HecReceiver(tls_dir, token) as hec, _client(tls_dir) as http:
        assert hec.url == f"https://127.0.0.1:{hec.port}/services/collector/event"
        good = {"authorization": f"Splunk {token}", "content-encoding": "gzip"}

        resp = http.post(hec.url, content=gzip.compress(_hec_batch("w:1", "w:2")), headers=good)
        assert (resp.status_code, resp.json()) == (200, {"text": "Success", "code": 0})
        assert [e["fields"]["gatehouse_id"] for e in hec.wait_for(2)] == ["w:1", "w:2"]
        assert hec.events[0]["event"] == {"n": "w:1"}
        assert hec.requests[-1]["gzip"] is True and hec.requests[-1]["events"] == 2

        # Not gzip'd: concatenated objects with no separator at all are taken too.
        plain = b"".join(json.dumps({"event": i}).encode() for i in range(3))
        resp = http.post(hec.url, content=plain, headers={"authorization": f"Splunk {token}"})
        assert resp.json()["code"] == 0 and hec.requests[-1]["gzip"] is False and len(hec.events) == 5

        wrong = {**good, "authorization": "Splunk 00000000-0000-0000-0000-000000000000"}
        resp = http.post(hec.url, content=gzip.compress(_hec_batch("w:3")), headers=wrong)
        assert (resp.status_code, resp.json()) == (403, {"text": "Invalid token", "code": 4})
        resp = http.post(hec.url, content=_hec_batch("w:3"))
        assert (resp.status_code, resp.json()["code"]) == (401, 2)
        resp = http.post(hec.url, content=_hec_batch("w:3"), headers={"authorization": f"Bearer {token}"})
        assert (resp.status_code, resp.json()["code"]) == (401, 3)
        assert [r["authorized"] for r in hec.requests[-3:]] == [False, False, False]
        resp = http.post(hec.url, content=b'{"event": 1} {"no_event": 2}', headers=good | {"content-encoding": "none"})
        assert (resp.status_code, resp.json()["code"]) == (400, 12)
        assert len(hec.events) == 5, "refused batches keep nothing"

        hec.fail_next(1)
        resp = http.post(hec.url, content=gzip.compress(_hec_batch("w:3")), headers=good)
        assert (resp.status_code, resp.json()) == (503, {"text": "Server is busy", "code": 9})
        hec.down()
        with pytest.raises(httpx.ConnectError):
            http.post(hec.url, content=gzip.compress(_hec_batch("w:3")), headers=good)
        hec.up()
        assert http.post(hec.url, content=gzip.compress(_hec_batch("w:3")), headers=good).json()["code"] == 0
        assert hec.events[-1]["fields"] == {"gatehouse_id": "w:3"}


@pytest.fixture
def rsyslog(tls_dir: Path, tmp_path: Path) -> Iterator[Rsyslog]:
    try:
        server = Rsyslog(tls_dir, tmp_path / "logs")
    except RuntimeError as exc:
        pytest.fail(str(exc))
    with server:
        yield server


def _syslog_frame(seq: int, event: dict, severity: int = 6) -> bytes:
    msg = (
        f"<{13 * 8 + severity}>1 2026-03-04T05:06:07.089Z gw-0 gatehouse - request "
        f'[gatehouse@32473 id="w:{seq}" hash="a\\"b\\\\c\\]d"] {json.dumps(event, ensure_ascii=False)}'
    ).encode()
    return str(len(msg)).encode() + b" " + msg


def _send_tls(port: int, tls_dir: Path, *frames: bytes) -> None:
    context = ssl.create_default_context(cafile=str(tls_dir / "ca.crt"))
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    with raw, context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        for frame in frames:
            tls.sendall(frame)
        # close_notify: without it rsyslog's ossl driver drops what it has not parsed yet.
        tls.unwrap()


def test_rsyslog_parses_octet_counted_rfc5424_over_tls_and_stops_on_demand(rsyslog: Rsyslog, tls_dir: Path) -> None:
    big = {"text": 'é ] " \\ \n', "pad": "x" * 300_000}
    _send_tls(rsyslog.port, tls_dir, _syslog_frame(1, {"n": 1}), _syslog_frame(2, big, severity=4))
    first, second = rsyslog.wait_for(2)
    assert first["event"] == {"n": 1} and second["event"] == big, "a frame past imtcp's default 200000 bytes"
    assert (first["facility"], first["severity"], second["severity"]) == (13, 6, 4)
    assert (first["hostname"], first["app_name"], first["procid"], first["msgid"]) == (
        "gw-0",
        "gatehouse",
        "-",
        "request",
    )
    assert first["timestamp"].startswith("2026-03-04T05:06:07.089")
    assert first["id"] == "w:1" and second["id"] == "w:2"
    assert first["sd"] == {"gatehouse@32473": {"id": "w:1", "hash": 'a"b\\c]d'}}

    rsyslog.stop()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", rsyslog.port), timeout=5)
    rsyslog.start()
    _send_tls(rsyslog.port, tls_dir, _syslog_frame(3, {"n": 3}))
    assert [m["id"] for m in rsyslog.wait_for(3)] == ["w:1", "w:2", "w:3"], "the file is kept across a restart"


def test_plain_tcp_rsyslog(tmp_path: Path) -> None:
    try:
        server = Rsyslog(None, tmp_path / "logs")
    except RuntimeError as exc:
        pytest.fail(str(exc))
    with server, socket.create_connection(("127.0.0.1", server.port), timeout=5) as conn:
        conn.sendall(_syslog_frame(1, {"n": 1}) + _syslog_frame(2, {"n": 2}))
        assert [m["event"] for m in server.wait_for(2)] == [{"n": 1}, {"n": 2}]


def test_structured_data_parsing() -> None:
    assert parse_structured_data("-") == {}
    assert parse_structured_data('[a@1 x="1" y="q\\"\\]"][b z=""]') == {"a@1": {"x": "1", "y": 'q"]'}, "b": {"z": ""}}
