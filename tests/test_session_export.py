"""Verifiable session exports (`gatehouse sessions export`, `gatehouse audit verify-export`):
the session's records as stored, the chain links of other sessions' records between them and
a signed checkpoint, and a signed manifest. Every kind of tampering is tried: without the key
(the manifest's signature or a file's SHA-256 gives it away) and, re-signed with the key, by
someone who doctors the records themselves (the hash chain and the checkpoints give it away)."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from harness.sessions import auditor, wait_sessions
from harness.stack import Stack, gatehouse, tools_call

pytestmark = [pytest.mark.gateway, pytest.mark.both_backends]

SECRET = "AKIAIOSFODNN7EXAMPLE"


def call(stack: Stack, token: str, session: str | None, message: str) -> None:
    headers = {"mcp-session-id": session} if session else {}
    resp = stack.post(tools_call("echo", {"message": message}, request_id=7), token=token, headers=headers)
    assert resp.status_code == 200, resp.text


def export(stack: Stack, session: str, out: Path, check: bool = True):
    return gatehouse("sessions", "export", session, "--out", out, "--config", stack.config_path, check=check)


def verify(out: Path, key: Path):
    return gatehouse("audit", "verify-export", out, "--public-key", key, check=False)


@pytest.fixture
def exported(make_stack, tmp_path: Path) -> tuple[Stack, Path, Path, dict[str, Any]]:
    """alice's MCP session interleaved with bob's calls (so the export carries links), exported
    once a checkpoint vouches for all of it."""
    stack = make_stack(
        upstream="echo",
        audit={
            "checkpoint": {
                "key_file": "checkpoint-key.pem",
                "log_file": "checkpoints.log",
                "every_records": 1000,
                "every_seconds": 1,
            }
        },
    )
    alice, bob = stack.token("alice"), stack.token("bob")
    session = stack.initialize(alice)
    for i in range(3):
        call(stack, alice, session, f"step {i} with {SECRET}")
        call(stack, bob, None, f"bob {i}")
    key = tmp_path / "public.pem"
    key.write_text(gatehouse("audit", "public-key", "--config", stack.config_path).stdout)
    with auditor(stack) as audit:
        (listed,) = wait_sessions(audit, lambda s: bool(s) and s[0]["calls"] == 3, user="alice")
    # The writer signs a checkpoint every second: export until one vouches for every record.
    deadline = time.monotonic() + 20
    while True:
        out = tmp_path / f"export-{time.monotonic_ns()}"
        done = export(stack, listed["id"], out)
        if "newer than its newest signed checkpoint" not in done.stdout:
            break
        assert time.monotonic() < deadline, f"no checkpoint vouched for the session in time:\n{done.stdout}"
        time.sleep(0.5)
    return stack, out, key, listed


def lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_lines(path: Path, values: list[dict[str, Any]]) -> None:
    path.write_text("".join(json.dumps(v, ensure_ascii=False, separators=(",", ":")) + "\n" for v in values))


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def record_hash(r: dict[str, Any]) -> str:
    """core/src/audit.rs, hash version 2: what a forger holding the data computes."""
    digest = r["data_sha256"] if "data_sha256" in r else hashlib.sha256(canonical(r["data"])).hexdigest()
    head = ",".join(
        f"{json.dumps(k)}:{json.dumps(r[k], ensure_ascii=False)}"
        for k in ("writer", "kind", "request_id", "recorded_at", "prev_hash")
    )
    return hashlib.sha256(f'{{"v":2,"seq":{r["seq"]},{head},"data_sha256":"{digest}"}}'.encode()).hexdigest()


def resign(stack: Stack, out: Path) -> None:
    """What someone holding the checkpoint key can do: list the files as they now are and sign."""
    manifest = json.loads((out / "manifest.json").read_text())
    for name in manifest["files"]:
        data = (out / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    text = (json.dumps(manifest, indent=2) + "\n").encode()
    (out / "manifest.json").write_bytes(text)
    (out / "manifest.sig").write_text(checkpoint_key(stack).sign(text).hex() + "\n")


def checkpoint_key(stack: Stack) -> Ed25519PrivateKey:
    """The service's checkpoint key (PKCS#8 v2, which `cryptography` does not read): its seed
    is the OCTET STRING inside the private key's OCTET STRING."""
    pem = (stack.dir / "checkpoint-key.pem").read_text()
    der = base64.b64decode("".join(line for line in pem.splitlines() if not line.startswith("-----")))
    at = der.index(b"\x04\x22\x04\x20") + 4
    return Ed25519PrivateKey.from_private_bytes(der[at : at + 32])


