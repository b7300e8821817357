"""Several services on one database: what a caller or an approver may hit on any replica is
shared through PostgreSQL, and no two live processes append to one chain.

Replicas here are `gatehouse serve` processes on the stack's database with their own ports
and writer ids (`Stack.start_replica`); the stack's Envoy calls the first one."""

from __future__ import annotations

import re
import statistics
import subprocess
import threading
import time
import uuid
from collections import Counter
from typing import Any

import httpx
import pytest
import yaml

from harness import paths
from harness.approvals import SESSION_RULE, Approver, Caller, answer, approval_rule, pending_error
from harness.grpc_raw import INGEST, rejection_batch, tls_channel
from harness.grpc_raw import call as grpc_call
from harness.load import Load
from harness.stack import gatehouse
from harness.store_sql import open_store

pytestmark = pytest.mark.gateway

OTHER_TOOLS = {"id": "other-tools", "tools": ["*"], "outcome": "allow"}


@pytest.mark.both_backends
def test_a_second_process_with_a_live_writer_id_refuses_to_start(make_stack):
    stack = make_stack(upstream="echo")
    stack.post({"jsonrpc": "2.0", "id": 1, "method": "ping"}, token=stack.token())
    # The same writer id, other ports: it must not start appending to the live chain.
    path, _rest, _grpc = stack.replica_config("gatehouse-test")
    second = subprocess.run(
        [str(paths.gatehouse_bin()), "serve", "--config", str(path)], capture_output=True, text=True, timeout=30
    )
    assert second.returncode != 0, second.stdout + second.stderr
    assert "in use by another live process" in second.stderr, second.stderr
    assert "gatehouse-test" in second.stderr

    # Once the first one is gone the id is free again, and the chain goes on from its head.
    stack.service.stop()
    proc = stack.procs.start("gatehouse-serve-again", [paths.gatehouse_bin(), "serve", "--config", path])
    proc.wait_tcp(_grpc)
    proc.stop()
    result = stack.verify()
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.both_backends
def test_migrations_apply_alone_and_a_newer_schema_is_refused(make_stack):
    stack = make_stack(upstream="echo")
    stack.service.stop()
    migrated = gatehouse("migrate", "--config", stack.config_path, check=False)
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    (version,) = re.findall(r"schema is at version (\d+)", migrated.stdout)
    # A migration this build does not know, as a newer Gatehouse would have applied it.
    newer = int(version) + 1
    with open_store(stack) as db:
        db.execute(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) "
            "VALUES (?, ?, ?, ?, ?)",
            (newer, "from a newer gatehouse", True, b"\x00", 0),
        )
    for command in ("migrate", "serve"):
        refused = subprocess.run(
            [str(paths.gatehouse_bin()), command, "--config", str(stack.config_path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert refused.returncode != 0, refused.stdout + refused.stderr
        assert f"schema is at version {newer}, newer than this Gatehouse knows" in refused.stderr, refused.stderr


def replicated_approvals(make_stack, approvals: dict[str, Any] | None = None, **approval: Any):
    """Envoy → replica A; `echo` needs an approval (held `hold_seconds`) by `approvers`;
    `approvals`: the config's `approvals:` section."""
    approval.setdefault("hold_seconds", 20)
    return make_stack(
        policy=[SESSION_RULE, approval_rule(**approval), OTHER_TOOLS],
        ext_authz_timeout_ms=approval["hold_seconds"] * 1000 + 5000,
        approvals=approvals,
    )


APPROVAL_LIMIT = -32032


def held_on(approver: Approver, message: str) -> dict[str, Any]:
    """The pending approval of the echo of `message`, once a call is held on it."""
    return approver.wait_pending(lambda a: a["arguments"] == {"message": message} and a["waiting"] is not None)


def assert_over_the_cap(resp: httpx.Response, cap: int) -> None:
    error = answer(resp)["error"]
    assert resp.status_code == 429 and error["code"] == APPROVAL_LIMIT, resp.text
    assert f"already have {cap} calls waiting" in error["message"], error


@pytest.mark.parametrize("audit_backend", ["postgres"], indirect=True)
def test_a_callers_held_calls_are_capped_across_replicas(make_stack, audit_backend):
    stack = replicated_approvals(make_stack, approvals={"max_held_per_caller": 2})
    b = stack.start_replica("gatehouse-b")
    via_b = stack.envoy_for(b)
    alice, dora, bob = Caller(stack, "alice"), Caller(stack, "dora"), Approver(stack, "bob")
    on_a = alice.call_in_background("echo", {"message": "held on A"})
    on_b = alice.call_in_background("echo", {"message": "held on B"}, url=via_b)
    held = {m: held_on(bob, m) for m in ("held on A", "held on B")}

    # One call held on each replica: a third is over alice's cap on either (each replica
    # alone holds only one of hers), and is refused without asking an approval.
    for url in (None, via_b):
        assert_over_the_cap(alice.call("echo", {"message": "one too many"}, url=url), 2)
    assert not [a for a in bob.list("pending") if a["arguments"] == {"message": "one too many"}]
    # Another caller is held as usual.
    dora_on_b = dora.call_in_background("echo", {"message": "dora's"}, url=via_b)
    doras = held_on(bob, "dora's")

    # A decision on A releases the call held on B; alice may then hold another call there.
    assert bob.approve(held["held on B"]["id"]).status_code == 200
    assert "result" in answer(on_b(15))
    again = alice.call_in_background("echo", {"message": "after one ended"}, url=via_b)
    later = held_on(bob, "after one ended")
    for approval in (held["held on A"], doras, later):
        assert bob.approve(approval["id"]).status_code == 200
    for wait in (on_a, dora_on_b, again):
        assert "result" in answer(wait(15))


@pytest.mark.parametrize("audit_backend", ["postgres"], indirect=True)
def test_approvers_on_any_replica_see_who_waits_and_read_the_clear_arguments(make_stack, audit_backend):
    stack = replicated_approvals(make_stack, masked_arguments="show_clear")
    b = stack.start_replica("gatehouse-b")
    via_b = stack.envoy_for(b)
    alice, bob_on_a = Caller(stack, "alice"), Approver(stack, "bob")
    secret = "AKIAIOSFODNN7EXAMPLE"
    message = f"deploy with {secret}"
    held = alice.call_in_background("echo", {"message": message}, url=via_b)

    # Held on B, shown on A: who waits, and the clear text the approver approves.
    shown = bob_on_a.wait_pending(lambda a: a["waiting"] is not None)
    assert secret not in shown["arguments"]["message"], "the arguments are masked"
    assert shown["arguments_clear"] == {"message": message}
    assert shown["waiting"]["calls"] == 1 and shown["can_approve"] is True, shown
    # The database holds them sealed, never in clear, and nothing else does.
    with open_store(stack) as db:
        sealed = [r["sealed"] for r in db.execute("SELECT sealed FROM approval_clear")]
    assert len(sealed) == 1 and secret not in sealed[0] and "deploy" not in sealed[0]
    for name, data in stack.trail_files().items():
        assert secret.encode() not in data, f"the clear text is in {name}"

    assert bob_on_a.approve(shown["id"]).status_code == 200
    assert "result" in answer(held(15))
    after = bob_on_a.get(shown["id"]).json()
    assert "arguments_clear" not in after and after["waiting"] is None, after
    with open_store(stack) as db:
        assert not list(db.execute("SELECT approval_id FROM approval_clear")), "deleted once decided"


@pytest.mark.parametrize("audit_backend", ["postgres"], indirect=True)
def test_the_held_calls_of_a_killed_replica_stop_counting(make_stack, audit_backend):
    stack = replicated_approvals(make_stack, approvals={"max_held_per_caller": 1})
    b = stack.start_replica("gatehouse-b")
    via_b = stack.envoy_for(b)
    alice, bob = Caller(stack, "alice"), Approver(stack, "bob")
    on_b = alice.call_in_background("echo", {"message": "held on B"}, url=via_b)
    held_on(bob, "held on B")
    assert_over_the_cap(alice.call("echo", {"message": "on A meanwhile"}), 1)

    # B dies with the call held (its client sees Envoy's failure, nothing forwarded); its
    # row is left in the database, but a replica not heard from stops counting within
    # LIVE_FOR (10 s) plus a heartbeat.
    assert b.proc is not None
    b.proc.kill()
    dead = on_b(15)
    assert dead.status_code != 200 and "Echo:" not in dead.text, "nothing is forwarded: " + dead.text
    killed = time.monotonic()
    while True:
        try:
            resp = alice.call("echo", {"message": "on A after B died"}, timeout=3)
        except httpx.ReadTimeout:
            break  # held on A: no longer over the cap
        assert_over_the_cap(resp, 1)
        assert time.monotonic() - killed < 15, "a dead replica's held calls still count"
        time.sleep(0.5)
    print(f"a dead replica's held call stopped counting after {time.monotonic() - killed:.1f} s")


@pytest.mark.parametrize("audit_backend", ["postgres"], indirect=True)
def test_a_call_held_on_one_replica_is_released_by_a_decision_on_another(make_stack, audit_backend):
    stack = replicated_approvals(make_stack)
    b = stack.start_replica("gatehouse-b")
    alice = Caller(stack, "alice")
    bob_on_b = Approver(stack, "bob", rest_url=b.rest_url)

    released = []
    for i in range(50):
        wait = alice.call_in_background("echo", {"message": f"held {i}"})
        pending = bob_on_b.wait_pending(lambda a, i=i: a["arguments"] == {"message": f"held {i}"})
        decided = time.monotonic()
        assert bob_on_b.approve(pending["id"]).status_code == 200
        resp = wait(15)
        released.append(time.monotonic() - decided)
        assert "result" in answer(resp), resp.text

    released.sort()
    p50, p99 = statistics.median(released), released[int(len(released) * 0.99) - 1]
    summary = f"released after a decision on another replica: p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms"
    print(summary)
    assert p99 < 0.3, summary


@pytest.mark.parametrize("audit_backend", ["postgres"], indirect=True)
def test_approvers_racing_on_two_replicas_one_wins(make_stack, audit_backend):
    stack = replicated_approvals(make_stack, hold_seconds=0)
    b = stack.start_replica("gatehouse-b")
    alice = Caller(stack, "alice")
    bob_on_a, carol_on_b = Approver(stack, "bob"), Approver(stack, "carol", rest_url=b.rest_url)
    for round_ in range(5):
        approval = pending_error(alice.call("echo", {"message": f"race {round_}"}))
        results = race(
            lambda approval_id=approval["id"]: bob_on_a.approve(approval_id, "go"),
            lambda approval_id=approval["id"]: carol_on_b.deny(approval_id, "stop"),
        )
        assert sorted(r.status_code for r in results) == [200, 409], [r.text for r in results]
        winner = next(r for r in results if r.status_code == 200).json()["status"]
        steps = [
            r["data"]["event"]
            for r in stack.audit.records(kind="approval", limit=1000)
            if r["data"]["approval_id"] == approval["id"]
        ]
        assert steps == ["requested", winner], steps


def race(*decisions: Any) -> list[Any]:
    """Runs each decision in its own thread at the same moment; their answers in order."""
    barrier = threading.Barrier(len(decisions))
    results: list[Any] = [None] * len(decisions)

    def run(slot: int) -> None:
        barrier.wait()
        results[slot] = decisions[slot]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(decisions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    return results


@pytest.mark.parametrize("audit_backend", ["postgres"], indirect=True)
def test_approvals_expire_once_with_every_replica_sweeping(make_stack, audit_backend):
    stack = replicated_approvals(make_stack, hold_seconds=0, expires_seconds=2)
    for name in ("gatehouse-b", "gatehouse-c"):
        stack.start_replica(name)
    alice = Caller(stack, "alice")
    ids = [pending_error(alice.call("echo", {"message": f"expire {i}"}))["id"] for i in range(10)]

    deadline = time.monotonic() + 20
    while True:
        steps = [r["data"] for r in stack.audit.records(kind="approval", limit=1000)]
        expired = [s["approval_id"] for s in steps if s["event"] == "expired"]
        if set(expired) >= set(ids) or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    time.sleep(2)  # every replica has swept again meanwhile
    expired = [
        r["data"]["approval_id"]
        for r in stack.audit.records(kind="approval", limit=1000)
        if r["data"]["event"] == "expired"
    ]
    assert sorted(expired) == sorted(ids), "each approval must expire exactly once"


def assert_every_call_recorded(stack, load: Load, postgres, writers: list[str]) -> None:
    """Every call the upstream received, and every 200, has a committed request record; the
    trail verifies with every writer's chain intact."""
    database = stack_database(stack)
    recorded = set(postgres.psql("SELECT request_id FROM audit_records WHERE kind = 'request'", db=database).split())
    forwarded = {r.headers["x-gatehouse-request-id"][0] for r in stack.echo.received() if r.body}
    answered = {rid for s, rid in load.answers if s == 200}
    assert forwarded - recorded == set(), f"{len(forwarded - recorded)} calls reached the upstream unrecorded"
    assert answered - recorded == set(), f"{len(answered - recorded)} calls got a 200 unrecorded"
    stored = postgres.psql("SELECT DISTINCT writer FROM audit_records", db=database).split()
    assert sorted(stored) == writers, stored
    result = stack.verify()
    assert result.returncode == 0, result.stdout + result.stderr


REPLICA_WRITERS = ["gatehouse-test", "gatehouse-test-2", "gatehouse-test-3"]


@pytest.mark.parametrize("audit_backend", ["postgres"], indirect=True)
def test_three_replicas_lose_one_every_10_s_and_no_call_goes_unrecorded(make_stack, audit_backend, postgres):
    """500 calls a second (asked) for 30 s through one Envoy to three replicas; every 10 s
    one of them is killed (SIGKILL) and started again."""
    stack = make_stack(upstream="echo", replicas=3)
    load = Load(stack, rate=500)
    for victim in range(3):
        time.sleep(max(0.0, load.started + 10 * victim + 5 - time.monotonic()))
        if victim == 0:
            stack.crash_service()
            stack.start_service()
        else:
            replica = stack.replicas[victim - 1]
            replica.proc.kill()
            replica.start()
    time.sleep(max(0.0, load.started + 30 - time.monotonic()))
    statuses = load.stop()
    print(f"{len(load.answers)} calls in 30 s, a replica killed every 10 s: {dict(statuses)}")
    assert set(statuses) <= {200, 503}, f"answers other than 200 and 503: {statuses}"
    assert statuses[200] >= len(load.answers) * 0.8, statuses
    assert_every_call_recorded(stack, load, postgres, REPLICA_WRITERS)


@pytest.mark.parametrize("audit_backend", ["postgres"], indirect=True)
def test_a_rolling_restart_under_load_loses_no_call(make_stack, audit_backend, postgres):
    """Each replica in turn gets SIGTERM (it drains: NOT_SERVING, then finishes what is in
    flight), exits and starts again, under 200 calls a second: every call gets its 200."""
    stack = make_stack(upstream="echo", replicas=3)
    load = Load(stack, rate=200)
    time.sleep(2)
    for victim in range(3):
        if victim == 0:
            stack.service.stop(timeout=40)
            stack.start_service()
        else:
            replica = stack.replicas[victim - 1]
            replica.proc.stop(timeout=40)
            replica.start()
        time.sleep(2)  # Envoy's health check sees it serving again
    statuses = load.stop()
    print(f"{len(load.answers)} calls across a rolling restart of three replicas: {dict(statuses)}")
    assert set(statuses) == {200}, f"calls lost in a rolling restart: {statuses}"
    assert_every_call_recorded(stack, load, postgres, REPLICA_WRITERS)


def stack_database(stack) -> str:
    """The PostgreSQL database name of a stack's audit store."""
    url = yaml.safe_load(stack.config_path.read_text())["audit"]["database"]
    return url.rsplit("/", 1)[1].split("?")[0]


@pytest.mark.parametrize("audit_backend", ["postgres"], indirect=True)
def test_a_single_use_grant_is_used_once_by_two_concurrent_calls_on_two_replicas(make_stack, audit_backend):
    stack = make_stack(
        policy=[SESSION_RULE, approval_rule(hold_seconds=0, single_use=True), OTHER_TOOLS],
        replicas=2,
    )
    alice, bob = Caller(stack, "alice"), Approver(stack, "bob")
    for round_ in range(5):
        arguments = {"message": f"once {round_}"}
        approval = pending_error(alice.call("echo", arguments))
        assert bob.approve(approval["id"]).status_code == 200
        # Envoy sends the two Checks to the two replicas in turn.
        call = lambda arguments=arguments: alice.call("echo", arguments)  # noqa: E731 -- the same call twice
        results = race(call, call)
        through = [r for r in results if "result" in answer(r)]
        assert len(through) == 1, [r.text for r in results]
        used = [
            r["data"]["event"]
            for r in stack.audit.records(kind="approval", limit=1000)
            if r["data"]["approval_id"] == approval["id"] and r["data"]["event"] == "used"
        ]
        assert used == ["used"], used
    writers = {r["writer"] for r in stack.audit.records(kind="request", limit=1000)}
    assert writers == {"gatehouse-test", "gatehouse-test-2"}, f"Checks did not reach both replicas: {writers}"


@pytest.mark.parametrize("audit_backend", ["postgres"], indirect=True)
def test_a_record_delivered_to_two_replicas_at_once_is_stored_once(make_stack, audit_backend):
    """The filter retries a batch whose answer it did not get; the retry may reach another
    replica while the first delivery is still being stored. Each record must land once."""
    stack = make_stack(upstream="echo")
    b = stack.start_replica("gatehouse-b")
    tls = stack.dir / "tls"
    envoys = (tls / "grpc-client.crt", tls / "grpc-client.key")
    ids = [uuid.uuid4().hex for _ in range(20)]
    with tls_channel(stack.grpc_port, tls, client=envoys) as on_a, tls_channel(b.grpc_port, tls, client=envoys) as on_b:
        for request_id in ids:
            batch = rejection_batch(request_id, source="envoy")
            race(
                lambda batch=batch: grpc_call(on_a, INGEST, batch),
                lambda batch=batch: grpc_call(on_b, INGEST, batch),
            )
    stored = Counter(r["request_id"] for r in stack.audit.records(kind="request_rejected", limit=1000))
    assert {request_id: stored[request_id] for request_id in ids} == dict.fromkeys(ids, 1)
