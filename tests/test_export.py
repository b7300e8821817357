"""The SIEM export (`export:`) to a JSON-lines file: every record of the trail, in chain
order per writer, at least once, across a kill -9 and a restart; rotation; the OCSF format
against the OCSF schema; lag on /metrics and /healthz; configuration mistakes refused with
the field named and no secret echoed; and with two replicas on PostgreSQL, one exporting at a
time and the other taking over when it is killed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from harness.export import check_delivery, wait_delivered
from harness.stack import Stack, gatehouse, tools_call

pytestmark = [pytest.mark.gateway]


def calls(stack: Stack, n: int, who: str = "alice", start: int = 0) -> None:
    token = stack.token(who)
    for i in range(start, start + n):
        resp = stack.post(tools_call("echo", {"message": f"call {i}"}, request_id=i + 1), token=token)
        assert resp.status_code == 200, resp.text


def until_served(stack: Stack) -> None:
    """Calls until the gateway serves again (Envoy finds a restarted service within its
    health-check interval)."""
    token = stack.token("alice")
    deadline = time.monotonic() + 20
    while stack.post(tools_call("echo", {"message": "back?"}), token=token).status_code != 200:
        assert time.monotonic() < deadline, "the gateway never served again"
        time.sleep(0.3)


def read_events(path: Path) -> list[dict]:
    """The events of the file and its rotated copies, oldest first."""
    rotated = sorted(path.parent.glob(path.name + ".*"), key=lambda p: -int(p.suffix[1:]))
    events = []
    for p in [*rotated, path]:
        if p.exists():
            events += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return events


def gatehouse_ids(path: Path) -> list[str]:
    return [f"{e['writer']}:{e['seq']}" for e in read_events(path)]


def file_exporter(path: Path, **more) -> dict:
    return {"name": "file", "batch": 7, "file": {"path": str(path), **more}}


@pytest.mark.both_backends
def test_every_record_reaches_the_file_in_order_and_survives_a_kill(make_stack, tmp_path):
    out = tmp_path / "trail.jsonl"
    stack = make_stack(upstream="echo", export=[file_exporter(out)])
    calls(stack, 20)
    ids, expected = wait_delivered(stack, lambda: gatehouse_ids(out))
    check_delivery(ids, expected)
    # The record as stored: the same hash as the trail's, which the export cannot change.
    for e in read_events(out):
        assert e["hash"] == expected[(e["writer"], e["seq"])]
        assert set(e) >= {"seq", "writer", "kind", "request_id", "recorded_at", "prev_hash", "hash", "data"}
    assert oct(out.stat().st_mode & 0o777) == "0o640"

    # Killed while calls are made, then started again: nothing missing, order kept.
    stack.crash_service()
    stack.start_service()
    until_served(stack)
    calls(stack, 20, start=20)
    ids, expected = wait_delivered(stack, lambda: gatehouse_ids(out))
    check_delivery(ids, expected)

    status = httpx.get(f"{stack.rest_url}/healthz").json()
    assert status["export"]["file"]["active"] and status["export_behind"] == [], status
    metrics = httpx.get(f"{stack.rest_url}/metrics").text
    assert 'gatehouse_export_lag_records{exporter="file",sink="file"} 0' in metrics, metrics
    sent = [line for line in metrics.splitlines() if line.startswith("gatehouse_export_sent_total")]
    assert sent and int(sent[0].split()[-1]) >= 1, sent


def test_the_file_rotates_by_size_and_keeps_every_record_in_order(make_stack, tmp_path):
    out = tmp_path / "siem" / "trail.jsonl"
    out.parent.mkdir()
    stack = make_stack(upstream="echo", export=[file_exporter(out, max_bytes=8192, keep=1000)])
    calls(stack, 40)
    ids, expected = wait_delivered(stack, lambda: gatehouse_ids(out))
    check_delivery(ids, expected)
    rotated = list(out.parent.glob("trail.jsonl.*"))
    assert len(rotated) >= 2, rotated
    # A batch is never split, so a file passes max_bytes only by its last batch.
    for p in rotated:
        assert p.stat().st_size <= 8192 + 7 * 4096, (p, p.stat().st_size)


def test_ocsf_events_validate_against_the_ocsf_schema(make_stack, tmp_path):
    from harness.ocsf import validate

    out = tmp_path / "ocsf.jsonl"
    stack = make_stack(
        upstream="echo",
        policy=[
            {"id": "no-delete", "tools": ["delete_*"], "outcome": "deny"},
            {"id": "others", "outcome": "allow"},
        ],
        export=[{"name": "ocsf", "format": "ocsf", "file": {"path": str(out)}}],
    )
    calls(stack, 3)
    token = stack.token("alice")
    denied = stack.post(tools_call("delete_everything", {}, request_id=9), token=token)
    assert "no-delete" in denied.text, denied.text
    assert stack.post(tools_call("echo", {}), token="not-a-token").status_code == 401
    ids, expected = wait_delivered(stack, lambda: [e["metadata"]["uid"] for e in read_events(out)])
    check_delivery(ids, expected)
    events = read_events(out)
    for e in events:
        validate(e)
    classes = {e["class_uid"] for e in events}
    assert {6003, 3002} <= classes, classes
    calls_ = [e for e in events if e["class_uid"] == 6003 and e.get("api", {}).get("operation") == "tools/call"]
    assert any(e["actor"]["user"]["uid"] == "alice" for e in calls_), calls_[:2]
    assert any(e.get("disposition_id") == 2 for e in calls_), "the denied call is Blocked"


def test_configuration_mistakes_are_refused_with_the_field_named_and_no_secret(tmp_path, make_stack):
    stack = make_stack(upstream="echo")
    import yaml

    base = yaml.safe_load(stack.config_path.read_text())
    secret = "hec-token-7f3a9c"
    (tmp_path / "token").write_text(secret)
    cases = {
        "export[0]": [{"name": "two", "file": {"path": "a"}, "syslog": {"address": "h:1"}}],
        "export[1].name": [{"name": "x", "file": {"path": "a"}}, {"name": "x", "file": {"path": "b"}}],
        "export[0].splunk_hec.token_env": [
            {"name": "hec", "splunk_hec": {"url": "https://h/services/collector/event", "token_env": "NO_SUCH_VAR_X"}}
        ],
        "export[0].syslog.address": [{"name": "s", "syslog": {"address": "nohost"}}],
        "export[0].splunk_hec.url": [
            {"name": "hec", "splunk_hec": {"url": f"ftp://{secret}@h/", "token_file": str(tmp_path / "token")}}
        ],
        "archive": None,
        "archive.s3.segment_bytes": None,
    }
    for field, export in cases.items():
        config = dict(base)
        if export is None:
            config.pop("export", None)
            s3 = {"bucket": "trail", "region": "us-east-1", "object_lock": {"mode": "COMPLIANCE", "days": 1}}
            if field == "archive":
                config["audit"] = {k: v for k, v in base["audit"].items() if k != "checkpoint"}
            else:
                s3["segment_bytes"] = 10
            config["archive"] = {"s3": s3}
        else:
            config["export"] = export
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump(config))
        checked = gatehouse("check-config", path, check=False)
        assert checked.returncode != 0, field
        assert field in checked.stderr, (field, checked.stderr)
        assert secret not in checked.stderr + checked.stdout


@pytest.mark.parametrize("audit_backend", ["postgres"], indirect=True)
def test_one_replica_exports_and_another_takes_over_when_it_is_killed(make_stack, tmp_path):
    out = tmp_path / "trail.jsonl"
    stack = make_stack(upstream="echo", replicas=2, export=[file_exporter(out)])
    calls(stack, 20)
    ids, expected = wait_delivered(stack, lambda: gatehouse_ids(out))
    assert check_delivery(ids, expected) == 0, "one replica at a time: no record twice as a matter of course"
    assert {w for w, _ in expected} >= {"gatehouse-test", "gatehouse-test-2"}

    def active(url: str) -> bool:
        return httpx.get(f"{url}/healthz").json()["export"]["file"]["active"]

    replica = stack.replicas[0]
    holder = stack.service if active(stack.rest_url) else replica.proc
    assert active(stack.rest_url) != active(replica.rest_url), "exactly one replica holds the lease"
    holder.kill()
    survivor = replica.rest_url if holder is stack.service else stack.rest_url
    deadline = time.monotonic() + 15
    while not active(survivor):
        assert time.monotonic() < deadline, "no replica took the export over"
        time.sleep(0.3)
    # The killed one comes back (as a supervisor would restart it); it does not take the
    # lease back while the survivor holds it.
    if holder is stack.service:
        stack.start_service()
    else:
        replica.start()
    until_served(stack)
    calls(stack, 20, start=20)
    ids, expected = wait_delivered(stack, lambda: gatehouse_ids(out))
    check_delivery(ids, expected)
    assert active(survivor)


def test_the_exporters_and_the_indexer_run_on_a_thread_of_lower_priority(make_stack, tmp_path):
    """The export's, archive's and session indexer's work is on one thread at nice 10, so its
    bursts of formatting and compressing are preempted by the kernel instead of holding a
    runtime worker a Check is queued on; the Checks' threads keep the service's priority."""
    stack = make_stack(upstream="echo", export=[{"name": "siem", "file": {"path": str(tmp_path / "trail.jsonl")}}])
    calls(stack, 3)
    nice: dict[str, list[int]] = {}
    for task in Path(f"/proc/{stack.service.pid}/task").iterdir():
        stat = (task / "stat").read_text()
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        # Field 19 of stat, the 17th after the name.
        nice.setdefault(name, []).append(int(stat.rsplit(")", 1)[1].split()[16]))
    assert nice.get("gh-background") == [10], nice
    # The service's runtime workers (the background's blocking threads share the name, at 10),
    # the audit writer, and SQLite's connection threads of the Checks' pools (the background's
    # own pools' at 10).
    assert nice["tokio-rt-worker"].count(0) >= 1 and nice["audit-writer"] == [0], nice
    assert {0, 10} <= set(nice["sqlx-sqlite-wor"]), nice
