"""A demo MCP server on SQLite whose answers are full of (fake) secrets and personal data.

It is what Gatehouse's masking is shown and tested against: a customer table with e-mail
addresses, phone numbers, card numbers, IBANs and US SSNs, and a `service_config` table
holding credentials (AWS keys, a GitHub token, a Postgres URL with a password, a PEM
private key, a JWT). Every value is fake and the same on every start: card numbers are
the well-known Luhn-valid test numbers, IBANs the published examples, keys derived from a
fixed seed.

Tools:
    find_customer(name)          rows whose name or e-mail contains `name`: JSON text + structuredContent
    get_service_config(service)  a service's credentials as JSON text
    run_query(sql)               one read-only SELECT (the file is opened `mode=ro`), rows as JSON text
    stream_report(chunks)        progress notifications and log messages carrying secrets, then a summary

    python demo/mcp_server.py --port 3002 --db .gatehouse/demo.db [--json]

Answers are SSE by default (`--json`: every POST is answered with application/json). Like
tests/servers/json_mcp_server.py it accepts exactly `Host: 127.0.0.1:PORT`, so a proxy in
front must rewrite Host.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import sqlite3
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import uvicorn
from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.transport_security import TransportSecuritySettings
from mcp.types import CallToolResult, TextContent

# --- the fake data ----------------------------------------------------------------------


def _fake(label: str, alphabet: str, length: int) -> str:
    """`length` characters of `alphabet`, derived from `label`: random-looking, the same every run."""
    out: list[str] = []
    counter = 0
    while len(out) < length:
        for byte in hashlib.sha256(f"gatehouse-demo/{label}/{counter}".encode()).digest():
            if byte < 256 - 256 % len(alphabet):  # no modulo bias
                out.append(alphabet[byte % len(alphabet)])
        counter += 1
    return "".join(out[:length])


BASE32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
ALNUM = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
B64 = ALNUM + "+/"


def _b64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).rstrip(b"=").decode()


@dataclass(frozen=True)
class Customer:
    name: str
    email: str
    phone: str
    card_number: str
    iban: str
    ssn: str
    last_order: str  # ordinary data: never masked
    plan: str


CUSTOMERS = [
    Customer(
        "Alice Martin",
        "alice@example.com",
        "+1 415 555 0101",
        "4111 1111 1111 1111",
        "GB82WEST12345698765432",
        "536-22-8471",
        "ORD-10041",
        "pro",
    ),
    Customer(
        "Bruno Keller",
        "bruno.keller@example.org",
        "+49 30 5550 1872",
        "5555 5555 5555 4444",
        "DE89370400440532013000",
        "412-67-3390",
        "ORD-10042",
        "team",
    ),
    Customer(
        "Zoë Dubois",  # not ASCII on purpose
        "zoe.dubois@example.net",
        "+33 1 55 50 12 34",
        "3782 822463 10005",
        "FR1420041010050500013M02606",
        "601-38-2214",
        "ORD-10043",
        "free",
    ),
]

PRIVATE_KEY = "\n".join(
    [
        "-----BEGIN PRIVATE KEY-----",
        *(_fake(f"pem/{i}", B64, 64) for i in range(4)),
        _fake("pem/last", B64, 20) + "==",
        "-----END PRIVATE KEY-----",
    ]
)
JWT = ".".join(
    [
        _b64url({"alg": "RS256", "typ": "JWT"}),
        _b64url({"sub": "billing-worker", "iss": "https://auth.example.com", "exp": 1999999999}),
        _fake("jwt/signature", ALNUM + "-_", 86),
    ]
)
DB_PASSWORD = "Pw-" + _fake("postgres", ALNUM, 16)

SERVICE_CONFIG: dict[str, dict[str, str]] = {
    "billing": {
        "region": "eu-west-1",
        "aws_access_key_id": "AKIA" + _fake("aws/key-id", BASE32, 16),
        "aws_secret_access_key": _fake("aws/secret", B64, 40),
        "github_token": "ghp_" + _fake("github", ALNUM, 36),
        "database_url": f"postgres://billing_app:{DB_PASSWORD}@db.billing.internal:5432/billing",
        "tls_private_key": PRIVATE_KEY,
        "session_jwt": JWT,
    },
}

# Which customer fields are personal data, by kind.
CUSTOMER_KINDS = {"email": "email", "phone": "phone", "card_number": "credit_card", "iban": "iban", "ssn": "us_ssn"}

# (kind, value) of every secret the data holds: what a gateway must never let out.
SECRETS: list[tuple[str, str]] = [
    *((kind, getattr(c, field)) for c in CUSTOMERS for field, kind in CUSTOMER_KINDS.items()),
    ("aws_access_key_id", SERVICE_CONFIG["billing"]["aws_access_key_id"]),
    ("aws_secret_access_key", SERVICE_CONFIG["billing"]["aws_secret_access_key"]),
    ("github_token", SERVICE_CONFIG["billing"]["github_token"]),
    ("password_in_url", DB_PASSWORD),
    ("private_key", PRIVATE_KEY),
    ("jwt", JWT),
]

# --- the database -------------------------------------------------------------------------


def create_db(path: Path) -> None:
    """Creates and seeds the database unless it is already there."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.unlink(missing_ok=True)
    with sqlite3.connect(tmp) as db:
        db.execute(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, email TEXT, phone TEXT,"
            " card_number TEXT, iban TEXT, ssn TEXT, last_order TEXT, plan TEXT)"
        )
        db.execute("CREATE TABLE service_config (service TEXT, key TEXT, value TEXT, PRIMARY KEY (service, key))")
        db.executemany(
            "INSERT INTO customers (name, email, phone, card_number, iban, ssn, last_order, plan)"
            " VALUES (:name, :email, :phone, :card_number, :iban, :ssn, :last_order, :plan)",
            [asdict(c) for c in CUSTOMERS],
        )
        db.executemany(
            "INSERT INTO service_config VALUES (?, ?, ?)",
            [(service, k, v) for service, kv in SERVICE_CONFIG.items() for k, v in kv.items()],
        )
    tmp.rename(path)  # a half-seeded file never looks seeded


