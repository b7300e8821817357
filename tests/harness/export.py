"""What the SIEM export must deliver, checked against the trail itself.

`trail(stack)` reads every record's (writer, seq) → hash straight from the audit store.
`check_delivery(ids, trail)` takes the event ids (`writer:seq`) in the order a sink received
them and asserts the export's promise: every record of the trail arrived, nothing else did,
and per writer the records first arrived in chain order without a gap (a record may arrive
again: delivery is at least once, and a duplicate carries the same id)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterable

from .stack import Stack
from .store_sql import open_store


def trail(stack: Stack) -> dict[tuple[str, int], str]:
    with open_store(stack) as db:
        rows = db.execute("SELECT writer, seq, hash FROM audit_records").fetchall()
    return {(r["writer"], int(r["seq"])): r["hash"] for r in rows}


def parse_id(event_id: str) -> tuple[str, int]:
    writer, _, seq = event_id.rpartition(":")
    return writer, int(seq)


def check_delivery(ids: Iterable[str], expected: dict[tuple[str, int], str], by_last_copy: bool = False) -> int:
    """Asserts the delivery: every record of `expected` arrived, nothing else did, and per
    writer in order without a gap, by each record's first copy (`by_last_copy`: by its last
    one, for a receiver that kept part of a batch it answered with a partial rejection).
    Returns how many events were duplicates."""
    seen: set[tuple[str, int]] = set()
    firsts: dict[str, list[int]] = defaultdict(list)
    duplicates = 0
    ids = list(ids)
    for event_id in reversed(ids) if by_last_copy else ids:
        key = parse_id(event_id)
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        firsts[key[0]].append(key[1])
    missing = sorted(set(expected) - seen)
    extra = sorted(seen - set(expected))
    assert not missing, f"{len(missing)} records never arrived, first {missing[:5]}"
    assert not extra, f"{len(extra)} events are no record of the trail, first {extra[:5]}"
    for writer, seqs in firsts.items():
        seqs = seqs[::-1] if by_last_copy else seqs
        assert seqs == list(range(1, len(seqs) + 1)), f"{writer}: out of order or with a gap: {seqs[:50]}"
    return duplicates


def wait_delivered(
    stack: Stack, received: Callable[[], list[str]], timeout: float = 30.0
) -> tuple[list[str], dict[tuple[str, int], str]]:
    """Waits until every record of the trail has arrived and the trail has stopped growing
    (answers are recorded after the calls return); returns the ids received and the trail."""
    deadline = time.monotonic() + timeout
    while True:
        expected = trail(stack)
        ids = received()
        if {parse_id(i) for i in ids} >= set(expected) and len(trail(stack)) == len(expected):
            return ids, expected
        assert time.monotonic() < deadline, f"after {timeout} s {len(set(ids))} of {len(expected)} records arrived"
        time.sleep(0.3)
