"""The SIEM export to real receivers: Debian's rsyslog over TLS (RFC 5424, octet counting),
an OTLP/HTTP logs receiver decoding with the official opentelemetry-proto package, and a
Splunk HEC receiver checking the token and gzip. Each time the events must match the trail
one-for-one (harness.export.check_delivery). Then the faults: a receiver down for 20 s under
200 calls a second, the service restarted in the middle of the outage, and a receiver that
refuses the token — calls are served throughout, /healthz names the exporter that is behind,
and no token is in any error, log or answer."""

from __future__ import annotations

import base64
import json
import os
import re
import time
from collections import Counter

import httpx
import pytest

from harness.export import check_delivery, wait_delivered
from harness.load import Load
from harness.ocsf import validate
from harness.siem import HecReceiver, OtlpReceiver, Rsyslog
from harness.stack import Stack, gen_tls, tools_call
from harness.store_sql import open_store

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


def test_what_a_receiver_refuses_is_split_and_a_record_refused_alone_arrives_as_a_stub(make_stack, tls_dir, tmp_path):
    """A Splunk HEC that takes at most 64 KiB a request (413 above, as its max_content_length)
    and an OTLP collector that rejects log records over 32 KiB (a partial success, keeping
    the rest): batches are halved until they pass, a record refused even alone arrives as a
    stub naming what it left out, and every record of the trail arrives in order — none held
    back behind the big one."""
    token_file = tmp_path / "hec-token"
    token_file.write_text(TOKEN)
    with HecReceiver(tls_dir, TOKEN) as hec, OtlpReceiver(tls_dir) as otlp:
        hec.max_body = 64 * 1024
        otlp.reject_when = lambda r: len(r["body"]) > 32 * 1024
        ca = str(tls_dir / "ca.crt")
        stack = make_stack(
            upstream="echo",
            export=[
                {
                    "name": "splunk",
                    "format": "ocsf",
                    "splunk_hec": {"url": hec.url, "token_file": str(token_file), "ca_file": ca},
                },
                {"name": "otel", "otlp": {"endpoint": otlp.url, "ca_file": ca}},
            ],
        )
        token = stack.token("alice")
        session = stack.initialize(token)
        # Random bytes in base64: gzip leaves them over 64 KiB.
        big = base64.b64encode(os.urandom(90_000)).decode()
        for i, message in enumerate([*(f"small {i}" for i in range(10)), big, *(f"after {i}" for i in range(10))]):
            resp = stack.post(
                tools_call("echo", {"message": message}, request_id=i + 1),
                token=token,
                headers={"mcp-session-id": session},
            )
            assert resp.status_code == 200, resp.text[:300]
        hec_ids, expected = wait_delivered(stack, lambda: [e["fields"]["gatehouse_id"] for e in hec.events])
        check_delivery(hec_ids, expected)
        otlp_ids, _ = wait_delivered(stack, lambda: [r["attributes"]["gatehouse.record.id"] for r in otlp.records])
        # The collector kept the rest of each batch it rejected a record of (OTLP does not say
        # which): later records arrived before that record's stub, and again after it.
        check_delivery(otlp_ids, expected, by_last_copy=True)
        with open_store(stack) as db:
            rows = db.execute("SELECT writer, seq, length(data) AS size FROM audit_records").fetchall()
        size = {f"{r['writer']}:{r['seq']}": r["size"] for r in rows}
        request = {i for i, n in size.items() if n > 100_000}
        assert len(request) == 1, "the big call's request is in the trail whole"

        def stubs(events: list[tuple[str, dict]], limit: int, reason: str) -> set[str]:
            """The ids sent as stubs; each one a record over `limit` refused for `reason`, and
            carrying the record's hash but not its big text."""
            out = set()
            for event_id, event in events:
                omitted = event.get("export_omitted")
                if omitted is None:
                    continue
                out.add(event_id)
                assert size[event_id] > limit and omitted["fields"] and reason in omitted["reason"], omitted
                assert omitted["event_bytes"] > limit and big[:1000] not in json.dumps(event)
                assert event["hash"] == expected[tuple_id(event_id)]
            return out

        for e in hec.events:
            validate(e["event"])
        splunk = stubs([(e["fields"]["gatehouse_id"], e["event"]["unmapped"]) for e in hec.events], 64 * 1024, "413")
        otel = stubs(
            [(r["attributes"]["gatehouse.record.id"], json.loads(r["body"])) for r in otlp.records],
            32 * 1024,
            "rejected",
        )
        assert request <= splunk and request <= otel, (request, splunk, otel)
        assert max(r["events"] for r in hec.requests if r["status"] == 200) > 5, "the small ones still go in batches"
        metrics = httpx.get(f"{stack.rest_url}/metrics").text
        for name, sent in (("splunk", splunk), ("otel", otel)):
            found = re.search(rf'gatehouse_export_stubs_total\{{exporter="{name}",sink="[a-z_]+"\}} (\d+)', metrics)
            assert found and int(found.group(1)) == len(sent), metrics
        logs = "".join(s.decode(errors="replace") for s in stack.gateway_logs().values())
        assert "sending a stub that names it" in logs and big[:1000] not in logs


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
