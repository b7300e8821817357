"""Baseline without Gatehouse: real MCP peers directly and through a plain Envoy.

These pin down what the gateway must preserve (SSE and JSON answers, progress
notifications, the GET stream, session DELETE) and that the harness itself works: Envoy
from the venv, server-everything on loopback, the SDK client, Envoy admin stats.
"""

from __future__ import annotations

import json

import httpx
import mcp.types as types
import pytest

from harness.mcp_client import Recorder, run_session, sampling_answer, text_of, wait_for
from harness.stack import initialize_request

ACCEPT = {"accept": "application/json, text/event-stream", "content-type": "application/json"}


@pytest.fixture(params=["direct", "plain-envoy"])
def via(request, plain_envoy):
    """Returns url_for(upstream): the upstream's own URL, or one through a plain Envoy."""

    def url_for(upstream) -> str:
        if request.param == "direct":
            return upstream.url
        # MCP servers check Host against DNS rebinding: forward the upstream's own.
        envoy = plain_envoy(upstream.port, host_rewrite=f"127.0.0.1:{upstream.port}")
        return envoy.url()

    return url_for


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a LISTEN socket on `port`, from /proc/net/tcp{,6}."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                addr, port_hex = local.split(":")
                if state == "0A" and int(port_hex, 16) == port:
                    found.add(addr)
    return found


def test_server_everything_listens_on_loopback_only(everything):
    # 0100007F is 127.0.0.1 in /proc's little-endian hex; 00000000 would be 0.0.0.0.
    assert listening_addresses(everything.port) == {"0100007F"}


def test_envoy_forwards_and_counts_upstream_requests(everything, plain_envoy):
    envoy = plain_envoy(everything.port, host_rewrite=f"127.0.0.1:{everything.port}")
    before = envoy.upstream_requests()

    resp = httpx.post(envoy.url(), json=initialize_request(), headers=ACCEPT, timeout=10)

    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("text/event-stream")
    assert resp.headers.get("mcp-session-id")
    assert '"serverInfo"' in resp.text
    assert envoy.upstream_requests() == before + 1


def test_sdk_session_with_sse_answers(everything, via):
    """server-everything answers every request with SSE; progress arrives as events on it."""
    url = via(everything)
    progress: list[float] = []
    logs: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async def body(session, rec: Recorder):
        tools = {t.name for t in (await session.list_tools()).tools}
        echoed = await session.call_tool("echo", {"message": "hello through the pipe"})

        async def on_progress(p: float, total: float | None, message: str | None) -> None:
            progress.append(p)

        long_op = await session.call_tool(
            "trigger-long-running-operation", {"duration": 0.6, "steps": 3}, progress_callback=on_progress
        )
        # The GET stream carries notifications that belong to no request: simulated logging
        # sends its first message at once, to that stream.
        await wait_for(lambda: any(e.method == "GET" for e in rec.exchanges), "the GET stream to open")
        await session.set_logging_level("debug")
        await session.call_tool("toggle-simulated-logging", {})
        await wait_for(lambda: bool(logs), "a log notification on the GET stream", timeout=15)
        await session.call_tool("toggle-simulated-logging", {})
        return tools, echoed, long_op

    (tools, echoed, long_op), rec = run_session(url, body, logging_callback=on_log)

    assert {"echo", "trigger-long-running-operation", "toggle-simulated-logging"} <= tools
    assert text_of(echoed) == "Echo: hello through the pipe"
    assert "completed" in text_of(long_op)
    assert progress == [1, 2, 3]
    assert logs and logs[0].level in {"debug", "info", "notice", "warning", "error", "critical", "alert", "emergency"}

    calls = rec.posts_of("tools/call")
    assert calls and all(e.status == 200 and e.content_type == "text/event-stream" for e in calls)
    gets = rec.by_method("GET")
    assert gets and gets[0].status == 200 and gets[0].content_type == "text/event-stream"
    deletes = rec.by_method("DELETE")
    assert [d.status for d in deletes] == [200]
    assert (
        deletes[0].request_headers["mcp-session-id"] == rec.posts_of("initialize")[0].response_headers["mcp-session-id"]
    )


def test_sampling_round_trip(everything, via):
    """Server → client request on the SSE answer, client's JSON-RPC *response* POSTed back."""
    url = via(everything)

    async def body(session, rec: Recorder):
        return await session.call_tool("trigger-sampling-request", {"prompt": "abc", "maxTokens": 5})

    result, rec = run_session(url, body, sampling_callback=sampling_answer)

    assert "sampled:" in text_of(result) and "cba" in text_of(result)
    answers = [e for e in rec.by_method("POST") if e.rpc_method is None]
    assert [e.status for e in answers] == [202], "the client's sampling answer was not accepted"


def test_sdk_session_with_json_answers(json_server, via):
    url = via(json_server)

    async def body(session, rec: Recorder):
        tools = {t.name for t in (await session.list_tools()).tools}
        echoed = await session.call_tool("echo", {"message": "json please"})
        added = await session.call_tool("add", {"a": 2, "b": 3})
        return tools, echoed, added

    (tools, echoed, added), rec = run_session(url, body)

    assert tools == {"echo", "add"}
    assert text_of(echoed) == "Echo: json please"
    assert text_of(added) == "5"
    calls = rec.posts_of("tools/call")
    assert len(calls) == 2 and all(e.status == 200 and e.content_type == "application/json" for e in calls)
    assert [d.status for d in rec.by_method("DELETE")] == [200]


def test_host_check_rejects_proxied_host_without_rewrite(json_server, plain_envoy):
    """Why every hop in front of an MCP server must forward a Host it accepts."""
    no_rewrite = plain_envoy(json_server.port, name="envoy-no-rewrite")
    rewrite = plain_envoy(json_server.port, host_rewrite=f"127.0.0.1:{json_server.port}", name="envoy-rewrite")

    refused = httpx.post(no_rewrite.url(), json=initialize_request(), headers=ACCEPT, timeout=10)
    accepted = httpx.post(rewrite.url(), json=initialize_request(), headers=ACCEPT, timeout=10)

    assert refused.status_code == 421, refused.text
    assert accepted.status_code == 200, accepted.text
    assert json.loads(accepted.text)["result"]["serverInfo"]["name"] == "gatehouse-json-test-server"
