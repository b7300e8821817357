#!/usr/bin/env python3
"""Exports every record of an audit database to JSON lines, for core's event round-trip test.

Usage: scripts/export-audit-records.py tests/fixtures/audit-v1/audit.db > core/tests/fixtures/audit-v1.jsonl

Each line holds a row's columns as stored; `data` stays the stored text (not re-encoded), so
the test compares the exact bytes the database holds.
"""

from __future__ import annotations

import json
import sqlite3
import sys

COLUMNS = ("writer", "seq", "kind", "request_id", "recorded_at", "prev_hash", "hash", "data")


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
    rows = db.execute(f"SELECT {', '.join(COLUMNS)} FROM audit_records ORDER BY writer, seq")
    for row in rows:
        print(json.dumps(dict(zip(COLUMNS, row, strict=True)), ensure_ascii=False))


if __name__ == "__main__":
    main()
