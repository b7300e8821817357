"""An audit database written by an earlier build still verifies with this one.

The fixtures (tests/fixtures/audit-v1 and audit-v2, see their READMEs) were written by the
gateway as of round 2 and of round 11 (every kind of record, before records were typed events).
Reshaping how records are built must keep their bytes and hashes: an operator's existing
trail has to verify after an upgrade.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
import yaml

from harness.stack import gatehouse

pytestmark = pytest.mark.gateway

FIXTURE = Path(__file__).parent / "fixtures" / "audit-v1"
FIXTURE_V2 = Path(__file__).parent / "fixtures" / "audit-v2"


def verify_copy(tmp_path: Path, tamper=None, fixture: Path = FIXTURE):
    for name in ("audit.db", "checkpoints.log", "checkpoint-key.pem"):
        shutil.copy(fixture / name, tmp_path / name)
        (tmp_path / name).chmod(0o600)
    if tamper:
        with sqlite3.connect(tmp_path / "audit.db") as db:
            tamper(db)
    config = {
        "service": {
            "rest_listen": "127.0.0.1:1",
            "grpc_listen": "127.0.0.1:2",
            "public_url": "http://127.0.0.1:3",
            "grpc_plaintext": True,
        },
        "identity": {"issuer": "http://127.0.0.1:1/dev", "audience": "gatehouse"},
        "audit": {
            "database": "sqlite://audit.db",
            "writer_id": "gatehouse-test",
            "auditor_group": "auditors",
            "checkpoint": {"key_file": "checkpoint-key.pem", "log_file": "checkpoints.log"},
        },
        "upstreams": [{"name": "demo", "url": "http://127.0.0.1:4/mcp", "path": "/demo", "allow_groups": ["eng"]}],
        "envoy": {"admin_listen": "127.0.0.1:5", "http_listen": "127.0.0.1:6", "wasm": "gatehouse_filter.wasm"},
    }
    path = tmp_path / "gatehouse.yaml"
    path.write_text(yaml.safe_dump(config))
    return gatehouse("audit", "verify", "--config", path, check=False)


def test_a_trail_written_by_an_earlier_build_verifies(tmp_path: Path) -> None:
    result = verify_copy(tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "22 records" in result.stdout and "Audit trail verified." in result.stdout, result.stdout


def test_the_fixture_check_can_fail(tmp_path: Path) -> None:
    # Control: one byte of one record's data changed is caught, so the test above proves something.
    def tamper(db: sqlite3.Connection) -> None:
        db.execute("UPDATE audit_records SET data = json_set(data, '$.tampered', 1) WHERE seq = 5")

    result = verify_copy(tmp_path, tamper)
    assert result.returncode != 0, result.stdout
    assert "record 5" in result.stdout + result.stderr, result.stdout + result.stderr


def test_a_trail_of_every_record_kind_written_before_typed_events_verifies(tmp_path: Path) -> None:
    result = verify_copy(tmp_path, fixture=FIXTURE_V2)
    # Its chains verify; `verify` still exits 1 for the conflict the fixture holds on purpose
    # (a response forged over gRPC for a part the filter had recorded), and names it.
    assert "Audit trail chains verified: 42 records." in result.stdout, result.stdout + result.stderr
    assert "1 signed checkpoints, vouched for up to record 42" in result.stdout, result.stdout
    conflicts = [line for line in result.stdout.splitlines() if "CONFLICT" in line]
    assert len(conflicts) == 1 and "gatehouse-test:6, gatehouse-test:42" in conflicts[0], result.stdout
    assert result.returncode == 1, result.stdout + result.stderr


def test_the_second_fixture_check_can_fail(tmp_path: Path) -> None:
    # Control: the forged answer's conflict flag dropped (as a type that did not know it would).
    def tamper(db: sqlite3.Connection) -> None:
        db.execute("UPDATE audit_records SET data = json_remove(data, '$.conflict') WHERE data LIKE '%\"conflict\"%'")

    result = verify_copy(tmp_path, tamper, fixture=FIXTURE_V2)
    assert result.returncode != 0, result.stdout
    assert "record 42 was edited" in result.stdout + result.stderr, result.stdout + result.stderr
