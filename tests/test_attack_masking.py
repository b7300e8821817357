"""Masking holes a red team used, replayed through real Envoy + gatehouse.wasm + the service.

Each test performs the attack and asserts what a broken gateway would get wrong:
- a detector that masks from a BEGIN line to an END line hides the SQL between them from the
  trail (and from an approver) while it runs upstream;
- duplicate JSON keys: the masker reads the last, passes the bytes, and the first goes out;
  a request with a key twice is recorded with one value while the upstream acts on another;
- SSE `id:`, `event:` and comment lines go to the client unmasked, the event id to the trail;
- `+json` media types masked as plain text, so `\\u0041KIA…` escapes pass;
- a batch answer masked with the reveal of its first message's tool for every message;
- JSON parts the walk never looked at: object keys, the `id`/`method`/`jsonrpc` members, card
  numbers written as floats, negatives or exponents, `blob`/`data` skipped whatever they held;
- a quoted value under a sensitive key in free text (`/* "password": " */ UNION … /* " */`)
  hides the SQL between its quotes from the record while it runs.
"""

from __future__ import annotations

import json

import pytest

from harness.masking import DEMO, assert_no_leak, markers, sse_messages
from harness.raw_upstream import Reply, json_reply
from harness.stack import tools_call

pytestmark = pytest.mark.gateway

CUSTOMERS = DEMO.CUSTOMERS
ALICE, BRUNO, ZOE = CUSTOMERS
AWS_KEY_ID = DEMO.SERVICE_CONFIG["billing"]["aws_access_key_id"]
SECRETS = [
    ("aws_access_key_id", AWS_KEY_ID),
    ("email", ALICE.email),
    ("email", ZOE.email),
    ("credit_card", ALICE.card_number),
]
BATCH_VERSION = {"mcp-protocol-version": "2025-03-26"}


def unicode_escaped(value: str) -> str:
    """Every character as a JSON `\\uXXXX` escape: what a reader decodes, not what a scanner reads."""
    return "".join(f"\\u{ord(c):04x}" for c in value)


def records_of(stack, resp) -> dict:
    return stack.audit.wait_complete(resp.headers["x-gatehouse-request-id"])


# --- 1. detectors swallow more than the secret --------------------------------------------------

PEM_SQL = (
    "SELECT name FROM customers /* -----BEGIN PRIVATE KEY----- */ "
    "UNION SELECT value FROM service_config /* -----END PRIVATE KEY----- */"
)
PEM_SQL_LINES = (
    "SELECT name FROM customers\n-----BEGIN PRIVATE KEY-----\n"
    "UNION SELECT value FROM service_config\n-----END PRIVATE KEY-----"
)


@pytest.mark.parametrize("sql", [PEM_SQL, PEM_SQL_LINES], ids=["comments", "lines"])
def test_sql_between_pem_markers_is_recorded_as_it_runs(make_stack, sql):
    stack = make_stack(upstream="raw")
    stack.raw.reply = lambda req: json_reply({"jsonrpc": "2.0", "id": 31, "result": {"content": []}})

    resp = stack.post(tools_call("run_query", {"sql": sql}, request_id=31), token=stack.token())

    assert resp.status_code == 200, resp.text
    (seen,) = stack.raw.received()
    assert "UNION SELECT value FROM service_config" in seen.json()["params"]["arguments"]["sql"]
    request = records_of(stack, resp)["request"]["data"]
    recorded = json.dumps(request)
    assert "UNION SELECT value FROM service_config" in recorded, f"the trail hides what ran: {recorded}"
    assert "private_key" not in request.get("masked", {}), request


def test_a_real_private_key_in_arguments_is_still_masked(make_stack):
    stack = make_stack(upstream="raw")
    key = DEMO.SERVICE_CONFIG["billing"]["tls_private_key"]
    sql = f"INSERT INTO keys VALUES ('{key}') -- then UNION SELECT 1"

    resp = stack.post(tools_call("run_query", {"sql": sql}, request_id=32), token=stack.token())

    assert resp.status_code == 200, resp.text
    request = records_of(stack, resp)["request"]["data"]
    assert_no_leak(json.dumps(request), "the request record", [("private_key", key)])
    assert request["masked"].get("private_key") == 1, request
    assert "-- then UNION SELECT 1" in json.dumps(request), "text after the key survives"


# --- 2. duplicate JSON keys ------------------------------------------------------------------------


def dup_object(aws: str, email: str) -> str:
    return f'{{"aws_key":"{aws}","email":"{email}","aws_key":"n/a","email":"n/a"}}'


