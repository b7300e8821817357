"""Fixtures for Gatehouse end-to-end tests.

Every server listens on 127.0.0.1 on a free port and is stopped at teardown. When a test
fails, its report ends with the tail of each process log (Envoy first, then the service).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from harness import paths
from harness.browser import Browser, browser_missing_reason
from harness.envoy import EnvoyAdmin, plain_envoy_config, start_envoy, write_config
from harness.issuer import TestIssuer
from harness.mcp_servers import EchoUpstream, start_conformance_server, start_json_server, start_server_everything
from harness.postgres import Postgres, postgres_missing_reason
from harness.procs import ProcessSet, free_port
from harness.stack import Stack, gatehouse_missing_reason, start_stack

_DIAGNOSTICS = pytest.StashKey[list[Any]]()


def _diagnostics(request: pytest.FixtureRequest) -> list[Any]:
    node = request.node
    if _DIAGNOSTICS not in node.stash:
        node.stash[_DIAGNOSTICS] = []
    return node.stash[_DIAGNOSTICS]


# --- reporting --------------------------------------------------------------------


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.failed and report.when in ("setup", "call"):
        # Sources registered by this test's fixtures and by module/session-scoped ones.
        for node in reversed(item.listchain()):
            for source in node.stash.get(_DIAGNOSTICS, []):
                for title, text in source.log_sections():
                    report.sections.append((title, text))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # Gateway tests need target/debug/gatehouse and the filter; skip them (with the reason)
    # until both are built.
    reason = gatehouse_missing_reason()
    if reason:
        skip = pytest.mark.skip(reason=reason)
        for item in items:
            if "gateway" in item.keywords:
                item.add_marker(skip)


def pytest_sessionstart(session: pytest.Session) -> None:
    missing = [p for p in (paths.envoy_bin(), paths.node22_bin(), paths.server_everything_js()) if not p.exists()]
    if missing:
        raise pytest.UsageError(f"Missing {', '.join(map(str, missing))}: run scripts/setup.sh (make setup)")


# --- processes ----------------------------------------------------------------------


@pytest.fixture
def procs(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ProcessSet]:
    ps = ProcessSet(tmp_path / "logs")
    _diagnostics(request).append(ps)
    yield ps
    ps.stop_all()


@dataclass
class Upstream:
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"


@pytest.fixture
def everything(procs: ProcessSet) -> Upstream:
    """The real `@modelcontextprotocol/server-everything` (streamable HTTP at /mcp)."""
    _, port = start_server_everything(procs)
    return Upstream(port)


@pytest.fixture
def conformance_server(procs: ProcessSet) -> Upstream:
    """tests/servers/conformance-server.mjs: passes every server scenario of the conformance suite."""
    _, port = start_conformance_server(procs)
    return Upstream(port)


@pytest.fixture
def json_server(procs: ProcessSet) -> Upstream:
    """A Python-SDK MCP server answering in JSON; it only accepts `Host: 127.0.0.1:<its port>`."""
    _, port = start_json_server(procs)
    return Upstream(port)


@dataclass
class PlainEnvoy:
    port: int
    admin: EnvoyAdmin
    upstream_port: int

    def url(self, path: str = "/mcp") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def upstream_requests(self) -> int:
        return self.admin.upstream_rq_total(self.upstream_port)


@pytest.fixture
def plain_envoy(procs: ProcessSet, tmp_path: Path) -> Callable[..., PlainEnvoy]:
    """Factory: a Gatehouse-free Envoy in front of 127.0.0.1:upstream_port.

    plain_envoy(upstream_port, host_rewrite=None, headers=None, name="envoy-plain", port=None)
    """

    def start(
        upstream_port: int,
        *,
        host_rewrite: str | None = None,
        headers: Mapping[str, str] | None = None,
        name: str = "envoy-plain",
        port: int | None = None,
    ) -> PlainEnvoy:
        port, admin_port = port or free_port(), free_port()
        config = plain_envoy_config(
            listen_port=port,
            admin_port=admin_port,
            upstream_port=upstream_port,
            host_rewrite=host_rewrite,
            request_headers_to_add=headers,
        )
        path = write_config(config, tmp_path / f"{name}.yaml")
        proc = start_envoy(procs, name, path, admin_port)
        proc.wait_tcp(port)
        return PlainEnvoy(port, EnvoyAdmin(admin_port), upstream_port)

    return start


@pytest.fixture
def echo_upstream() -> Iterator[EchoUpstream]:
    echo = EchoUpstream()
    yield echo
    echo.close()


@pytest.fixture
def test_issuer() -> Iterator[TestIssuer]:
    issuer = TestIssuer()
    yield issuer
    issuer.close()


# --- the audit database: SQLite, or PostgreSQL --------------------------------------------

BACKENDS = ("sqlite", "postgres")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    # Tests marked `both_backends` run once on each audit database: their stacks (and module
    # stacks, grouped per backend) use a fresh PostgreSQL database in the second round.
    if metafunc.definition.get_closest_marker("both_backends"):
        if "audit_backend" not in metafunc.fixturenames:
            metafunc.fixturenames.append("audit_backend")
        metafunc.parametrize("audit_backend", BACKENDS, scope="module")


@pytest.fixture(scope="module")
def audit_backend(request: pytest.FixtureRequest) -> str:
    """The audit database of this test's stacks: SQLite, unless the test is parametrized
    (`both_backends`, or `parametrize("audit_backend", ["postgres"], indirect=True)`)."""
    return getattr(request, "param", "sqlite")


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Postgres]:
    """One PostgreSQL server for the run (Debian's package, a non-root user, a free port);
    each stack on it gets a database of its own."""
    reason = postgres_missing_reason()
    if reason:
        pytest.fail(reason)
    server = Postgres(tmp_path_factory.mktemp("postgres")).start()
    _diagnostics(request).append(server)
    yield server
    server.close()


# --- the gateway stack ------------------------------------------------------------------


class _Stacks:
    """Starts stacks in numbered folders under `base`; shows their logs when a test fails.
    With `postgres`, each stack's audit database is a fresh database on that server."""

    def __init__(self, base: Path, postgres: Postgres | None = None) -> None:
        self.base = base
        self.postgres = postgres
        self.stacks: list[Stack] = []

    def __call__(self, **kwargs: Any) -> Stack:
        audit = dict(kwargs.pop("audit", None) or {})
        if self.postgres is not None and "database" not in audit:
            audit["database"] = self.postgres.create_database()
        # A failed start raises with the failing process's log tail in the message.
        stack = start_stack(self.base / f"stack{len(self.stacks)}", audit=audit or None, **kwargs)
        self.stacks.append(stack)
        return stack

    def log_sections(self) -> list[tuple[str, str]]:
        return [section for st in self.stacks for section in st.log_sections()]

    def close(self) -> None:
        for stack in self.stacks:
            stack.close()


def _postgres_for(backend: str, request: pytest.FixtureRequest) -> Postgres | None:
    return request.getfixturevalue("postgres") if backend == "postgres" else None


@pytest.fixture
def make_stack(tmp_path: Path, request: pytest.FixtureRequest, audit_backend: str) -> Iterator[Callable[..., Stack]]:
    """Factory: make_stack(upstream="everything"|"conformance"|"echo"|"demo"|"raw"|"sigv4", issuer=None,
    allow_groups=..., max_request_bytes=..., max_response_bytes=..., masking=..., demo_json=False, ...):
    the keyword arguments of `harness.stack.start_stack` (`aws_sts=` for "sigv4"). The audit
    database is `audit_backend`'s."""
    stacks = _Stacks(tmp_path, _postgres_for(audit_backend, request))
    _diagnostics(request).append(stacks)
    yield stacks
    stacks.close()


@pytest.fixture(scope="module")
def make_module_stack(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, audit_backend: str
) -> Iterator[Callable[..., Stack]]:
    """Like make_stack, for stacks shared by the tests of one module (read-only tests only)."""
    stacks = _Stacks(tmp_path_factory.mktemp("stacks"), _postgres_for(audit_backend, request))
    _diagnostics(request).append(stacks)
    yield stacks
    stacks.close()


@pytest.fixture
def stack(make_stack: Callable[..., Stack]) -> Stack:
    """Gateway in front of server-everything; dev issuer; SQLite audit store in the tmp dir."""
    return make_stack()


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Browser]:
    """Debian's headless Chromium, one page. CI installs it: a missing one fails the test (with
    the reason) rather than skipping it."""
    reason = browser_missing_reason()
    if reason:
        pytest.fail(reason)
    with Browser(artifacts=tmp_path / "browser") as b:
        yield b
