"""Attacks on the audit trail through the real stack (red-team findings on the trail).

- A local process that learns a request id (every answer carries it) sends the ingest
  listener a made-up answer before the filter's: both are kept and flagged as a conflict,
  never the forgery alone; a record for a request the service never decided on is refused.
- The store, its -wal/-shm, the checkpoint log and the keys are private (0600, folders 0700).
- A crash (SIGKILL) with calls in flight: every call the upstream received has its request
  record, and the restarted service's trail verifies.
- The client's token is in no log (service at debug, the filter at debug) and not in the
  store's bytes, and reaches the upstream on no method (POST, GET stream, DELETE).

The ingest client is compiled from proto/gatehouse/audit/v1/ingest.proto at test time
(grpcio-tools); it speaks plaintext gRPC to the loopback listener as any local process can.
"""

from __future__ import annotations

import importlib
import json
import sqlite3
import stat
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import grpc
import httpx
import pytest
from grpc_tools import protoc

from harness import paths
from harness.stack import Stack, tools_call

pytestmark = pytest.mark.gateway


@pytest.fixture(scope="module")
def ingest_proto(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The generated ingest messages (`pb`) and stub (`grpc`)."""
    out = tmp_path_factory.mktemp("ingest-proto")
    root = paths.REPO / "proto"
    argv = ["protoc", f"-I{root}", f"--python_out={out}", f"--grpc_python_out={out}"]
    assert protoc.main([*argv, str(root / "gatehouse/audit/v1/ingest.proto")]) == 0
    sys.path.insert(0, str(out))
    try:
        return SimpleNamespace(
            pb=importlib.import_module("gatehouse.audit.v1.ingest_pb2"),
            grpc=importlib.import_module("gatehouse.audit.v1.ingest_pb2_grpc"),
        )
    finally:
        sys.path.remove(str(out))


class Forger:
    """A local process on the gateway host that got hold of Envoy's client certificate (the
    listener refuses any other: test_attack_service.py), talking to the ingest. What it
    sends must still never replace or hide what the filter records."""

    def __init__(self, proto: SimpleNamespace, stack: Stack) -> None:
        self.pb = proto.pb
        tls = stack.dir / "tls"
        creds = grpc.ssl_channel_credentials(
            root_certificates=(tls / "grpc-ca.crt").read_bytes(),
            private_key=(tls / "grpc-client.key").read_bytes(),
            certificate_chain=(tls / "grpc-client.crt").read_bytes(),
        )
        self.channel = grpc.secure_channel(
            f"127.0.0.1:{stack.grpc_port}", creds, options=[("grpc.ssl_target_name_override", "localhost")]
        )
        self.stub = proto.grpc.AuditIngestStub(self.channel)

    def answer(self, request_id: str, message: dict, part: int = 0) -> int:
        """A made-up final answer for `request_id`; returns how many records the service took."""
        observed = self.pb.ResponseObserved(
            request_id=request_id,
            part=part,
            final=True,
            http_status=200,
            content_type="application/json",
            message=json.dumps(message).encode(),
            jsonrpc_id=json.dumps(message.get("id")),
            end_reason="complete",
        )
        batch = self.pb.IngestBatch(source="gatehouse/forger/0", responses=[observed])
        return self.stub.Ingest(batch, timeout=10).accepted

    def rejection(self, request_id: str) -> int:
        rejected = self.pb.RequestRejected(
            request_id=request_id,
            http_status=400,
            jsonrpc_code=-32600,
            reason="forged",
            http_method="POST",
            path="/mcp",
        )
        batch = self.pb.IngestBatch(source="gatehouse/forger/0", rejections=[rejected])
        return self.stub.Ingest(batch, timeout=10).accepted

    def close(self) -> None:
        self.channel.close()


def forged_answer(jsonrpc_id: object) -> dict:
    return {"jsonrpc": "2.0", "id": jsonrpc_id, "result": {"content": [{"type": "text", "text": "FORGED: all clear"}]}}


def metric(stack: Stack, name: str) -> float:
    text = httpx.get(f"{stack.rest_url}/metrics", timeout=10).text
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    assert values, f"no metric {name}:\n{text}"
    return values[0]


def wait_until(ready: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_a_forged_answer_sent_first_does_not_replace_the_real_one(make_stack, ingest_proto):
    stack = make_stack(upstream="echo")
    forger = Forger(ingest_proto, stack)
    try:
        # The forgery lands while the upstream holds the request: before the filter has seen
        # any answer, the worst order for the trail.
        def forge(req) -> int:
            return forger.answer(req.headers["x-gatehouse-request-id"][0], forged_answer(req.json()["id"]))

        stack.echo.on_request = forge
        token = stack.token("alice", ["eng"])
        resp = stack.post(tools_call("echo", {"message": "the real answer"}, request_id=7), token=token)
        assert resp.status_code == 200, resp.text
        request_id = resp.headers["x-gatehouse-request-id"]
        assert stack.echo.hook_results == [1], "the forgery should be stored (flagged), not lost"

        got = stack.audit.wait_for(request_id, lambda r: len(r["responses"]) >= 2, "the filter's answer record")
        forged, real = got["responses"]
        assert real["data"]["message"] == resp.json(), "the answer the client received is not in the trail"
        assert "FORGED" in json.dumps(forged["data"]["message"])
        assert real["data"]["conflict"] is True
        writer = real["writer"]
        assert got["conflicts"] == [
            {"kind": "response", "part": 0, "records": [[writer, forged["seq"]], [writer, real["seq"]]]}
        ]
        assert metric(stack, "gatehouse_ingest_conflicts_total") == 1

        listing = stack.audit_cli("conflicts")
        assert listing.returncode == 1, listing.stdout + listing.stderr
        named = f"writer:record {writer}:{forged['seq']}, {writer}:{real['seq']}"
        assert request_id in listing.stdout and named in listing.stdout, listing.stdout
        verified = stack.verify()
        assert verified.returncode == 1, verified.stdout
        assert f"CONFLICT: request {request_id} has 2 different response part 0 records" in verified.stdout
    finally:
        forger.close()


def test_a_forged_answer_with_clear_secrets_is_stored_masked(make_stack, ingest_proto):
    """A forged (or outdated) filter reports an answer in clear: the ingest masks it itself."""
    stack = make_stack(upstream="echo")
    forger = Forger(ingest_proto, stack)
    try:
        resp = stack.post(tools_call("echo", {"message": "hi"}, request_id=7), token=stack.token("alice", ["eng"]))
        request_id = resp.headers["x-gatehouse-request-id"]
        stack.audit.wait_complete(request_id)
        rows = json.dumps(
            [{"email": "alice.martin@example.com", "password": "hunter2hunter2", "card": 4111111111111111}]
        )
        clear = {
            "jsonrpc": "2.0",
            "id": 7,
            "result": {"content": [{"type": "text", "text": rows}], "structuredContent": {"result": rows}},
        }
        assert forger.answer(request_id, clear, part=1) == 1

        got = stack.audit.wait_for(request_id, lambda r: len(r["responses"]) >= 2, "the forged record")
        stored = json.dumps(got)
        for value in ("alice.martin@example.com", "hunter2hunter2", "4111111111111111"):
            assert value not in stored, f"{value} stored in clear"
        forged = next(r for r in got["responses"] if r["data"]["source"] == "gatehouse/forger/0")
        assert forged["data"]["masked"]["email"] == 2, forged["data"]
    finally:
        forger.close()


def test_records_for_requests_the_service_never_decided_are_refused(make_stack, ingest_proto):
    stack = make_stack(upstream="echo")
    forger = Forger(ingest_proto, stack)
    try:
        made_up = uuid.uuid4().hex
        assert forger.answer(made_up, forged_answer(1)) == 0
        assert stack.audit.request(made_up)["responses"] == []

        # A rejection of a request the service did decide on cannot be the filter's.
        token = stack.token("alice", ["eng"])
        resp = stack.post(tools_call("echo", {"message": "decided"}), token=token)
        assert resp.status_code == 200, resp.text
        decided = resp.headers["x-gatehouse-request-id"]
        stack.audit.wait_complete(decided)
        assert forger.rejection(decided) == 0
        assert [r["kind"] for r in stack.audit.request(decided)["records"]] == ["request"]

        assert metric(stack, "gatehouse_ingest_refused_total") == 2
        assert metric(stack, "gatehouse_ingest_conflicts_total") == 0
        logs = stack.gateway_logs()["gatehouse-serve"].decode()
        assert "Refused ingested records" in logs
        assert "FORGED" not in logs, "a refused record's content was logged"
    finally:
        forger.close()


def test_state_files_are_private(make_stack):
    stack = make_stack(
        upstream="echo",
        audit={
            "database": "sqlite://state/db/audit.db",
            "checkpoint": {"key_file": "keys/checkpoint-key.pem", "log_file": "logs-audit/checkpoints.log"},
        },
    )
    token = stack.token("alice", ["eng"])
    resp = stack.post(tools_call("echo", {"message": "hi"}), token=token)
    assert resp.status_code == 200, resp.text
    stack.audit.wait_complete(resp.headers["x-gatehouse-request-id"])

    def modes(files: list[Path]) -> dict[str, str]:
        missing = [str(p) for p in files if not p.exists()]
        assert not missing, f"missing: {missing}"
        return {str(p.relative_to(stack.dir)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}

    db = stack.dir / "state/db/audit.db"
    # The -wal and -shm exist while the service runs (a clean stop removes them).
    running = modes([db, *(db.with_name(db.name + s) for s in ("-wal", "-shm"))])
    stack.service.stop()  # a shutdown checkpoint: the log exists
    kept = ("logs-audit/checkpoints.log", "keys/checkpoint-key.pem", "dev-issuer-key.pem")
    stopped = modes([stack.dir / p for p in kept])
    assert {p: m for p, m in {**running, **stopped}.items() if m != "0o600"} == {}
    dirs = ["state", "state/db", "keys", "logs-audit"]
    assert {d: oct(stat.S_IMODE((stack.dir / d).stat().st_mode)) for d in dirs} == dict.fromkeys(dirs, "0o700")


def test_a_crash_in_flight_leaves_every_forwarded_call_recorded(make_stack):
    stack = make_stack(upstream="echo")
    token = stack.token("alice", ["eng"])
    stop = threading.Event()

    def caller(n: int) -> int:
        answered = 0
        for i in range(500):
            if stop.is_set():
                break
            try:
                resp = stack.post(tools_call("echo", {"message": f"{n}.{i}"}), token=token, timeout=10)
                answered += resp.status_code == 200
            except httpx.HTTPError:
                pass
        return answered

    with ThreadPoolExecutor(6) as pool:
        callers = [pool.submit(caller, n) for n in range(6)]
        wait_until(lambda: len(stack.echo.received()) >= 30, "calls under way")
        stack.crash_service()
        stop.set()
        assert sum(c.result() for c in callers) > 0, "no call was answered"

    received = stack.echo.received()
    forwarded = {r.headers["x-gatehouse-request-id"][0] for r in received}
    assert len(forwarded) == len(received), "a call reached the upstream without a request id"
    with sqlite3.connect(stack.db_path) as conn:
        recorded = {
            rid
            for (rid,) in conn.execute(
                "SELECT request_id FROM audit_records WHERE kind = 'request'"
                " AND json_extract(data, '$.decision') = 'allow'"
            )
        }
    assert forwarded - recorded == set(), "the upstream received calls with no committed request record"

    stack.restart_service()
    after = stack.post(tools_call("echo", {"message": "after the crash"}), token=token)
    assert after.status_code == 200, after.text
    stack.audit.wait_complete(after.headers["x-gatehouse-request-id"])
    result = stack.verify()
    assert result.returncode == 0, result.stdout + result.stderr


def rejected_and_called(stack: Stack, token: str) -> None:
    """A tools/call, a request the filter rejects (its record carries the token to the
    service), a GET stream and a DELETE, all with the caller's token."""
    session = stack.initialize(token)
    resp = stack.post(tools_call("echo", {"message": "hello"}), token=token, headers={"mcp-session-id": session})
    assert resp.status_code == 200, resp.text
    stack.audit.wait_complete(resp.headers["x-gatehouse-request-id"])
    bad = stack.post(None, content=b"{not json", token=token)
    assert bad.status_code == 400, bad.text
    stack.audit.wait_for(
        bad.headers["x-gatehouse-request-id"], lambda r: bool(r.get("records")), "the rejection record", timeout=20
    )
    headers = {
        "authorization": f"Bearer {token}",
        "mcp-session-id": session,
        "mcp-protocol-version": "2025-11-25",
    }
    get = httpx.get(stack.url, headers={**headers, "accept": "text/event-stream"}, timeout=10)
    assert get.status_code == 405, get.text  # the echo upstream has no stream: it answered
    delete = httpx.delete(stack.url, headers=headers, timeout=10)
    assert delete.status_code == 200, delete.text


