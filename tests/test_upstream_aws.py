"""The `aws_sigv4` upstream credential: the gateway assumes a role per caller with STS (a real
moto STS with IAM authentication on) and signs each call with that caller's session; an
upstream that verifies SigV4 with botocore accepts it. Callers never share a session, the
caller's token and forged `x-amz-*` headers never arrive, secrets are in no answer, record
or log, and every way of not having a good credential refuses the call without forwarding it.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import quote

import boto3
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from harness.approvals import APPROVAL_REQUIRED, SESSION_RULE, Approver, Caller, approval_rule
from harness.aws import CALLER_ROLE, PARTNER_EXTERNAL_ID, PARTNER_ROLE, REFUSED_ROLE, AwsSts, SigV4Upstream
from harness.procs import free_port
from harness.stack import gatehouse, initialize_request, tools_call, write_config

USERS = {"alice": ["eng"], "bob": ["eng", "approvers"]}
UPSTREAM_CREDENTIAL = -32031


@pytest.fixture
def sts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """moto STS; the environment (inherited by the gateway) holds its base key and nothing else of AWS."""
    sts = AwsSts()
    for name, value in sts.env(tmp_path).items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    yield sts
    sts.close()


def sigv4_credentials(**change) -> dict:
    """The upstream's `credentials:`, with `change` (None drops a key)."""
    creds = {
        "type": "aws_sigv4",
        "role_arn": CALLER_ROLE,
        "region": "us-east-1",
        "service": "execute-api",
        "session_duration_s": 900,
        **change,
    }
    return {k: v for k, v in creds.items() if v is not None}


@pytest.fixture
def aws_stack(make_stack, sts):
    """Factory: a gateway in front of a SigV4Upstream; keyword arguments change `credentials:`."""

    def start(**change):
        credentials = sigv4_credentials(**{"sts_endpoint": sts.url, **change})
        return make_stack(upstream="sigv4", aws_sts=sts, upstream_credentials=credentials)

    return start


def credential_error(resp: httpx.Response, status: int, request_id: int) -> dict:
    """The gateway's JSON-RPC error for a call it could not present a credential for: it names
    the request in the audit trail in `error.data` too."""
    assert resp.status_code == status, f"want {status}, got {resp.status_code}: {resp.text[:500]}"
    body = resp.json()
    assert body.get("jsonrpc") == "2.0" and body.get("id") == request_id, body
    error = body.get("error") or {}
    assert error.get("code") == UPSTREAM_CREDENTIAL and error.get("message"), body
    assert error.get("data", {}).get("request_id") == resp.headers["x-gatehouse-request-id"], body
    return error


def assert_denied(stack, resp: httpx.Response) -> dict:
    record = stack.audit.request(resp.headers["x-gatehouse-request-id"])["request"]
    assert record, "no request record"
    assert record["data"]["decision"] == "deny" and record["data"].get("reason"), record["data"]
    return record["data"]


def final_record(stack, resp: httpx.Response) -> dict:
    audited = stack.audit.wait_complete(resp.headers["x-gatehouse-request-id"])
    return [r for r in audited["responses"] if r["data"].get("final")][-1]["data"]


