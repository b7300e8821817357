"""Inline masking end to end: real Envoy + gatehouse.wasm + the service, in front of the demo
SQLite MCP server (demo/mcp_server.py, JSON and SSE answers) and of raw upstreams that a
test scripts byte by byte.

What a broken gateway would get wrong, and these tests catch:
- a secret reaching the client: in a JSON answer, in structuredContent, in progress and
  log notifications, in an SSE event split at any byte (mid-secret, mid-UTF-8, mid-CRLF);
- a clear value in the audit trail (SQLite file and its WAL) or in the service's and
  Envoy's logs, answers and request arguments alike;
- reveal showing a kind to a group it was not given to, or putting it in the records;
- styles (`last4`, `token`) and custom rules not applied;
- hostile upstream bytes getting through unmasked: a compressed body, invalid UTF-8, a
  stream cut off mid-event, a JSON answer too large to hold whole.
`gatehouse mask --jsonl` is measured on every tests/corpus/*.jsonl (recall, decoys kept).
"""

from __future__ import annotations

import gzip
import json
import re
import secrets
import subprocess
from collections import Counter, defaultdict

import pytest

from harness import paths
from harness.masking import DEMO, MARKER_RE, SECRETS, assert_no_leak, leaks, markers, sse_messages
from harness.mcp_client import Recorder, run_session, text_of
from harness.raw_upstream import Reply, split_at
from harness.stack import Stack, tools_call

pytestmark = pytest.mark.gateway

CUSTOMERS = DEMO.CUSTOMERS
CUSTOMER_KINDS: dict[str, str] = DEMO.CUSTOMER_KINDS  # field → kind
BILLING = DEMO.SERVICE_CONFIG["billing"]
# Under a credential-looking key a value may be caught by its own detector or as a sensitive field.
CONFIG_KINDS = {
    "aws_access_key_id": "aws_access_key_id",
    "aws_secret_access_key": "aws_secret_access_key",
    "github_token": "github_token",
    "database_url": "password_in_url",
    "tls_private_key": "private_key",
    "session_jwt": "jwt",
}
ALICE, BRUNO, ZOE = CUSTOMERS
AWS_KEY_ID = BILLING["aws_access_key_id"]
GITHUB = BILLING["github_token"]
REVEAL_HEADER = "x-gatehouse-reveal"


# --- helpers ------------------------------------------------------------------------------


def assert_masked_as(value: str, kind: str, clear: str) -> None:
    """A whole field that held one `kind` value, default style: exactly its marker."""
    assert clear not in value, f"{kind} in clear: {value!r}"
    if kind == "phone":
        # Where a phone number starts is a judgement call (`+1 ` or not); no digits may stay.
        assert markers(value) == ["phone"] and not re.search(r"\d{3}", value), value
    else:
        assert value == f"[MASKED:{kind}]", f"want [MASKED:{kind}], got {value!r}"


def assert_customer_row(row: dict, customer, *, clear_kinds: frozenset[str] = frozenset()) -> None:
    assert row["name"] == customer.name, "ordinary data changed"
    assert row["last_order"] == customer.last_order, "ordinary data changed"
    assert row["plan"] == customer.plan, "ordinary data changed"
    for field, kind in CUSTOMER_KINDS.items():
        if kind in clear_kinds:
            assert row[field] == getattr(customer, field), f"{kind} should be revealed: {row[field]!r}"
        else:
            assert_masked_as(row[field], kind, getattr(customer, field))


def request_ids(rec: Recorder, rpc_method: str = "tools/call") -> list[str]:
    return [e.response_headers["x-gatehouse-request-id"] for e in rec.posts_of(rpc_method)]


def all_request_ids(rec: Recorder) -> list[str]:
    return [e.response_headers.get("x-gatehouse-request-id", "") for e in rec.exchanges]


def response_counts(audited: dict) -> Counter:
    total: Counter = Counter()
    for r in audited["responses"]:
        total.update(r["data"].get("masked") or {})
    return total


def session(stack: Stack, body, sub: str = "alice", groups=("eng",), **kwargs):
    return run_session(stack.url, body, headers=stack.auth(sub, groups), **kwargs)


def find_all(name: str = ""):
    async def body(s, rec: Recorder):
        return await s.call_tool("find_customer", {"name": name})

    return body


# --- the demo server through the gateway, real SDK client ------------------------------------


