"""`gatehouse audit verify` passes on an untouched store and names the record after any edit,
deletion, insertion or reordering made directly in the database (guarantee 3), on SQLite and
on PostgreSQL.

Table layout of the store (authz-service/migrations/):
    audit_records(writer, seq, kind, request_id, recorded_at, prev_hash, hash, data),
    PRIMARY KEY (writer, seq): seq counts per writer.
    audit_checkpoints(writer, seq, hash, signed_at, signature)
The stack signs checkpoints (audit.checkpoint) and keeps a copy in a log outside the store.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from harness.stack import Stack, tools_call
from harness.store_sql import StoreConnection, open_store

pytestmark = [pytest.mark.gateway, pytest.mark.both_backends]


@pytest.fixture
def audited_stack(stack) -> Stack:
    """A stack with a few audited calls, then stopped so the store is still."""
    token = stack.token("alice", ["eng"])
    session = stack.initialize(token)
    for i in range(3):
        resp = stack.post(
            tools_call("echo", {"message": f"call {i}"}), token=token, headers={"mcp-session-id": session}
        )
        assert resp.status_code == 200
        stack.audit.wait_complete(resp.headers["x-gatehouse-request-id"])
    stack.envoy.stop()
    stack.service.stop()
    return stack


def rows(stack: Stack) -> list[Any]:
    with open_store(stack) as conn:
        return conn.execute("SELECT * FROM audit_records ORDER BY writer, seq").fetchall()


def middle_chain(stack: Stack) -> list[Any]:
    """The rows of the writer with most records; the tampering happens in its middle."""
    all_rows = rows(stack)
    writers: dict[str, list[Any]] = {}
    for r in all_rows:
        writers.setdefault(r["writer"], []).append(r)
    chain = max(writers.values(), key=len)
    assert len(chain) >= 6, f"too few records to tamper with: {len(chain)}"
    return chain


def edit(conn: StoreConnection, chain: list[Any]) -> int:
    target = next(r for r in chain[2:] if "alice" in r["data"])
    conn.execute(
        "UPDATE audit_records SET data = replace(data, 'alice', 'mallory') WHERE writer = ? AND seq = ?",
        (target["writer"], target["seq"]),
    )
    return target["seq"]


def edit_kind(conn: StoreConnection, chain: list[Any]) -> int:
    target = chain[3]
    other = "response" if target["kind"] == "request" else "request"
    conn.execute(
        "UPDATE audit_records SET kind = ? WHERE writer = ? AND seq = ?", (other, target["writer"], target["seq"])
    )
    return target["seq"]


def delete(conn: StoreConnection, chain: list[Any]) -> int:
    gone = chain[3]
    conn.execute("DELETE FROM audit_records WHERE writer = ? AND seq = ?", (gone["writer"], gone["seq"]))
    return gone["seq"]


def delete_last(conn: StoreConnection, chain: list[Any]) -> int:
    """Truncating the tail: the chain itself stays valid, only a signed checkpoint of the head shows it."""
    last = chain[-1]
    conn.execute("DELETE FROM audit_records WHERE writer = ? AND seq = ?", (last["writer"], last["seq"]))
    return last["seq"]


def content_columns(conn: StoreConnection) -> list[str]:
    """Every column but the key (writer, seq)."""
    return [c for c in conn.columns("audit_records") if c not in ("writer", "seq")]


def delete_last_and_its_checkpoints(conn: StoreConnection, chain: list[Any]) -> int:
    """Someone with write access to the store also drops the checkpoints kept there: the
    checkpoint log outside the store still has the head."""
    conn.execute("DELETE FROM audit_checkpoints WHERE writer = ?", (chain[-1]["writer"],))
    return delete_last(conn, chain)


def reorder(conn: StoreConnection, chain: list[Any]) -> int:
    """Two neighbouring records swap places (each keeps its own hashes)."""
    a, b = chain[2], chain[3]
    cols = content_columns(conn)
    for src, dst in ((a, b), (b, a)):
        conn.execute(
            f"UPDATE audit_records SET {', '.join(f'{c} = ?' for c in cols)} WHERE writer = ? AND seq = ?",
            (*(src[c] for c in cols), dst["writer"], dst["seq"]),
        )
    return a["seq"]


def insert(conn: StoreConnection, chain: list[Any]) -> int:
    """A copy of a record slipped in right after it (the later seqs moved up by one)."""
    src = chain[2]
    writer = src["writer"]
    later = [
        r["seq"]
        for r in conn.execute("SELECT seq FROM audit_records WHERE writer = ? AND seq > ?", (writer, src["seq"]))
    ]
    for seq in sorted(later, reverse=True):
        conn.execute("UPDATE audit_records SET seq = ? WHERE writer = ? AND seq = ?", (seq + 1, writer, seq))
    cols = ["writer", "seq", *content_columns(conn)]
    values = [src[c] if c != "seq" else src["seq"] + 1 for c in cols]
    conn.execute(f"INSERT INTO audit_records ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", values)
    return src["seq"] + 1


def test_verify_passes_on_untouched_store(audited_stack):
    result = audited_stack.verify()
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"


@pytest.mark.parametrize(
    "tamper",
    [edit, edit_kind, delete, reorder, insert, delete_last, delete_last_and_its_checkpoints],
    ids=lambda f: f.__name__,
)
def test_verify_fails_and_names_the_record(audited_stack, tamper: Callable[..., int]):
    assert audited_stack.verify().returncode == 0
    chain = middle_chain(audited_stack)

    with open_store(audited_stack) as conn:
        broken = tamper(conn, chain)

    result = audited_stack.verify()
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"verify passed after {tamper.__name__}:\n{output}"
    # The first record that does not hold, of the tampered writer, and no other.
    named = re.findall(r"BROKEN at record (\d+): writer (\S+):", output)
    assert named == [(str(broken), chain[0]["writer"])], f"expected record {broken} named:\n{output}"


# --- records nobody vouches for ---------------------------------------------------------


def record_hash(seq: int, writer: str, kind: str, request_id: str, recorded_at: str, prev: str, data: dict) -> str:
    """core/src/audit.rs record_hash (version 2), for ASCII data: what a forger with write access
    computes."""
    head = (
        json.dumps(
            {"writer": writer, "kind": kind, "request_id": request_id, "recorded_at": recorded_at, "prev_hash": prev}
        )[1:-1]
        .replace(": ", ":")
        .replace(", ", ",")
    )
    body = json.dumps(data, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(body.encode()).hexdigest()
    return hashlib.sha256(f'{{"v":2,"seq":{seq},{head},"data_sha256":"{digest}"}}'.encode()).hexdigest()


def append_chained(stack: Stack, writer: str, count: int) -> tuple[int, int]:
    """Append `count` well-chained records to `writer`'s chain (a new chain if it has none);
    returns the first and last seq written."""
    with open_store(stack) as conn:
        last = conn.execute(
            "SELECT seq, hash FROM audit_records WHERE writer = ? ORDER BY seq DESC LIMIT 1", (writer,)
        ).fetchone()
        seq, prev = (last["seq"], last["hash"]) if last else (0, "0" * 64)
        first = seq + 1
        for _ in range(count):
            seq += 1
            data = {"decision": "allow", "subject": "mallory", "tool": "echo"}
            at = "2026-01-01T00:00:00.000Z"
            h = record_hash(seq, writer, "request", f"{seq:032x}", at, prev, data)
            conn.execute(
                "INSERT INTO audit_records (writer, seq, kind, request_id, recorded_at, prev_hash, hash, data)"
                " VALUES (?, ?, 'request', ?, ?, ?, ?, ?)",
                (writer, seq, f"{seq:032x}", at, prev, h, json.dumps(data)),
            )
            prev = h
    return first, seq


def test_a_writer_no_one_knows_is_not_trusted(audited_stack):
    append_chained(audited_stack, "intruder", 3)
    result = audited_stack.verify()
    assert result.returncode == 1, result.stdout
    assert "SUSPECT at record 1: writer intruder: records 1 to 3 come from a writer" in result.stdout, result.stdout
    assert "Audit trail verified." not in result.stdout


def bounded_stack(make_stack) -> Stack:
    """Checkpoints every 6 records, commits of at most 4: at most 10 records unvouched."""
    return make_stack(
        upstream="echo",
        audit={
            "max_batch": 4,
            "checkpoint": {
                "key_file": "checkpoint-key.pem",
                "log_file": "checkpoints.log",
                "every_records": 6,
                "every_seconds": 3600,
            },
        },
    )


def calls(stack: Stack, n: int) -> None:
    token = stack.token("alice", ["eng"])
    for i in range(n):
        resp = stack.post(tools_call("echo", {"message": f"call {i}"}), token=token)
        assert resp.status_code == 200, resp.text
        stack.audit.wait_complete(resp.headers["x-gatehouse-request-id"])


def newest_checkpoint(stack: Stack) -> int:
    lines = (stack.dir / "checkpoints.log").read_text().splitlines()
    return max(json.loads(line)["seq"] for line in lines)


def head(stack: Stack) -> int:
    with open_store(stack) as conn:
        return conn.execute("SELECT max(seq) AS seq FROM audit_records WHERE writer = 'gatehouse-test'").fetchone()[
            "seq"
        ]


def test_more_unvouched_records_than_the_bound_are_named(make_stack):
    stack = bounded_stack(make_stack)
    calls(stack, 2)
    stack.service.stop()
    vouched = newest_checkpoint(stack)
    assert vouched == head(stack)
    # Within the bound: records the writer may not have signed yet (say, before a crash).
    append_chained(stack, "gatehouse-test", 10)
    ok = stack.verify()
    assert ok.returncode == 0, ok.stdout
    assert f"nothing after record {vouched} is vouched for by a checkpoint" in ok.stdout
    # One more than the writer can leave unsigned.
    append_chained(stack, "gatehouse-test", 1)
    result = stack.verify()
    assert result.returncode == 1, result.stdout
    expected = f"SUSPECT at record {vouched + 1}: writer gatehouse-test: records {vouched + 1} to {vouched + 11} follow"
    assert expected in result.stdout, result.stdout


def test_a_tail_deleted_after_a_crash(make_stack):
    """SIGKILL: no shutdown checkpoint. What the checkpoint log vouches for cannot be deleted
    unseen; the records after it (at most every_records + max_batch) can, and verify says so."""
    stack = bounded_stack(make_stack)
    calls(stack, 8)
    stack.crash_service()
    vouched, last = newest_checkpoint(stack), head(stack)
    assert 0 < vouched < last, f"want signed records and an unsigned tail: checkpoint {vouched}, head {last}"
    assert last - vouched <= 6 + 4, "more records unsigned than documented"

    with open_store(stack) as conn:
        conn.execute("DELETE FROM audit_records WHERE writer = 'gatehouse-test' AND seq > ?", (vouched,))
    unseen = stack.verify()
    assert unseen.returncode == 0, unseen.stdout
    assert f"vouched for up to record {vouched}, 0 records after it" in unseen.stdout
    assert f"nothing after record {vouched} is vouched for by a checkpoint" in unseen.stdout

    # One record further, with the store's own checkpoints gone too: the log outside has it.
    with open_store(stack) as conn:
        conn.execute("DELETE FROM audit_records WHERE writer = 'gatehouse-test' AND seq = ?", (vouched,))
        conn.execute("DELETE FROM audit_checkpoints")
    caught = stack.verify()
    assert caught.returncode == 1, caught.stdout
    assert re.findall(r"BROKEN at record (\d+): writer (\S+):", caught.stdout) == [(str(vouched), "gatehouse-test")]
    assert f"vouches for record {vouched} (records were deleted)" in caught.stdout
