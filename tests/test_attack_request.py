"""Attacks on the request side, through real Envoy: each one performs the attack and checks
what a broken gateway would get wrong.

- A `tools/call` the policy would read as another tool (or none) than the upstream runs: a
  tool name that is not a string, keys differing only in case, duplicate keys.
- DNS rebinding: a foreign `Host`/`Origin`, which Envoy's Host rewrite hides from the upstream.
- Another caller's `Mcp-Session-Id` (POST, GET stream, DELETE).
- A secret in the query string must not reach Envoy's access log.
- A client's `X-Forwarded-For` (and friends) must not reach the upstream as truth.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from harness.stack import LATEST_PROTOCOL, Stack, initialize_request, tools_call

pytestmark = pytest.mark.gateway

FORBIDDEN = -32003
INVALID_REQUEST = -32600
INVALID_PARAMS = -32602

# A tool-scoped deny and a generic allow: a call the policy reads as no tool, or as "echo",
# while the upstream runs run_query, would slip through the generic allow.
POLICY = [
    {"id": "no-run-query", "tools": ["run_query"], "outcome": "deny"},
    {"id": "everything-else", "outcome": "allow"},
]


@pytest.fixture
def echo_stack(make_stack) -> Stack:
    return make_stack(upstream="echo", policy=POLICY)


class Untouched:
    """Nothing reaches the upstream between `__init__` and `check()`; new records of a kind."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.envoy_count = stack.upstream_requests()
        self.echo_count = len(stack.echo.received()) if stack.echo else 0
        self.seqs = {r["seq"] for r in stack.audit.records(limit=1000)}

    def check(self) -> None:
        assert self.stack.upstream_requests() == self.envoy_count, "Envoy forwarded the request upstream"
        if self.stack.echo:
            assert len(self.stack.echo.received()) == self.echo_count, "the upstream received the request"

    def new_records(self, kind: str, count: int = 1) -> list[dict]:
        recs = self.stack.audit.wait_records(
            lambda rs: sum(r["seq"] not in self.seqs for r in rs) >= count, f"{count} new {kind}", kind=kind, limit=1000
        )
        return [r for r in recs if r["seq"] not in self.seqs]


def jsonrpc_error(resp: httpx.Response, status: int, code: int) -> dict:
    assert resp.status_code == status, f"want {status}, got {resp.status_code}: {resp.text}"
    assert resp.headers.get("content-type", "").startswith("application/json"), resp.headers
    body = resp.json()
    assert body.get("jsonrpc") == "2.0" and body["error"]["code"] == code, body
    return body["error"]


def raw_call(params: str, extra: str = "") -> bytes:
    """A tools/call whose params are given as JSON text (to hold duplicate keys)."""
    return f'{{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{params}{extra}}}'.encode()


# --- 1. what the policy decides on is what the upstream runs ---------------------------


def test_the_policy_decides_on_the_tool_name(echo_stack):
    """Control: the tool-scoped rule does deny run_query, and other tools go through."""
    token = echo_stack.token()
    assert echo_stack.post(tools_call("echo", {}, request_id=1), token=token).status_code == 200
    denied = echo_stack.post(tools_call("run_query", {}, request_id=2), token=token)
    jsonrpc_error(denied, 403, FORBIDDEN)


@pytest.mark.parametrize(
    "name",
    [["run_query"], {"0": "run_query"}, 7, None, True],
    ids=["list", "object", "number", "null", "bool"],
)
def test_a_tool_name_that_is_not_a_string_is_invalid_params(echo_stack, name):
    untouched = Untouched(echo_stack)
    call = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": name, "arguments": {}}}

    resp = echo_stack.post(call, token=echo_stack.token())

    jsonrpc_error(resp, 400, INVALID_PARAMS)
    assert resp.json()["id"] == 7, "invalid params answer the request's id"
    untouched.check()
    (rejected,) = untouched.new_records("request_rejected")
    assert rejected["data"]["jsonrpc_code"] == INVALID_PARAMS