@pytest.mark.parametrize("mode", ["json", "sse"])
def test_client_sees_every_secret_masked(make_stack, mode):
    stack = make_stack(upstream="demo", demo_json=(mode == "json"))

    async def body(s, rec: Recorder):
        tools = {t.name for t in (await s.list_tools()).tools}
        found = await s.call_tool("find_customer", {"name": ""})
        config = await s.call_tool("get_service_config", {"service": "billing"})
        rows = await s.call_tool("run_query", {"sql": "SELECT name, email, card_number, last_order FROM customers"})
        return tools, found, config, rows

    (tools, found, config, rows), rec = session(stack, body)

    assert {"find_customer", "get_service_config", "run_query", "stream_report"} <= tools
    want_type = "application/json" if mode == "json" else "text/event-stream"
    assert [e.content_type for e in rec.posts_of("tools/call")] == [want_type] * 3

    # find_customer: every personal field masked, in the text and in structuredContent alike.
    assert not found.is_error, text_of(found)
    customers = json.loads(text_of(found))  # still valid JSON after masking
    assert len(customers) == 3
    for row, customer in zip(customers, CUSTOMERS, strict=True):
        assert_customer_row(row, customer)
    assert found.structured_content == {"customers": customers}, "structuredContent masked unlike the text"

    # get_service_config: every credential masked, the rest untouched.
    settings = json.loads(text_of(config))["settings"]
    assert settings["region"] == BILLING["region"]
    for key, kind in CONFIG_KINDS.items():
        assert set(markers(settings[key])) & {kind, "sensitive_field"}, f"{key}: {settings[key]!r}"
    assert_no_leak(json.dumps(config.structured_content), "structuredContent of get_service_config")

    # run_query: same masking for rows that come from arbitrary SQL.
    queried = json.loads(text_of(rows))
    assert [r["name"] for r in queried] == [c.name for c in CUSTOMERS]
    assert [r["last_order"] for r in queried] == [c.last_order for c in CUSTOMERS]
    for r, c in zip(queried, CUSTOMERS, strict=True):
        assert_masked_as(r["email"], "email", c.email)
        assert_masked_as(r["card_number"], "credit_card", c.card_number)

    for result in (found, config, rows):
        assert_no_leak(result.model_dump_json(by_alias=True), "what the client got")


def test_sse_notifications_are_masked_event_by_event(make_stack):
    """stream_report sends progress and log notifications (secrets inside) before its result."""
    stack = make_stack(upstream="demo")
    progress: list[str] = []
    logs: list[str] = []

    async def on_log(params) -> None:
        logs.append(str(params.data))

    async def body(s, rec: Recorder):
        async def on_progress(p: float, total: float | None, message: str | None) -> None:
            progress.append(message or "")

        return await s.call_tool("stream_report", {"chunks": 3}, progress_callback=on_progress)

    result, rec = session(stack, body, logging_callback=on_log)

    assert len(logs) == 3, logs
    assert len(progress) == 3, f"progress notifications lost (their progressToken masked?): {progress}"
    for customer, message in zip(CUSTOMERS, progress, strict=True):
        assert message.startswith(f"checked {customer.name} <[MASKED:email]>, card "), message
        assert markers(message) == ["email", "credit_card"], message
    for customer, line in zip(CUSTOMERS, logs, strict=True):
        assert line.startswith(f"{customer.name}: iban [MASKED:iban], ssn [MASKED:us_ssn], phone "), line
        assert "phone" in markers(line), line
    assert text_of(result).endswith(f"next order {ALICE.last_order}")
    assert "aws_access_key_id" in markers(text_of(result))
    assert_no_leak("\n".join(progress + logs + [result.model_dump_json()]), "notifications and result")

    # One response record per event, each masked.
    (request_id,) = request_ids(rec)
    audited = stack.audit.wait_complete(request_id)
    parts = [r for r in audited["responses"] if r["data"].get("message")]
    assert len(parts) >= 7, f"want a record per SSE event (3 progress + 3 log + result), got {len(parts)}"
    assert_no_leak(json.dumps(audited), "the response records")
    counts = response_counts(audited)
    assert counts["email"] >= 3 and counts["credit_card"] >= 3 and counts["iban"] >= 3, counts


