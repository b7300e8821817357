"""The SIEM export to real receivers: Debian's rsyslog over TLS (RFC 5424, octet counting),
an OTLP/HTTP logs receiver decoding with the official opentelemetry-proto package, and a
Splunk HEC receiver checking the token and gzip. Each time the events must match the trail
one-for-one (harness.export.check_delivery). Then the faults: a receiver down for 20 s under
200 calls a second, the service restarted in the middle of the outage, and a receiver that
refuses the token — calls are served throughout, /healthz names the exporter that is behind,
and no token is in any error, log or answer."""

from __future__ import annotations

import json
import time
from collections import Counter

import httpx
import pytest

from harness.export import check_delivery, wait_delivered
from harness.load import Load
from harness.ocsf import validate
from harness.siem import HecReceiver, OtlpReceiver, Rsyslog
from harness.stack import Stack, gen_tls, tools_call

pytestmark = [pytest.mark.gateway]

TOKEN = "6c0ffee0-hec-token-5ec4e7"


@pytest.fixture(scope="module")
def tls_dir(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("siem-tls")
    gen_tls(out)
    return out


def calls(stack: Stack, n: int) -> None:
    token = stack.token("alice")
    session = stack.initialize(token)
    for i in range(n):
        resp = stack.post(
            tools_call("echo", {"message": f"call {i}"}, request_id=i + 1),
            token=token,
            headers={"mcp-session-id": session},
        )
        assert resp.status_code == 200, resp.text


def health(stack: Stack) -> dict:
    resp = httpx.get(f"{stack.rest_url}/healthz")
    assert resp.status_code == 200, "an exporter never makes the service unhealthy"
    return resp.json()


def test_ocsf_over_tls_syslog_reaches_rsyslog_one_for_one(make_stack, tls_dir, tmp_path):
    with Rsyslog(tls_dir, tmp_path / "rsyslog") as syslog:
        stack = make_stack(
            upstream="echo",
            export=[
                {
                    "name": "soc",
                    "format": "ocsf",
                    "syslog": {"address": f"127.0.0.1:{syslog.port}", "ca_file": str(tls_dir / "ca.crt")},
                }
            ],
        )
        calls(stack, 10)
        ids, expected = wait_delivered(stack, lambda: [m["id"] for m in syslog.messages()])
        check_delivery(ids, expected)
        messages = syslog.messages()
        for m in messages:
            validate(m["event"])
            assert m["event"]["metadata"]["uid"] == m["id"]
            assert m["sd"]["gatehouse@32473"]["hash"] == expected[tuple_id(m["id"])]
            assert m["app_name"] == "gatehouse" and m["facility"] == 13
        calls_ = [m for m in messages if m["event"].get("api", {}).get("operation") == "tools/call"]
        assert len(calls_) == 10 and all(m["msgid"] == "request" for m in calls_)


def tuple_id(event_id: str) -> tuple[str, int]:
    writer, _, seq = event_id.rpartition(":")
    return writer, int(seq)


def test_otlp_logs_carry_the_mcp_attributes(make_stack, tls_dir):
    with OtlpReceiver(tls_dir) as otlp:
        stack = make_stack(
            upstream="echo",
            export=[{"name": "otel", "otlp": {"endpoint": otlp.url, "ca_file": str(tls_dir / "ca.crt")}}],
        )
        calls(stack, 5)
        ids, expected = wait_delivered(stack, lambda: [r["attributes"]["gatehouse.record.id"] for r in otlp.records])
        check_delivery(ids, expected)
        tool_calls = [r for r in otlp.records if r["attributes"].get("mcp.method.name") == "tools/call"]
        assert len(tool_calls) == 5, [r["attributes"] for r in otlp.records][:3]
        for r in tool_calls:
            a = r["attributes"]
            assert a["gen_ai.tool.name"] == "echo" and a["gen_ai.operation.name"] == "execute_tool"
            assert a["mcp.session.id"] and a["user.id"] == "alice" and a["gatehouse.decision"] == "allow"
            record = json.loads(r["body"])
            assert record["hash"] == a["gatehouse.record.hash"] == expected[tuple_id(a["gatehouse.record.id"])]
        assert {r["resource"]["service.name"] for r in otlp.records} == {"gatehouse"}


def test_a_receiver_down_20_s_under_load_and_a_restart_lose_nothing(make_stack, tls_dir, tmp_path):
    token_file = tmp_path / "hec-token"
    token_file.write_text(TOKEN + "\n")
    with HecReceiver(tls_dir, TOKEN) as hec:
        stack = make_stack(
            upstream="echo",
            export=[
                {
                    "name": "splunk",
                    "batch": 200,
                    "splunk_hec": {
                        "url": hec.url,
                        "token_file": str(token_file),
                        "ca_file": str(tls_dir / "ca.crt"),
                        "sourcetype": "gatehouse:audit",
                    },
                }
            ],
        )
        calls(stack, 3)
        wait_delivered(stack, lambda: [e["fields"]["gatehouse_id"] for e in hec.events])
        assert all(r["gzip"] and r["authorized"] for r in hec.requests), hec.requests[:3]

        load = Load(stack, rate=200)
        time.sleep(2)
        hec.down()
        time.sleep(8)
        behind = health(stack)
        assert behind["export_behind"] == ["splunk"] and behind["export"]["splunk"]["last_error"], behind
        # Restarted in the middle of the outage: the cursor is in the database.
        stack.restart_service()
        time.sleep(10)
        hec.up()
        time.sleep(2)
        statuses = load.stop()
        served = statuses[200]
        assert served >= 0.8 * sum(statuses.values()), f"the export slowed the calls: {statuses}"
        ids, expected = wait_delivered(stack, lambda: [e["fields"]["gatehouse_id"] for e in hec.events], timeout=90)
        duplicates = check_delivery(ids, expected)
        print(f"{served} calls served, {len(expected)} records delivered, {duplicates} sent twice; {statuses}")
        assert health(stack)["export_behind"] == []
        for e in hec.events:
            assert e["sourcetype"] == "gatehouse:audit" and e["event"]["hash"]
        assert TOKEN not in "".join(s.decode(errors="replace") for s in stack.gateway_logs().values())


def test_a_refused_token_is_reported_without_the_token_and_calls_go_on(make_stack, tls_dir, tmp_path):
    token_file = tmp_path / "hec-token"
    token_file.write_text(TOKEN)
    with HecReceiver(tls_dir, "another-token") as hec:
        stack = make_stack(
            upstream="echo",
            export=[
                {
                    "name": "splunk",
                    "splunk_hec": {"url": hec.url, "token_file": str(token_file), "ca_file": str(tls_dir / "ca.crt")},
                }
            ],
        )
        calls(stack, 2)
        deadline = time.monotonic() + 15
        while not health(stack)["export_behind"]:
            assert time.monotonic() < deadline, "the failing exporter is never named"
            time.sleep(0.3)
        status = health(stack)["export"]["splunk"]
        assert "403" in status["last_error"] and TOKEN not in json.dumps(status), status
        assert hec.events == [] and Counter(r["status"] for r in hec.requests)[403] >= 1
        metrics = httpx.get(f"{stack.rest_url}/metrics").text
        assert 'gatehouse_export_failures_total{exporter="splunk",sink="splunk_hec"}' in metrics
        assert TOKEN not in metrics
        assert TOKEN not in "".join(s.decode(errors="replace") for s in stack.gateway_logs().values())


def test_a_sink_whose_certificate_does_not_verify_is_never_sent_to(make_stack, tls_dir, tmp_path):
    other = tmp_path / "other-ca"
    gen_tls(other)
    with OtlpReceiver(tls_dir) as otlp:
        stack = make_stack(
            upstream="echo",
            export=[{"name": "otel", "otlp": {"endpoint": otlp.url, "ca_file": str(other / "ca.crt")}}],
        )
        calls(stack, 1)
        deadline = time.monotonic() + 15
        while not health(stack)["export_behind"]:
            assert time.monotonic() < deadline
            time.sleep(0.3)
        assert otlp.records == [], "sent to a server whose certificate another CA signed"
        assert "certificate" in health(stack)["export"]["otel"]["last_error"].lower()
