"""tools/list answers filtered by policy, end to end: real Envoy + gatehouse.wasm + the service,
in front of the demo MCP server (JSON and SSE answers), server-everything (a real SDK client)
and a raw upstream that a test scripts byte by byte.

The service tells the filter which tools the caller could call (`x-gatehouse-tools` on the OK
Check); the filter drops every other tool from the answer before it is masked and recorded.

What a broken gateway would get wrong, and these tests catch:
- a user seeing a tool no rule lets them call (another group's, or one a deny rule covers),
  in a JSON answer, an SSE event, a batch, or an SSE event split mid-name;
- a denied call telling a hidden tool from one that does not exist (a refusal names the
  rule that decided, which matches names, not tools);
- the response record listing tools the client did not see;
- `x-gatehouse-tools` reaching the client.
"""

from __future__ import annotations

import fnmatch
import json
from typing import Any

import pytest

from harness.masking import sse_messages
from harness.mcp_client import Recorder, run_session
from harness.raw_upstream import Reply, json_reply
from harness.stack import Stack, tools_call

pytestmark = pytest.mark.gateway

TOOLS_HEADER = "x-gatehouse-tools"
SESSION_RULE = {
    "id": "session",
    "methods": ["initialize", "notifications/*", "tools/list", "ping"],
    "outcome": "allow",
}
DEMO_POLICY = [
    SESSION_RULE,
    {"id": "admins-see-all", "groups": ["admins"], "outcome": "allow"},
    {"id": "no-service-config", "tools": ["get_service_config"], "outcome": "deny"},
    {"id": "support-reads", "groups": ["support"], "tools": ["find_*", "get_*"], "outcome": "allow"},
    {"id": "eng-runs", "groups": ["eng"], "tools": ["run_*", "stream_*"], "outcome": "allow"},
]
DEMO_GROUPS = ("eng", "approvers", "support", "admins")
DEMO_TOOLS = {"find_customer", "get_service_config", "run_query", "stream_report"}
# Who sees what under DEMO_POLICY: get_service_config is denied to everyone but admins.
DEMO_VISIBLE = {
    ("admins",): DEMO_TOOLS,
    ("support",): {"find_customer"},
    ("eng",): {"run_query", "stream_report"},
    ("eng", "support"): {"find_customer", "run_query", "stream_report"},
    ("approvers",): set(),
}
LIST_ID = 2


def tools_list(request_id: int | str = LIST_ID) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/list"}


def answers(resp) -> list[dict[str, Any]]:
    """The JSON-RPC messages of an answer, JSON (one message or a batch) or SSE."""
    if resp.headers["content-type"].startswith("text/event-stream"):
        return sse_messages(resp.content)
    body = resp.json()
    return body if isinstance(body, list) else [body]


def tool_names(message: dict[str, Any]) -> set[str]:
    return {t["name"] for t in message["result"]["tools"]}


def listed(messages: list[dict[str, Any]], request_id: int | str = LIST_ID) -> set[str]:
    """The tool names in the answer to the tools/list with this id (exactly one)."""
    (answer,) = [m for m in messages if m.get("id") == request_id and "result" in m]
    return tool_names(answer)


