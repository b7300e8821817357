"""The service's logs as a log shipper or a file reads them: no terminal colour escapes when
standard error is not a terminal, and one JSON object per line with `--log-format json`."""

from __future__ import annotations

import json
import time

import pytest

pytestmark = pytest.mark.gateway


def test_logs_written_to_a_file_are_plain_and_json_on_request(stack):
    proc = stack.service
    assert proc is not None
    text = proc.log_path.read_bytes()
    assert b" INFO " in text, text[-2000:]
    assert b"\x1b[" not in text, "colour escapes in a log file"

    proc.stop()
    start = proc.log_path.stat().st_size
    stack.service_args = ["--log-format", "json"]
    restarted = stack.start_service()
    # The service answers before every line of its start is written: read until an INFO is.
    deadline = time.monotonic() + 10
    while True:
        lines = restarted.log_path.read_bytes()[start:].decode().splitlines()
        # The harness writes the command line first (`$ …`); the rest is the service's.
        records = [json.loads(line) for line in lines if line.strip() and not line.startswith("$ ")]
        if any(r["level"] == "INFO" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert records, "the restarted service logged nothing"
    assert all({"timestamp", "level", "fields"} <= r.keys() for r in records), records[:3]
    assert any(r["level"] == "INFO" for r in records), records
