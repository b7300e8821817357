"""HTTPS upstreams: Envoy checks the upstream's certificate against the configured CAs (or
the system's) and the name in the upstream URL; a certificate it cannot trust is refused,
and nothing is sent to that upstream."""

from __future__ import annotations

import pytest

from harness.stack import gen_tls, initialize_request

pytestmark = pytest.mark.gateway


def test_an_https_upstream_signed_by_the_configured_ca_is_reached(make_stack, tmp_path):
    gen_tls(tmp_path / "upstream")
    stack = make_stack(
        upstream="echo", upstream_tls=tmp_path / "upstream", upstream_ca_file=tmp_path / "upstream/ca.crt"
    )

    resp = stack.post(initialize_request(), token=stack.token("alice", ["eng"]))

    assert resp.status_code == 200, resp.text
    assert resp.json()["result"]["serverInfo"]["name"] == "echo-upstream"
    assert len(stack.echo.received()) == 1


@pytest.mark.parametrize("trust", ["another CA", "the system's CAs"])
def test_an_https_upstream_with_an_untrusted_certificate_is_refused(make_stack, tmp_path, trust):
    gen_tls(tmp_path / "upstream")
    gen_tls(tmp_path / "other")
    ca_file = tmp_path / "other/ca.crt" if trust == "another CA" else None
    stack = make_stack(upstream="echo", upstream_tls=tmp_path / "upstream", upstream_ca_file=ca_file)

    resp = stack.post(initialize_request(), token=stack.token("alice", ["eng"]))

    assert resp.status_code == 503, resp.text
    assert stack.echo.received() == [], "a request went to an upstream whose certificate is not trusted"
    # Decided and recorded, and the answer that never came is recorded too.
    audited = stack.audit.wait_complete(resp.headers["x-gatehouse-request-id"])
    assert audited["request"]["data"]["decision"] == "allow"
    final = [r for r in audited["responses"] if r["data"]["final"]][-1]["data"]
    assert final["http_status"] == 503