@pytest.mark.parametrize(
    "body",
    [
        # serde_json keeps the last duplicate, some parsers the first.
        raw_call('{"name":"run_query","name":"echo","arguments":{}}'),
        raw_call('{"name":"echo","arguments":{"sql":"select 1"},"arguments":{"sql":"drop table t"}}'),
        b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"run_query"},"params":{"name":"echo"}}',
        b'{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"run_query"},"method":"ping"}',
        # Go's encoding/json matches keys case-insensitively (and folds the long s and Kelvin sign).
        raw_call('{"name":"echo","NAME":"run_query"}'),
        raw_call('{"name":"echo","Name":"run_query"}'),
        raw_call('{"NAME":"run_query"}'),
        b'{"jsonrpc":"2.0","id":7,"result":{},"METHOD":"tools/call","PARAMS":{"name":"run_query"}}',
        b'{"jsonrpc":"2.0","id":7,"method":"ping","Method":"tools/call","Params":{"name":"run_query"}}',
        raw_call('{"name":"echo","arguments":{"force":false,"FORCE":true}}'),
        raw_call('{"name":"echo","arguments":{"\\u017f":1,"s":2}}'),
    ],
    ids=[
        "dup-name",
        "dup-arguments",
        "dup-params",
        "dup-method",
        "NAME",
        "Name",
        "only-NAME",
        "METHOD-on-a-response",
        "Method",
        "argument-case",
        "long-s",
    ],
)
def test_a_call_another_parser_could_read_differently_is_refused(echo_stack, body):
    untouched = Untouched(echo_stack)

    resp = echo_stack.post(None, token=echo_stack.token(), content=body)

    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] in (INVALID_REQUEST, INVALID_PARAMS), resp.text
    untouched.check()
    (rejected,) = untouched.new_records("request_rejected")
    assert rejected["data"]["http_status"] == 400


ARGUMENT_POLICY = [
    {
        "id": "no-forced-deploy",
        "tools": ["deploy"],
        "arguments": [{"pointer": "/force", "equals": True}],
        "outcome": "deny",
    },
    {"id": "everything-else", "outcome": "allow"},
]


@pytest.mark.parametrize("key", ["FORCE", "Force", "forcE"])
def test_an_argument_key_in_another_case_is_judged_as_an_upstream_reads_it(make_stack, key):
    """A Go upstream (encoding/json) reads `FORCE` as `force`: the rule must too."""
    stack = make_stack(upstream="echo", policy=ARGUMENT_POLICY)
    token = stack.token()
    assert stack.post(tools_call("deploy", {"force": False}, request_id=1), token=token).status_code == 200
    quiet = Untouched(stack)
    denied = stack.post(tools_call("deploy", {key: True}, request_id=2), token=token)
    jsonrpc_error(denied, 403, FORBIDDEN)
    quiet.check()
    (record,) = [r for r in quiet.new_records("request") if r["data"].get("tool") == "deploy"]
    assert record["data"]["decision"] == "deny" and record["data"]["policy_rule"] == "no-forced-deploy"


# The official Python SDK validates arguments with pydantic in lax mode: each value below
# reaches the tool as force=True, replicas=0 or amount=1000000.
LAX_POLICY = [
    *(
        {"id": rule, "tools": ["deploy"], "arguments": [condition], "outcome": "deny"}
        for rule, condition in [
            ("no-forced-deploy", {"pointer": "/force", "equals": True}),
            ("no-scale-to-zero", {"pointer": "/replicas", "equals": 0}),
            ("no-big-transfer", {"pointer": "/amount", "gt": 1000}),
        ]
    ),
    {"id": "everything-else", "outcome": "allow"},
]


@pytest.fixture(scope="module")
def lax_stack(make_module_stack) -> Stack:
    return make_module_stack(upstream="echo", policy=LAX_POLICY)


@pytest.mark.parametrize(
    ("arguments", "rule"),
    [
        *[({"force": v}, "no-forced-deploy") for v in ["true", 1, "yes", "True", 1.0]],
        *[({"replicas": v}, "no-scale-to-zero") for v in [0.0, "0", -0.0, False]],
        ({"amount": "1_000_000"}, "no-big-transfer"),
    ],
    ids=lambda v: json.dumps(v) if isinstance(v, dict) else v,
)
def test_a_value_the_upstream_coerces_is_judged_as_the_value_it_becomes(lax_stack, arguments, rule):
    token = lax_stack.token()
    quiet = Untouched(lax_stack)

    denied = lax_stack.post(tools_call("deploy", arguments, request_id=2), token=token)

    jsonrpc_error(denied, 403, FORBIDDEN)
    quiet.check()
    (record,) = [r for r in quiet.new_records("request") if r["data"].get("tool") == "deploy"]
    assert record["data"]["decision"] == "deny" and record["data"]["policy_rule"] == rule


