"""The policy reloads while calls flow: every call is decided by exactly one policy, the
one its record names, and a bad file in between changes nothing."""

from __future__ import annotations

import os
import threading
import time

import pytest
import yaml

from harness.approvals import SESSION_RULE, Caller, answer

pytestmark = pytest.mark.gateway

ALLOW = {"id": "echo-allowed-v1", "tools": ["echo"], "outcome": "allow"}
DENY = {"id": "echo-denied-v2", "tools": ["echo"], "outcome": "deny"}


def write_policy(stack, config: dict, rules: list[dict] | str) -> None:
    """Writes `config` with these rules as the stack's gatehouse.yaml in one rename (a string: raw, broken, text)."""
    config = {**config, "policy": {"rules": rules}}
    text = yaml.safe_dump(config, sort_keys=False) if isinstance(rules, list) else rules
    tmp = stack.config_path.with_suffix(".tmp")
    tmp.write_text(text)
    os.replace(tmp, stack.config_path)


def test_a_policy_reload_under_load_decides_every_call_by_one_policy(make_stack):
    stack = make_stack(policy=[SESSION_RULE, ALLOW])
    config = yaml.safe_load(stack.config_path.read_text())
    callers = [Caller(stack, "alice"), Caller(stack, "dave")]
    seen: list[tuple[int, str, dict]] = []
    stop = threading.Event()
    failures: list[str] = []

    def load(caller: Caller) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                resp = caller.call("echo", {"message": f"{n}"}, timeout=10)
                seen.append((resp.status_code, resp.headers["x-gatehouse-request-id"], answer(resp)))
            except Exception as exc:  # noqa: BLE001 -- any failure under reload is the finding
                failures.append(repr(exc))

    threads = [threading.Thread(target=load, args=(c,), daemon=True) for c in callers]
    for t in threads:
        t.start()
    broken = "service: [this is not\n"
    for rules in ([SESSION_RULE, DENY], [SESSION_RULE, ALLOW], broken, [SESSION_RULE, DENY], [SESSION_RULE, ALLOW]):
        time.sleep(1.6)
        write_policy(stack, config, rules)
    time.sleep(1.6)
    stop.set()
    for t in threads:
        t.join(20)

    assert not failures, failures[:5]
    decided = {r["request_id"]: r["data"] for r in stack.audit.records(kind="request", tool="echo", limit=1000)}
    by_rule: dict[str, int] = {}
    for status, request_id, message in seen:
        rule = decided[request_id]["policy_rule"]
        by_rule[rule] = by_rule.get(rule, 0) + 1
        if rule == ALLOW["id"]:
            assert status == 200 and "result" in message, (request_id, status, message)
        else:
            assert rule == DENY["id"], (request_id, rule)
            assert status == 403 and message["error"]["code"] == -32003, (request_id, status, message)
    assert by_rule.get(ALLOW["id"], 0) > 10 and by_rule.get(DENY["id"], 0) > 10, by_rule
    assert len(seen) == len(decided), "a call went unrecorded or unanswered"
    metrics = stack.audit.http.get("/metrics").text
    assert 'gatehouse_policy_reloads_total{result="refused"} 1' in metrics, metrics
    assert 'gatehouse_policy_reloads_total{result="ok"} 4' in metrics, metrics
