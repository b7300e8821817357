"""The MCP conformance suite gives the same per-check outcomes through a proxy as directly.

Two upstreams:
- `conformance`: tests/servers/conformance-server.mjs, which passes every server scenario
  directly, so the comparison covers progress and logging on SSE answers, sampling and
  elicitation round trips, stream resumption, subscriptions, DNS-rebinding protection.
- `everything`: the demo server. It lacks the suite's tools, so only 11 of 32 scenarios
  pass directly; the others must fail in the same way through the proxy.

The suite sends no bearer token. In front of the gateway sits a plain Envoy hop that adds
`Authorization: Bearer <dev token>` (the gateway has no anonymous mode).

Against any other deployment:
    CONFORMANCE_DIRECT_URL=http://127.0.0.1:3001/mcp \\
    CONFORMANCE_PROXIED_URL=http://127.0.0.1:8090/mcp  pytest tests/test_conformance.py -k given
"""

from __future__ import annotations

import os

import pytest

from harness.conformance import ConformanceRun, list_server_scenarios, run_conformance
from harness.procs import free_port

SUITE = "all"  # active + pending scenarios
DNS_REBINDING = "dns-rebinding-protection"

# Scenarios that must pass directly: if one fails directly, the harness or the upstream
# (not the proxy) is broken, and an "identical" comparison would prove little.
EVERYTHING_PASSES = {
    "server-initialize",
    "ping",
    "logging-set-level",
    "tools-list",
    "tools-call-simple-text",
    "tools-call-error",
    "server-sse-multiple-streams",
    "resources-list",
    "resources-subscribe",
    "resources-unsubscribe",
    "prompts-list",
}


def must_pass(upstream: str) -> set[str]:
    return set(list_server_scenarios()) if upstream == "conformance" else EVERYTHING_PASSES


def assert_same_outcomes(direct: ConformanceRun, proxied: ConformanceRun, must_pass: set[str]) -> None:
    assert direct.outcomes, f"The direct run produced no results:\n{direct.output[-3000:]}"
    missing = must_pass - set(direct.passed_scenarios())
    assert not missing, (
        f"Directly, these scenarios should pass but did not: {sorted(missing)}\n"
        f"{direct.failed_checks()}\n{direct.output[-3000:]}"
    )

    diffs = []
    for scenario in sorted(set(direct.outcomes) | set(proxied.outcomes)):
        d, p = direct.outcomes.get(scenario), proxied.outcomes.get(scenario)
        if d != p:
            why = [c.get("errorMessage") for c in proxied.checks.get(scenario, []) if c.get("status") != "SUCCESS"]
            diffs.append(f"  {scenario}:\n    direct:  {d}\n    proxied: {p}\n    proxied messages: {why}")
    assert not diffs, f"Outcomes differ ({proxied.url} vs {direct.url}):\n" + "\n".join(diffs)


@pytest.fixture(params=["conformance", "everything"])
def upstream(request):
    """(name, Upstream) for each upstream MCP server."""
    return request.param, request.getfixturevalue(
        "conformance_server" if request.param == "conformance" else "everything"
    )


def test_conformance_identical_through_plain_envoy(upstream, plain_envoy, tmp_path):
    name, server = upstream
    envoy = plain_envoy(server.port, host_rewrite=f"127.0.0.1:{server.port}")

    direct = run_conformance(server.url, tmp_path / "direct", suite=SUITE)
    proxied = run_conformance(envoy.url(), tmp_path / "plain-envoy", suite=SUITE)

    assert_same_outcomes(direct, proxied, must_pass(name))


@pytest.mark.gateway
@pytest.mark.parametrize("upstream_name", ["conformance", "everything"])
def test_conformance_identical_through_gateway(make_stack, plain_envoy, tmp_path, upstream_name):
    # The token hop stands in for the client and passes Host and Origin on as they come: the
    # gateway serves its address as one of its own.
    hop_port = free_port()
    stack = make_stack(
        upstream=upstream_name,
        allowed_hosts=[f"127.0.0.1:{hop_port}"],
        allowed_origins=[f"http://127.0.0.1:{hop_port}"],
    )
    token = stack.token("conformance", ["eng"], ttl=3600)
    hop = plain_envoy(
        stack.http_port, headers={"authorization": f"Bearer {token}"}, name="envoy-token-hop", port=hop_port
    )
    forwarded_before = stack.upstream_requests()

    direct = run_conformance(f"http://127.0.0.1:{stack.upstream_port}/mcp", tmp_path / "direct", suite=SUITE)
    through = run_conformance(hop.url(stack.mcp_path), tmp_path / "gateway", suite=SUITE)

    # The gateway refuses a foreign Host/Origin itself, whether or not the upstream does.
    assert through.passed_scenarios().count(DNS_REBINDING) == 1, through.checks.get(DNS_REBINDING)
    for run in (direct, through):
        run.outcomes.pop(DNS_REBINDING, None)
    assert_same_outcomes(direct, through, must_pass(upstream_name) - {DNS_REBINDING})
    # The suite really went through the gateway (not around it), and it was audited.
    assert stack.upstream_requests() > forwarded_before
    records = stack.audit.records(user="conformance", kind="request", limit=1000)
    assert records and all(r["data"]["decision"] == "allow" for r in records)


@pytest.mark.skipif(
    not os.environ.get("CONFORMANCE_PROXIED_URL"), reason="set CONFORMANCE_DIRECT_URL and CONFORMANCE_PROXIED_URL"
)
def test_conformance_identical_through_given_url(tmp_path):
    direct = run_conformance(os.environ["CONFORMANCE_DIRECT_URL"], tmp_path / "direct", suite=SUITE)
    proxied = run_conformance(os.environ["CONFORMANCE_PROXIED_URL"], tmp_path / "proxied", suite=SUITE)
    assert_same_outcomes(direct, proxied, set())
