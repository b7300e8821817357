"""A small MCP server (Python SDK) that answers every POST with `application/json`.

server-everything answers every request with SSE; this one covers the JSON side. Its
DNS-rebinding protection accepts exactly `Host: 127.0.0.1:PORT` (its own address), so a
proxy in front must rewrite Host to that.

    python tests/servers/json_mcp_server.py --port PORT
"""

from __future__ import annotations

import argparse

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings

server = MCPServer("gatehouse-json-test-server", version="1.0.0")


@server.tool()
def echo(message: str) -> str:
    """Echo the message back."""
    return f"Echo: {message}"


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    own_host = f"127.0.0.1:{args.port}"
    app = server.streamable_http_app(
        json_response=True,
        transport_security=TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=[own_host],
            allowed_origins=[f"http://{own_host}"],
        ),
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="info")


if __name__ == "__main__":
    main()
