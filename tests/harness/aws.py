"""AWS for the `aws_sigv4` upstream credential: a real STS (moto) and an upstream that checks SigV4.

`AwsSts` serves moto's STS and IAM in this process on a free port, with IAM authentication
on: the gateway's AssumeRole must be signed with the base key `AwsSts` creates, and is
allowed only by that user's policy and the role's trust policy (the roles `mcp-caller`, and
`mcp-partner` which trusts only callers that give the external id `PARTNER_EXTERNAL_ID`).
Every STS call is recorded as it arrived (moto ignores SourceIdentity and Tags, so the
recording is where a test learns what the gateway asked) with the credentials moto issued.
Two things are changed in moto's answers: an error is put in the envelope STS uses (see
`_aws_error_envelope`), and `clock_offset_s` shifts Expiration (a fault moto cannot make).

`SigV4Upstream` is an MCP-over-HTTP upstream (JSON answers, like `EchoUpstream`) that
verifies the SigV4 signature of every request with botocore, an implementation independent
of the gateway's: the session's secret comes from `AwsSts`, the request is rebuilt from
exactly what arrived. A refused request gets a 403 like API Gateway's and is kept apart.

    sts = AwsSts()
    upstream = SigV4Upstream(sts, region="us-east-1", service="execute-api")

moto keeps its state per process: `AwsSts` resets it when it starts, so run one at a time.
"""

from __future__ import annotations

import datetime as dt
import hmac
import io
import json
import re
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from moto import settings as moto_settings
from moto.iam.models import iam_backends
from moto.moto_api._internal.models import moto_api_backend
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

from .mcp_servers import echo_answer, json_handler, serve_in_thread
from .procs import free_port

ACCOUNT = "123456789012"  # moto's default account
CALLER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/mcp-caller"
PARTNER_ROLE = f"arn:aws:iam::{ACCOUNT}:role/mcp-partner"
PARTNER_EXTERNAL_ID = "partner-7d41"
REFUSED_ROLE = f"arn:aws:iam::{ACCOUNT}:role/billing-admin"  # the base user may not assume it

# Every variable through which the AWS SDK chain could find credentials or an endpoint on
# this machine; `AwsSts.env()` sets or clears each one.
AWS_ENV_VARS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_EC2_METADATA_DISABLED",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_STS",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)

AMZ_DATE = "%Y%m%dT%H%M%SZ"
STS_XMLNS = "https://sts.amazonaws.com/doc/2011-06-15/"
SIGNATURE_MISMATCH = (
    "The request signature we calculated does not match the signature you provided. "
    "Check your AWS Secret Access Key and signing method."
)


# --- STS -------------------------------------------------------------------------------


@dataclass
class StsCall:
    """One call to STS: the parameters as sent and what moto answered."""

    action: str
    params: dict[str, str]
    status: int
    access_key_id: str | None = None
    secret_access_key: str | None = None
    session_token: str | None = None
    expiration: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    signed_with: str | None = None  # the access key id in the request's Authorization

    @property
    def role_arn(self) -> str | None:
        return self.params.get("RoleArn")

    @property
    def role_session_name(self) -> str | None:
        return self.params.get("RoleSessionName")

    @property
    def source_identity(self) -> str | None:
        return self.params.get("SourceIdentity")

    @property
    def external_id(self) -> str | None:
        return self.params.get("ExternalId")

    @property
    def policy(self) -> Any:
        return json.loads(self.params["Policy"]) if "Policy" in self.params else None

    @property
    def duration_seconds(self) -> int | None:
        return int(self.params["DurationSeconds"]) if "DurationSeconds" in self.params else None

    @property
    def tags(self) -> dict[str, str]:
        """Tags.member.N.Key/Value as a mapping (a repeated key would show as a lost entry)."""
        out: dict[str, str] = {}
        for name, key in self.params.items():
            m = re.fullmatch(r"Tags\.member\.(\d+)\.Key", name)
            if m:
                out[key] = self.params.get(f"Tags.member.{m.group(1)}.Value", "")
        return out

    def tag_count(self) -> int:
        return sum(1 for name in self.params if re.fullmatch(r"Tags\.member\.\d+\.Key", name))

    def expires_at(self) -> float | None:
        if not self.expiration:
            return None
        return dt.datetime.fromisoformat(self.expiration.replace("Z", "+00:00")).timestamp()


