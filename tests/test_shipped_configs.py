"""Every shipped config validates: gatehouse.yaml with `gatehouse check-config`, and the
Envoy bootstrap rendered from it with `envoy --mode validate` (real Envoy 1.40)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from harness import paths
from harness.stack import envoy_env, gatehouse, gen_tls

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = sorted([ROOT / "gatehouse.yaml", *ROOT.glob("examples/*.yaml")])

pytestmark = pytest.mark.gateway


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: p.name)
def test_shipped_config_and_its_envoy_bootstrap_validate(config: Path, tmp_path: Path) -> None:
    assert gatehouse("check-config", config).stdout.strip().endswith("OK")
    # The bootstrap names the TLS files the demo generates; make sure they exist.
    gen_tls(ROOT / ".gatehouse" / "tls")
    out = tmp_path / "envoy.yaml"
    gatehouse("envoy-config", "--config", config, "--out", out)
    result = subprocess.run(
        [str(paths.envoy_bin()), "--mode", "validate", "-c", str(out), "--disable-hot-restart"],
        capture_output=True,
        text=True,
        timeout=120,
        # Validation loads the filter, which reads the masking token key from the environment.
        env={**os.environ, **envoy_env(config)},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "OK" in result.stdout


def test_check_config_reports_every_problem_with_its_path(tmp_path: Path) -> None:
    bad = (ROOT / "gatehouse.yaml").read_text()
    bad = bad.replace("grpc_listen: 127.0.0.1:9091", "grpc_listen: nowhere")
    bad = bad.replace("url: http://127.0.0.1:3001/mcp", "url: ftp://x")
    path = tmp_path / "bad.yaml"
    path.write_text(bad)
    result = gatehouse("check-config", path, check=False)
    assert result.returncode == 1
    assert "service.grpc_listen" in result.stderr
    assert "upstreams[0].url" in result.stderr


def test_check_config_reports_every_problem_of_a_partial_file(tmp_path: Path) -> None:
    path = tmp_path / "partial.yaml"
    path.write_text("service:\n  rest_listen: 127.0.0.1:9090\n  bogus: 1\nupstreams: []\nextra: 1\n")
    result = gatehouse("check-config", path, check=False)
    assert result.returncode == 1
    for problem in (
        "service.bogus: unknown field",
        "service.grpc_listen: missing",
        "identity: missing: this section is required",
        "audit: missing",
        "envoy: missing",
        "extra: unknown section",
    ):
        assert problem in result.stderr, result.stderr


def test_explain_names_the_rule_that_decides_and_why_the_others_missed() -> None:
    config = ROOT / "gatehouse.yaml"
    args = ["explain", "--config", config, "--as", "alice", "--groups", "eng", "--upstream", "demo"]
    drop = gatehouse(*args, "--tool", "run_query", "--args", '{"sql": "DROP TABLE customers"}').stdout
    assert drop.strip().endswith('DENIED by rule "no-destructive-sql"'), drop
    assert 'rule "mcp-protocol": no match: method "tools/call" is not one of' in drop, drop
    select = gatehouse(*args, "--tool", "run_query", "--args", '{"sql": "SELECT 1"}').stdout
    assert 'rule "no-destructive-sql": no match: argument condition 1' in select, select
    assert 'by rule "sql-needs-approval"' in select.splitlines()[-1], select
    outsider = gatehouse("explain", "--config", config, "--as", "eve", "--groups", "visitors").stdout
    assert "DENIED before any rule" in outsider, outsider