def test_trail_and_logs_hold_no_clear_value(make_stack):
    """Answers and request arguments: masked in every record, absent from the store's bytes and the logs."""
    stack = make_stack(upstream="demo")
    password = "Hunter2-Report"
    sql = f"SELECT name, last_order FROM customers WHERE id = 1 -- from postgres://report:{password}@db.internal/crm"

    async def body(s, rec: Recorder):
        by_mail = await s.call_tool("find_customer", {"name": ALICE.email})
        config = await s.call_tool("get_service_config", {"service": "billing"})
        query = await s.call_tool("run_query", {"sql": sql})
        report = await s.call_tool("stream_report", {"chunks": 3})
        return by_mail, config, query, report

    (by_mail, config, query, report), rec = session(stack, body)
    secrets = [*SECRETS, ("password_in_url", password)]

    # The upstream got the arguments in clear (masking is for the trail, not the call).
    assert [r["name"] for r in json.loads(text_of(by_mail))] == [ALICE.name]
    assert json.loads(text_of(query)) == [{"name": ALICE.name, "last_order": ALICE.last_order}]

    find_id, config_id, query_id, report_id = request_ids(rec)
    for request_id in all_request_ids(rec):
        stack.audit.wait_complete(request_id)

    # Request records: arguments masked, what was masked counted.
    find_req = stack.audit.request(find_id)["request"]["data"]
    assert find_req["arguments"] == {"name": "[MASKED:email]"}
    assert find_req["masked"] == {"email": 1}
    query_req = stack.audit.request(query_id)["request"]["data"]
    assert password not in query_req["arguments"]["sql"]
    assert query_req["arguments"]["sql"].startswith("SELECT name, last_order FROM customers WHERE id = 1 -- from ")
    assert markers(query_req["arguments"]["sql"]), query_req["arguments"]
    assert query_req["masked"].get("password_in_url", 0) + query_req["masked"].get("sensitive_field", 0) >= 1

    # Response records: counts per kind, never values.
    find_counts = response_counts(stack.audit.request(find_id))
    assert {"email", "phone", "credit_card", "iban", "us_ssn"} <= set(find_counts), find_counts
    assert all(isinstance(n, int) and n >= 1 for n in find_counts.values()), find_counts
    config_counts = response_counts(stack.audit.request(config_id))
    assert config_counts.total() >= len(CONFIG_KINDS), config_counts
    assert "aws_access_key_id" in config_counts, config_counts
    for request_id in (find_id, config_id, report_id):
        assert markers(json.dumps(stack.audit.request(request_id)["responses"])), "no masked marker in the records"

    everything = stack.audit.records(limit=1000)
    assert_no_leak(json.dumps(everything), "the records served by the REST API", secrets)

    # The bytes on disk and in the logs, with the processes stopped (WAL and logs flushed).
    stack.envoy.stop()
    stack.service.stop()
    for name, data in {**stack.trail_files(), **stack.gateway_logs()}.items():
        assert_no_leak(data, name, secrets)
    assert stack.trail_files(), "no audit store on disk?"


def test_reveal_shows_a_kind_in_clear_to_its_group_only(make_stack):
    stack = make_stack(
        upstream="demo",
        masking={
            "reveal": [
                {"kinds": ["email"], "groups": ["support"]},
                # Cards only for get_* tools: not for find_customer.
                {"kinds": ["credit_card"], "groups": ["support"], "tools": ["get_*"]},
            ]
        },
    )

    carol_result, carol_rec = session(stack, find_all(), "carol", ("support",))
    alice_result, alice_rec = session(stack, find_all(), "alice", ("eng",))

    for row, customer in zip(json.loads(text_of(carol_result)), CUSTOMERS, strict=True):
        assert_customer_row(row, customer, clear_kinds=frozenset({"email"}))
    assert carol_result.structured_content == {"customers": json.loads(text_of(carol_result))}
    for row, customer in zip(json.loads(text_of(alice_result)), CUSTOMERS, strict=True):
        assert_customer_row(row, customer)

    for rec in (carol_rec, alice_rec):
        for exchange in rec.exchanges:
            assert REVEAL_HEADER not in exchange.response_headers, "the reveal header reached the client"

    # The trail holds the e-mails masked even for carol, and says what carol was shown.
    (carol_id,) = request_ids(carol_rec)
    audited = stack.audit.wait_complete(carol_id)
    assert_no_leak(json.dumps(audited), "carol's records")
    assert audited["request"]["data"].get("revealed") == ["email"]
    for r in audited["responses"]:
        if r["data"].get("message") or r["data"].get("final"):  # the final part: the union over the stream
            assert r["data"]["revealed"] == ["email"], r["data"]
    assert response_counts(audited)["email"] >= 3
    (alice_id,) = request_ids(alice_rec)
    alice_audited = stack.audit.wait_complete(alice_id)
    assert not alice_audited["request"]["data"].get("revealed")
    assert all(not r["data"].get("revealed") for r in alice_audited["responses"])


def test_styles_last4_and_token(make_stack):
    stack = make_stack(
        upstream="demo",
        masking={"styles": {"credit_card": "last4", "email": "token"}, "token_key_file": "mask-token.key"},
    )

    first, _ = session(stack, find_all(), "alice", ("eng",))
    second, _ = session(stack, find_all(), "bob", ("approvers",))

    key = (stack.dir / "mask-token.key").read_text().strip()
    assert len(bytes.fromhex(key)) >= 16, "token key file not created as hex"
    tokens = []
    for result in (first, second):
        rows = json.loads(text_of(result))
        for row, customer in zip(rows, CUSTOMERS, strict=True):
            assert row["card_number"] == f"[MASKED:credit_card:…{customer.card_number[-4:]}]", row["card_number"]
            assert row["iban"] == "[MASKED:iban]", "default style is redact"
            m = MARKER_RE.fullmatch(row["email"])
            assert m and m.group(1) == "email" and re.fullmatch(r"tok_[0-9a-f]{8,}", m.group(2) or ""), row["email"]
        tokens.append([row["email"] for row in rows])
        assert_no_leak(result.model_dump_json(), "what the client got")
    assert tokens[0] == tokens[1], "the same e-mail must give the same token"
    assert len(set(tokens[0])) == 3, "different e-mails must give different tokens"