def test_values_the_upstream_reads_as_harmless_still_pass(lax_stack):
    """Control: the coercion is the upstream's, not a blanket deny."""
    token = lax_stack.token()
    for arguments in [{"force": "no"}, {"force": 0}, {"replicas": "1"}, {"replicas": True}, {"amount": "1_000"}]:
        assert lax_stack.post(tools_call("deploy", arguments, request_id=1), token=token).status_code == 200, arguments


@pytest.mark.parametrize(
    "number",
    # Beyond u64 (two such integers read as one f64), beyond f64, and a decimal with more
    # digits than its f64 keeps (it reads as 0.1).
    ["36893488147419103232", "-36893488147419103233", "1e400", "0.10000000000000001"],
)
def test_a_number_the_gateway_cannot_hold_exactly_is_refused(echo_stack, number):
    """Read as a float, 36893488147419103232 and ...233 are one value: an approval or a
    rule for the one would release the other, and the records could not tell them apart."""
    untouched = Untouched(echo_stack)
    body = raw_call(f'{{"name":"echo","arguments":{{"sql":"SELECT 1","account":{number}}}}}')

    resp = echo_stack.post(None, token=echo_stack.token(), content=body)

    error = jsonrpc_error(resp, 400, INVALID_PARAMS)
    assert number in error["message"], error
    untouched.check()
    (rejected,) = untouched.new_records("request_rejected")
    assert rejected["data"]["jsonrpc_code"] == INVALID_PARAMS


def test_a_number_beyond_f64_precision_but_within_u64_passes_exactly(echo_stack):
    """Control: 2^53 + 1 is not a float's, but it is a u64 and reaches the upstream as sent."""
    before = len(echo_stack.echo.received())
    body = raw_call('{"name":"echo","arguments":{"account":9007199254740993,"x":"36893488147419103232"}}')

    assert echo_stack.post(None, token=echo_stack.token(), content=body).status_code == 200
    (forwarded,) = echo_stack.echo.received()[before:]
    assert b"9007199254740993" in forwarded.body


# --- 2. DNS rebinding: Host and Origin -------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {"host": "evil.example.com", "origin": "http://evil.example.com"},
        {"host": "evil.example.com"},
        {"origin": "http://evil.example.com"},
        {"origin": "null"},
    ],
    ids=["host-and-origin", "host", "origin", "null-origin"],
)
@pytest.mark.parametrize("method", ["POST", "GET", "DELETE"])
def test_a_foreign_host_or_origin_is_refused_before_the_host_rewrite(echo_stack, headers, method):
    untouched = Untouched(echo_stack)
    h = {
        "authorization": f"Bearer {echo_stack.token()}",
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "mcp-protocol-version": LATEST_PROTOCOL,
        **headers,
    }
    body = json.dumps(initialize_request()).encode() if method == "POST" else None

    resp = httpx.request(method, echo_stack.url, headers=h, content=body, timeout=10)

    jsonrpc_error(resp, 403, FORBIDDEN)
    untouched.check()
    (rejected,) = untouched.new_records("request_rejected")
    assert rejected["data"]["http_status"] == 403
    assert "evil" in rejected["data"]["reason"] or "null" in rejected["data"]["reason"]


def test_the_gateways_own_host_and_origin_pass(echo_stack):
    """Control: what a browser page of the gateway itself, or a non-browser client, sends."""
    token = echo_stack.token()
    port = echo_stack.http_port
    for headers in [
        {},
        {"origin": f"http://127.0.0.1:{port}"},
        {"host": f"localhost:{port}", "origin": f"http://localhost:{port}"},
    ]:
        resp = echo_stack.post(tools_call("echo", {}, request_id=3), token=token, headers=headers)
        assert resp.status_code == 200, (headers, resp.text)
    # The upstream is reached with the Host it serves, not the client's.
    assert echo_stack.echo.received()[-1].headers["host"] == [f"127.0.0.1:{echo_stack.upstream_port}"]


# --- 3. sessions are bound to the caller who opened them ------------------------------


