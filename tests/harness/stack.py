"""The whole Gatehouse stack on free ports: upstream MCP server, `gatehouse serve`, Envoy.

Layout of a stack's directory (a pytest tmp dir):
    gatehouse.yaml      written per docs/CONTRACTS.md, every port free, paths relative
    tls/                CA + server certificate (scripts/gen-tls.sh)
    audit/audit.db      the SQLite audit store
    envoy.yaml          from `gatehouse envoy-config`
    logs/               one log per process (tails are shown when a test fails)
    demo.db             the demo server's SQLite file (upstream "demo" only)
"""

from __future__ import annotations

import json
import re
import subprocess
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import yaml

from . import paths
from .envoy import EnvoyAdmin, start_envoy
from .issuer import TestIssuer
from .mcp_servers import EchoUpstream, start_conformance_server, start_demo_server, start_server_everything
from .oidc_provider import AUDIT_RESOURCE, OidcProvider
from .procs import Proc, ProcessSet, free_port
from .raw_upstream import RawUpstream

if TYPE_CHECKING:
    from .aws import AwsSts, SigV4Upstream

LATEST_PROTOCOL = "2025-11-25"
REQUEST_ID_RE = re.compile(r"^[0-9a-f]{32}$")


# The service's default `approvals.audience`: approvers' tokens carry it, MCP tokens do not.
APPROVALS_AUDIENCE = "gatehouse-approvals"
# The audience of auditors' tokens (`audit.audience`, default).
AUDIT_AUDIENCE = "gatehouse-audit"


