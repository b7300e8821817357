"""What masking tests look for: the demo server's secrets, every form they could leak in,
and the masked markers that replace them.

A secret has leaked when any of its forms is in the bytes looked at: the value itself, its
JSON-escaped form (a PEM key's newlines become `\\n`), that escaped once more (JSON text
inside a JSON string, as MCP tool results carry it), a card number without its spaces, and
each line of a PEM body (masking only the `BEGIN` line is a leak too).
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from collections.abc import Iterable
from types import ModuleType

from . import paths

# `[MASKED:kind]`, `[MASKED:kind:…1111]`, `[MASKED:kind:tok_<hex>]`
MARKER_RE = re.compile(r"\[MASKED:([a-z][a-z0-9_]*)(?::([^\]]*))?\]")


def load_demo() -> ModuleType:
    """demo/mcp_server.py as a module: its CUSTOMERS, SERVICE_CONFIG and SECRETS."""
    spec = importlib.util.spec_from_file_location("gatehouse_demo_mcp_server", paths.demo_server_py())
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


DEMO = load_demo()
SECRETS: list[tuple[str, str]] = list(DEMO.SECRETS)


def _escaped(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)[1:-1]


def clear_forms(kind: str, value: str) -> set[str]:
    forms = {value, _escaped(value), _escaped(_escaped(value)), json.dumps(value)[1:-1]}
    if kind == "credit_card":
        forms.add(re.sub(r"[ -]", "", value))
    if kind == "private_key":
        forms.update(line for line in value.splitlines() if len(line) >= 16 and not line.startswith("-----"))
    return forms


def leaks(blob: bytes | str, secrets: Iterable[tuple[str, str]] = SECRETS) -> list[str]:
    """`kind: value` of every secret found in clear in `blob` (empty: nothing leaked)."""
    data = blob.encode() if isinstance(blob, str) else blob
    found = []
    for kind, value in secrets:
        hits = [f for f in clear_forms(kind, value) if f.encode() in data]
        if hits:
            found.append(f"{kind}: {min(hits, key=len)!r}")
    return found


def assert_no_leak(blob: bytes | str, where: str, secrets: Iterable[tuple[str, str]] = SECRETS) -> None:
    leaked = leaks(blob, secrets)
    assert not leaked, f"clear values in {where}: {leaked}"


def markers(text: str) -> list[str]:
    """The kinds of the masked markers in `text`, in order."""
    return [m.group(1) for m in MARKER_RE.finditer(text)]


def sse_messages(body: bytes | str) -> list[dict]:
    """The JSON-RPC messages of an SSE body (events with data; CRLF, CR or LF line ends)."""
    text = body.decode() if isinstance(body, bytes) else body
    out = []
    for block in re.split(r"\r\n\r\n|\n\n|\r\r", text.replace("\r\n", "\n").replace("\r", "\n")):
        data = [line[5:].removeprefix(" ") for line in block.split("\n") if line.startswith("data:")]
        if data and "".join(data).strip():
            out.append(json.loads("\n".join(data)))
    return out