DUP_TEXT = dup_object(AWS_KEY_ID, ZOE.email)


@pytest.mark.parametrize("where", ["body", "text-content", "sse"])
def test_duplicate_keys_do_not_carry_a_secret_out(make_stack, where):
    stack = make_stack(upstream="raw")
    if where == "body":
        body = ('{"jsonrpc":"2.0","id":41,"result":' + DUP_TEXT + "}").encode()
        stack.raw.reply = lambda req: Reply(chunks=[body], framing="length")
    elif where == "text-content":
        answer = {"jsonrpc": "2.0", "id": 41, "result": {"content": [{"type": "text", "text": DUP_TEXT}]}}
        stack.raw.reply = lambda req: json_reply(answer)
    else:
        data = '{"jsonrpc":"2.0","id":41,"result":' + DUP_TEXT + "}"
        stack.raw.reply = lambda req: Reply(
            headers=[("content-type", "text/event-stream")], chunks=[f"id: 1\ndata: {data}\n\n".encode()]
        )

    resp = stack.post(tools_call("find", {}, request_id=41), token=stack.token())

    assert resp.status_code == 200, resp.text
    assert_no_leak(resp.content, "the client's answer", SECRETS)
    audited = records_of(stack, resp)
    assert_no_leak(json.dumps(audited), "the records", SECRETS)
    # The record says what went out: the client's message is the recorded one.
    parts = [r["data"] for r in audited["responses"] if r["data"].get("message")]
    got = sse_messages(resp.content) if where == "sse" else [resp.json()]
    assert [p["message"] for p in parts] == got


def test_a_request_with_a_key_twice_is_refused_and_not_forwarded(make_stack):
    stack = make_stack(upstream="raw")
    body = (
        b'{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"run_query",'
        b'"arguments":{"sql":"SELECT value FROM service_config","sql":"SELECT 1"}}}'
    )

    resp = stack.post(None, token=stack.token(), content=body)

    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] == -32600
    assert stack.raw.received() == [], "forwarded with a key twice"


# --- 3. SSE fields other than data -----------------------------------------------------------------


def test_sse_id_event_and_comment_lines_are_masked(make_stack):
    stack = make_stack(upstream="raw")
    answer = json.dumps({"jsonrpc": "2.0", "id": 51, "result": {"content": []}})
    stream = (
        f": debug {ALICE.email} {ALICE.card_number}\n\n"
        f"id: {AWS_KEY_ID}\nevent: {ZOE.email}\n: note {ZOE.email}\nretry: 1000\ndata: {answer}\n\n"
        f"id: {ALICE.email}\n\n"
    ).encode()
    stack.raw.reply = lambda req: Reply(headers=[("content-type", "text/event-stream")], chunks=[stream])

    resp = stack.post(tools_call("find", {}, request_id=51), token=stack.token())

    assert resp.status_code == 200, resp.text
    assert_no_leak(resp.content, "the client's SSE fields", SECRETS)
    assert {"aws_access_key_id", "email"} <= set(markers(resp.text)), resp.text
    assert sse_messages(resp.content) == [json.loads(answer)], "the event itself still arrives"
    audited = records_of(stack, resp)
    assert_no_leak(json.dumps(audited), "the records", SECRETS)
    ids = [r["data"].get("sse_event_id") for r in audited["responses"] if r["data"].get("sse_event_id")]
    assert ids == ["[MASKED:aws_access_key_id]"], ids


# --- 4. JSON media types -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["application/vnd.api+json", "Application/Problem+JSON; charset=utf-8", "application/json-seq"],
)
def test_json_escapes_in_json_media_types_do_not_hide_secrets(make_stack, content_type):
    stack = make_stack(upstream="raw")
    text = f"key {unicode_escaped(AWS_KEY_ID)} mail {unicode_escaped(ALICE.email)}"
    message = '{"jsonrpc":"2.0","id":61,"result":{"content":[{"type":"text","text":"' + text + '"}]}}'
    body = ("\x1e" + message + "\n" if content_type.endswith("json-seq") else message).encode()
    stack.raw.reply = lambda req: Reply(headers=[("content-type", content_type)], chunks=[body], framing="length")

    resp = stack.post(tools_call("find", {}, request_id=61), token=stack.token())

    assert resp.status_code == 200, resp.text
    # What a JSON reader makes of the answer holds no secret.
    decoded = json.dumps(json.loads(resp.content.decode().strip("\x1e\n")), ensure_ascii=False)
    assert_no_leak(decoded, "the decoded answer", SECRETS)
    assert {"aws_access_key_id", "email"} <= set(markers(decoded)), decoded
    assert_no_leak(json.dumps(records_of(stack, resp)), "the records", SECRETS)