def test_custom_rule(make_stack):
    stack = make_stack(upstream="demo", masking={"custom": [{"name": "employee_id", "pattern": "EMP-[0-9]{6}"}]})
    sql = "SELECT 'EMP-004211' AS badge, 'EMP-12' AS short_badge, 'ORD-10041' AS order_id"

    async def body(s, rec: Recorder):
        return await s.call_tool("run_query", {"sql": sql})

    result, rec = session(stack, body)

    assert json.loads(text_of(result)) == [
        {"badge": "[MASKED:employee_id]", "short_badge": "EMP-12", "order_id": "ORD-10041"}
    ]
    (request_id,) = request_ids(rec)
    audited = stack.audit.wait_complete(request_id)
    assert "EMP-004211" not in json.dumps(audited)
    assert audited["request"]["data"]["masked"] == {"employee_id": 1}
    assert response_counts(audited)["employee_id"] >= 1


# --- masking.gitleaks: rules imported from a gitleaks configuration ------------------------------

GITLEAKS_RULES = paths.REPO / "tests" / "fixtures" / "gitleaks" / "rules.toml"
ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def random_token(alphabet: str, n: int) -> str:
    return "".join(secrets.choice(alphabet) for _ in range(n))


def test_gitleaks_rules_mask_under_their_ids(make_stack):
    """Rules from a gitleaks file mask through Envoy (filter) and in the request record
    (service), each under its rule id; its secret group, keywords, entropy and allowlists
    decide what is a secret."""
    stack = make_stack(upstream="demo", masking={"gitleaks": str(GITLEAKS_RULES)})
    openai = "sk-proj-" + random_token(ALNUM, 64)
    gitlab = "glpat-" + random_token(ALNUM, 20)
    widget = random_token(ALNUM[:26] + ALNUM[52:], 24)
    fixture_widget = random_token(ALNUM[:26] + ALNUM[52:], 24)
    # One select per line: an allowlist on the line must not reach the other values.
    sql = (
        f"SELECT '{openai}' AS a,\n'token {gitlab} here' AS b,\n'widget_account = {widget}' AS c,\n"
        f"'widget_key = {fixture_widget}  # fixture' AS d,\n'glpat-aaaaaaaaaaaaaaaaaaaa' AS e,\n"
        "'widget_key = exampleexampleexample123' AS f"
    )

    async def body(s, rec: Recorder):
        return await s.call_tool("run_query", {"sql": sql})

    result, rec = session(stack, body)
    (row,) = json.loads(text_of(result))
    assert row["a"] == "[MASKED:openai-project-key]", row
    assert row["b"] == "token [MASKED:gitlab-pat] here", row
    assert row["c"] == "widget_account = [MASKED:widget-api-key]", "only the secret group is masked"
    assert row["d"] == f"widget_key = {fixture_widget}  # fixture", "the rule's line allowlist"
    assert row["e"] == "glpat-aaaaaaaaaaaaaaaaaaaa", "below the rule's entropy"
    assert row["f"] == "widget_key = exampleexampleexample123", "the global allowlist"
    (request_id,) = request_ids(rec)
    audited = stack.audit.wait_complete(request_id)
    stored = json.dumps(audited)
    for secret in (openai, gitlab, widget):
        assert secret not in stored
    assert audited["request"]["data"]["masked"] == {"openai-project-key": 1, "gitlab-pat": 1, "widget-api-key": 1}
    counts = response_counts(audited)
    assert counts["openai-project-key"] >= 1 and counts["widget-api-key"] >= 1, counts


def check_config(path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(paths.gatehouse_bin()), "check-config", str(path)], capture_output=True, text=True, timeout=60
    )


def test_check_config_names_the_gitleaks_rules_it_cannot_use(tmp_path):
    config = (paths.REPO / "gatehouse.yaml").read_text()
    assert "\nmasking:" in config
    rules = tmp_path / "rules.toml"
    rules.write_text(
        "[[rules]]\nid = 'lookahead'\nregex = '''key(?=[0-9])'''\n"
        "[[rules]]\nid = 'backref'\nregex = '''(a)\\1'''\n"
        "[[rules]]\nid = 'fine'\nregex = '''fine_[a-z]{8}'''\n"
    )
    path = tmp_path / "gatehouse.yaml"
    path.write_text(re.sub(r"\nmasking:[^\n]*\n", f"\nmasking:\n  gitleaks: {rules}\n", config, count=1))
    result = check_config(path)
    assert result.returncode == 1, result.stdout
    assert "masking.gitleaks[lookahead].regex" in result.stderr, result.stderr
    assert "masking.gitleaks[backref].regex" in result.stderr, result.stderr
    assert "[fine]" not in result.stderr

    # Disabled by id, a rule is not compiled; the fixture's path rules are left out with a note.
    fixed = f"\nmasking:\n  gitleaks: {GITLEAKS_RULES}\n  disabled: [anthropic-api-key]\n"
    path.write_text(re.sub(r"\nmasking:[^\n]*\n", fixed, config, count=1))
    result = check_config(path)
    assert result.returncode == 0, result.stderr
    assert 'note: masking.gitleaks: rule "pkcs12-file" matches file paths only: left out' in result.stdout
    assert result.stdout.strip().endswith("OK")


