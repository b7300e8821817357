#!/usr/bin/env python3
"""Writes an audit fixture database with a real stack: every kind of record the trail holds.

    GATEHOUSE_BIN=/path/to/gatehouse GATEHOUSE_WASM=/path/to/gatehouse_filter.wasm \
        .tools/venv/bin/python scripts/make-audit-fixture.py tests/fixtures/audit-v2

It starts the gateway (tests/harness: real Envoy, filter and service) in front of a scripted
upstream and drives it through what the first fixture (audit-v1) lacks: denials by group and
by policy (a rule and default deny), approvals notified, notify failed, denied, approved and
used, expired; an SSE answer of several events and its final part; a binary answer withheld;
a malformed request rejected by the filter; a batch; a static-header upstream credential;
and a response record forged over gRPC that is stored as a conflict. It stops the stack
cleanly (its last checkpoint) and copies the database (compacted), the checkpoint log and
the key into the output folder. Never rerun it over a committed fixture: a fixture is what
an older build wrote.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

import grpc  # noqa: E402
from grpc_tools import protoc  # noqa: E402

from harness.approvals import SESSION_RULE, Approver, Webhook, approval_rule  # noqa: E402
from harness.raw_upstream import Reply, json_reply  # noqa: E402
from harness.stack import Stack, start_stack, tools_call  # noqa: E402

SESSION = "upstream-session-1"
SECRET_ANSWER = "key AKIAIVF3HDRHMIRTO2I2 belongs to ops@example.com"
POLICY = [
    SESSION_RULE,
    {"id": "no-drops", "tools": ["drop_*"], "outcome": "deny"},
    approval_rule(
        "deploy-needs-approval",
        ("deploy",),
        hold_seconds=0,
        masked_arguments="show_masked",
    ),
    approval_rule("purge-needs-approval", ("purge",), hold_seconds=0, expires_seconds=1),
    {"id": "other-tools", "tools": ["*"], "outcome": "allow"},
]


def result(message_id: object, text: str) -> dict:
    return {
        "jsonrpc": "2.0",
        "id": message_id,
        "result": {"content": [{"type": "text", "text": text}]},
    }


def sse(*events: tuple[str, dict]) -> Reply:
    chunks = [f"id: {event_id}\ndata: {json.dumps(message)}\n\n".encode() for event_id, message in events]
    return Reply(headers=[("content-type", "text/event-stream")], chunks=chunks)


def reply(req) -> Reply:
    """The scripted upstream: what each call gets, by method and tool."""
    if req.method != "POST":
        return Reply(status=405, chunks=[])
    body = req.json()
    if isinstance(body, list):
        return json_reply([result(m["id"], f"batch answer {m['id']}") for m in body if "id" in m])
    if "id" not in body:
        return Reply(status=202, chunks=[])
    if body["method"] == "initialize":
        info = {
            "protocolVersion": "2025-11-25",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "raw"},
        }
        return json_reply(
            {"jsonrpc": "2.0", "id": body["id"], "result": info},
            headers=[("content-type", "application/json"), ("mcp-session-id", SESSION)],
        )
    tool = body.get("params", {}).get("name")
    if tool == "stream":
        progress = {
            "jsonrpc": "2.0",
            "method": "notifications/message",
            "params": {"level": "info", "data": SECRET_ANSWER},
        }
        return sse(("ev-1", progress), ("ev-2", result(body["id"], "done")))
    if tool == "picture":
        return Reply(
            headers=[("content-type", "image/png")],
            chunks=[b"\x89PNG\r\n\x1a\n" + SECRET_ANSWER.encode()],
            framing="length",
        )
    return json_reply(result(body["id"], f"{tool}: {SECRET_ANSWER}"))


def ingest_stubs(out: Path) -> SimpleNamespace:
    root = REPO / "proto"
    argv = ["protoc", f"-I{root}", f"--python_out={out}", f"--grpc_python_out={out}"]
    if protoc.main([*argv, str(root / "gatehouse/audit/v1/ingest.proto")]) != 0:
        raise SystemExit("protoc failed")
    sys.path.insert(0, str(out))
    return SimpleNamespace(
        pb=importlib.import_module("gatehouse.audit.v1.ingest_pb2"),
        grpc=importlib.import_module("gatehouse.audit.v1.ingest_pb2_grpc"),
    )


def forge_answer(stack: Stack, stubs: SimpleNamespace, request_id: str, message: dict) -> int:
    """A different final answer for a part the filter already recorded: stored as a conflict."""
    tls = stack.dir / "tls"
    creds = grpc.ssl_channel_credentials(
        root_certificates=(tls / "grpc-ca.crt").read_bytes(),
        private_key=(tls / "grpc-client.key").read_bytes(),
        certificate_chain=(tls / "grpc-client.crt").read_bytes(),
    )
    options = [("grpc.ssl_target_name_override", "localhost")]
    with grpc.secure_channel(f"127.0.0.1:{stack.grpc_port}", creds, options=options) as channel:
        observed = stubs.pb.ResponseObserved(
            request_id=request_id,
            part=0,
            final=True,
            http_status=200,
            content_type="application/json",
            message=json.dumps(message).encode(),
            jsonrpc_id=json.dumps(message["id"]),
            end_reason="complete",
        )
        batch = stubs.pb.IngestBatch(source="gatehouse/forger/0", responses=[observed])
        return stubs.grpc.AuditIngestStub(channel).Ingest(batch, timeout=10).accepted


def check(resp, status: int, what: str) -> str:
    if resp.status_code != status:
        raise SystemExit(f"{what}: expected {status}, got {resp.status_code} {resp.text}")
    return resp.headers.get("x-gatehouse-request-id", "")


def wait_step(stack: Stack, approval_id: str, event: str) -> None:
    def seen(records: list[dict]) -> bool:
        return any(r["data"].get("approval_id") == approval_id and r["data"]["event"] == event for r in records)

    stack.audit.wait_records(seen, f"{event} of {approval_id}", timeout=20, kind="approval", limit=1000)


def drive(stack: Stack, hook: Webhook, stubs: SimpleNamespace) -> None:
    stack.raw.reply = reply
    alice = stack.token("alice", ["eng"])
    session = stack.initialize(alice)
    headers = {"mcp-session-id": session}

    def call(
        tool: str,
        arguments: dict,
        request_id: int,
        status: int = 200,
        token: str = alice,
    ):
        resp = stack.post(
            tools_call(tool, arguments, request_id=request_id),
            token=token,
            headers=headers,
        )
        request_id_header = check(resp, status, f"tools/call {tool}")
        if request_id_header and status != 401:
            stack.audit.wait_complete(request_id_header)
        return resp

    # A masked JSON answer; an SSE answer of two events and its final part; a binary one withheld.
    answered = call("lookup", {"who": "ops@example.com"}, 2)
    call("stream", {}, 3)
    call("picture", {}, 4, status=502)
    # Denied by a rule, by default deny (no rule for the method), and by group.
    call("drop_table", {"table": "customers"}, 5, status=403)
    resp = stack.post(
        {"jsonrpc": "2.0", "id": 6, "method": "resources/list"},
        token=alice,
        headers=headers,
    )
    stack.audit.wait_complete(check(resp, 403, "resources/list"))
    call("lookup", {}, 7, status=403, token=stack.token("mallory", ["sales"]))
    # A batch (2025-03-26).
    batch = [
        tools_call("lookup", {"n": 1}, request_id=8),
        tools_call("lookup", {"n": 2.5}, request_id=9),
    ]
    resp = stack.post(batch, token=alice, headers={**headers, "mcp-protocol-version": "2025-03-26"})
    stack.audit.wait_complete(check(resp, 200, "batch"))
    # A malformed body: refused by the filter, recorded as request_rejected.
    resp = stack.post(None, content=b"{not json", token=alice, headers=headers)
    check(resp, 400, "malformed body")

    bob = Approver(stack, "bob")
    try:
        # Notification fails (the webhook answers 500 twice); bob denies; alice's retry is refused.
        first = call("deploy", {"env": "prod", "notify": "ops@example.com"}, 10).json()["error"]["data"]["approval"]
        wait_step(stack, first["id"], "notify_failed")
        check(bob.deny(first["id"], "not during the freeze"), 200, "deny")
        call("deploy", {"env": "prod", "notify": "ops@example.com"}, 11, status=403)
        # Notified; bob approves; alice's retry uses the grant.
        second = call("deploy", {"env": "staging"}, 12).json()["error"]["data"]["approval"]
        wait_step(stack, second["id"], "notified")
        check(bob.approve(second["id"], None), 200, "approve")
        call("deploy", {"env": "staging"}, 13)
        # Nobody decides: it expires.
        third = call("purge", {"what": "cache"}, 14).json()["error"]["data"]["approval"]
        wait_step(stack, third["id"], "expired")
    finally:
        bob.close()

    # A forged answer for a part the filter recorded: kept, flagged as a conflict.
    forged = result(2, "FORGED: all clear")
    if forge_answer(stack, stubs, answered.headers["x-gatehouse-request-id"], forged) != 1:
        raise SystemExit("the forged answer was not stored as a conflict")
    time.sleep(0.5)


def main() -> None:
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    # The upstream credential's value (a test value: records name the header, never this).
    os.environ["GATEHOUSE_FIXTURE_KEY"] = "fixture-upstream-key"
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "proto").mkdir()
        stubs = ingest_stubs(work / "proto")
        hook = Webhook([500, 500])
        stack = start_stack(
            work / "stack",
            upstream="raw",
            policy=POLICY,
            approvals={"webhook": {"url": hook.url, "attempts": 2}},
            ext_authz_timeout_ms=5000,
            upstream_credentials={
                "type": "static_header",
                "header": "X-Api-Key",
                "value_env": "GATEHOUSE_FIXTURE_KEY",
            },
        )
        try:
            drive(stack, hook, stubs)
        finally:
            stack.close()
            hook.close()
        (out / "audit.db").unlink(missing_ok=True)
        with sqlite3.connect(stack.db_path) as db:
            db.execute("VACUUM INTO ?", (str(out / "audit.db"),))
        for name in ("checkpoints.log", "checkpoint-key.pem"):
            shutil.copy(stack.dir / name, out / name)
        with sqlite3.connect(out / "audit.db") as db:
            count = db.execute("SELECT count(*) FROM audit_records").fetchone()[0]
        print(f"{out}: {count} records")


if __name__ == "__main__":
    main()