def gatehouse(*args: str | Path, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run the `gatehouse` CLI; on failure the error shows its stderr."""
    argv = [str(paths.gatehouse_bin()), *map(str, args)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(argv)} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
        )
    return proc


def gen_tls(out_dir: Path) -> None:
    subprocess.run(["bash", str(paths.gen_tls_script()), str(out_dir)], check=True, capture_output=True)


class AuditClient:
    """The service's audit REST API, as a member of the auditor group."""

    def __init__(self, base_url: str, token: str) -> None:
        self.base_url = base_url
        self.http = httpx.Client(base_url=base_url, headers={"authorization": f"Bearer {token}"}, timeout=10)

    def records(self, **params: Any) -> list[dict[str, Any]]:
        resp = self.http.get("/v1/audit/records", params={k: v for k, v in params.items() if v is not None})
        assert resp.status_code == 200, f"GET /v1/audit/records: {resp.status_code} {resp.text}"
        return resp.json()["records"]

    def request(self, request_id: str) -> dict[str, Any]:
        """The request's records; a request id with no record at all answers 404 (read as empty)."""
        resp = self.http.get(f"/v1/audit/requests/{request_id}")
        if resp.status_code == 404:
            return {"request": None, "responses": [], "complete": False}
        assert resp.status_code == 200, f"GET /v1/audit/requests/{request_id}: {resp.status_code} {resp.text}"
        return resp.json()

    def wait_complete(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The request's records once its final response record is in (records are teed asynchronously)."""
        return self.wait_for(request_id, lambda r: bool(r.get("complete")), "a final response record", timeout)

    def wait_for(
        self, request_id: str, pred: Callable[[dict[str, Any]], bool], what: str, timeout: float = 10.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.request(request_id)
            if pred(got):
                return got
            if time.monotonic() > deadline:
                raise AssertionError(f"Request {request_id}: no {what} after {timeout}s: {json.dumps(got, indent=1)}")
            time.sleep(0.1)

    def wait_records(
        self, pred: Callable[[list[dict[str, Any]]], bool], what: str, timeout: float = 10.0, **params: Any
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            recs = self.records(**params)
            if pred(recs):
                return recs
            if time.monotonic() > deadline:
                raise AssertionError(f"No {what} after {timeout}s ({params}): {json.dumps(recs, indent=1)[:4000]}")
            time.sleep(0.1)

    def close(self) -> None:
        self.http.close()


# The environment variable that carries the masking token key into the filter (envoy_config.rs).
TOKEN_KEY_ENV = "GATEHOUSE_MASK_TOKEN_KEY"


@dataclass
class Replica:
    """Another `gatehouse serve` on a stack's database ([`Stack.start_replica`])."""

    writer_id: str
    config_path: Path
    rest_port: int
    grpc_port: int
    procs: ProcessSet
    proc: Proc | None = None

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    def start(self) -> None:
        """Starts it (again, after `proc.kill()` or `proc.stop()`: same config and ports)."""
        self.proc = self.procs.start(
            f"gatehouse-serve-{self.writer_id}",
            [paths.gatehouse_bin(), "serve", "--config", self.config_path],
            env={"RUST_LOG": "info", "RUST_BACKTRACE": "1"},
        )
        self.proc.wait_http(f"{self.rest_url}/healthz", ok=lambda r: r.status_code == 200)


@dataclass
class Stack:
    dir: Path
    config_path: Path
    procs: ProcessSet
    http_port: int
    https_port: int
    admin_port: int
    rest_port: int
    grpc_port: int
    upstream_port: int
    upstream_name: str
    mcp_path: str
    issuer: TestIssuer | OidcProvider | None = None
    echo: EchoUpstream | None = None
    raw: RawUpstream | None = None
    sigv4: SigV4Upstream | None = None
    demo_db: Path | None = None
    service: Proc | None = None
    envoy: Proc | None = None
    # The service's RUST_LOG from its next (re)start.
    service_log: str = "info"
    # Arguments before `serve` (`--log-format json`).
    service_args: list[str] = field(default_factory=list)
    # Services besides `service` on the same database (`start_replica`).
    replicas: list[Replica] = field(default_factory=list)
    _audit: AuditClient | None = field(default=None, repr=False)

    # --- addresses ---------------------------------------------------------------
    @property
    def url(self) -> str:
        """The MCP endpoint on the gateway (plain HTTP listener)."""
        return f"http://127.0.0.1:{self.http_port}{self.mcp_path}"

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}{self.mcp_path}"

    @property
    def public_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def rest_url(self) -> str:
        return f"http://127.0.0.1:{self.rest_port}"

    @property
    def ca_cert(self) -> Path:
        return self.dir / "tls" / "ca.crt"

    @property
    def db_path(self) -> Path:
        return self.dir / "audit" / "audit.db"

    @property
    def admin(self) -> EnvoyAdmin:
        return EnvoyAdmin(self.admin_port)

    # --- identity ----------------------------------------------------------------
    def token(
        self, sub: str = "alice", groups: Sequence[str] = ("eng",), ttl: int | None = None, aud: str | None = None
    ) -> str:
        if isinstance(self.issuer, OidcProvider):
            raise TypeError("a real provider's tokens come from its sign-in: stack.issuer.login(user)")
        if self.issuer:
            extra: dict[str, Any] = {}
            if ttl is not None:
                extra["exp"] = int(time.time()) + ttl
            if aud is not None:
                extra["aud"] = aud
            return self.issuer.token(sub, list(groups), **extra)
        args: list[str | Path] = ["dev-token", "--config", self.config_path, "--sub", sub, "--groups", ",".join(groups)]
        if ttl is not None:
            args += ["--ttl", str(ttl)]
        if aud is not None:
            args += ["--aud", aud]
        return gatehouse(*args).stdout.strip()

    def approver_token(self, sub: str, groups: Sequence[str] = ("approvers",), ttl: int | None = None) -> str:
        """A token for the approvals REST API and page (`approvals.audience`): it cannot call MCP."""
        if self.issuer:
            return self.token(sub, groups, ttl=ttl, aud=APPROVALS_AUDIENCE)
        args: list[str | Path] = ["dev-token", "--config", self.config_path, "--sub", sub, "--groups", ",".join(groups)]
        args += ["--approver", *(["--ttl", str(ttl)] if ttl is not None else [])]
        return gatehouse(*args).stdout.strip()

    def auditor_token(self, sub: str = "auditor", groups: Sequence[str] = ("auditors",)) -> str:
        """A token for the audit REST API (`audit.audience`): it cannot call MCP."""
        if isinstance(self.issuer, OidcProvider):
            return self.issuer.login("auditor", resource=AUDIT_RESOURCE)
        return self.token(sub, groups, aud=AUDIT_AUDIENCE)

    def auth(self, sub: str = "alice", groups: Sequence[str] = ("eng",)) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token(sub, groups)}"}

    @property
    def audit(self) -> AuditClient:
        if self._audit is None:
            self._audit = AuditClient(self.rest_url, self.auditor_token())
        return self._audit

    # --- raw MCP over HTTP ---------------------------------------------------------
    def post(
        self,
        message: Any,
        *,
        token: str | None = None,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        url: str | None = None,
        timeout: float = 30,
    ) -> httpx.Response:
        """One POST to the gateway. `message` is JSON-encoded unless raw `content` is given."""
        body = content if content is not None else json.dumps(message).encode()
        return httpx.post(url or self.url, content=body, headers=_post_headers(token, headers), timeout=timeout)

    def post_collect(
        self, message: Any, *, token: str | None = None, headers: dict[str, str] | None = None, timeout: float = 30
    ) -> Collected:
        """One POST whose answer may break off: every byte that arrived, undecoded, and how it ended."""
        got = Collected()
        try:
            with httpx.stream(
                "POST",
                self.url,
                content=json.dumps(message).encode(),
                headers=_post_headers(token, headers),
                timeout=timeout,
            ) as resp:
                got.status, got.headers = resp.status_code, dict(resp.headers)
                for chunk in resp.iter_raw():
                    got.body += chunk
        except httpx.HTTPError as exc:
            got.error = repr(exc)
        return got

    def initialize(self, token: str) -> str:
        """initialize + notifications/initialized; returns the Mcp-Session-Id."""
        resp = self.post(initialize_request(), token=token)
        assert resp.status_code == 200, f"initialize: {resp.status_code} {resp.text}"
        session = resp.headers.get("mcp-session-id")
        assert session, f"initialize answered without Mcp-Session-Id: {dict(resp.headers)}"
        note = self.post(
            {"jsonrpc": "2.0", "method": "notifications/initialized"}, token=token, headers={"mcp-session-id": session}
        )
        assert note.status_code == 202, f"notifications/initialized: {note.status_code} {note.text}"
        return session

    def upstream_requests(self) -> int:
        """Requests Envoy has sent to the upstream so far (Envoy admin stats)."""
        return self.admin.upstream_rq_total(self.upstream_port)

    # --- processes ---------------------------------------------------------------
    def start_service(self) -> Proc:
        self.service = self.procs.start(
            "gatehouse-serve",
            [paths.gatehouse_bin(), *self.service_args, "serve", "--config", self.config_path],
            env={"RUST_LOG": self.service_log, "RUST_BACKTRACE": "1"},
        )
        self.service.wait_http(f"{self.rest_url}/healthz", ok=lambda r: r.status_code == 200)
        self.service.wait_tcp(self.grpc_port)
        return self.service

    def replica_config(self, writer_id: str, rest: int | None = None, grpc: int | None = None) -> tuple[Path, int, int]:
        """This stack's config for another `gatehouse serve` on the same database: its own
        REST and gRPC ports and `writer_id`, everything else (keys, issuer) shared. Returns
        the file and its REST and gRPC ports."""
        config = yaml.safe_load(self.config_path.read_text())
        rest, grpc = rest or free_port(), grpc or free_port()
        config["service"]["rest_listen"] = f"127.0.0.1:{rest}"
        config["service"]["grpc_listen"] = f"127.0.0.1:{grpc}"
        config["audit"]["writer_id"] = writer_id
        path = self.dir / f"gatehouse-{writer_id}.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        return path, rest, grpc

    def start_replica(self, writer_id: str, rest: int | None = None, grpc: int | None = None) -> Replica:
        """Another service on this stack's database (PostgreSQL: replicas share it); behind
        this stack's Envoy only if its gRPC port is one of `service.grpc_endpoints`
        (`start_stack(replicas=N)`). Reach its REST API at `replica.rest_url`."""
        path, rest, grpc = self.replica_config(writer_id, rest, grpc)
        replica = Replica(writer_id, path, rest, grpc, self.procs)
        replica.start()
        self.replicas.append(replica)
        return replica

    def envoy_for(self, replica: Replica) -> str:
        """Another Envoy, rendered from `replica`'s config, that sends its Checks and records
        to that replica alone; its MCP URL. Calls through it are held on that replica."""
        config = yaml.safe_load(replica.config_path.read_text())
        http, https, admin = free_port(), free_port(), free_port()
        envoy = config["envoy"]
        envoy["http_listen"], envoy["https_listen"] = f"127.0.0.1:{http}", f"127.0.0.1:{https}"
        envoy["admin_listen"] = f"127.0.0.1:{admin}"
        envoy["allowed_hosts"] = [*envoy.get("allowed_hosts", []), f"127.0.0.1:{http}"]
        config["service"].pop("grpc_endpoints", None)
        path = self.dir / f"gatehouse-{replica.writer_id}-envoy.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        out = self.dir / f"envoy-{replica.writer_id}"
        out.mkdir(exist_ok=True)
        gatehouse("envoy-config", "--config", path, "--out", out / "envoy.yaml")
        proc = start_envoy(self.procs, f"envoy-{replica.writer_id}", out / "envoy.yaml", admin, env=envoy_env(path))
        proc.wait_tcp(http)
        return f"http://127.0.0.1:{http}{self.mcp_path}"

    def restart_service(self) -> Proc:
        if self.service:
            self.service.stop()
        return self.start_service()

    def crash_service(self) -> None:
        """SIGKILL the service: no shutdown checkpoint, nothing flushed but what was committed."""
        if self.service:
            self.service.kill()

    def verify(self) -> subprocess.CompletedProcess[str]:
        return gatehouse("audit", "verify", "--config", self.config_path, check=False)

    def audit_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`gatehouse audit ARGS --config <this stack's>`, not checked."""
        return gatehouse("audit", *args, "--config", self.config_path, check=False)

    def log_sections(self) -> list[tuple[str, str]]:
        return self.procs.log_sections()

    # --- what the gateway wrote ----------------------------------------------------------
    def trail_files(self) -> dict[str, bytes]:
        """The audit store as it is on disk now: the SQLite file and its session index
        (`audit.sessions.db`), their -wal and -shm, the checkpoint log."""
        index = self.db_path.with_suffix(".sessions.db")
        files = [
            path.with_name(path.name + suffix) for path in (self.db_path, index) for suffix in ("", "-wal", "-shm")
        ]
        files.append(self.dir / "checkpoints.log")
        return {p.name: p.read_bytes() for p in files if p.exists()}

    def gateway_logs(self) -> dict[str, bytes]:
        """The service's and Envoy's logs (not the upstream's)."""
        return {
            p.name: p.log_path.read_bytes()
            for p in self.procs.procs
            if p.name.startswith(("gatehouse", "envoy")) and p.log_path.exists()
        }

    def close(self) -> None:
        if self._audit:
            self._audit.close()
        self.procs.stop_all()
        if self.echo:
            self.echo.close()
        if self.raw:
            self.raw.close()
        if self.sigv4:
            self.sigv4.close()


@dataclass
class Collected:
    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    error: str | None = None  # the client-side error that ended the answer, if one did


def _post_headers(token: str | None, headers: dict[str, str] | None) -> dict[str, str]:
    h = {
        "accept": "application/json, text/event-stream",
        "content-type": "application/json",
        "mcp-protocol-version": LATEST_PROTOCOL,
    }
    if token:
        h["authorization"] = f"Bearer {token}"
    h.update(headers or {})
    return h


def initialize_request(request_id: int | str = 1, protocol: str = LATEST_PROTOCOL) -> dict[str, Any]:
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "initialize",
        "params": {
            "protocolVersion": protocol,
            "capabilities": {},
            "clientInfo": {"name": "gatehouse-e2e", "version": "0"},
        },
    }


def tools_call(
    name: str, arguments: dict[str, Any], request_id: int | str | None = None, meta: dict[str, Any] | None = None
) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name, "arguments": arguments}
    if meta:
        params["_meta"] = meta
    return {
        "jsonrpc": "2.0",
        "id": request_id if request_id is not None else uuid.uuid4().hex[:8],
        "method": "tools/call",
        "params": params,
    }


def write_config(
    stack_dir: Path,
    *,
    http_port: int,
    https_port: int,
    admin_port: int,
    rest_port: int,
    grpc_port: int,
    upstream_url: str,
    upstream_name: str = "everything",
    mcp_path: str = "/mcp",
    allow_groups: Sequence[str] = ("eng", "approvers"),
    issuer: TestIssuer | OidcProvider | None = None,
    max_request_bytes: int = 1048576,
    max_response_bytes: int | None = None,
    masking: dict[str, Any] | None = None,
    extra_upstreams: Sequence[dict[str, Any]] = (),
    policy: Sequence[dict[str, Any]] | None = None,
    recording: Sequence[dict[str, Any]] | None = None,
    approvals: dict[str, Any] | None = None,
    ext_authz_timeout_ms: int = 2000,
    upstream_ca_file: Path | None = None,
    upstream_credentials: dict[str, Any] | None = None,
    grpc_plaintext: bool = False,
    audit: dict[str, Any] | None = None,
    allowed_hosts: Sequence[str] = (),
    allowed_origins: Sequence[str] = (),
    export: Sequence[dict[str, Any]] | None = None,
    archive: dict[str, Any] | None = None,
) -> Path:
    """`audit`: keys of the config's `audit:` section to set (a `checkpoint` given replaces
    the default one).
    `masking`: the config's `masking:` section as is (absent when None: the built-in rules).
    `grpc_plaintext`: the gRPC listener without mTLS (loopback only); by default Envoy and the
    service speak mTLS with the certificates of scripts/gen-tls.sh in `tls/`.
    `extra_upstreams`: more `upstreams:` entries, after the main one.
    `policy`: the rules of `policy:` (absent when None); `recording`: the `recording:` rules;
    `approvals`: the `approvals:` section; `export`: the exporters of `export:`; `archive`: the
    `archive:` section."""
    identity: dict[str, Any] = {
        "issuer": issuer.issuer if issuer else f"http://127.0.0.1:{rest_port}/dev",
        "audience": issuer.audience if issuer else "gatehouse",
        "groups_claim": issuer.groups_claim if isinstance(issuer, OidcProvider) else "groups",
        "leeway_seconds": 30,
        "dev_issuer": {"enabled": issuer is None, "key_file": "dev-issuer-key.pem"},
    }
    config = {
        "service": {
            "rest_listen": f"127.0.0.1:{rest_port}",
            "grpc_listen": f"127.0.0.1:{grpc_port}",
            "public_url": f"http://127.0.0.1:{http_port}",
            **(
                {"grpc_plaintext": True}
                if grpc_plaintext
                else {
                    "grpc_tls": {
                        "ca_file": "tls/grpc-ca.crt",
                        "cert_file": "tls/grpc-server.crt",
                        "key_file": "tls/grpc-server.key",
                        "client_cert_file": "tls/grpc-client.crt",
                        "client_key_file": "tls/grpc-client.key",
                    }
                }
            ),
            # Sessions outlive a restart of the service (tests restart it mid-session).
            "session_key_file": "session.key",
        },
        "identity": identity,
        "audit": {
            "database": "sqlite://audit/audit.db",
            "writer_id": "gatehouse-test",
            "auditor_group": "auditors",
            # Signed checkpoints, kept outside the store's folder too: they catch tail truncation.
            "checkpoint": {"key_file": "checkpoint-key.pem", "log_file": "checkpoints.log"},
        },
        "upstreams": [
            {
                "name": upstream_name,
                "url": upstream_url,
                "path": mcp_path,
                "allow_groups": list(allow_groups),
                **({"ca_file": str(upstream_ca_file)} if upstream_ca_file else {}),
                **({"credentials": upstream_credentials} if upstream_credentials else {}),
            },
            *extra_upstreams,
        ],
        "envoy": {
            "admin_listen": f"127.0.0.1:{admin_port}",
            "http_listen": f"127.0.0.1:{http_port}",
            "https_listen": f"127.0.0.1:{https_port}",
            "tls_cert": "tls/server.crt",
            "tls_key": "tls/server.key",
            "wasm": str(paths.gatehouse_wasm()),
            "max_request_bytes": max_request_bytes,
            "ext_authz_timeout_ms": ext_authz_timeout_ms,
        },
    }
    if audit:
        config["audit"].update(audit)
    if policy is not None:
        config["policy"] = {"rules": list(policy)}
    if recording is not None:
        config["recording"] = list(recording)
    if approvals is not None:
        config["approvals"] = approvals
    if max_response_bytes is not None:
        config["envoy"]["max_response_bytes"] = max_response_bytes
    if allowed_hosts:
        config["envoy"]["allowed_hosts"] = list(allowed_hosts)
    if allowed_origins:
        config["envoy"]["allowed_origins"] = list(allowed_origins)
    if masking is not None:
        config["masking"] = masking
    if export is not None:
        config["export"] = list(export)
    if archive is not None:
        config["archive"] = archive
    (stack_dir / "audit").mkdir(parents=True, exist_ok=True)
    path = stack_dir / "gatehouse.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def start_stack(
    stack_dir: Path,
    *,
    upstream: str = "everything",
    issuer: TestIssuer | OidcProvider | None = None,
    allow_groups: Sequence[str] | None = None,
    max_request_bytes: int = 1048576,
    max_response_bytes: int | None = None,
    masking: dict[str, Any] | None = None,
    demo_json: bool = False,
    policy: Sequence[dict[str, Any]] | None = None,
    recording: Sequence[dict[str, Any]] | None = None,
    approvals: dict[str, Any] | None = None,
    ext_authz_timeout_ms: int = 2000,
    upstream_tls: Path | None = None,
    upstream_ca_file: Path | None = None,
    upstream_credentials: dict[str, Any] | None = None,
    aws_sts: AwsSts | None = None,
    audit: dict[str, Any] | None = None,
    allowed_hosts: Sequence[str] = (),
    allowed_origins: Sequence[str] = (),
    replicas: int = 1,
    export: Sequence[dict[str, Any]] | None = None,
    archive: dict[str, Any] | None = None,
) -> Stack:
    """Start upstream, service and Envoy; the caller must `close()` the stack.

    `upstream`: "everything" (the real server-everything), "conformance" (the conformance
    suite's model server, tests/servers/conformance-server.mjs), "echo" (records headers),
    "demo" (demo/mcp_server.py on a fresh SQLite file, SSE answers or JSON with `demo_json`;
    upstream name "demo" at /demo, groups eng, approvers, support), "raw" (a
    `RawUpstream` the test scripts byte by byte, `stack.raw`) or "sigv4" (a `SigV4Upstream`
    that answers only requests signed with a session `aws_sts` issued, `stack.sigv4`; it
    expects the region and service of `upstream_credentials`).
    `issuer`: identity comes from this test issuer (or a real `OidcProvider`, with its
    `groups_claim`) instead of the service's dev issuer.
    `masking`, `max_response_bytes`: the config's `masking:` section and `envoy.max_response_bytes`.
    `policy`, `recording`, `approvals`, `ext_authz_timeout_ms`: `policy.rules`, `recording:`,
    `approvals:` and the Check's
    timeout (a held call waits inside the Check, so it must outlast the longest hold).
    `upstream_tls`: the echo upstream serves HTTPS with this folder's server.crt/key;
    `upstream_ca_file`: the upstream's `ca_file` (the CAs its certificate must chain to).
    `upstream_credentials`: the upstream's `credentials:` (what the gateway sends it).
    `audit`: keys of the config's `audit:` section to set (see `write_config`).
    `allowed_hosts`, `allowed_origins`: more `Host`/`Origin` values the gateway answers to
    (`envoy.allowed_hosts`/`allowed_origins`; e.g. a hop in front of it).
    `replicas`: this many services on the audit database behind Envoy (`service.grpc_endpoints`;
    the others are `stack.replicas`, writer ids `gatehouse-test-2`, …): give a PostgreSQL one.
    `export`, `archive`: the config's `export:` exporters and `archive:` section (relative
    paths are the stack folder's).
    """
    stack_dir.mkdir(parents=True, exist_ok=True)
    procs = ProcessSet(stack_dir / "logs")
    echo: EchoUpstream | None = None
    raw: RawUpstream | None = None
    sigv4: SigV4Upstream | None = None
    demo_db: Path | None = None
    upstream_name, mcp_path = "everything", "/mcp"
    stack: Stack | None = None
    try:
        gen_tls(stack_dir / "tls")
        if upstream == "echo":
            echo = EchoUpstream(tls_dir=upstream_tls)
            upstream_port = echo.port
        elif upstream == "raw":
            raw = RawUpstream()
            upstream_port = raw.port
        elif upstream == "sigv4":
            from .aws import SigV4Upstream  # moto and botocore load only for the tests that use them

            if aws_sts is None:
                raise ValueError('upstream="sigv4" needs aws_sts')
            signing = upstream_credentials or {}
            sigv4 = SigV4Upstream(
                aws_sts,
                region=signing.get("region", "us-east-1"),
                service=signing.get("service", "execute-api"),
                tls_dir=upstream_tls,
            )
            upstream_port = sigv4.port
        elif upstream == "demo":
            demo_db = stack_dir / "demo.db"
            _, upstream_port = start_demo_server(procs, demo_db, json_response=demo_json)
            upstream_name, mcp_path = "demo", "/demo"
            allow_groups = allow_groups or ("eng", "approvers", "support")
        elif upstream == "conformance":
            _, upstream_port = start_conformance_server(procs)
        elif upstream == "everything":
            _, upstream_port = start_server_everything(procs)
        else:
            raise ValueError(f"unknown upstream {upstream!r}")
        ports = {k: free_port() for k in ("http_port", "https_port", "admin_port", "rest_port", "grpc_port")}
        others = [(free_port(), free_port()) for _ in range(replicas - 1)]
        if others:
            endpoints = [ports["grpc_port"], *(grpc for _, grpc in others)]
        config_path = write_config(
            stack_dir,
            upstream_url=echo.url if echo else sigv4.url if sigv4 else f"http://127.0.0.1:{upstream_port}/mcp",
            upstream_name=upstream_name,
            mcp_path=mcp_path,
            allow_groups=allow_groups or ("eng", "approvers"),
            issuer=issuer,
            max_request_bytes=max_request_bytes,
            max_response_bytes=max_response_bytes,
            masking=masking,
            policy=policy,
            recording=recording,
            approvals=approvals,
            ext_authz_timeout_ms=ext_authz_timeout_ms,
            upstream_ca_file=upstream_ca_file,
            upstream_credentials=upstream_credentials,
            audit=audit,
            allowed_hosts=allowed_hosts,
            allowed_origins=allowed_origins,
            export=export,
            archive=archive,
            **ports,
        )
        stack = Stack(
            dir=stack_dir,
            config_path=config_path,
            procs=procs,
            upstream_port=upstream_port,
            upstream_name=upstream_name,
            mcp_path=mcp_path,
            issuer=issuer,
            echo=echo,
            raw=raw,
            sigv4=sigv4,
            demo_db=demo_db,
            **ports,
        )

        if others:
            config = yaml.safe_load(config_path.read_text())
            config["service"]["grpc_endpoints"] = [f"127.0.0.1:{port}" for port in endpoints]
            config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        gatehouse("check-config", config_path)
        envoy_yaml = stack_dir / "envoy.yaml"
        gatehouse("envoy-config", "--config", config_path, "--out", envoy_yaml)

        stack.start_service()
        for i, (rest, grpc) in enumerate(others, start=2):
            stack.start_replica(f"gatehouse-test-{i}", rest, grpc)
        stack.envoy = start_envoy(procs, "envoy-gateway", envoy_yaml, stack.admin_port, env=envoy_env(config_path))
        stack.envoy.wait_tcp(stack.http_port)
        stack.envoy.wait_tcp(stack.https_port)
        return stack
    except BaseException:
        if stack:
            stack.close()
        else:
            procs.stop_all()
            if echo:
                echo.close()
            if raw:
                raw.close()
            if sigv4:
                sigv4.close()
        raise


def envoy_env(config_path: Path) -> dict[str, str]:
    """Envoy's environment for this config: the masking token key, which the filter reads from
    its VM's environment (never from the bootstrap, which Envoy's admin shows)."""
    config = yaml.safe_load(config_path.read_text())
    key_file = (config.get("masking") or {}).get("token_key_file")
    if not key_file:
        return {}
    return {TOKEN_KEY_ENV: (config_path.parent / key_file).read_text().strip()}


def gatehouse_missing_reason() -> str | None:
    missing = [p for p in (paths.gatehouse_bin(), paths.gatehouse_wasm()) if not p.exists()]
    if missing:
        return "Gatehouse not built yet: missing " + ", ".join(str(p) for p in missing) + " (make build)"
    return None
