"""An HTTP/1.1 upstream that answers byte for byte as a test scripts it.

For what a real MCP server would never send on purpose: a body written in small pieces
with pauses (so the gateway sees it split at chosen offsets), a compressed body nobody
asked for, invalid UTF-8, a stream cut off mid-event. Every request is recorded, headers
included, like the echo upstream. It runs an asyncio loop in a background thread.

    raw = RawUpstream()
    raw.reply = lambda req: Reply(headers=[("content-type", "text/event-stream")], chunks=[b"data: 1\\n\\n"])
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from .mcp_servers import RecordedRequest
from .procs import free_port


@dataclass
class Reply:
    """One scripted answer. `chunks` are written one by one, `pause` seconds apart."""

    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=lambda: [("content-type", "application/json")])
    chunks: list[bytes] = field(default_factory=list)
    pause: float = 0.0
    # How the body's end is marked: chunked transfer coding, content-length, or closing the connection.
    framing: Literal["chunked", "length", "close"] = "chunked"
    # Close the connection before the body is complete (no last chunk / short of content-length).
    abort: bool = False


def json_reply(message: object, **kwargs: object) -> Reply:
    return Reply(chunks=[json.dumps(message).encode()], **kwargs)  # type: ignore[arg-type]


def split_at(data: bytes, offsets: list[int]) -> list[bytes]:
    """`data` cut at the given byte offsets."""
    cuts = [0, *sorted(o for o in set(offsets) if 0 < o < len(data)), len(data)]
    return [data[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]


class RawUpstream:
    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[RecordedRequest] = []
        # What to answer to a request; the default answers every POST with an empty JSON-RPC result.
        self.reply: Callable[[RecordedRequest], Reply] = _default_reply
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        started = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(started,), name="raw-upstream", daemon=True)
        self._thread.start()
        if not started.wait(10) or self._server is None:
            raise RuntimeError(f"raw upstream did not start on 127.0.0.1:{self.port}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def received(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self.requests)

    def close(self) -> None:
        async def stop() -> None:
            if self._server:
                self._server.close()
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            self._loop.stop()

        with contextlib.suppress(RuntimeError):
            asyncio.run_coroutine_threadsafe(stop(), self._loop)
        self._thread.join(5)

    # --- the server ---------------------------------------------------------------------------

    def _run(self, started: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._server = self._loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        finally:
            started.set()
        self._loop.run_forever()
        self._loop.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # every chunk its own segment
        try:
            request = await _read_request(reader)
            if request is None:
                return
            with self._lock:
                self.requests.append(request)
            try:
                reply = self.reply(request)
            except Exception as exc:  # noqa: BLE001 - a broken script answers 500, visibly
                reply = Reply(status=500, headers=[("content-type", "text/plain")], chunks=[repr(exc).encode()])
            await _write_reply(writer, reply)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def _default_reply(request: RecordedRequest) -> Reply:
    try:
        msg = json.loads(request.body)
    except ValueError:
        return Reply(status=400, chunks=[b"{}"])
    if not isinstance(msg, dict) or "id" not in msg:
        return Reply(status=202, headers=[], chunks=[], framing="length")
    return json_reply({"jsonrpc": "2.0", "id": msg["id"], "result": {"content": []}})


async def _read_request(reader: asyncio.StreamReader) -> RecordedRequest | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers.setdefault(name.strip().lower(), []).append(value.strip())
    if "chunked" in ",".join(headers.get("transfer-encoding", [])).lower():
        body = b""
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            body += await reader.readexactly(size + 2)
            body = body[:-2]
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers expected
                break
    else:
        body = await reader.readexactly(int((headers.get("content-length") or ["0"])[0]))
    return RecordedRequest(method, path, headers, body)


async def _write_reply(writer: asyncio.StreamWriter, reply: Reply) -> None:
    head = [f"HTTP/1.1 {reply.status} Scripted", *(f"{k}: {v}" for k, v in reply.headers), "connection: close"]
    if reply.framing == "chunked":
        head.append("transfer-encoding: chunked")
    elif reply.framing == "length":
        # Cut short: announce a byte more than will come.
        head.append(f"content-length: {sum(map(len, reply.chunks)) + reply.abort}")
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    await writer.drain()
    for i, chunk in enumerate(reply.chunks):
        if i and reply.pause:
            await asyncio.sleep(reply.pause)
        if reply.framing == "chunked":
            if chunk:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        else:
            writer.write(chunk)
        await writer.drain()
    if reply.abort:
        await asyncio.sleep(reply.pause)
        # No last chunk, or fewer bytes than announced: the body is cut short.
        sock = writer.get_extra_info("socket")
        if sock is not None and reply.framing != "close":
            # RST rather than FIN, so nothing downstream can take the cut as a clean end.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return
    if reply.framing == "chunked":
        writer.write(b"0\r\n\r\n")
    await writer.drain()