def a_call(records: list[dict[str, Any]]) -> dict[str, Any]:
    return next(r for r in records if r["kind"] == "request" and r["data"].get("tool") == "echo")


# --- tampering: each returns what verify-export must name -------------------------------


def edit_a_record(stack: Stack, out: Path) -> str:
    records = lines(out / "records.jsonl")
    a_call(records)["data"]["arguments"]["message"] = "step 0 with nothing to see"
    write_lines(out / "records.jsonl", records)
    return "records.jsonl: its SHA-256 is not the manifest's"


def edit_the_manifest_to_match(stack: Stack, out: Path) -> str:
    edit_a_record(stack, out)
    manifest = json.loads((out / "manifest.json").read_text())
    data = (out / "records.jsonl").read_bytes()
    manifest["files"]["records.jsonl"] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return "manifest.json: its signature does not hold"


def add_a_file(stack: Stack, out: Path) -> str:
    (out / "extra.jsonl").write_text("{}\n")
    return "extra.jsonl: not listed in the manifest"


def edit_a_record_and_resign(stack: Stack, out: Path) -> str:
    records = lines(out / "records.jsonl")
    target = a_call(records)
    target["data"]["arguments"]["message"] = "harmless"
    write_lines(out / "records.jsonl", records)
    resign(stack, out)
    return f"records.jsonl: writer {target['writer']}: record {target['seq']} was edited"


def remove_a_record_and_resign(stack: Stack, out: Path) -> str:
    records = lines(out / "records.jsonl")
    target = next(r for r in records if r["kind"] == "response")
    records.remove(target)
    write_lines(out / "records.jsonl", records)
    resign(stack, out)
    return f"record {target['seq']} is missing"


def reorder_records_and_resign(stack: Stack, out: Path) -> str:
    records = lines(out / "records.jsonl")
    calls = [r for r in records if r["kind"] == "request" and r["data"].get("tool") == "echo"]
    first, second = calls[0], calls[1]
    first["seq"], second["seq"] = second["seq"], first["seq"]
    write_lines(out / "records.jsonl", records)
    resign(stack, out)
    return f"record {min(first['seq'], second['seq'])} was edited"


def forge_a_record_rehash_everything_and_resign(stack: Stack, out: Path) -> str:
    """A record that is not in the signed chain: its content changed and every hash after it
    recomputed, records and links alike: only the signed checkpoint still says what was."""
    records, chain = lines(out / "records.jsonl"), lines(out / "chain.jsonl")
    target = a_call(records)
    target["data"]["arguments"]["message"] = "forged"
    entries = sorted(
        [r for r in records + chain if r["writer"] == target["writer"]],
        key=lambda r: r["seq"],
    )
    prev = None
    for r in entries:
        if r["seq"] < target["seq"]:
            continue
        if prev is not None:
            r["prev_hash"] = prev
        r["hash"] = record_hash(r)
        prev = r["hash"]
    write_lines(out / "records.jsonl", records)
    write_lines(out / "chain.jsonl", chain)
    resign(stack, out)
    return "is not the record a signed checkpoint vouches for"


def drop_the_checkpoints_and_resign(stack: Stack, out: Path) -> str:
    (out / "checkpoints.jsonl").write_text("")
    resign(stack, out)
    return "UNVOUCHED: writer gatehouse-test: records"


def alter_a_checkpoint_and_resign(stack: Stack, out: Path) -> str:
    cps = lines(out / "checkpoints.jsonl")
    cps[-1]["seq"] += 1
    write_lines(out / "checkpoints.jsonl", cps)
    resign(stack, out)
    return "has an invalid signature"


