"""Recording scope (`recording:`) and the configuration's own records (`config_changed`).

A call a `metadata` rule selects is recorded without content: who, what, when, the decision,
and the size and SHA-256 of what was left out, in its request record and in its answer's; a
word it carried is nowhere in the trail's files. Any other call is recorded in full. The
configuration is a record at start and at every reload, taken or refused, saying what changed;
a reload changes the recording scope too."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from typing import Any

import pytest
import yaml

from harness.stack import Stack, gatehouse, tools_call

pytestmark = [pytest.mark.gateway, pytest.mark.both_backends]

QUIET = {"id": "quiet-echo", "tools": ["echo"], "groups": ["bulk"], "record": "metadata"}


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def call(stack: Stack, token: str, message: str) -> tuple[str, bytes]:
    body = tools_call("echo", {"message": message}, request_id=3)
    resp = stack.post(body, token=token)
    assert resp.status_code == 200, resp.text
    assert message.split()[0] in resp.text, "the client gets its answer whatever the recording"
    return resp.headers["x-gatehouse-request-id"], json.dumps(body).encode()


def config_records(stack: Stack) -> list[dict[str, Any]]:
    return stack.audit.records(kind="config_changed", limit=1000)


def wait_config_records(stack: Stack, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 15
    while len(found := config_records(stack)) < n:
        assert time.monotonic() < deadline, f"{len(found)} config_changed records, expected {n}: {found}"
        time.sleep(0.2)
    return found


def rewrite(stack: Stack, change, config: dict[str, Any] | None = None) -> bytes:
    """Changes the stack's gatehouse.yaml (or `config`) in one rename; returns the new bytes."""
    config = config or yaml.safe_load(stack.config_path.read_text())
    text = change(config)
    data = (text if isinstance(text, str) else yaml.safe_dump(config, sort_keys=False)).encode()
    tmp = stack.config_path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, stack.config_path)
    return data


def test_a_metadata_call_keeps_no_content_and_others_stay_full(make_stack):
    stack = make_stack(upstream="echo", recording=[QUIET])
    quiet_id, body = call(stack, stack.token("bob", ["eng", "bulk"]), "zebra-crossing-7 with AKIAIOSFODNN7EXAMPLE")
    full_id, _ = call(stack, stack.token("alice", ["eng"]), "okapi-field-9")

    stack.audit.wait_complete(quiet_id)
    records = stack.audit.records(request_id=quiet_id)
    request = next(r for r in records if r["kind"] == "request")["data"]
    assert request["recording"] == "metadata"
    assert request["arguments"] is None
    assert request["subject"] == "bob" and request["tool"] == "echo" and request["decision"] == "allow"
    assert request["content"]["bytes"] == len(body)
    masked_args = {"message": "zebra-crossing-7 with [MASKED:aws_access_key_id]"}
    assert request["content"]["sha256"] == hashlib.sha256(canonical([masked_args])).hexdigest(), (
        "the SHA-256 of the masked arguments left out"
    )
    answers = [r["data"] for r in records if r["kind"] == "response"]
    assert answers and all(a["message"] is None for a in answers), answers
    assert all(re.fullmatch(r"[0-9a-f]{64}", a["content"]["sha256"]) for a in answers if "content" in a)
    assert any(a.get("content", {}).get("bytes", 0) > 0 for a in answers), answers

    stack.audit.wait_complete(full_id)
    full = {r["kind"]: r["data"] for r in stack.audit.records(request_id=full_id)}
    assert "recording" not in full["request"] and full["request"]["arguments"] == {"message": "okapi-field-9"}
    assert "okapi-field-9" in json.dumps(full["response"]["message"])

    # The word the quiet call carried is nowhere on disk (SQLite); the full call's is.
    if stack.db_path.exists():
        time.sleep(1.5)  # the session index files it too
        trail = b"".join(stack.trail_files().values())
        assert b"zebra-crossing" not in trail
        assert b"okapi-field" in trail


