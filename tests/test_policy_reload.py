"""The policy reloads while calls flow: every call is decided by exactly one policy, the
one its record names, and a bad file in between changes nothing."""

from __future__ import annotations

import os
import re
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


def reload_counts(stack) -> dict[str, int]:
    """gatehouse_policy_reloads_total by result, from the service's metrics."""
    text = stack.audit.http.get("/metrics").text
    found = re.findall(r'^gatehouse_policy_reloads_total\{result="(\w+)"\} (\d+)$', text, re.M)
    return {result: int(n) for result, n in found}


def wait_until(pred, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"no {what} after {timeout}s"
        time.sleep(0.05)


def all_records(stack, **query) -> list[dict]:
    """Every record matching `query`, however many: pages of 1,000 by `since`."""
    out: dict[tuple[str, int], dict] = {}
    since = None
    while True:
        page = stack.audit.records(**query, since=since, limit=1000)
        fresh = [r for r in page if (r["writer"], r["seq"]) not in out]
        out.update({(r["writer"], r["seq"]): r for r in page})
        if len(page) < 1000:
            return list(out.values())
        assert fresh, "more than 1,000 records share one timestamp"
        since = page[-1]["recorded_at"]


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
    # Each step waits for events, not for time: the service counted the reload (or the refusal),
    # then calls went on under the new policy.
    wait_until(lambda: len(seen) >= 20, "calls under the first policy")
    broken = "service: [this is not\n"
    for rules in ([SESSION_RULE, DENY], [SESSION_RULE, ALLOW], broken, [SESSION_RULE, DENY], [SESSION_RULE, ALLOW]):
        before = reload_counts(stack)
        write_policy(stack, config, rules)
        wait_until(lambda before=before: reload_counts(stack) != before, "reload counted")
        mark = len(seen)
        wait_until(lambda mark=mark: len(seen) >= mark + 20, "calls after the reload")
    stop.set()
    for t in threads:
        t.join(20)

    assert not failures, failures[:5]
    decided = {r["request_id"]: r["data"] for r in all_records(stack, kind="request", tool="echo")}
    by_rule: dict[str, int] = {}
    for status, request_id, message in seen:
        rule = decided[request_id]["policy_rule"]
        by_rule[rule] = by_rule.get(rule, 0) + 1
        if rule == ALLOW["id"]:
            assert status == 200 and "result" in message, (request_id, status, message)
        else:
            assert rule == DENY["id"], (request_id, rule)
            assert status == 403 and message["error"]["code"] == -32003, (request_id, status, message)
            # The caller is told which rule, the one the record names.
            assert message["error"]["data"]["rule"] == DENY["id"], message
    assert by_rule.get(ALLOW["id"], 0) > 10 and by_rule.get(DENY["id"], 0) > 10, by_rule
    assert len(seen) == len(decided), "a call went unrecorded or unanswered"
    assert reload_counts(stack) == {"ok": 4, "refused": 1}