# --- raw upstreams: bytes a real server would not send on purpose -------------------------------

SSE_SECRETS = [
    ("email", ZOE.email),
    ("credit_card", ALICE.card_number),
    ("aws_access_key_id", AWS_KEY_ID),
    ("github_token", GITHUB),
    ("iban", BRUNO.iban),
    ("jwt", DEMO.JWT),
]


def sse_stream(request_id: int, eol: bytes = b"\r\n") -> bytes:
    """Four events carrying secrets, CRLF line ends, one event's data over two lines, a comment block."""
    progress = {
        "jsonrpc": "2.0",
        "method": "notifications/progress",
        "params": {
            "progressToken": "report-1",
            "progress": 1,
            "message": f"Zoë Dubois <{ZOE.email}> card {ALICE.card_number}",
        },
    }
    log_params = json.dumps({"level": "info", "data": f"key {AWS_KEY_ID}, token {GITHUB} — done"}, ensure_ascii=False)
    payload = {"iban": BRUNO.iban, "ref": DEMO.JWT, "note": f"Grüße — {ALICE.last_order}"}
    result = {
        "jsonrpc": "2.0",
        "id": request_id,
        "result": {"content": [{"type": "text", "text": json.dumps(payload, ensure_ascii=False)}]},
    }
    events = [
        [b"event: message", b"id: 1", b"data: " + json.dumps(progress, ensure_ascii=False).encode()],
        [
            b'data: {"jsonrpc": "2.0", "method": "notifications/message",',
            b'data:  "params": ' + log_params.encode() + b"}",
        ],
        [b": keep-alive"],
        [b"id: 2", b"data: " + json.dumps(result, ensure_ascii=False).encode()],
    ]
    return b"".join(eol.join(lines) + eol + eol for lines in events)


def chosen_offsets(stream: bytes) -> list[int]:
    at = stream.index
    return [
        at(AWS_KEY_ID.encode()) + 9,  # mid-secret
        at(ZOE.email.encode()) + 4,
        at(ALICE.card_number.encode()) + 6,
        at(GITHUB.encode()) + 20,
        at(DEMO.JWT.encode()) + 40,
        at("ë".encode()) + 1,  # mid-UTF-8 (2-byte)
        at("—".encode()) + 1,  # mid-UTF-8 (3-byte)
        at("—".encode()) + 2,
        at("ü".encode()) + 1,
        at(b"\r\n") + 1,  # between CR and LF
        at(b"\r\n\r\n") + 3,  # inside the blank line
        at(b"\r\n\r\n") + 4,  # exactly between events
        at(b"data:", at(b"data:") + 1) + 2,  # inside a field name
        at(b": keep-alive") + 3,
        len(stream) - 1,  # the last LF alone
    ]


def sse_reply(chunks: list[bytes], pause: float) -> Reply:
    return Reply(headers=[("content-type", "text/event-stream")], chunks=chunks, pause=pause)


@pytest.mark.parametrize("split", ["chosen-offsets", "every-byte"])
def test_sse_split_at_any_byte_gives_the_same_masked_output(make_stack, split):
    stack = make_stack(upstream="raw")
    token = stack.token()
    stream = sse_stream(7)

    stack.raw.reply = lambda req: sse_reply([stream], 0)
    whole = stack.post(tools_call("report", {}, request_id=7), token=token)
    if split == "every-byte":
        chunks, pause = [stream[i : i + 1] for i in range(len(stream))], 0.002
    else:
        chunks, pause = split_at(stream, chosen_offsets(stream)), 0.05
    stack.raw.reply = lambda req: sse_reply(chunks, pause)
    pieces = stack.post(tools_call("report", {}, request_id=7), token=token, timeout=60)

    assert whole.status_code == pieces.status_code == 200
    assert whole.headers["content-type"].startswith("text/event-stream")
    assert_no_leak(whole.content, "the unsplit stream", SSE_SECRETS)
    assert_no_leak(pieces.content, "the split stream", SSE_SECRETS)
    assert pieces.content == whole.content, "the output depends on where the upstream's bytes were split"

    progress, log, result = sse_messages(whole.content)
    assert progress["params"]["message"] == "Zoë Dubois <[MASKED:email]> card [MASKED:credit_card]"
    assert progress["params"]["progressToken"] == "report-1", "a protocol field was masked: progress is lost"
    assert markers(log["params"]["data"]) == ["aws_access_key_id", "github_token"]
    assert log["params"]["data"].endswith("— done")
    payload = json.loads(result["result"]["content"][0]["text"])
    assert payload == {"iban": "[MASKED:iban]", "ref": "[MASKED:jwt]", "note": f"Grüße — {ALICE.last_order}"}
    assert result["id"] == 7

    for resp in (whole, pieces):
        audited = stack.audit.wait_complete(resp.headers["x-gatehouse-request-id"])
        assert_no_leak(json.dumps(audited), "the response records", SSE_SECRETS)
        counts = response_counts(audited)
        assert {"email", "credit_card", "aws_access_key_id", "github_token", "iban", "jwt"} <= set(counts), counts


