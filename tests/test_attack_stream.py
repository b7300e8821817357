"""A hostile (or merely chatty) upstream streams a very long SSE answer, or labels text as
binary. Every event the client receives must be in the trail, in order, and the record of
the answer complete; nothing passes unread.

The filter's record queue is bounded; before backpressure it dropped records once a stream
outran the audit ingest (30,000 events lost 21,810 records and the final result).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time

import httpx
import pytest

from harness.raw_upstream import Reply
from harness.stack import Stack, tools_call

pytestmark = pytest.mark.gateway

EVENTS = int(os.environ.get("GATEHOUSE_LONG_STREAM_EVENTS", "100000"))
PER_CHUNK = 500


def progress_event(i: int) -> bytes:
    note = {
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": {"progressToken": "long", "progress": i, "message": f"step {i} of a long report"},
    }
    return f"id: {i}\ndata: {json.dumps(note)}\n\n".encode()


def long_stream(request_id: int, events: int) -> list[bytes]:
    chunks = []
    for start in range(0, events, PER_CHUNK):
        chunks.append(b"".join(progress_event(i) for i in range(start, min(start + PER_CHUNK, events))))
    result = {"jsonrpc": "2.0", "id": request_id, "result": {"content": [{"type": "text", "text": "report done"}]}}
    chunks.append(f"id: {events}\ndata: {json.dumps(result)}\n\n".encode())
    return chunks


def response_parts(stack: Stack, request_id: str) -> list[tuple[int, bool, str, str]]:
    """(part, final, end_reason, withheld) of every response record of the request, read from the store."""
    with sqlite3.connect(f"file:{stack.db_path}?mode=ro", uri=True) as db:
        rows = db.execute(
            "SELECT json_extract(data, '$.part'), json_extract(data, '$.final'), "
            "coalesce(json_extract(data, '$.end_reason'), ''), coalesce(json_extract(data, '$.withheld'), '') "
            "FROM audit_records "
            "WHERE request_id = ? AND kind = 'response' ORDER BY json_extract(data, '$.part')",
            (request_id,),
        ).fetchall()
    return [(int(p), bool(f), str(e), str(w)) for p, f, e, w in rows]


def stream_through(stack: Stack) -> tuple[str, list[bytes], str | None]:
    """Reads the answer to one tools/call to its end: (request id, the events the client got,
    how the stream broke off, if it did)."""
    body, broke = b"", None
    with httpx.stream(
        "POST",
        stack.url,
        content=json.dumps(tools_call("report", {}, request_id=7)).encode(),
        headers={
            "authorization": f"Bearer {stack.token()}",
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
        },
        timeout=httpx.Timeout(60, read=120),
    ) as resp:
        assert resp.status_code == 200
        request_id = resp.headers["x-gatehouse-request-id"]
        try:
            for chunk in resp.iter_raw():
                body += chunk
        except httpx.HTTPError as exc:
            broke = repr(exc)
    # Only whole events count as received: a torn last one was never complete for the client.
    return request_id, [e for e in body.split(b"\n\n")[:-1] if b"data: " in e], broke


def recorded(stack: Stack, request_id: str) -> list[tuple[int, bool, str, str]]:
    """The answer's response records once its final one is in."""
    deadline = time.monotonic() + 300
    while True:
        parts = response_parts(stack, request_id)
        if parts and parts[-1][1]:
            return parts
        assert time.monotonic() < deadline, f"no final record after 300 s ({len(parts)} parts)"
        time.sleep(1)


