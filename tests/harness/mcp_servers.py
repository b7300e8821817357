"""MCP peers for the tests: the real server-everything, the demo SQLite server, and a small echo upstream.

The echo upstream is an in-process HTTP server that answers JSON-RPC requests like an
MCP server would (JSON answers only) and records every request it receives, headers
included, so tests can check exactly what the gateway forwarded.
"""

from __future__ import annotations

import json
import ssl
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from . import paths
from .procs import Proc, ProcessSet, free_port


def start_server_everything(
    procs: ProcessSet, port: int | None = None, name: str = "server-everything"
) -> tuple[Proc, int]:
    """`mcp-server-everything streamableHttp` on 127.0.0.1:port (endpoint /mcp).

    It calls `app.listen(PORT)` without a host; the loopback preload pins it to
    127.0.0.1. It has no Host-header (DNS-rebinding) check of its own.
    """
    port = port or free_port()
    proc = procs.start(
        name,
        [
            paths.node22_bin(),
            "--import",
            paths.loopback_preload(),
            paths.server_everything_js(),
            "streamableHttp",
        ],
        env={"PORT": str(port), "HOST": "127.0.0.1"},
    )
    proc.wait_tcp(port)
    return proc, port


def start_json_server(procs: ProcessSet, port: int | None = None, name: str = "json-mcp-server") -> tuple[Proc, int]:
    """tests/servers/json_mcp_server.py: Python SDK server, JSON answers, Host must be 127.0.0.1:port."""
    port = port or free_port()
    script = paths.REPO / "tests" / "servers" / "json_mcp_server.py"
    proc = procs.start(name, [sys.executable, script, "--port", str(port)])
    proc.wait_tcp(port)
    return proc, port


def start_demo_server(
    procs: ProcessSet, db: Path, *, json_response: bool = False, port: int | None = None, name: str = "demo-mcp-server"
) -> tuple[Proc, int]:
    """demo/mcp_server.py: the SQLite demo server full of fake secrets (SSE answers, or JSON).

    `db` is created and seeded on first start. Host must be 127.0.0.1:port.
    """
    port = port or free_port()
    argv = [sys.executable, paths.demo_server_py(), "--port", str(port), "--db", str(db)]
    if json_response:
        argv.append("--json")
    proc = procs.start(name, argv)
    proc.wait_tcp(port)
    return proc, port


def start_conformance_server(
    procs: ProcessSet, port: int | None = None, name: str = "conformance-server"
) -> tuple[Proc, int]:
    """tests/servers/conformance-server.mjs: passes every server scenario of the conformance suite."""
    port = port or free_port()
    script = paths.REPO / "tests" / "servers" / "conformance-server.mjs"
    proc = procs.start(name, [paths.node22_bin(), script], env={"PORT": str(port)})
    proc.wait_tcp(port)
    return proc, port


@dataclass
class RecordedRequest:
    method: str
    path: str
    headers: dict[str, list[str]]
    body: bytes

    def header_names(self) -> set[str]:
        return {name.lower() for name in self.headers}

    def json(self) -> object:
        return json.loads(self.body)


def echo_answer(method: str, body: bytes, server_name: str) -> tuple[int, Any, dict]:
    """What an echo upstream answers (status, JSON payload or None, extra headers): initialize,
    tools/list, every other call echoed; 405 to GET (no stream), 200 to DELETE."""
    if method == "GET":
        return 405, None, {}
    if method == "DELETE":
        return 200, None, {}
    try:
        msg = json.loads(body)
    except ValueError:
        return 400, {"jsonrpc": "2.0", "id": None, "error": {"code": -32700, "message": "Parse error"}}, {}
    if not isinstance(msg, dict) or "id" not in msg:
        return 202, None, {}
    extra = {}
    if msg.get("method") == "initialize":
        extra["mcp-session-id"] = uuid.uuid4().hex
        result: Any = {
            "protocolVersion": (msg.get("params") or {}).get("protocolVersion", "2025-06-18"),
            "capabilities": {"tools": {}},
            "serverInfo": {"name": server_name, "version": "0"},
        }
    elif msg.get("method") == "tools/list":
        result = {"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]}
    else:
        result = {"content": [{"type": "text", "text": json.dumps(msg.get("params"))}]}
    return 200, {"jsonrpc": "2.0", "id": msg["id"], "result": result}, extra


Handle = Callable[[str, str, dict[str, list[str]], bytes], tuple[int, Any, dict]]


def json_handler(handle: Handle) -> type[BaseHTTPRequestHandler]:
    """An HTTP/1.1 handler class for POST, GET and DELETE: `handle(method, path, headers (lower-case
    names, every value), body)` returns (status, JSON payload or None, extra headers)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass

        def _read_body(self) -> bytes:
            if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
                body = b""
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return body
                    body += self.rfile.read(size)
                    self.rfile.readline()
            length = int(self.headers.get("content-length") or 0)
            return self.rfile.read(length) if length else b""

        def _serve(self) -> None:
            body = self._read_body()
            headers: dict[str, list[str]] = {}
            for name, value in self.headers.items():
                headers.setdefault(name.lower(), []).append(value)
            status, payload, extra = handle(self.command, self.path, headers, body)
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            if payload is not None:
                self.send_header("content-type", "application/json")
            for k, v in extra.items():
                self.send_header(k, v)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_POST = do_GET = do_DELETE = _serve  # noqa: N815

    return Handler


def serve_in_thread(
    port: int, handler: type[BaseHTTPRequestHandler], name: str, tls_dir: Path | None = None
) -> ThreadingHTTPServer:
    """A threading HTTP server on 127.0.0.1:`port`, serving in a daemon thread (HTTPS with
    `tls_dir`'s server.crt/key); `shutdown()` and `server_close()` stop it."""
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    if tls_dir:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls_dir / "server.crt", tls_dir / "server.key")
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server


@dataclass
class EchoUpstream:
    """A minimal MCP-over-HTTP upstream that records what reaches it."""

    port: int = 0
    requests: list[RecordedRequest] = field(default_factory=list)
    # Called with each request before it is answered (e.g. to look at the audit store at
    # that moment); what it returns is kept in `hook_results`, exceptions too.
    on_request: Callable[[RecordedRequest], object] | None = None
    hook_results: list[object] = field(default_factory=list)
    # A folder with server.crt and server.key (scripts/gen-tls.sh): serve HTTPS with them.
    tls_dir: Path | None = None

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        self._lock = threading.Lock()
        self._server = serve_in_thread(self.port, self._handler_class(), "echo-upstream", self.tls_dir)

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_dir else 'http'}://127.0.0.1:{self.port}/mcp"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def received(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self.requests)

    def _record(self, req: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(req)
        if self.on_request:
            try:
                result = self.on_request(req)
            except Exception as exc:  # noqa: BLE001 - reported to the test through hook_results
                result = exc
            with self._lock:
                self.hook_results.append(result)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        def handle(method: str, path: str, headers: dict[str, list[str]], body: bytes) -> tuple[int, Any, dict]:
            self._record(RecordedRequest(method, path, headers, body))
            return echo_answer(method, body, "echo-upstream")

        return json_handler(handle)