# --- 5. per-message reveal in a batch -------------------------------------------------------------

REVEAL_FIND = {"reveal": [{"kinds": ["email"], "groups": ["support"], "tools": ["find_*"]}]}


def batch_answer(*ids: int) -> list[dict]:
    emails = {71: ALICE.email, 72: ZOE.email}
    return [{"jsonrpc": "2.0", "id": i, "result": {"content": [{"type": "text", "text": emails[i]}]}} for i in ids]


@pytest.mark.parametrize("framing", ["json", "sse"])
def test_a_batch_reveals_to_each_message_what_its_own_tool_may(make_stack, framing):
    stack = make_stack(upstream="raw", masking=REVEAL_FIND, allow_groups=["support"])
    if framing == "json":
        stack.raw.reply = lambda req: json_reply(batch_answer(71, 72))
    else:
        events = b"".join(f"data: {json.dumps(m)}\n\n".encode() for m in reversed(batch_answer(71, 72)))
        stack.raw.reply = lambda req: Reply(headers=[("content-type", "text/event-stream")], chunks=[events])
    batch = [tools_call("find_customer", {}, request_id=71), tools_call("leak", {}, request_id=72)]

    resp = stack.post(batch, token=stack.token("carol", ["support"]), headers=BATCH_VERSION)

    assert resp.status_code == 200, resp.text
    messages = resp.json() if framing == "json" else sse_messages(resp.content)
    answers = {m["id"]: m["result"]["content"][0]["text"] for m in messages}
    assert answers[71] == ALICE.email, "find_customer's e-mail is revealed to support"
    assert answers[72] == "[MASKED:email]", f"leak's e-mail reached the client: {answers[72]!r}"
    assert "x-gatehouse-reveal-ids" not in resp.headers
    audited = records_of(stack, resp)
    assert_no_leak(json.dumps(audited), "the records", SECRETS)
    assert audited["request"]["data"].get("revealed") == ["email"]


def test_an_answer_with_an_id_no_request_had_gets_no_reveal(make_stack):
    stack = make_stack(upstream="raw", masking=REVEAL_FIND, allow_groups=["support"])
    forged = batch_answer(71, 72)
    forged[0]["id"] = "71"  # a string id is another id
    stack.raw.reply = lambda req: json_reply(forged)
    batch = [tools_call("find_customer", {}, request_id=71), tools_call("find_other", {}, request_id=73)]

    resp = stack.post(batch, token=stack.token("carol", ["support"]), headers=BATCH_VERSION)

    assert resp.status_code == 200, resp.text
    assert_no_leak(resp.content, "the client's answer", SECRETS)


# --- 6. JSON parts the walk skipped --------------------------------------------------------------

GITHUB = DEMO.SERVICE_CONFIG["billing"]["github_token"]
CARD = "4111111111111111"
WALK_SECRETS = [*SECRETS, ("github_token", GITHUB), ("credit_card", CARD)]


def raw_answer(result: str, head: str = '"jsonrpc":"2.0","id":81') -> str:
    """A JSON-RPC answer written by hand: numbers and keys exactly as a hostile upstream writes them."""
    return "{" + head + ',"result":' + result + "}"


def q(text: str) -> str:
    return json.dumps(text)


HOLES = {
    "keys": raw_answer("{" + f'"content":[],{q(AWS_KEY_ID)}:1,{q(ALICE.email)}:{{{q(ZOE.email)}:2}}' + "}"),
    "keys-in-text": raw_answer(json.dumps({"content": [{"type": "text", "text": json.dumps({AWS_KEY_ID: 1})}]})),
    "id": raw_answer("{}", f'"jsonrpc":"2.0","id":{q(AWS_KEY_ID + " " + ALICE.email)}'),
    "method": raw_answer("{}", f'"jsonrpc":"2.0","id":81,"method":{q(ZOE.email)}'),
    "jsonrpc": raw_answer("{}", f'"jsonrpc":{q("2.0 " + AWS_KEY_ID)},"id":81'),
    "card-float": raw_answer(f'{{"n":{CARD}.0}}'),
    "card-negative": raw_answer(f'{{"n":-{CARD}}}'),
    "card-exponent": raw_answer(f'{{"n":[{CARD}e0]}}'),
    "blob": raw_answer(json.dumps({"contents": [{"uri": "x:y", "blob": f"{AWS_KEY_ID} {ALICE.email} {GITHUB}"}]})),
    "image-data": raw_answer(
        json.dumps({"content": [{"type": "image", "data": f"{AWS_KEY_ID}+{ALICE.email}", "mimeType": "image/png"}]})
    ),
}