SECRET_TEXT = f"key {AWS_KEY_ID} card {ALICE.card_number} mail {ALICE.email} iban {ALICE.iban}"
RAW_SECRETS = [
    ("aws_access_key_id", AWS_KEY_ID),
    ("credit_card", ALICE.card_number),
    ("email", ALICE.email),
    ("iban", ALICE.iban),
]


def tool_answer(request_id: int, text: str = SECRET_TEXT) -> dict:
    return {"jsonrpc": "2.0", "id": request_id, "result": {"content": [{"type": "text", "text": text}]}}


def assert_refused(resp, request_id: int) -> dict:
    """The gateway's 502 JSON-RPC error (-32603, the request's id) in place of the upstream's answer."""
    assert resp.status_code == 502, f"want 502, got {resp.status_code}: {resp.content[:300]!r}"
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    assert resp.headers.get("content-encoding", "identity") == "identity", resp.headers
    body = resp.json()
    assert body.get("jsonrpc") == "2.0" and body.get("id") == request_id, body
    assert isinstance(body.get("error"), dict) and body["error"].get("code") == -32603, body
    return body


def final_record(stack: Stack, resp) -> dict:
    audited = stack.audit.wait_complete(resp.headers["x-gatehouse-request-id"])
    return [r for r in audited["responses"] if r["data"].get("final")][-1]["data"]


@pytest.mark.parametrize("content_type", ["application/json", "text/event-stream"])
def test_compressed_answer_is_refused(make_stack, content_type):
    """An upstream may send gzip nobody asked for: the filter cannot mask it, so it must not pass."""
    stack = make_stack(upstream="raw")
    answer = json.dumps(tool_answer(21)).encode()
    if content_type == "text/event-stream":
        answer = b"data: " + answer + b"\n\n"
    stack.raw.reply = lambda req: Reply(
        headers=[("content-type", content_type), ("content-encoding", "gzip")],
        chunks=[gzip.compress(answer)],
        framing="length",
    )

    resp = stack.post(
        tools_call("find", {}, request_id=21), token=stack.token(), headers={"accept-encoding": "gzip, br"}
    )

    assert_refused(resp, 21)
    assert not resp.content.startswith(b"\x1f\x8b"), "compressed bytes reached the client"
    assert_no_leak(resp.content, "the client's answer", RAW_SECRETS)
    (seen,) = stack.raw.received()
    for value in seen.headers.get("accept-encoding", []):
        assert "gzip" not in value and "br" not in value, f"the upstream was offered compression: {value!r}"
    record = final_record(stack, resp)
    assert record.get("withheld") == "encoded", record


@pytest.mark.parametrize("content_type", ["application/json", "text/event-stream"])
def test_invalid_utf8_answer_is_masked(make_stack, content_type):
    stack = make_stack(upstream="raw")
    text = "caf\udce9 " + SECRET_TEXT + " \udcff"  # lone surrogates: written out as the raw bytes E9, FF
    answer = json.dumps(tool_answer(22, text), ensure_ascii=False).encode("utf-8", "surrogateescape")
    assert b"caf\xe9" in answer  # the body really is invalid UTF-8
    if content_type == "text/event-stream":
        answer = b"data: " + answer + b"\n\n"
    stack.raw.reply = lambda req: Reply(headers=[("content-type", content_type)], chunks=[answer], framing="length")

    resp = stack.post(tools_call("find", {}, request_id=22), token=stack.token())

    assert_no_leak(resp.content, "the client's answer", RAW_SECRETS)
    resp.content.decode("utf-8")  # invalid bytes are replaced, never passed through
    # The answer still arrives, masked (not withheld): every secret kind is marked.
    assert resp.status_code == 200, resp.text
    assert {"aws_access_key_id", "credit_card", "email", "iban"} <= set(markers(resp.text)), resp.text
    audited = stack.audit.wait_complete(resp.headers["x-gatehouse-request-id"])
    assert_no_leak(json.dumps(audited), "the response records", RAW_SECRETS)