def test_configuration_changes_are_records_and_a_reload_changes_the_scope(make_stack):
    stack = make_stack(upstream="echo", policy=[{"id": "echo-ok", "tools": ["echo"], "outcome": "allow"}])
    (loaded,) = wait_config_records(stack, 1)
    data = loaded["data"]
    assert data["event"] == "loaded" and data["source"] == str(stack.config_path)
    assert data["config_sha256"] == hashlib.sha256(stack.config_path.read_bytes()).hexdigest()
    assert list(data["digests"]["policy_rules"]) == ["echo-ok"]

    token = stack.token("alice", ["eng"])
    before_id, _ = call(stack, token, "giraffe-before")

    # A reload: a rule added, the recording scope changed, and a section only a restart applies.
    def change(config: dict[str, Any]) -> None:
        config["policy"]["rules"].insert(0, {"id": "no-delete", "tools": ["delete_*"], "outcome": "deny"})
        config["recording"] = [{"id": "all-quiet", "upstreams": [stack.upstream_name], "record": "metadata"}]
        config["audit"]["session_idle_seconds"] = 123

    new_bytes = rewrite(stack, change)
    reloaded = wait_config_records(stack, 2)[-1]["data"]
    assert reloaded["event"] == "reloaded"
    assert reloaded["config_sha256"] == hashlib.sha256(new_bytes).hexdigest()
    assert reloaded["changes"]["policy_rules"] == {"added": ["no-delete"], "removed": [], "changed": []}
    assert reloaded["changes"]["recording"]["added"] == ["all-quiet"]
    assert reloaded["pending_restart"] == ["audit"], reloaded

    deadline = time.monotonic() + 10
    while True:  # the watcher swapped the rules when it recorded them; a Check started before may not see them
        after_id, _ = call(stack, token, "giraffe-after")
        stack.audit.wait_complete(after_id)
        after = next(r for r in stack.audit.records(request_id=after_id) if r["kind"] == "request")["data"]
        if after.get("recording") == "metadata":
            break
        assert time.monotonic() < deadline, after
    before = next(r for r in stack.audit.records(request_id=before_id) if r["kind"] == "request")["data"]
    assert "recording" not in before, "a reload does not change what was recorded before it"

    # A refused reload is recorded too, with its problems (and nothing changes).
    good = yaml.safe_load(stack.config_path.read_text())
    rewrite(stack, lambda config: "service: [this is not a configuration\n")
    refused = wait_config_records(stack, 3)[-1]["data"]
    assert refused["event"] == "reload_refused" and refused["problems"], refused
    still_id, _ = call(stack, token, "giraffe-still")
    stack.audit.wait_complete(still_id)
    still = next(r for r in stack.audit.records(request_id=still_id) if r["kind"] == "request")["data"]
    assert still.get("recording") == "metadata", "the refused file changed nothing"

    # Edited while the service is down: the next start says what changed since the newest record.
    stack.service.stop()

    def drop_rule(config: dict[str, Any]) -> None:
        config["policy"]["rules"] = [r for r in config["policy"]["rules"] if r["id"] != "no-delete"]
        config.pop("recording")

    rewrite(stack, drop_rule, good)
    stack.start_service()
    started = wait_config_records(stack, 4)[-1]["data"]
    assert started["event"] == "loaded"
    assert started["changes"]["policy_rules"]["removed"] == ["no-delete"]
    assert started["changes"]["recording"]["removed"] == ["all-quiet"]
    assert stack.verify().returncode == 0


def test_check_config_names_bad_recording_rules(make_stack, tmp_path):
    stack = make_stack(upstream="echo")
    config = yaml.safe_load(stack.config_path.read_text())
    for rules, expected in (
        ([{"id": "b", "record": "sometimes"}], ["recording[0].record", "sometimes"]),
        (
            [{"id": "a", "upstreams": ["nowhere"], "record": "metadata"}, {"id": "a", "record": "full"}],
            ['recording[0].upstreams: "nowhere" is not an upstream', "recording[1].id"],
        ),
    ):
        bad = tmp_path / "bad.yaml"
        bad.write_text(yaml.safe_dump({**config, "recording": rules}))
        result = gatehouse("check-config", bad, check=False)
        out = result.stdout + result.stderr
        assert result.returncode != 0, out
        for words in expected:
            assert words in out, out