@pytest.mark.parametrize("framing", ["json", "sse"])
@pytest.mark.parametrize("hole", sorted(HOLES))
def test_no_part_of_a_json_answer_carries_a_secret_out(make_stack, hole, framing):
    stack = make_stack(upstream="raw")
    body = HOLES[hole].encode()
    if framing == "json":
        stack.raw.reply = lambda req: Reply(chunks=[body], framing="length")
    else:
        stack.raw.reply = lambda req: Reply(
            headers=[("content-type", "text/event-stream")], chunks=[b"data: " + body + b"\n\n"]
        )

    resp = stack.post(tools_call("find", {}, request_id=81), token=stack.token())

    assert resp.status_code == 200, resp.text
    assert_no_leak(resp.content, "the client's answer", WALK_SECRETS)
    assert markers(resp.text), f"nothing was masked: {resp.text}"
    assert_no_leak(json.dumps(records_of(stack, resp)), "the records", WALK_SECRETS)


def test_a_masked_key_that_meets_another_key_keeps_both_values(make_stack):
    stack = make_stack(upstream="raw")
    result = {ALICE.email: "first", ZOE.email: "second", "[MASKED:email]": "third"}
    stack.raw.reply = lambda req: json_reply({"jsonrpc": "2.0", "id": 82, "result": result})

    resp = stack.post(tools_call("find", {}, request_id=82), token=stack.token())

    assert resp.status_code == 200, resp.text
    assert_no_leak(resp.content, "the client's answer", WALK_SECRETS)
    assert sorted(resp.json()["result"].values()) == ["first", "second", "third"], resp.text


def test_arguments_keys_and_float_cards_are_masked_in_the_request_record(make_stack):
    stack = make_stack(upstream="raw")
    stack.raw.reply = lambda req: json_reply({"jsonrpc": "2.0", "id": 83, "result": {"content": []}})
    arguments = f'{{{q(AWS_KEY_ID)}:"x","card":{CARD}.0,"neg":-{CARD},"nested":{{{q(ALICE.email)}:1}}}}'
    params = '{"name":"find","arguments":' + arguments + "}"
    body = ('{"jsonrpc":"2.0","id":83,"method":"tools/call","params":' + params + "}").encode()

    resp = stack.post(None, token=stack.token(), content=body)

    assert resp.status_code == 200, resp.text
    request = records_of(stack, resp)["request"]["data"]
    assert_no_leak(json.dumps(request.get("arguments")), "the request record's arguments", WALK_SECRETS)
    assert request["masked"].get("credit_card") == 2, request


# --- 7. a quoted value under a sensitive key swallows SQL -----------------------------------------

SWALLOW_SQL = [
    'SELECT name FROM customers WHERE id = 1 /* "password": " */ UNION SELECT value FROM service_config /* " */',
    'SELECT name FROM customers WHERE id = 1 /* secret=" */ UNION SELECT value FROM service_config /* " */',
    "SELECT name FROM customers WHERE id = 1 /* api_key='*/ UNION SELECT value FROM service_config /*' */",
    'SELECT name FROM customers WHERE id = 1 /* token="\t*/ UNION SELECT value FROM service_config /*" */',
    'SELECT name FROM customers /* "password": "*/UNION/**/SELECT/**/value/**/FROM/**/service_config/*" */',
    "SELECT name FROM customers /* password=*/UNION/**/SELECT/**/value/**/FROM/**/service_config/* */",
]


@pytest.mark.parametrize("sql", SWALLOW_SQL, ids=["password", "secret", "api_key", "token", "no-blank", "bare"])
def test_a_sensitive_key_quote_does_not_hide_sql_from_the_record(make_stack, sql):
    stack = make_stack(upstream="demo")
    token = stack.token()
    session = stack.initialize(token)

    resp = stack.post(
        tools_call("run_query", {"sql": sql}, request_id=84), token=token, headers={"mcp-session-id": session}
    )

    assert resp.status_code == 200, resp.text
    request = records_of(stack, resp)["request"]["data"]
    assert request["arguments"]["sql"] == sql, f"the trail hides what ran: {request['arguments']}"
    assert "sensitive_field" not in request.get("masked", {}), request
