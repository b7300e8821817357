"""`gatehouse audit verify` passes on an untouched store and names the record after any edit,
deletion, insertion or reordering made directly in SQLite (guarantee 3).

Table layout of the SQLite store (authz-service/src/audit/store.rs):
    audit_records(writer, seq, kind, request_id, recorded_at, prev_hash, hash, data),
    PRIMARY KEY (writer, seq): seq counts per writer.
    audit_checkpoints(writer, seq, hash, signed_at, signature)
The stack signs checkpoints (audit.checkpoint) and keeps a copy in a log outside the store.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable

import pytest

from harness.stack import Stack, tools_call

pytestmark = pytest.mark.gateway


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


def rows(db) -> list[sqlite3.Row]:
    with sqlite3.connect(db) as conn:
        conn.row_factory = sqlite3.Row
        return conn.execute("SELECT * FROM audit_records ORDER BY writer, seq").fetchall()


def middle_chain(db) -> list[sqlite3.Row]:
    """The rows of the writer with most records; the tampering happens in its middle."""
    all_rows = rows(db)
    writers: dict[str, list[sqlite3.Row]] = {}
    for r in all_rows:
        writers.setdefault(r["writer"], []).append(r)
    chain = max(writers.values(), key=len)
    assert len(chain) >= 6, f"too few records to tamper with: {len(chain)}"
    return chain


def edit(conn: sqlite3.Connection, chain: list[sqlite3.Row]) -> set[int]:
    target = next(r for r in chain[2:] if "alice" in r["data"])
    conn.execute(
        "UPDATE audit_records SET data = replace(data, 'alice', 'mallory') WHERE writer = ? AND seq = ?",
        (target["writer"], target["seq"]),
    )
    return {target["seq"]}


def edit_kind(conn: sqlite3.Connection, chain: list[sqlite3.Row]) -> set[int]:
    target = chain[3]
    other = "response" if target["kind"] == "request" else "request"
    conn.execute(
        "UPDATE audit_records SET kind = ? WHERE writer = ? AND seq = ?", (other, target["writer"], target["seq"])
    )
    return {target["seq"]}


def delete(conn: sqlite3.Connection, chain: list[sqlite3.Row]) -> set[int]:
    gone, after = chain[3], chain[4]
    conn.execute("DELETE FROM audit_records WHERE writer = ? AND seq = ?", (gone["writer"], gone["seq"]))
    return {gone["seq"], after["seq"]}


def delete_last(conn: sqlite3.Connection, chain: list[sqlite3.Row]) -> set[int]:
    """Truncating the tail: the chain itself stays valid, only a signed checkpoint of the head shows it."""
    last = chain[-1]
    conn.execute("DELETE FROM audit_records WHERE writer = ? AND seq = ?", (last["writer"], last["seq"]))
    return {last["seq"], chain[-2]["seq"]}


def content_columns(conn: sqlite3.Connection) -> list[str]:
    """Every column but the key (writer, seq)."""
    return [r[1] for r in conn.execute("PRAGMA table_info(audit_records)") if r[1] not in ("writer", "seq")]


def delete_last_and_its_checkpoints(conn: sqlite3.Connection, chain: list[sqlite3.Row]) -> set[int]:
    """Someone with write access to the store also drops the checkpoints kept there: the
    checkpoint log outside the store still has the head."""
    delete_last(conn, chain)
    conn.execute("DELETE FROM audit_checkpoints WHERE writer = ?", (chain[-1]["writer"],))
    return {chain[-1]["seq"], chain[-2]["seq"]}


def reorder(conn: sqlite3.Connection, chain: list[sqlite3.Row]) -> set[int]:
    """Two neighbouring records swap places (each keeps its own hashes)."""
    a, b = chain[2], chain[3]
    cols = content_columns(conn)
    for src, dst in ((a, b), (b, a)):
        conn.execute(
            f"UPDATE audit_records SET {', '.join(f'{c} = ?' for c in cols)} WHERE writer = ? AND seq = ?",
            (*(src[c] for c in cols), dst["writer"], dst["seq"]),
        )
    return {a["seq"], b["seq"]}


def insert(conn: sqlite3.Connection, chain: list[sqlite3.Row]) -> set[int]:
    """A copy of a record slipped in right after it (the later seqs moved up by one)."""
    src = chain[2]
    writer = src["writer"]
    later = [
        r[0] for r in conn.execute("SELECT seq FROM audit_records WHERE writer = ? AND seq > ?", (writer, src["seq"]))
    ]
    for seq in sorted(later, reverse=True):
        conn.execute("UPDATE audit_records SET seq = ? WHERE writer = ? AND seq = ?", (seq + 1, writer, seq))
    cols = ["writer", "seq", *content_columns(conn)]
    values = [src[c] if c != "seq" else src["seq"] + 1 for c in cols]
    conn.execute(f"INSERT INTO audit_records ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", values)
    return {src["seq"] + 1, src["seq"] + 2}


def test_verify_passes_on_untouched_store(audited_stack):
    result = audited_stack.verify()
    assert result.returncode == 0, f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"


@pytest.mark.parametrize(
    "tamper",
    [edit, edit_kind, delete, reorder, insert, delete_last, delete_last_and_its_checkpoints],
    ids=lambda f: f.__name__,
)
def test_verify_fails_and_names_the_record(audited_stack, tamper: Callable[..., set[int]]):
    assert audited_stack.verify().returncode == 0
    chain = middle_chain(audited_stack.db_path)

    with sqlite3.connect(audited_stack.db_path) as conn:
        conn.row_factory = sqlite3.Row
        suspects = tamper(conn, chain)

    result = audited_stack.verify()
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"verify passed after {tamper.__name__}:\n{output}"
    named = {s for s in suspects if re.search(rf"(?<![\w.-]){s}(?![\w.-])", output)}
    assert named, f"verify output names none of the records {sorted(suspects)}:\n{output}"