def test_the_callers_token_reaches_no_upstream_log_or_store(make_stack):
    stack = make_stack(upstream="echo")
    stack.service_log = "debug"
    stack.restart_service()
    # The filter's own debug lines too.
    assert httpx.post(f"http://127.0.0.1:{stack.admin_port}/logging?wasm=debug", timeout=10).status_code == 200
    token = stack.token("alice", ["eng"])

    rejected_and_called(stack, token)

    received = stack.echo.received()
    assert sorted({r.method for r in received}) == ["DELETE", "GET", "POST"]
    for r in received:
        assert "authorization" not in r.header_names(), f"{r.method}: the caller's token reached the upstream"
        assert token not in json.dumps(r.headers), f"{r.method}: the caller's token reached the upstream"

    running = stack.trail_files()  # with the -wal the running service writes to
    stack.envoy.stop()
    stack.service.stop()
    logs = stack.gateway_logs()
    for name in ("gatehouse-serve", "envoy-gateway"):
        assert name in logs and logs[name].strip(), f"{name} is empty: the search would prove nothing"
    assert b"DEBUG" in logs["gatehouse-serve"], "the service did not log at debug"
    assert b"[debug]" in logs["envoy-gateway"], "the filter did not log at debug"
    assert running.get("audit.db-wal"), f"no -wal while the service ran: {sorted(running)}"
    stopped = stack.trail_files()
    assert stopped["audit.db"].strip(b"\0"), "the store is empty"
    blobs = {**logs, **{f"{n} (running)": b for n, b in running.items()}, **stopped}
    secret = token.encode()
    signature = token.rsplit(".", 1)[-1].encode()  # what a log line cut short would still hold
    leaked = [name for name, blob in blobs.items() if secret in blob or signature in blob]
    assert not leaked, f"the caller's token is in {leaked}"