class AwsSts:
    """moto's STS (and IAM) on 127.0.0.1:`port`, every call recorded."""

    def __init__(self, region: str = "us-east-1") -> None:
        self.region = region
        self._lock = threading.Lock()
        self._calls: list[StsCall] = []
        # Seconds added to every Expiration STS answers: an STS clock this far ahead (or,
        # negative, behind) the gateway's. moto cannot do this; the answer is rewritten.
        self.clock_offset_s = 0.0
        # How long every AssumeRole takes: concurrent first calls then overlap for sure.
        self.delay_s = 0.0

        moto_api_backend.reset()  # roles and users of an earlier AwsSts in this process
        self.base_access_key_id, self.base_secret_access_key = self._seed_iam()
        self._saved_auth_count = moto_settings.INITIAL_NO_AUTH_ACTION_COUNT
        moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = 0  # every request signed, every action authorized

        self._moto = DomainDispatcherApplication(create_backend_app)
        self._server = make_server(
            "127.0.0.1", free_port(), self._wsgi, threaded=True, request_handler=_QuietMotoHandler
        )
        self.port = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="aws-sts", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, tmp_dir: Path) -> dict[str, str | None]:
        """What the gateway's environment must be: the base key, nothing else (None: unset)."""
        env: dict[str, str | None] = dict.fromkeys(AWS_ENV_VARS)
        env.update(
            AWS_ACCESS_KEY_ID=self.base_access_key_id,
            AWS_SECRET_ACCESS_KEY=self.base_secret_access_key,
            AWS_EC2_METADATA_DISABLED="true",
            AWS_CONFIG_FILE=str(tmp_dir / "no-aws-config"),
            AWS_SHARED_CREDENTIALS_FILE=str(tmp_dir / "no-aws-credentials"),
        )
        return env

    def calls(self, action: str | None = "AssumeRole") -> list[StsCall]:
        """The calls of one action (every call with None), in arrival order."""
        with self._lock:
            return [c for c in self._calls if action is None or c.action == action]

    def session(self, access_key_id: str) -> StsCall | None:
        """The call that issued this access key id."""
        with self._lock:
            return next((c for c in self._calls if c.access_key_id == access_key_id), None)

    def secrets(self) -> list[str]:
        """Every secret key and session token STS issued, and the base secret key."""
        with self._lock:
            issued = [s for c in self._calls for s in (c.secret_access_key, c.session_token) if s]
        return [self.base_secret_access_key, *issued]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        moto_settings.INITIAL_NO_AUTH_ACTION_COUNT = self._saved_auth_count

    # --- inside ---------------------------------------------------------------------------
    def _seed_iam(self) -> tuple[str, str]:
        """The gateway's IAM user, its key and policy, and the roles it may assume."""
        iam = iam_backends[ACCOUNT]["aws"]
        user = iam.create_user(self.region, "gatehouse-gateway")
        actions = ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"]
        iam.put_user_policy(
            user.name,
            "assume-mcp-roles",
            json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {"Effect": "Allow", "Action": actions, "Resource": f"arn:aws:iam::{ACCOUNT}:role/mcp-*"}
                    ],
                }
            ),
        )
        for name, condition in (
            ("mcp-caller", None),
            ("mcp-partner", {"StringEquals": {"sts:ExternalId": PARTNER_EXTERNAL_ID}}),
        ):
            statement: dict[str, Any] = {"Effect": "Allow", "Principal": {"AWS": user.arn}, "Action": actions}
            if condition:
                statement["Condition"] = condition
            iam.create_role(
                role_name=name,
                assume_role_policy_document=json.dumps({"Version": "2012-10-17", "Statement": [statement]}),
                path="/",
                permissions_boundary=None,
                description="",
                tags=[],
                max_session_duration="43200",
            )
        key = iam.create_access_key(user.name)
        return key.access_key_id, key.secret_access_key

    def _wsgi(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(body)
        params = dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))
        if "x-www-form-urlencoded" in environ.get("CONTENT_TYPE", ""):
            params.update(parse_qsl(body.decode(errors="replace"), keep_blank_values=True))
        action = params.get("Action", "")
        if action == "AssumeRole" and self.delay_s:
            time.sleep(self.delay_s)

        answered: dict[str, Any] = {}

        def keep(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            answered["status"], answered["headers"] = status, headers
            return lambda _data: None

        answer = b"".join(self._moto(environ, keep))
        status = int(answered["status"].split()[0])
        if status >= 400:
            answer = _aws_error_envelope(answer)
        if self.clock_offset_s:
            answer = re.sub(rb"<Expiration>([^<]+)</Expiration>", self._shift_expiration, answer)
        call = _read_answer(action, params, status, answer)
        signed_with = re.search(r"Credential=([^/,\s]+)/", environ.get("HTTP_AUTHORIZATION", ""))
        call.signed_with = signed_with.group(1) if signed_with else None
        with self._lock:
            self._calls.append(call)
        headers = [(k, v) for k, v in answered["headers"] if k.lower() != "content-length"]
        start_response(answered["status"], [*headers, ("Content-Length", str(len(answer)))])
        return [answer]

    def _shift_expiration(self, m: re.Match[bytes]) -> bytes:
        issued = dt.datetime.fromisoformat(m.group(1).decode().replace("Z", "+00:00"))
        shifted = issued + dt.timedelta(seconds=self.clock_offset_s)
        return b"<Expiration>" + shifted.strftime("%Y-%m-%dT%H:%M:%SZ").encode() + b"</Expiration>"


class _QuietMotoHandler(MotoRequestHandler):
    def log_request(self, *args: Any, **kwargs: Any) -> None:
        pass


def _aws_error_envelope(xml: bytes) -> bytes:
    """moto's error as STS sends it. moto nests it as ErrorResponse/Errors/Error (an EC2-style
    envelope, getmoto/moto#7641); STS answers ErrorResponse/Error, and SDKs that read only that
    (the Rust and Java v2 ones) see moto's as an unknown error."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return xml
    error = root.find("./Errors/Error")
    if root.tag != "ErrorResponse" or error is None:
        return xml
    out = ET.Element("ErrorResponse", xmlns=STS_XMLNS)
    wrapped = ET.SubElement(out, "Error")
    for name in ("Type", "Code", "Message"):
        ET.SubElement(wrapped, name).text = error.findtext(name) or ("Sender" if name == "Type" else "")
    ET.SubElement(out, "RequestId").text = str(uuid.uuid4())
    return ET.tostring(out, encoding="utf-8", xml_declaration=False)


def _read_answer(action: str, params: dict[str, str], status: int, xml: bytes) -> StsCall:
    call = StsCall(action, params, status)
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        call.error_message = xml.decode(errors="replace")[:500]
        return call
    found = {el.tag.rsplit("}", 1)[-1]: (el.text or "") for el in root.iter()}
    call.access_key_id = found.get("AccessKeyId")
    call.secret_access_key = found.get("SecretAccessKey")
    call.session_token = found.get("SessionToken")
    call.expiration = found.get("Expiration")
    if status >= 400:
        call.error_code, call.error_message = found.get("Code"), found.get("Message")
    return call


# --- the upstream ------------------------------------------------------------------------------


@dataclass
class SignedCall:
    """A request whose signature botocore verified, with the STS session that signed it."""

    method: str
    path: str
    headers: dict[str, list[str]]
    body: bytes
    session: StsCall

    @property
    def subject(self) -> str | None:
        return self.session.source_identity

    @property
    def access_key_id(self) -> str:
        return self.session.access_key_id or ""

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Refusal:
    """A request the upstream refused (403), and why."""

    method: str
    path: str
    headers: dict[str, list[str]]
    body: bytes
    reason: str
    answer: bytes  # the 403's body as sent


class SignatureRefused(Exception):
    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


@dataclass
class SigV4Upstream:
    """An MCP upstream behind SigV4: answers only requests botocore finds correctly signed."""

    sts: AwsSts
    region: str = "us-east-1"
    service: str = "execute-api"
    # Seconds added to this server's clock (x-amz-date must be within 5 minutes of it).
    clock_offset_s: float = 0.0
    # A folder with server.crt and server.key (scripts/gen-tls.sh): serve HTTPS with them.
    tls_dir: Path | None = None
    port: int = 0
    _accepted: list[SignedCall] = field(default_factory=list, repr=False)
    _refused: list[Refusal] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.port = self.port or free_port()
        self._lock = threading.Lock()
        self._server = serve_in_thread(self.port, self._handler_class(), "sigv4-upstream", self.tls_dir)

    @property
    def scheme(self) -> str:
        return "https" if self.tls_dir else "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}/prod/mcp"

    def accepted(self) -> list[SignedCall]:
        with self._lock:
            return list(self._accepted)

    def refused(self) -> list[Refusal]:
        with self._lock:
            return list(self._refused)

    def received(self) -> int:
        """How many requests arrived at all."""
        with self._lock:
            return len(self._accepted) + len(self._refused)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def verify(self, method: str, path: str, headers: dict[str, list[str]], body: bytes) -> StsCall:
        """The STS session that signed this request; SignatureRefused if AWS would refuse it."""
        auth = _one(headers, "authorization")
        if auth is None:
            raise SignatureRefused("MissingAuthenticationTokenException", "Missing Authentication Token")
        fields = _parse_authorization(auth)
        if fields is None:
            raise SignatureRefused("IncompleteSignatureException", f"Malformed Authorization header: {auth[:80]}")
        credential, signed_names, signature = fields
        akid, scope = credential.split("/", 1) if "/" in credential else (credential, "")
        amz_date = _one(headers, "x-amz-date") or ""
        try:
            signed_at = dt.datetime.strptime(amz_date, AMZ_DATE).replace(tzinfo=dt.UTC)
        except ValueError:
            raise SignatureRefused("IncompleteSignatureException", f"Bad x-amz-date {amz_date!r}") from None
        now = dt.datetime.fromtimestamp(time.time() + self.clock_offset_s, dt.UTC)
        if abs((now - signed_at).total_seconds()) > 300:
            raise SignatureRefused(
                "InvalidSignatureException",
                f"Signature expired: {amz_date} is now earlier than "
                f"{(now - dt.timedelta(minutes=5)).strftime(AMZ_DATE)} ({now.strftime(AMZ_DATE)} - 5 min.)",
            )
        # Signed within 5 minutes of now, so the scope's date is today's (or, at midnight, the day's before).
        want_scope = f"{amz_date[:8]}/{self.region}/{self.service}/aws4_request"
        if scope != want_scope:
            raise SignatureRefused(
                "InvalidSignatureException", f"Credential should be scoped to {want_scope}, not {scope}"
            )
        missing = {"host", "x-amz-date", "x-amz-security-token"} - set(signed_names)
        if missing:
            raise SignatureRefused("IncompleteSignatureException", f"SignedHeaders lacks {sorted(missing)}")
        for name in signed_names:
            if len(headers.get(name, [])) != 1:
                raise SignatureRefused("IncompleteSignatureException", f"Signed header {name} sent {headers.get(name)}")
        session = self.sts.session(akid)
        if session is None or not session.secret_access_key:
            raise SignatureRefused(
                "UnrecognizedClientException", "The security token included in the request is invalid"
            )
        if not hmac.compare_digest(_one(headers, "x-amz-security-token") or "", session.session_token or ""):
            raise SignatureRefused(
                "UnrecognizedClientException", "The security token included in the request is invalid"
            )
        expires = session.expires_at()
        if expires is not None and expires <= now.timestamp():
            raise SignatureRefused("ExpiredTokenException", "The security token included in the request is expired")

        request = AWSRequest(
            method=method,
            url=f"{self.scheme}://{_one(headers, 'host')}{path}",
            headers={name: _one(headers, name) for name in signed_names},
            data=body,
        )
        request.context["timestamp"] = amz_date
        signer = SigV4Auth(
            Credentials(akid, session.secret_access_key, session.session_token), self.service, self.region
        )
        if signer.signed_headers(signer.headers_to_sign(request)) != ";".join(signed_names):
            raise SignatureRefused("IncompleteSignatureException", f"SignedHeaders not canonical: {signed_names}")
        canonical = signer.canonical_request(request)
        expected = signer.signature(signer.string_to_sign(request, canonical), request)
        if not hmac.compare_digest(expected, signature):
            raise SignatureRefused("InvalidSignatureException", SIGNATURE_MISMATCH)
        return session

    def _handle(self, method: str, path: str, headers: dict[str, list[str]], body: bytes) -> tuple[int, Any, dict]:
        try:
            session = self.verify(method, path, headers, body)
        except SignatureRefused as refused:
            answer = {"message": refused.message}
            with self._lock:
                self._refused.append(Refusal(method, path, headers, body, refused.message, json.dumps(answer).encode()))
            return 403, answer, {"x-amzn-errortype": refused.error_type}
        with self._lock:
            self._accepted.append(SignedCall(method, path, headers, body, session))
        return echo_answer(method, body, "sigv4-upstream")

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        return json_handler(self._handle)


def _one(headers: dict[str, list[str]], name: str) -> str | None:
    values = headers.get(name) or []
    return values[0] if len(values) == 1 else None


def _parse_authorization(value: str) -> tuple[str, list[str], str] | None:
    """(Credential, SignedHeaders, Signature) of `AWS4-HMAC-SHA256 Credential=..., ...`."""
    algorithm, _, rest = value.partition(" ")
    if algorithm != "AWS4-HMAC-SHA256":
        return None
    parts = dict(p.strip().partition("=")[::2] for p in rest.split(","))
    if set(parts) != {"Credential", "SignedHeaders", "Signature"}:
        return None
    return parts["Credential"], parts["SignedHeaders"].split(";"), parts["Signature"]
