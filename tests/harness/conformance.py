"""Running the MCP conformance suite (`@modelcontextprotocol/conformance`) against a server URL.

CLI (needs Node 22):
    conformance server --url URL [--scenario NAME | --suite active|all|pending] -o OUT_DIR
It prints `Running client scenario 'NAME' against server: URL` then `Results saved to OUT_DIR/server-NAME-<time>`
for each scenario, and a summary; the exit code is 1 when any check failed. Each result
folder holds `checks.json`: a list of checks `{id, name, description, status, errorMessage?,
details?, ...}` with status SUCCESS, FAILURE, WARNING or INFO.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import paths

# One check's outcome: (check id, status). A scenario's outcome is the sorted list.
Outcome = list[tuple[str, str]]


@dataclass
class ConformanceRun:
    url: str
    returncode: int
    outcomes: dict[str, Outcome]
    checks: dict[str, list[dict]]
    output: str

    def failed_checks(self) -> dict[str, list[str]]:
        return {
            scenario: [f"{c['id']}: {c.get('errorMessage', '')}" for c in checks if c.get("status") == "FAILURE"]
            for scenario, checks in self.checks.items()
            if any(c.get("status") == "FAILURE" for c in checks)
        }

    def passed_scenarios(self) -> list[str]:
        return sorted(s for s, o in self.outcomes.items() if o and all(st != "FAILURE" for _, st in o))


def _node_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{paths.node22_bin().parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def list_server_scenarios() -> list[str]:
    out = subprocess.run(
        [paths.node22_bin(), paths.conformance_js(), "list", "--server"],
        capture_output=True,
        text=True,
        check=True,
        env=_node_env(),
        timeout=60,
    ).stdout
    return re.findall(r"^\s+- (\S+)", out, flags=re.M)


def run_conformance(
    url: str, out_dir: Path, *, suite: str = "active", scenario: str | None = None, timeout: float = 600
) -> ConformanceRun:
    out_dir.mkdir(parents=True, exist_ok=True)
    argv = [str(paths.node22_bin()), str(paths.conformance_js()), "server", "--url", url, "-o", str(out_dir)]
    argv += ["--scenario", scenario] if scenario else ["--suite", suite]
    proc = subprocess.run(argv, capture_output=True, text=True, env=_node_env(), timeout=timeout)
    output = proc.stdout + proc.stderr
    (out_dir / "conformance-output.txt").write_text(output)

    checks: dict[str, list[dict]] = {}
    current: str | None = None
    for line in output.splitlines():
        if m := re.match(r"^Running client scenario '([^']+)' against server", line):
            current = m.group(1)
            checks[current] = []
        elif (m := re.match(r"^Results saved to (.+)$", line)) and current:
            checks[current] = json.loads((Path(m.group(1).strip()) / "checks.json").read_text())
    if scenario and not checks:
        raise AssertionError(f"Conformance run printed no scenario:\n{output[-3000:]}")
    outcomes = {s: sorted((c["id"], c["status"]) for c in cs) for s, cs in checks.items()}
    return ConformanceRun(url, proc.returncode, outcomes, checks, output)