@pytest.mark.parametrize("end", ["connection-closed", "connection-reset"])
def test_sse_stream_cut_mid_event_leaks_nothing(make_stack, end):
    stack = make_stack(upstream="raw")
    first = b"data: " + json.dumps(tool_answer(23, "progress " + SECRET_TEXT)).encode() + b"\r\n\r\n"
    cut = b'data: {"jsonrpc": "2.0", "id": 23, "result": {"content": [{"type": "text", "text": "' + SECRET_TEXT.encode()
    stack.raw.reply = lambda req: Reply(
        headers=[("content-type", "text/event-stream")],
        chunks=[first, cut],
        pause=0.05,
        framing="close" if end == "connection-closed" else "chunked",
        abort=True,
    )

    got = stack.post_collect(tools_call("find", {}, request_id=23), token=stack.token())

    assert got.status == 200, got
    assert_no_leak(got.body, "what the client got", RAW_SECRETS)
    assert markers(got.body.decode(errors="replace")), f"the complete first event should arrive masked: {got}"
    audited = stack.audit.wait_complete(got.headers["x-gatehouse-request-id"])
    assert_no_leak(json.dumps(audited), "the response records", RAW_SECRETS)


MAX_RESPONSE_BYTES = 64 * 1024  # the smallest the config accepts
MAX_EVENT_BYTES = 64 * 1024  # envoy.max_request_bytes, which also bounds one SSE event


def big_answer(request_id: int, size: int) -> bytes:
    """A JSON-RPC answer of about `size` bytes, every row carrying secrets."""
    rows = [{"n": n, "note": SECRET_TEXT} for n in range(size // len(json.dumps({"n": 0, "note": SECRET_TEXT})) + 1)]
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "result": {"structuredContent": {"rows": rows}}}).encode()


@pytest.mark.parametrize("framing", ["length", "chunked"])
def test_json_answer_over_max_response_bytes_is_refused(make_stack, framing):
    stack = make_stack(upstream="raw", max_response_bytes=MAX_RESPONSE_BYTES)
    token = stack.token()

    # Control: under the bound, the answer is held whole and passes masked.
    small = big_answer(24, MAX_RESPONSE_BYTES // 2)
    stack.raw.reply = lambda req: Reply(chunks=split_at(small, [4096, 8192]), framing=framing)
    resp = stack.post(tools_call("find", {}, request_id=24), token=token)
    assert resp.status_code == 200, resp.text[:300]
    assert_no_leak(resp.content, "an answer under the bound", RAW_SECRETS)
    assert len(resp.json()["result"]["structuredContent"]["rows"]) > 10

    large = big_answer(25, MAX_RESPONSE_BYTES * 2)
    stack.raw.reply = lambda req: Reply(chunks=split_at(large, list(range(8192, len(large), 8192))), framing=framing)
    resp = stack.post(tools_call("find", {}, request_id=25), token=token)

    assert_refused(resp, 25)
    assert len(resp.content) < 4096, "the oversize answer (or part of it) reached the client"
    assert_no_leak(resp.content, "the client's answer", RAW_SECRETS)
    record = final_record(stack, resp)
    assert record.get("withheld") == "too_large", record


def test_json_answer_larger_than_the_request_limit_is_masked_whole(make_stack):
    """ext_authz sets the stream's buffer limit from its request-body setting, and Envoy applies
    it to the answer too: a JSON answer over max_request_bytes (1 MiB) but under
    max_response_bytes must still be held whole and masked, not refused by Envoy with a 500."""
    stack = make_stack(upstream="raw")
    answer = big_answer(27, 3 * 1024 * 1024)
    stack.raw.reply = lambda req: Reply(chunks=split_at(answer, list(range(16384, len(answer), 16384))))

    resp = stack.post(tools_call("find", {}, request_id=27), token=stack.token(), timeout=60)

    assert resp.status_code == 200, resp.text[:300]
    assert len(resp.content) > 2 * 1024 * 1024
    assert_no_leak(resp.content, "a 3 MiB answer", RAW_SECRETS)
    assert len(resp.json()["result"]["structuredContent"]["rows"]) > 1000


def test_sse_event_too_large_to_mask_is_withheld(make_stack):
    """One SSE event is bounded by max_request_bytes: a larger one is withheld, the stream goes on."""
    stack = make_stack(upstream="raw", max_request_bytes=MAX_EVENT_BYTES)
    small = b"data: " + json.dumps(tool_answer(26, "first " + SECRET_TEXT)).encode() + b"\n\n"
    huge = b"data: " + big_answer(26, MAX_EVENT_BYTES * 3) + b"\n\n"
    stream = small + huge + small.replace(b"first", b"last")
    stack.raw.reply = lambda req: sse_reply(split_at(stream, list(range(4096, len(stream), 4096))), 0.001)

    got = stack.post_collect(tools_call("find", {}, request_id=26), token=stack.token(), timeout=60)

    assert got.status == 200, got.error
    assert len(got.body) < MAX_EVENT_BYTES, "the oversize event reached the client"
    assert_no_leak(got.body, "what the client got", RAW_SECRETS)
    texts = [m["result"]["content"][0]["text"] for m in sse_messages(got.body)]
    assert [t.split()[0] for t in texts] == ["first", "last"], texts
    assert all(markers(t) for t in texts), texts
    audited = stack.audit.wait_complete(got.headers["x-gatehouse-request-id"])
    assert_no_leak(json.dumps(audited), "the response records", RAW_SECRETS)
    assert [r["data"].get("withheld") for r in audited["responses"]].count("event_too_large") == 1, audited


# --- gatehouse mask --jsonl ------------------------------------------------------------------------

CORPORA = sorted((paths.REPO / "tests" / "corpus").glob("*.jsonl"))


def run_mask(lines: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(paths.gatehouse_bin()), "mask", "--jsonl"],
        input="".join(line + "\n" for line in lines),
        capture_output=True,
        text=True,
        timeout=120,
    )