def recorded_messages(stack: Stack, request_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The JSON-RPC messages in the response records of a request, and all its records."""
    audited = stack.audit.wait_complete(request_id)
    messages: list[dict[str, Any]] = []
    for record in audited["responses"]:
        message = record["data"].get("message")
        if isinstance(message, list):
            messages.extend(message)
        elif isinstance(message, dict):
            messages.append(message)
    return messages, audited


def list_as(stack: Stack, groups: tuple[str, ...], **post_kwargs: Any):
    token = stack.token(f"user-{'-'.join(groups)}", groups)
    session = stack.initialize(token)
    return stack.post(tools_list(), token=token, headers={"mcp-session-id": session}, **post_kwargs)


# --- the demo server: JSON and SSE answers ------------------------------------------------------


@pytest.mark.parametrize("mode", ["json", "sse"])
def test_each_caller_sees_only_the_tools_it_may_call(make_stack, mode):
    stack = make_stack(upstream="demo", demo_json=(mode == "json"), allow_groups=DEMO_GROUPS, policy=DEMO_POLICY)
    want_type = "application/json" if mode == "json" else "text/event-stream"

    for groups, visible in DEMO_VISIBLE.items():
        resp = list_as(stack, groups)

        assert resp.status_code == 200, f"{groups}: {resp.status_code} {resp.text}"
        assert resp.headers["content-type"].startswith(want_type)
        assert TOOLS_HEADER not in resp.headers, "the service's decision reached the client"
        if groups == ("admins",):
            # The upstream does offer every tool: what the others miss was filtered out.
            assert listed(answers(resp)) >= DEMO_TOOLS
            continue
        assert listed(answers(resp)) == visible, groups
        hidden = DEMO_TOOLS - visible
        for name in hidden:
            assert name.encode() not in resp.content, f"{groups}: {name} in the answer"

        # The response record shows what the client saw.
        messages, audited = recorded_messages(stack, resp.headers["x-gatehouse-request-id"])
        assert listed(messages) == visible, f"{groups}: the record lists other tools than the client got"
        trail = json.dumps(audited)
        for name in hidden:
            assert name not in trail, f"{groups}: {name} in the records"


def test_a_hidden_tool_and_a_missing_one_get_the_same_refusal(make_stack):
    stack = make_stack(upstream="demo", demo_json=True, allow_groups=DEMO_GROUPS, policy=DEMO_POLICY)
    token = stack.token("sam", ["support"])
    session = stack.initialize(token)
    headers = {"mcp-session-id": session}

    allowed = stack.post(tools_call("find_customer", {"name": "zz"}, request_id=9), token=token, headers=headers)
    assert allowed.status_code == 200, allowed.text
    before = stack.upstream_requests()

    refusals = {}
    # Another group's tool, a tool a deny rule covers, and tools that do not exist.
    for name in ["run_query", "get_service_config", "no_such_tool", "drop_everything"]:
        resp = stack.post(tools_call(name, {"name": "zz"}, request_id=9), token=token, headers=headers)
        body = resp.json()
        body["error"].get("data", {}).pop("request_id", None)  # differs per request, by design
        refusals[name] = (resp.status_code, resp.headers["content-type"], body)

    # A tool the caller may not see and tools that do not exist: one answer, the default deny.
    unseen = [refusals[name] for name in ("run_query", "no_such_tool", "drop_everything")]
    assert len({json.dumps(r, sort_keys=True) for r in unseen}) == 1, refusals
    assert unseen[0][2]["error"]["data"]["rule"] is None
    # A deny rule names itself; it matches the name whether or not such a tool exists.
    status, _, denied = refusals["get_service_config"]
    assert denied["error"]["data"].pop("rule") == "no-service-config"
    denied["error"]["data"].pop("reason")
    default = json.loads(json.dumps(unseen[0][2]))
    default["error"]["data"].pop("rule")
    default["error"]["data"].pop("reason")
    assert (status, denied) == (unseen[0][0], default), refusals
    status, _, body = refusals["run_query"]
    assert status == 403
    assert body["id"] == 9
    assert "run_query" not in json.dumps(body)
    assert stack.upstream_requests() == before, "a refused call reached the upstream"


# --- a real SDK client in front of server-everything ----------------------------------------------


def test_an_sdk_client_lists_only_callable_tools(make_stack):
    policy = [
        SESSION_RULE,
        {"id": "admins-see-all", "groups": ["admins"], "outcome": "allow"},
        {"id": "no-env", "tools": ["get-env"], "outcome": "deny"},
        {"id": "eng-gets", "groups": ["eng"], "tools": ["echo", "get-*"], "outcome": "allow"},
    ]
    stack = make_stack(upstream="everything", allow_groups=("eng", "admins"), policy=policy)

    async def body(session, rec: Recorder):
        return {t.name for t in (await session.list_tools()).tools}

    # What the server offers, asked directly (not through the gateway under test).
    everything, _ = run_session(f"http://127.0.0.1:{stack.upstream_port}/mcp", body)
    assert {"echo", "get-env", "get-sum", "trigger-long-running-operation"} <= everything
    admin_view, _ = run_session(stack.url, body, headers=stack.auth("root", ["admins"]))
    assert admin_view == everything

    visible, rec = run_session(stack.url, body, headers=stack.auth("erin", ["eng"]))

    want = {n for n in everything if n == "echo" or (fnmatch.fnmatchcase(n, "get-*") and n != "get-env")}
    assert visible == want
    (listing,) = rec.posts_of("tools/list")
    assert TOOLS_HEADER not in listing.response_headers


# --- a raw upstream: batches and SSE split mid-name ------------------------------------------------

RAW_POLICY = [SESSION_RULE, {"id": "eng-visible", "groups": ["eng"], "tools": ["visible_*"], "outcome": "allow"}]
RAW_TOOLS = ["visible_one", "secret_tool", "visible_two", "secret_other"]


def raw_tools(request_id: int | str) -> dict[str, Any]:
    tools = [{"name": n, "description": f"{n} does things", "inputSchema": {"type": "object"}} for n in RAW_TOOLS]
    return {"jsonrpc": "2.0", "id": request_id, "result": {"tools": tools}}


def test_every_tools_list_in_a_batch_is_filtered(make_stack):
    stack = make_stack(upstream="raw", policy=RAW_POLICY)
    batch = [{"jsonrpc": "2.0", "id": 1, "method": "ping"}, tools_list(LIST_ID)]
    stack.raw.reply = lambda req: json_reply([{"jsonrpc": "2.0", "id": 1, "result": {}}, raw_tools(LIST_ID)])

    resp = stack.post(batch, token=stack.token("erin", ["eng"]), headers={"mcp-protocol-version": "2025-03-26"})

    assert resp.status_code == 200, resp.text
    assert listed(answers(resp)) == {"visible_one", "visible_two"}
    assert b"secret_" not in resp.content
    assert sum(stack.admin.stats("gatehouse_tools_hidden").values()) == 2, "hidden tools not counted"
    messages, _ = recorded_messages(stack, resp.headers["x-gatehouse-request-id"])
    assert listed(messages) == {"visible_one", "visible_two"}


def test_an_sse_tools_list_split_at_every_byte_hides_the_same_tools(make_stack):
    stack = make_stack(upstream="raw", policy=RAW_POLICY)
    token = stack.token("erin", ["eng"])
    progress = {"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "listing"}}
    stream = b"".join(
        [
            b": hello\r\n\r\n",
            b"event: message\r\nid: 1\r\ndata: " + json.dumps(progress).encode() + b"\r\n\r\n",
            b"id: 2\r\ndata: " + json.dumps(raw_tools(LIST_ID)).encode() + b"\r\n\r\n",
        ]
    )

    def sse(chunks: list[bytes], pause: float) -> Reply:
        return Reply(headers=[("content-type", "text/event-stream")], chunks=chunks, pause=pause)

    stack.raw.reply = lambda req: sse([stream], 0)
    whole = stack.post(tools_list(), token=token)
    stack.raw.reply = lambda req: sse([stream[i : i + 1] for i in range(len(stream))], 0.001)
    pieces = stack.post(tools_list(), token=token, timeout=60)

    assert whole.status_code == pieces.status_code == 200
    assert pieces.content == whole.content, "the output depends on where the upstream's bytes were split"
    assert b"secret_" not in whole.content
    notification, answer = sse_messages(whole.content)
    assert notification == progress
    assert tool_names(answer) == {"visible_one", "visible_two"}
    for resp in (whole, pieces):
        messages, _ = recorded_messages(stack, resp.headers["x-gatehouse-request-id"])
        assert listed(messages) == {"visible_one", "visible_two"}