def remove_a_link_and_resign(stack: Stack, out: Path) -> str:
    chain = lines(out / "chain.jsonl")
    target = chain[len(chain) // 2]
    chain.remove(target)
    write_lines(out / "chain.jsonl", chain)
    resign(stack, out)
    return f"record {target['seq']} is missing"


@pytest.mark.parametrize(
    "tamper",
    [
        edit_a_record,
        edit_the_manifest_to_match,
        add_a_file,
        edit_a_record_and_resign,
        remove_a_record_and_resign,
        reorder_records_and_resign,
        forge_a_record_rehash_everything_and_resign,
        drop_the_checkpoints_and_resign,
        alter_a_checkpoint_and_resign,
        remove_a_link_and_resign,
    ],
)
def test_verify_export_detects_tampering(exported, tmp_path: Path, tamper: Callable[[Stack, Path], str]):
    stack, out, key, _ = exported
    copy = tmp_path / "tampered"
    shutil.copytree(out, copy)
    expected = tamper(stack, copy)
    result = verify(copy, key)
    assert result.returncode == 1, f"verify-export passed after {tamper.__name__}:\n{result.stdout}"
    assert expected in result.stdout, result.stdout
    assert "Export verified." not in result.stdout


def test_an_export_holds_the_session_records_as_stored_and_links_only(exported):
    stack, out, key, listed = exported
    result = verify(out, key)
    assert result.returncode == 0, result.stdout
    assert result.stdout.startswith(f"Session {listed['id']}: "), result.stdout
    assert "Export verified." in result.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["kind"] == "session" and manifest["about"]["session"] == listed["id"]
    assert any("the session is open" in n for n in manifest["notes"]), "an export of an open session says so"
    records, chain = lines(out / "records.jsonl"), lines(out / "chain.jsonl")
    # alice's records only, masked as stored; bob's calls are links without their content.
    assert {r["data"].get("subject") for r in records if r["kind"] == "request"} == {"alice"}
    assert SECRET not in (out / "records.jsonl").read_text()
    assert chain and all("data" not in link and len(link["data_sha256"]) == 64 for link in chain)
    assert "bob" not in (out / "chain.jsonl").read_text()
    # Every record is byte for byte what the trail holds (same hash the trail verifies).
    audited = {(r["writer"], r["seq"]): r["hash"] for r in stack.audit.records(limit=1000)}
    assert all(audited[(r["writer"], r["seq"])] == r["hash"] for r in records)


def test_export_refuses_what_it_cannot_do(exported, tmp_path: Path):
    stack, out, _, listed = exported
    again = export(stack, listed["id"], out, check=False)
    assert again.returncode != 0 and "not empty" in again.stderr, "an export never overwrites"
    missing = export(stack, "s_doesnotexist", tmp_path / "none", check=False)
    assert missing.returncode == 1 and "no session s_doesnotexist" in missing.stderr
    other_key = tmp_path / "other.pem"
    other_key.write_bytes(
        Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    wrong = verify(out, other_key)
    assert wrong.returncode == 1 and "signature does not hold" in wrong.stdout


def test_the_rest_api_sends_an_export_that_verifies_as_a_tar(make_stack, tmp_path: Path):
    # Checkpoints only every hour: the download signs one for this writer first.
    stack = make_stack(upstream="echo")
    alice = stack.token("alice")
    session = stack.initialize(alice)
    call(stack, alice, session, f"deploy with {SECRET}")
    key = tmp_path / "public.pem"
    key.write_text(gatehouse("audit", "public-key", "--config", stack.config_path).stdout)
    with auditor(stack) as audit:
        (listed,) = wait_sessions(audit, lambda s: bool(s) and s[0]["calls"] == 1, user="alice")
        resp = audit.get(f"/v1/sessions/{listed['id']}/export")
        assert resp.status_code == 200, resp.text
        assert resp.headers["content-type"] == "application/x-tar"
        assert f'filename="session-{listed["id"]}.tar"' in resp.headers["content-disposition"]
        tar = tmp_path / "session.tar"
        tar.write_bytes(resp.content)
        result = verify(tar, key)
        assert result.returncode == 0, result.stdout
        assert "the session is open" in result.stdout
        assert SECRET.encode() not in resp.content

        assert audit.get("/v1/sessions/s_doesnotexist/export").status_code == 404
    # Anyone but an auditor: 403 for a real id and for a made-up one alike.
    for token in (alice, stack.auditor_token("eve", ("eng",)), stack.approver_token("carol")):
        for sid in (listed["id"], "s_doesnotexist"):
            denied = httpx.get(
                f"{stack.rest_url}/v1/sessions/{sid}/export", headers={"authorization": f"Bearer {token}"}, timeout=10
            )
            assert denied.status_code in (401, 403), denied.text
            assert denied.json()["error"] and listed["id"] not in denied.text