def escapes(value: str) -> set[str]:
    once = json.dumps(value)[1:-1]
    return {value, once, json.dumps(once)[1:-1]}


@pytest.mark.parametrize("corpus", CORPORA, ids=lambda p: p.stem)
def test_cli_mask_corpus_recall_and_decoys(corpus):
    cases = [json.loads(line) for line in corpus.read_text().splitlines() if line.strip()]
    proc = run_mask([json.dumps({k: c[k] for k in ("id", "format", "input")}) for c in cases])

    assert proc.returncode == 0, proc.stderr
    outputs = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [o["id"] for o in outputs] == [c["id"] for c in cases], "one output line per input line, in order"
    caught: Counter = Counter()
    missed: dict[str, list[str]] = defaultdict(list)
    kept = lost = 0
    lost_decoys: list[str] = []
    for case, out in zip(cases, outputs, strict=True):
        output = out["output"]
        if case["format"] == "mcp_json":
            json.loads(output)  # masking keeps it JSON
        for secret in case["secrets"]:
            if any(form in output for form in escapes(secret["value"])):
                missed[secret["kind"]].append(case["id"])
            else:
                caught[secret["kind"]] += 1
        for decoy in case["decoys"]:
            if any(form in output for form in escapes(decoy)):
                kept += 1
            else:
                lost += 1
                lost_decoys.append(f"{case['id']}: {decoy}")

    total = caught.total() + sum(map(len, missed.values()))
    recall = caught.total() / total
    decoys_kept = kept / (kept + lost)
    report = "\n".join(
        [f"recall {recall:.4f} ({caught.total()}/{total}), decoys kept {decoys_kept:.4f} ({kept}/{kept + lost})"]
        + [f"  missed {kind}: {len(ids)} ({', '.join(ids[:8])})" for kind, ids in sorted(missed.items())]
        + [f"  decoy masked: {d}" for d in lost_decoys[:20]]
    )
    print(report)
    assert recall >= 0.99, report
    assert decoys_kept >= 0.95, report


def test_cli_mask_reports_bad_lines_and_processes_the_rest():
    good = [
        {"id": "a", "format": "text", "input": f"key {AWS_KEY_ID} here"},
        {"id": 2, "format": "mcp_json", "input": json.dumps(tool_answer(1, f"mail {ALICE.email}"))},
    ]
    bad_format = {"id": "c", "format": "yaml", "input": f"card {ALICE.card_number}"}
    lines = [
        json.dumps(good[0]),
        "not json at all",
        json.dumps(bad_format),
        f'{{"id": "d", "format": "text", "input": "{GITHUB}',  # cut short
        json.dumps(good[1]),
    ]

    proc = run_mask(lines)

    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(out) == 5, proc.stdout
    assert out[0] == {"id": "a", "output": "key [MASKED:aws_access_key_id] here"}
    assert out[1]["id"] is None and out[1]["error"], out[1]
    assert out[2]["id"] == "c" and out[2]["error"], out[2]
    assert out[3]["id"] is None and out[3]["error"], out[3]
    assert out[4]["id"] == 2
    assert json.loads(out[4]["output"])["result"]["content"][0]["text"] == "mail [MASKED:email]", out[4]
    assert set(out[0]) == {"id", "output"} and set(out[1]) == {"id", "error"}
    echoed = leaks(proc.stdout + proc.stderr, [*RAW_SECRETS, ("github_token", GITHUB)])
    assert not echoed, f"an error message echoed its input: {echoed}"
    assert proc.stderr.strip(), "the failure should be explained on stderr"