def secret_forms(secret: str) -> set[str]:
    """The secret as is, JSON-escaped with `\\/`, percent-encoded, and a slice of its middle."""
    return {secret, secret.replace("/", "\\/"), quote(secret, safe=""), secret[len(secret) // 3 :][:24]}


# --- the harness itself, no gateway -------------------------------------------------------------------


def test_the_harness_verifier_accepts_botocore_signatures_and_refuses_any_change(sts):
    """What the gateway tests rely on: moto's STS answers and refuses for real, and the
    verifier accepts a botocore-signed call but not one with anything changed."""
    upstream = SigV4Upstream(sts)
    try:
        client = boto3.client(
            "sts",
            endpoint_url=sts.url,
            region_name="us-east-1",
            aws_access_key_id=sts.base_access_key_id,
            aws_secret_access_key=sts.base_secret_access_key,
        )
        got = client.assume_role(
            RoleArn=CALLER_ROLE, RoleSessionName="alice", SourceIdentity="alice", Tags=[{"Key": "k", "Value": "v"}]
        )["Credentials"]
        for role, extra in ((REFUSED_ROLE, {}), (PARTNER_ROLE, {"ExternalId": "wrong"})):
            with pytest.raises(ClientError, match="AccessDenied"):
                client.assume_role(RoleArn=role, RoleSessionName="alice", **extra)
        (ok, *denied) = sts.calls()
        assert (ok.source_identity, ok.tags, ok.signed_with) == ("alice", {"k": "v"}, sts.base_access_key_id)
        assert [c.error_code for c in denied] == ["AccessDenied", "AccessDenied"]
        assert got["SessionToken"] in sts.secrets() and sts.base_secret_access_key in sts.secrets()

        creds = Credentials(got["AccessKeyId"], got["SecretAccessKey"], got["SessionToken"])
        body = json.dumps(tools_call("echo", {"x": 1}, request_id=1)).encode()

        def send(service="execute-api", url=upstream.url, content=body, signer=creds, **headers) -> httpx.Response:
            request = AWSRequest("POST", upstream.url, data=body, headers={"content-type": "application/json"})
            SigV4Auth(signer, service, "us-east-1").add_auth(request)
            signed = {name.lower(): value for name, value in request.headers.items()}
            return httpx.post(url, content=content, headers={**signed, **headers})

        assert send().status_code == 200
        assert upstream.accepted()[0].subject == "alice"
        for changed in (
            send(content=body + b" "),
            send(url=upstream.url + "2"),
            send(host=f"localhost:{upstream.port}"),
            send(**{"x-amz-security-token": "forged"}),
            send(service="lambda"),
            httpx.post(upstream.url, content=body),
        ):
            assert changed.status_code == 403, changed.text
        upstream.clock_offset_s = 600
        assert "Signature expired" in send().json()["message"]
        assert (len(upstream.accepted()), len(upstream.refused())) == (1, 7)

        upstream.clock_offset_s = 0
        sts.clock_offset_s = -3600
        old = client.assume_role(RoleArn=CALLER_ROLE, RoleSessionName="alice", DurationSeconds=900)["Credentials"]
        assert sts.calls()[-1].expires_at() < time.time() - 2000
        expired = Credentials(old["AccessKeyId"], old["SecretAccessKey"], old["SessionToken"])
        assert "expired" in send(signer=expired).json()["message"]
    finally:
        upstream.close()


# --- through the gateway ---------------------------------------------------------------------------


@pytest.mark.gateway
def test_each_caller_reaches_the_upstream_with_their_own_role_session(aws_stack, sts):
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "execute-api:Invoke", "Resource": "*"}],
    }
    stack = aws_stack(role_arn=PARTNER_ROLE, external_id=PARTNER_EXTERNAL_ID, session_policy=policy)
    forged = {
        "x-amz-security-token": "forged-token",
        "x-amz-date": "20200101T000000Z",
        "x-amz-content-sha256": "UNSIGNED",
    }

    tokens, answers = {}, {}
    for sub, groups in USERS.items():
        tokens[sub] = token = stack.token(sub, groups)
        headers = {"mcp-session-id": stack.initialize(token), **forged}
        answers[sub] = [
            stack.post({"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, token=token, headers=headers),
            stack.post(tools_call("echo", {"who": sub}, request_id=3), token=token, headers=headers),
        ]
        assert [a.status_code for a in answers[sub]] == [200, 200], [a.text for a in answers[sub]]
        assert json.loads(answers[sub][1].json()["result"]["content"][0]["text"])["arguments"] == {"who": sub}

    calls = sts.calls()
    assert sorted(c.role_session_name for c in calls) == ["alice", "bob"], calls
    for c in calls:
        assert c.status == 200 and c.signed_with == sts.base_access_key_id, c
        assert (c.role_arn, c.source_identity, c.duration_seconds) == (PARTNER_ROLE, c.role_session_name, 900)
        assert (c.external_id, c.policy) == (PARTNER_EXTERNAL_ID, policy)
        assert c.tags == {f"group:{g}": "true" for g in USERS[c.source_identity]} and c.tag_count() == len(c.tags)

    assert not stack.sigv4.refused(), stack.sigv4.refused()
    by_subject = defaultdict(list)
    for r in stack.sigv4.accepted():
        by_subject[r.subject].append(r)
        if r.body and r.json().get("method") == "tools/call":
            assert r.json()["params"]["arguments"]["who"] == r.subject, "a call went up with another caller's session"
        assert r.headers["x-amz-security-token"] == [r.session.session_token], r.headers
        assert r.headers["host"] == [f"127.0.0.1:{stack.sigv4.port}"] and r.path == "/prod/mcp"
        assert "x-amz-content-sha256" not in r.headers, r.headers
        sent = json.dumps(r.headers)
        assert not [v for v in (*tokens.values(), *forged.values()) if v in sent], f"client headers arrived: {sent}"
    keys = {sub: {r.access_key_id for r in rs} for sub, rs in by_subject.items()}
    assert set(keys) == {"alice", "bob"} and all(len(k) == 1 for k in keys.values()), keys
    assert keys["alice"] != keys["bob"]

    for sub, (_, call) in answers.items():
        data = stack.audit.request(call.headers["x-gatehouse-request-id"])["request"]["data"]
        assert data["decision"] == "allow"
        assert data["upstream_credential"] == {
            "type": "aws_sigv4",
            "role_arn": PARTNER_ROLE,
            "source_identity": sub,
            "access_key_id": next(iter(keys[sub])),
        }


@pytest.mark.gateway
def test_one_assume_role_per_caller_under_concurrent_load(aws_stack, sts):
    sts.delay_s = 0.5  # the first calls of both callers all wait on STS together
    stack = aws_stack(tag_groups=["approv*"])
    tokens = {sub: stack.token(sub, groups) for sub, groups in USERS.items()}

    def call(job: tuple[str, int]) -> tuple[str, httpx.Response]:
        sub, n = job
        return sub, stack.post(tools_call("echo", {"who": sub, "n": n}), token=tokens[sub])

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(call, [(sub, n) for n in range(30) for sub in USERS]))

    failed = [(sub, r.status_code, r.text[:200]) for sub, r in results if r.status_code != 200]
    assert not failed, failed
    calls = sts.calls()
    assert sorted(c.source_identity for c in calls) == ["alice", "bob"], [(c.source_identity, c.status) for c in calls]
    assert {c.source_identity: c.tags for c in calls} == {"alice": {}, "bob": {"group:approvers": "true"}}
    accepted = stack.sigv4.accepted()
    assert (len(accepted), len(stack.sigv4.refused())) == (60, 0)
    assert all(r.json()["params"]["arguments"]["who"] == r.subject for r in accepted)
    assert len({r.access_key_id for r in accepted}) == 2


@pytest.mark.gateway
def test_a_session_is_renewed_only_when_less_than_a_quarter_of_it_is_left(aws_stack, sts):
    """900 s sessions are renewed with less than min(300 s, 900 s / 4) = 225 s left: alice's
    (260 s left) is kept; bob's (200 s left) is used once, renewed on the next call, then kept."""
    stack = aws_stack()

    def akids(sub: str, offset: float, calls: int) -> list[str]:
        sts.clock_offset_s = offset
        token = stack.token(sub, USERS[sub])
        for _ in range(calls):
            resp = stack.post(tools_call("echo", {"who": sub}), token=token)
            assert resp.status_code == 200, resp.text
            sts.clock_offset_s = 0  # a renewal gets a full session
        return [r.access_key_id for r in stack.sigv4.accepted() if r.subject == sub]

    alice = akids("alice", -640, 3)
    assert len(set(alice)) == 1 and len(sts.calls()) == 1, "a session with 260 s of 900 left was renewed"
    first, second, third = akids("bob", -700, 3)
    assert first != second == third, "want bob's 200 s session renewed once, then the new one kept"
    assert [c.source_identity for c in sts.calls()] == ["alice", "bob", "bob"]


@pytest.mark.gateway
def test_no_secret_of_a_session_reaches_an_answer_a_record_or_a_log(aws_stack, sts):
    stack = aws_stack()
    stack.service_log = "trace"  # even the AWS SDK's own trace output holds no secret
    stack.restart_service()
    answers = []
    for sub, groups in USERS.items():
        token = stack.token(sub, groups)
        answers += [stack.post(initialize_request(), token=token), stack.post(tools_call("echo", {}), token=token)]
    stack.sigv4.clock_offset_s = 600  # and one answer where the upstream refused the signature
    answers.append(stack.post(tools_call("echo", {}), token=stack.token("alice", USERS["alice"])))
    assert [a.status_code for a in answers] == [200, 200, 200, 200, 502], [a.text for a in answers]
    for a in answers:
        stack.audit.wait_complete(a.headers["x-gatehouse-request-id"])

    secrets = sts.secrets()
    assert len(secrets) == 5, "want the base secret key and two sessions' secret key and token"
    blobs = {**stack.trail_files(), **stack.gateway_logs()}
    blobs["metrics"] = httpx.get(f"{stack.rest_url}/metrics", timeout=5).content
    assert b"Assumed the upstream's role" in blobs["gatehouse-serve"], "the service's log was not searched"
    for i, a in enumerate(answers):
        blobs[f"answer {i}"] = a.content + json.dumps(dict(a.headers)).encode()
    leaked = {
        name: [
            f"secret {n}: {form[:12]}…"
            for n, s in enumerate(secrets)
            for form in secret_forms(s)
            if form.encode() in blob
        ]
        for name, blob in blobs.items()
    }
    assert not {k: v for k, v in leaked.items() if v}, leaked


@pytest.mark.gateway
def test_sts_unreachable_refuses_the_call_with_503_and_forwards_nothing(aws_stack, sts):
    stack = aws_stack(sts_endpoint=f"http://127.0.0.1:{free_port()}")

    resp = stack.post(tools_call("echo", {"who": "alice"}, request_id=41), token=stack.token())

    credential_error(resp, 503, 41)
    assert "alice" not in resp.text
    assert stack.sigv4.received() == 0 and stack.upstream_requests() == 0
    assert_denied(stack, resp)


@pytest.mark.gateway
def test_an_approved_call_goes_up_signed_as_its_caller_not_its_approver(make_stack, sts):
    stack = make_stack(
        upstream="sigv4",
        aws_sts=sts,
        upstream_credentials=sigv4_credentials(sts_endpoint=sts.url),
        policy=[SESSION_RULE, approval_rule(hold_seconds=0)],
    )
    alice = Caller(stack, "alice")
    asked = alice.call("echo", {"rows": 3})
    assert asked.status_code == 200 and asked.json()["error"]["code"] == APPROVAL_REQUIRED, asked.text
    assert not [r for r in stack.sigv4.accepted() if r.method == "POST" and r.json().get("method") == "tools/call"]
    bob = Approver(stack, "bob")
    approval = bob.wait_pending()
    assert bob.approve(approval["id"]).status_code == 200

    done = alice.call("echo", {"rows": 3})

    assert done.status_code == 200 and "result" in done.json(), done.text
    (call,) = [r for r in stack.sigv4.accepted() if r.json().get("method") == "tools/call"]
    assert call.subject == "alice" and call.session.role_session_name == "alice"
    assert {c.source_identity for c in sts.calls()} == {"alice"}, "the approver's identity signed the call"
    bob.close()


@pytest.mark.gateway
def test_a_query_and_bodiless_requests_are_signed_as_the_upstream_receives_them(aws_stack, sts):
    """The route replaces the gateway's path (/mcp) with the upstream's (/prod/mcp) and keeps the
    query; a DELETE has no body: each arrives with a signature botocore accepts."""
    stack = aws_stack()
    token = stack.token()
    session = stack.initialize(token)
    query = "?tenant=a%20b&region=eu-west-1&empty="
    resp = stack.post(tools_call("echo", {"q": 1}, request_id=5), token=token, url=stack.url + query)
    assert resp.status_code == 200, resp.text
    gone = httpx.delete(stack.url, headers={"authorization": f"Bearer {token}", "mcp-session-id": session}, timeout=10)
    assert gone.status_code == 200, gone.text

    assert not stack.sigv4.refused(), [r.reason for r in stack.sigv4.refused()]
    seen = [(r.method, r.path) for r in stack.sigv4.accepted()]
    assert ("POST", "/prod/mcp" + query) in seen and ("DELETE", "/prod/mcp") in seen, seen


@pytest.mark.gateway
def test_a_slow_sts_refuses_in_time_and_its_session_serves_the_next_call(aws_stack, sts):
    """STS slower than the Check: the service answers before Envoy gives up (its own -32031 and a
    record, not Envoy's bare 503), and the AssumeRole it started still completes and is kept."""
    stack = aws_stack()
    sts.delay_s = 3.0  # the Check has 2 s (ext_authz_timeout_ms)
    token = stack.token()
    resp = stack.post(tools_call("echo", {"who": "alice"}, request_id=31), token=token)
    credential_error(resp, 503, 31)
    assert_denied(stack, resp)
    assert stack.sigv4.received() == 0

    deadline = time.monotonic() + 10
    while not [c for c in sts.calls() if c.status == 200] and time.monotonic() < deadline:
        time.sleep(0.1)
    sts.delay_s = 0.0
    resp = stack.post(tools_call("echo", {"who": "alice"}, request_id=32), token=token)
    assert resp.status_code == 200, resp.text
    assert len(sts.calls()) == 1, "the session assumed in the background was not kept"


@pytest.mark.gateway
def test_a_renewal_sts_cannot_answer_keeps_the_session_that_still_has_time(aws_stack, sts):
    stack = aws_stack()
    sts.clock_offset_s = -700  # a 900 s session with 200 s left: due for renewal
    token = stack.token()
    assert stack.post(tools_call("echo", {"n": 1}), token=token).status_code == 200
    sts.clock_offset_s, sts.delay_s = 0, 3.0  # the renewal outlasts the Check

    resp = stack.post(tools_call("echo", {"n": 2}), token=token)

    assert resp.status_code == 200, resp.text
    first, second = [r.access_key_id for r in stack.sigv4.accepted() if r.method == "POST"]
    assert first == second, "the current session was not used while its renewal was under way"


@pytest.mark.gateway
@pytest.mark.parametrize(
    "change",
    [{"role_arn": REFUSED_ROLE}, {"role_arn": PARTNER_ROLE, "external_id": "not-the-partner"}],
    ids=["role-not-allowed", "wrong-external-id"],
)
def test_a_role_sts_refuses_refuses_the_call_with_403(aws_stack, sts, change):
    stack = aws_stack(**change)

    resp = stack.post(tools_call("echo", {"who": "alice"}, request_id=51), token=stack.token())

    error = credential_error(resp, 403, 51)
    assert "AccessDenied" in error["message"], error
    assert stack.sigv4.received() == 0
    assert sts.calls() and all(c.error_code == "AccessDenied" for c in sts.calls()), sts.calls()
    assert_denied(stack, resp)


@pytest.mark.gateway
def test_credentials_already_expired_when_they_arrive_refuse_the_call_with_503(aws_stack, sts):
    sts.clock_offset_s = -3600  # STS an hour behind: its 900 s sessions expired 45 minutes ago
    stack = aws_stack()

    resp = stack.post(tools_call("echo", {"who": "alice"}, request_id=61), token=stack.token())

    error = credential_error(resp, 503, 61)
    assert re.search(r"expir|clock", error["message"], re.IGNORECASE), error
    assert stack.sigv4.received() == 0
    assert sts.calls() and all(c.expires_at() < time.time() for c in sts.calls())
    assert_denied(stack, resp)


@pytest.mark.gateway
def test_a_subject_that_cannot_be_a_source_identity_is_refused_with_403(aws_stack, sts):
    stack = aws_stack()
    good = "carol.ops+mcp=1,x@example.com"
    assert stack.post(tools_call("echo", {}), token=stack.token(good, ["eng"])).status_code == 200
    (call,) = sts.calls()
    assert (call.source_identity, call.role_session_name) == (good, good)

    for n, sub in enumerate(["x", "dave smith", "erin/ops", "f" * 65, "gr\u00e9goire"]):
        resp = stack.post(tools_call("echo", {}, request_id=70 + n), token=stack.token(sub, ["eng"]))
        credential_error(resp, 403, 70 + n)
        assert_denied(stack, resp)
    assert len(sts.calls(None)) == 1, "STS was asked for a subject it cannot take"
    assert stack.sigv4.received() == 1


@pytest.mark.gateway
@pytest.mark.parametrize("refusal", ["service", "clock"])
def test_an_upstream_refusing_the_signature_is_a_502_without_its_body(aws_stack, sts, refusal):
    stack = aws_stack()
    if refusal == "service":
        stack.sigv4.service = "lambda"  # the upstream expects another signing name
    else:
        stack.sigv4.clock_offset_s = 600  # the upstream's clock 10 minutes ahead

    resp = stack.post(tools_call("echo", {"who": "alice"}, request_id=81), token=stack.token())

    error = credential_error(resp, 502, 81)
    assert re.search(r"refused", error["message"], re.IGNORECASE) and "403" in error["message"], error
    (refused,) = stack.sigv4.refused()
    assert json.loads(refused.answer)["message"] not in resp.text, "the upstream's refusal reached the client"
    assert "x-amzn-errortype" not in resp.headers
    assert final_record(stack, resp).get("withheld") == "credential_refused"


@pytest.mark.gateway
@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({}, None),
        ({"role_arn": "mcp-caller"}, "credentials.role_arn"),
        ({"role_arn": "arn:aws:iam::1234:role/mcp-caller"}, "credentials.role_arn"),
        ({"region": None}, "region"),
        ({"session_duration_s": 600}, "credentials.session_duration_s"),
        ({"session_duration_s": 43201}, "credentials.session_duration_s"),
    ],
    ids=["good", "not-an-arn", "short-account", "no-region", "too-short", "too-long"],
)
def test_check_config_refuses_a_bad_aws_sigv4_credential(tmp_path, change, problem):
    ports = ("http_port", "https_port", "admin_port", "rest_port", "grpc_port")
    config = write_config(
        tmp_path,
        upstream_url="http://127.0.0.1:9/mcp",
        upstream_credentials=sigv4_credentials(**change),
        **{p: free_port() for p in ports},
    )

    result = gatehouse("check-config", config, check=False)

    if problem is None:
        assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr
    else:
        assert result.returncode == 1, result.stdout + result.stderr
        assert problem in result.stderr, result.stderr
