"""The SOC 2 evidence pack (`gatehouse evidence`): a generated trail (calls, a denial, an
approval, masked data, a reload) gives in every table the numbers this test computes itself
from the records; the pack verifies, a tampered copy does not, and the report renders in
Debian's headless Chromium."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import shutil
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness.approvals import SESSION_RULE, Approver, Caller, approval_rule
from harness.browser import Browser
from harness.stack import Stack, gatehouse

pytestmark = [pytest.mark.gateway, pytest.mark.both_backends]

SECRET = "AKIAIOSFODNN7EXAMPLE"
POLICY = [
    SESSION_RULE,
    {**approval_rule("bob-needs-approval", tools=("echo",), hold_seconds=20), "subjects": ["bob"]},
    {"id": "echo-ok", "tools": ["echo"], "outcome": "allow"},
]


def rows(out: Path, name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO((out / name).read_text())))


def iso(t: dt.datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture
def pack(make_stack, tmp_path: Path) -> tuple[Stack, Path, Path, list[dict[str, Any]]]:
    stack = make_stack(
        upstream="echo",
        policy=POLICY,
        ext_authz_timeout_ms=30000,
        audit={"checkpoint": {"key_file": "checkpoint-key.pem", "log_file": "checkpoints.log", "every_seconds": 1}},
    )
    start = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    alice = Caller(stack, "alice")
    for message in ("one", f"two {SECRET}", "three"):
        assert alice.call("echo", {"message": message}).status_code == 200
    denied = alice.call("rm_rf", {"path": "/"})
    assert "error" in denied.text
    bob = Caller(stack, "bob")
    approver = Approver(stack, "carol")
    wait = bob.call_in_background("echo", {"message": "ship it"})
    pending = approver.wait_pending(lambda a: a["subject"] == "bob")
    assert approver.approve(pending["id"], reason="change 42").status_code == 200
    assert wait(30).status_code == 200
    # A reload: one rule more.
    config = yaml.safe_load(stack.config_path.read_text())
    config["policy"]["rules"].append({"id": "ping-ok", "methods": ["ping"], "outcome": "allow"})
    tmp = stack.config_path.with_suffix(".tmp")
    tmp.write_text(yaml.safe_dump(config, sort_keys=False))
    os.replace(tmp, stack.config_path)
    deadline = dt.datetime.now() + dt.timedelta(seconds=15)
    while len(stack.audit.records(kind="config_changed")) < 2:
        assert dt.datetime.now() < deadline, "the reload was not recorded"
        time.sleep(0.2)
    time.sleep(1.5)  # a checkpoint signs the newest records
    records = stack.audit.records(since=iso(start), limit=1000)
    out = tmp_path / "evidence"
    end = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
    made = gatehouse("evidence", "--from", iso(start), "--to", iso(end), "--out", out, "--config", stack.config_path)
    assert "chain verified: true" in made.stdout, made.stdout
    key = tmp_path / "public.pem"
    key.write_text(gatehouse("audit", "public-key", "--config", stack.config_path).stdout)
    return stack, out, key, records


def test_every_table_has_the_numbers_of_the_trail(pack):
    _, out, _, records = pack
    requests = [r["data"] for r in records if r["kind"] == "request"]
    summary = json.loads((out / "summary.json").read_text())

    # CC6.1: who did what.
    by_user = {row["user"]: row for row in rows(out, "cc6_1_access_by_user.csv")}
    for user in ("alice", "bob"):
        mine = [d for d in requests if d.get("subject") == user]
        assert int(by_user[user]["calls"]) == len(mine)
        assert int(by_user[user]["denied"]) == sum(d["decision"] == "deny" for d in mine)
    assert int(by_user["alice"]["denied"]) >= 1 and "rm_rf" in by_user["alice"]["tools"]
    assert summary["cc6_1"]["calls"] == len(requests)
    access = rows(out, "cc6_1_access_rules.csv")
    assert {r["rule"] for r in access} >= {"session", "bob-needs-approval", "echo-ok", "ping-ok"}

    # CC6.2/6.3: the approval, who asked, who decided, why, how long it took.
    (approval,) = rows(out, "cc6_2_approvals.csv")
    assert (approval["requester"], approval["approver"], approval["outcome"], approval["reason"]) == (
        "bob",
        "carol",
        "approved",
        "change 42",
    )
    assert approval["rule"] == "bob-needs-approval" and float(approval["seconds_to_decide"]) >= 0
    assert int(approval["uses"]) == sum(1 for r in records if r["kind"] == "approval" and r["data"]["event"] == "used")

    # CC6.7: masked values by kind, as the records count them.
    counted: Counter[str] = Counter()
    for r in records:
        for kind, n in (r["data"].get("masked") or {}).items():
            counted[kind] += n
    masked = Counter()
    for row in rows(out, "cc6_7_masked.csv"):
        masked[row["kind"]] += int(row["count"])
    assert masked == counted and masked["aws_access_key_id"] >= 1, (masked, counted)

    # CC7.2: every allowed request answered; the chain verified; the newest checkpoint named.
    answered = {r["request_id"] for r in records if r["kind"] == "response" and r["data"]["final"]}
    allowed = [r for r in records if r["kind"] == "request" and r["data"]["decision"] == "allow"]
    assert summary["cc7_2"]["requests_allowed"] == len(allowed)
    assert summary["cc7_2"]["without_final_answer"] == sum(r["request_id"] not in answered for r in allowed)
    assert summary["cc7_2"]["chain"]["verified"] is True
    assert summary["cc7_2"]["newest_checkpoints"], "the newest signed checkpoint"

    # CC8.1: the start and the reload.
    changes = rows(out, "cc8_1_config_changes.csv")
    assert [c["event"] for c in changes] == ["loaded", "reloaded"]
    assert changes[1]["rules_added"] == "ping-ok"


def test_the_pack_verifies_and_a_tampered_copy_does_not(pack, tmp_path: Path):
    _, out, key, _ = pack
    ok = gatehouse("audit", "verify-export", out, "--public-key", key, check=False)
    assert ok.returncode == 0 and "Export verified." in ok.stdout, ok.stdout
    for name in ("cc6_2_approvals.csv", "report.html", "summary.json"):
        copy = tmp_path / f"tampered-{name}"
        shutil.copytree(out, copy)
        (copy / name).write_text((copy / name).read_text().replace("carol", "mallory").replace("true", "false"))
        bad = gatehouse("audit", "verify-export", copy, "--public-key", key, check=False)
        assert bad.returncode == 1 and f"{name}: its SHA-256 is not the manifest's" in bad.stdout, bad.stdout


def test_the_report_renders_in_chromium(pack, browser: Browser):
    _, out, _, _ = pack
    browser.goto((out / "report.html").as_uri())
    for section, title in (
        ("cc6-1", "CC6.1 Logical access"),
        ("cc6-2", "CC6.2 / CC6.3 Approvals"),
        ("cc6-7", "CC6.7 Confidentiality"),
        ("cc7-2", "CC7.2 Monitoring: trail completeness"),
        ("cc8-1", "CC8.1 Change management"),
    ):
        assert browser.text(f"#{section} h2") == title
    assert "carol" in browser.text("#cc6-2 table")
    assert "ping-ok" in browser.text("#cc8-1 table")
