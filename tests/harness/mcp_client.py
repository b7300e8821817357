"""Driving a real MCP client (the Python `mcp` SDK, streamable HTTP) and recording the HTTP exchanges.

`run_session` does what an agent does: initialize (the SDK then opens the GET stream),
tools/list, tools/call, and on exit DELETE of the session. Every HTTP request/response is
recorded (method, status, content type, headers) so tests can check what went over the wire.
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp.types as types
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client


@dataclass
class Exchange:
    method: str
    status: int
    content_type: str
    request_headers: dict[str, str]
    response_headers: dict[str, str]
    rpc_method: str | None = None  # JSON-RPC method of a POSTed request or notification


@dataclass
class Recorder:
    exchanges: list[Exchange] = field(default_factory=list)

    async def on_response(self, response: httpx2.Response) -> None:
        rpc_method = None
        if response.request.method == "POST":
            try:
                msg = json.loads(response.request.content)
                rpc_method = msg.get("method") if isinstance(msg, dict) else None
            except (ValueError, httpx2.RequestNotRead):
                pass
        self.exchanges.append(
            Exchange(
                method=response.request.method,
                status=response.status_code,
                content_type=response.headers.get("content-type", "").split(";")[0].strip(),
                request_headers={k.lower(): v for k, v in response.request.headers.items()},
                response_headers={k.lower(): v for k, v in response.headers.items()},
                rpc_method=rpc_method,
            )
        )

    def by_method(self, method: str) -> list[Exchange]:
        return [e for e in self.exchanges if e.method == method]

    def posts_of(self, rpc_method: str) -> list[Exchange]:
        return [e for e in self.by_method("POST") if e.rpc_method == rpc_method]


def _http_client(headers: dict[str, str] | None, ca: Path | None, recorder: Recorder) -> httpx2.AsyncClient:
    verify: Any = ssl.create_default_context(cafile=str(ca)) if ca else True
    return httpx2.AsyncClient(
        headers=headers or {},
        verify=verify,
        timeout=httpx2.Timeout(30.0, read=60.0),
        event_hooks={"response": [recorder.on_response]},
    )


SessionBody = Callable[[ClientSession, Recorder], Awaitable[Any]]


async def _run(
    url: str, body: SessionBody, headers: dict[str, str] | None, ca: Path | None, session_kwargs: dict[str, Any]
) -> tuple[Any, Recorder]:
    recorder = Recorder()
    async with (
        _http_client(headers, ca, recorder) as http,
        streamable_http_client(url, http_client=http) as (read, write),
        ClientSession(read, write, **session_kwargs) as session,
    ):
        await session.initialize()
        result = await body(session, recorder)
    # Leaving the transport sent the DELETE; the recorder has seen it.
    return result, recorder


def run_session(
    url: str,
    body: SessionBody,
    *,
    headers: dict[str, str] | None = None,
    ca: Path | None = None,
    timeout: float = 60,
    **session_kwargs: Any,
) -> tuple[Any, Recorder]:
    """Run `body(session, recorder)` in an initialized session; the session is DELETEd on exit.

    `session_kwargs` go to `ClientSession` (logging_callback, sampling_callback, ...).
    """

    async def main() -> tuple[Any, Recorder]:
        with anyio.fail_after(timeout):
            return await _run(url, body, headers, ca, session_kwargs)

    return anyio.run(main)


async def sampling_answer(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    """A stand-in LLM for sampling/createMessage: answers with the prompt it got, reversed."""
    prompt = "".join(m.content.text for m in params.messages if isinstance(m.content, types.TextContent))
    return types.CreateMessageResult(
        role="assistant",
        content=types.TextContent(type="text", text=f"sampled:{prompt[::-1]}"),
        model="stand-in-model",
        stop_reason="endTurn",
    )


async def wait_for(pred: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    with anyio.move_on_after(timeout):
        while not pred():
            await anyio.sleep(0.05)
        return
    raise AssertionError(f"Timed out after {timeout}s waiting for {what}")


def text_of(result: types.CallToolResult) -> str:
    return "".join(c.text for c in result.content if isinstance(c, types.TextContent))


def result_json(result: types.CallToolResult) -> Any:
    return json.loads(text_of(result))