def test_another_callers_session_id_gets_404_and_nothing_is_forwarded(make_stack):
    stack = make_stack(upstream="everything")
    alice, bob = stack.token("alice", ["eng"]), stack.token("bob", ["eng"])
    session = stack.initialize(alice)
    tag, upstream_sid = session.split(".", 1)
    assert len(tag) == 32 and upstream_sid, session

    listing = {"jsonrpc": "2.0", "id": 9, "method": "tools/list"}
    stream_headers = {"accept": "text/event-stream", "mcp-protocol-version": LATEST_PROTOCOL}
    untouched = Untouched(stack)
    attempts = [
        ("POST", session),
        ("POST", upstream_sid),  # the upstream's own id, without a tag
        ("POST", f"{'0' * 32}.{upstream_sid}"),  # a forged tag
        ("GET", session),
        ("DELETE", session),
    ]
    for method, sid in attempts:
        headers = {"authorization": f"Bearer {bob}", "mcp-session-id": sid}
        if method == "POST":
            resp = stack.post(listing, token=bob, headers={"mcp-session-id": sid})
        else:
            resp = httpx.request(method, stack.url, headers={**headers, **stream_headers}, timeout=10)
        jsonrpc_error(resp, 404, INVALID_REQUEST)
    untouched.check()

    denied = untouched.new_records("request", count=len(attempts))
    assert len(denied) == len(attempts), denied
    for record in denied:
        data = record["data"]
        assert (data["subject"], data["decision"], data["status"]) == ("bob", "deny", 404), data
        assert data["session_id"] == upstream_sid, "records keep the upstream's session id"
    assert sorted(r["data"]["http_method"] for r in denied) == sorted(m for m, _ in attempts)

    # Alice's session survived bob's DELETE, and is hers to end.
    resp = stack.post(listing, token=alice, headers={"mcp-session-id": session})
    assert resp.status_code == 200, resp.text
    assert "tools" in resp.text
    resp = httpx.delete(
        stack.url, headers={"authorization": f"Bearer {alice}", "mcp-session-id": session, **stream_headers}
    )
    assert resp.status_code in (200, 204), resp.text
    record = stack.audit.wait_complete(resp.headers["x-gatehouse-request-id"])["request"]["data"]
    assert (record["decision"], record["session_id"]) == ("allow", upstream_sid)


# --- 4. the access log holds no query string ---------------------------------------------


def test_a_secret_in_the_query_string_stays_out_of_envoys_log(echo_stack):
    secret = "SECRETq7Zx93kLmN"
    resp = echo_stack.post(
        tools_call("echo", {}, request_id=4), token=echo_stack.token(), url=f"{echo_stack.url}?api_key={secret}"
    )
    assert resp.status_code == 200, resp.text
    request_id = resp.headers["x-gatehouse-request-id"]

    deadline = time.monotonic() + 10
    while True:
        envoy_log = b"".join(v for k, v in echo_stack.gateway_logs().items() if k.startswith("envoy"))
        if request_id.encode() in envoy_log or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    line = next((ln for ln in envoy_log.splitlines() if request_id.encode() in ln), None)
    assert line is not None, "the access log has no line for the request: is it empty?"
    assert json.loads(line)["path"] == "/mcp", line
    for name, text in echo_stack.gateway_logs().items():
        assert secret.encode() not in text, f"the query string's secret is in {name}"


# --- 5. the client's address comes from the connection -------------------------------


def test_a_client_cannot_choose_the_address_the_upstream_sees(echo_stack):
    spoofed = "203.0.113.77"
    resp = echo_stack.post(
        tools_call("echo", {}, request_id=5),
        token=echo_stack.token(),
        headers={
            "x-forwarded-for": spoofed,
            "x-real-ip": spoofed,
            "forwarded": f"for={spoofed}",
            "x-client-ip": spoofed,
            "x-forwarded-host": "evil.example.com",
            "x-envoy-external-address": spoofed,
            "x-envoy-internal": "true",
            "x-envoy-original-path": "/admin",
        },
    )
    assert resp.status_code == 200, resp.text

    seen = echo_stack.echo.received()[-1].headers
    assert seen.get("x-forwarded-for") == ["127.0.0.1"], seen
    leaked = {k: v for k, v in seen.items() if any(spoofed in x or "evil" in x or x == "/admin" for x in v)}
    assert not leaked, f"client-claimed addresses reached the upstream: {leaked}"
    assert "x-envoy-internal" not in seen, seen