def test_a_very_long_sse_answer_is_recorded_event_for_event(make_stack) -> None:
    stack = make_stack(upstream="raw")
    stack.raw.reply = lambda req: Reply(headers=[("content-type", "text/event-stream")], chunks=long_stream(7, EVENTS))

    request_id, received, broke = stream_through(stack)
    assert broke is None and len(received) == EVENTS + 1, f"the client did not get the whole stream: {broke}"
    assert b"report done" in received[-1]

    # Every event the client got is a record: parts 0..EVENTS (the result last), then the final part.
    parts = recorded(stack, request_id)
    numbers = [p[0] for p in parts]
    assert numbers == list(range(len(numbers))), "a gap in the recorded parts"
    assert len(parts) == EVENTS + 2, f"{EVENTS + 1} events and a final part expected, got {len(parts)} records"
    assert parts[-1][2:] == ("complete", ""), parts[-1]
    dropped = stack.admin.stats("gatehouse_records_dropped")
    assert not any(dropped.values()), f"the filter dropped records: {dropped}"


def test_an_upstream_that_outruns_the_trail_is_cut_never_unrecorded(make_stack) -> None:
    """Far more than the record queue and Envoy's buffer hold, as fast as the upstream can:
    whether or not the stream is cut, every event the client got has its record."""
    stack = make_stack(upstream="raw")
    events = 4 * EVENTS
    stack.raw.reply = lambda req: Reply(headers=[("content-type", "text/event-stream")], chunks=long_stream(7, events))

    request_id, received, broke = stream_through(stack)
    parts = recorded(stack, request_id)
    numbers = [p[0] for p in parts]
    assert numbers == list(range(len(numbers))), "a gap in the recorded parts"
    event_parts = len(parts) - 1
    assert event_parts >= len(received), f"the client got {len(received)} events, the trail has {event_parts}"
    if broke is not None or len(received) < events + 1:
        # Cut: the final record says the answer was withheld or did not complete.
        final = parts[-1]
        assert final[2] != "complete" or final[3], final
    dropped = stack.admin.stats("gatehouse_records_dropped")
    assert not any(dropped.values()), f"the filter dropped records: {dropped}"


@pytest.mark.parametrize("content_type", ["image/png", "application/octet-stream", "audio/ogg; codecs=opus"])
def test_a_binary_content_type_does_not_carry_text_past_the_masker(make_stack, content_type) -> None:
    """A hostile upstream labels a JSON answer full of secrets as binary: it is withheld, not passed unread."""
    stack = make_stack(upstream="raw")
    secret = "AKIAIVF3HDRHMIRTO2I2 alice@example.com"
    answer = json.dumps({"jsonrpc": "2.0", "id": 41, "result": {"t": secret}}).encode()
    stack.raw.reply = lambda req: Reply(headers=[("content-type", content_type)], chunks=[answer], framing="length")

    resp = stack.post(tools_call("report", {}, request_id=41), token=stack.token())

    assert resp.status_code == 502, resp.text
    assert resp.json()["error"]["code"] == -32603 and resp.json()["id"] == 41
    assert b"AKIA" not in resp.content and b"alice@" not in resp.content
    audited = stack.audit.wait_complete(resp.headers["x-gatehouse-request-id"])
    assert "AKIAIVF3HDRHMIRTO2I2" not in json.dumps(audited) and "alice@example.com" not in json.dumps(audited)
    assert audited["responses"][-1]["data"]["withheld"] == "binary"


def test_a_secret_in_an_upstream_header_is_masked(make_stack) -> None:
    stack = make_stack(upstream="raw")
    answer = json.dumps({"jsonrpc": "2.0", "id": 42, "result": {"content": []}}).encode()
    stack.raw.reply = lambda req: Reply(
        headers=[
            ("content-type", "application/json"),
            ("x-debug", "key AKIAIVF3HDRHMIRTO2I2 for alice@example.com"),
            ("x-request-trace", "plain-value-1234"),
        ],
        chunks=[answer],
        framing="length",
    )

    resp = stack.post(tools_call("report", {}, request_id=42), token=stack.token())

    assert resp.status_code == 200, resp.text
    debug = resp.headers["x-debug"]
    assert "AKIA" not in debug and "alice@example.com" not in debug and "[MASKED:" in debug, debug
    assert resp.headers["x-request-trace"] == "plain-value-1234"
