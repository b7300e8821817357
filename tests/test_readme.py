"""The README's examples run as pasted and print what the README shows.

`scripts/readme-check` runs every shell block of README.md, in order, against a fresh demo
on free ports and compares each output's shape with the block the README shows after it.
The first tests here check that the comparison can fail: a stale example must not pass."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import subprocess
import sys

import pytest

from harness import paths

SCRIPT = paths.REPO / "scripts" / "readme-check"


def _checker():
    loader = importlib.machinery.SourceFileLoader("readme_check", str(SCRIPT))
    spec = importlib.util.spec_from_loader("readme_check", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["readme_check"] = module  # its dataclasses look their module up
    loader.exec_module(module)
    return module


RC = _checker()

ANSWER = """HTTP/1.1 403 Forbidden\r
content-type: application/json\r
x-gatehouse-request-id: 01a23bb333b0595c562f4e58a356ecec\r
date: Thu, 03 Dec 2026 11:38:49 GMT\r
\r
{"error":{"code":-32003,"data":{"rule":"no-destructive-sql"}},"id":7,"jsonrpc":"2.0"}"""


def test_text_shapes_allow_ids_times_and_elisions_only():
    shown = """HTTP/1.1 403 Forbidden
content-type: application/json
x-gatehouse-request-id: 90341e80adf71642b67e81756f6cb920
…
{"error":{"code":-32003,"data":{"rule":"no-destructive-sql"}},"id":3,…}"""
    assert RC.compare_text(shown, ANSWER) is None
    # Each of these is an example gone stale, and must be caught.
    assert RC.compare_text(shown.replace("403 Forbidden", "200 OK"), ANSWER)
    assert RC.compare_text(shown.replace("-32003", "-32030"), ANSWER)
    assert RC.compare_text(shown.replace("no-destructive-sql", "other-tools"), ANSWER)
    assert RC.compare_text(shown.replace("…\n", ""), ANSWER), "extra lines need a `…` line"
    assert RC.compare_text(shown + "\nmore", ANSWER)
    problem = RC.compare_text(shown.replace("content-type", "content-kind"), ANSWER)
    assert problem and "content-kind" in problem and "content-type" in problem, problem


def test_json_shapes_need_every_key_and_fixed_value_shown():
    data = '"data": {"decision": "allow", "reason": "allowed by rule \\"x\\"", "protocol_version": null}'
    record = '{"seq": 9, "writer": "gatehouse-1", "recorded_at": "2026-12-03T08:55:01.561Z", ' + data + "}"
    shown = '{"seq": 14, "writer": "gatehouse-1", "recorded_at": "2026-01-01T00:00:00Z", ' + data + "}"
    assert RC.compare_json(shown, record) is None
    with_rule = shown.replace('"decision"', '"policy_rule": "x", "decision"')
    assert "policy_rule" in (RC.compare_json(with_rule, record) or "")
    assert RC.compare_json(shown.replace('"allow"', '"deny"'), record)
    assert RC.compare_json(shown.replace('rule \\"x\\"', 'rule \\"y\\"'), record)
    assert RC.compare_json(shown.replace('"protocol_version": null', '"protocol_version": false'), record)
    assert RC.compare_json(shown, "not json at all")


def test_blocks_pair_a_command_with_the_output_right_after_it():
    text = """
<!-- readme-check: exit 1 -->
```sh
false
```
```
out
```
Some words.
```sh
true
```
between
```
not its output
```
"""
    blocks = [b for b in RC.parse_blocks(text) if b.lang == "sh"]
    assert [b.directives for b in blocks] == [["exit 1"], []]
    assert blocks[0].output is not None and blocks[0].output.text == "out"
    assert blocks[1].output is None


@pytest.mark.gateway
def test_every_readme_example_runs_as_shown():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=900, cwd=paths.REPO)
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-5000:]
    assert "every README example ran as shown" in done.stdout