def read_only(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
    db.row_factory = sqlite3.Row
    return db


def query(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    with read_only(path) as db:
        return [dict(row) for row in db.execute(sql, params)]


# --- the server ---------------------------------------------------------------------------

server = MCPServer("gatehouse-demo-db", version="1.0.0")
DB_PATH = Path("demo.db")  # set by main()


@server.tool()
def find_customer(name: str) -> CallToolResult:
    """Customers whose name or e-mail contains `name` (case-insensitive)."""
    like = f"%{name}%"
    rows = query(DB_PATH, "SELECT * FROM customers WHERE name LIKE ? OR email LIKE ? ORDER BY id", (like, like))
    return CallToolResult(
        content=[TextContent(type="text", text=json.dumps(rows, ensure_ascii=False))],
        structured_content={"customers": rows},
    )


@server.tool()
def get_service_config(service: str) -> str:
    """A service's settings, credentials included."""
    rows = query(DB_PATH, "SELECT key, value FROM service_config WHERE service = ? ORDER BY key", (service,))
    if not rows:
        raise ToolError(f"no service named {service!r}")
    return json.dumps({"service": service, "settings": {r["key"]: r["value"] for r in rows}})


@server.tool()
def run_query(sql: str) -> str:
    """Runs one read-only SELECT on the demo database; answers its rows as JSON."""
    if not sql.lstrip().lower().startswith(("select", "with")):
        raise ToolError("only SELECT queries are allowed")
    try:
        rows = query(DB_PATH, sql)
    except sqlite3.Error as exc:
        raise ToolError(f"query failed: {exc}") from exc
    return json.dumps(rows, ensure_ascii=False)


@server.tool()
async def stream_report(chunks: int, ctx: Context) -> str:
    """Checks `chunks` customers, reporting progress and logging each (secrets included) on the way."""
    chunks = max(1, min(chunks, 50))
    for i in range(chunks):
        c = CUSTOMERS[i % len(CUSTOMERS)]
        await ctx.report_progress(i + 1, chunks, f"checked {c.name} <{c.email}>, card {c.card_number}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # logging is deprecated in 2026-07-28; still what clients show
            await ctx.info(f"{c.name}: iban {c.iban}, ssn {c.ssn}, phone {c.phone}")
        await asyncio.sleep(0.02)  # separate events on the wire
    aws = SERVICE_CONFIG["billing"]["aws_access_key_id"]
    return f"Report done: {chunks} customers checked with key {aws}; next order {CUSTOMERS[0].last_order}"


def main() -> None:
    global DB_PATH
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=3002)
    parser.add_argument("--db", type=Path, default=Path("demo.db"), help="SQLite file, created on first start")
    parser.add_argument("--json", action="store_true", help="answer POSTs with application/json (default SSE)")
    args = parser.parse_args()
    DB_PATH = args.db
    create_db(DB_PATH)
    own_host = f"127.0.0.1:{args.port}"
    app = server.streamable_http_app(
        json_response=args.json,
        transport_security=TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=[own_host],
            allowed_origins=[f"http://{own_host}"],
        ),
    )
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="info")


if __name__ == "__main__":
    main()
