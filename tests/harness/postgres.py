"""A real PostgreSQL server for end-to-end tests (Debian's `postgresql` package).

`Postgres(log_dir).start()` runs `initdb` in a fresh temporary directory and then
`postgres -D DATA` as a child process (`harness.procs.Proc`: own log file, readiness probe,
`PR_SET_PDEATHSIG`), listening on 127.0.0.1 only, on a free port, with its Unix socket in
that temporary directory. It waits until the server answers a real query over TCP.

- Root: initdb and postgres refuse to run as root, so as root both run as the `postgres`
  system user (`nobody` if there is none) through `setpriv --pdeathsig keep`: unlike
  `runuser`, setpriv execs in place (the server stays our direct child) and re-arms the
  parent-death signal that the uid change clears, so the server dies with the test process.
  Its child processes notice the postmaster's death and exit by themselves.
- The temporary directory is `$TMPDIR/gatehouse-pg-*` (pytest's tmp dirs are mode 0700 and
  too deep for a Unix socket path), owned by that user; `close()` removes it, and a later
  start removes the ones left by test processes that died.
- Settings: fsync and synchronous_commit on (commits are durable, timings are real),
  max_connections 100, shared_buffers 32MB, log to stderr, i.e. the process log file.
- Authentication: the role `gatehouse` (owner of the database `gatehouse` and of every
  `create_database()`) has a random password that TCP connections must give
  (scram-sha-256); `psql()` connects as the superuser `postgres` over the socket (trust).

    pg = Postgres(tmp_path / "logs").start()       # or: with Postgres(...) as pg:
    pg.url                                          # postgres://gatehouse:PW@127.0.0.1:PORT/gatehouse
    url = pg.create_database("case_1")              # a fresh, empty database; None picks a name
    pg.psql("SELECT count(*) FROM t", db="case_1")  # stdout, unaligned, tuples only
    pg.kill(); pg.start()                           # crash, then crash recovery, same port
    pg.close()

Standalone (prints the URL, runs until Ctrl-C):
`PYTHONPATH=tests .tools/venv/bin/python -m harness.postgres [--port 5433] [--log-dir DIR]`.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from .procs import Proc, ProcessSet, _die_with_parent, free_port, tail

DEFAULT_BINDIR = Path("/usr/lib/postgresql/15/bin")
INSTALL_HINT = "apt-get install postgresql"
TEMP_PREFIX = "gatehouse-pg-"
SUPERUSER = "postgres"

# Appended to postgresql.conf; `Postgres(settings=...)` adds or overrides.
DEFAULT_SETTINGS: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "max_connections": "100",
    "shared_buffers": "32MB",
    "huge_pages": "off",
    "logging_collector": "off",
    "log_destination": "'stderr'",
    "log_line_prefix": "'%m [%p] %q%u@%d '",
    "log_timezone": "'UTC'",
    "timezone": "'UTC'",
}

_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")
_BINARIES = ("postgres", "initdb", "psql", "pg_isready")


class PostgresError(RuntimeError):
    pass


def _has_binaries(bindir: Path) -> bool:
    return all(os.access(bindir / b, os.X_OK) for b in _BINARIES)


def postgres_bindir() -> Path | None:
    """`POSTGRES_BINDIR`, else /usr/lib/postgresql/15/bin, else `pg_config --bindir`, else the
    newest /usr/lib/postgresql/*/bin: the first that has postgres, initdb, psql and pg_isready."""
    env = os.environ.get("POSTGRES_BINDIR")
    if env:
        return Path(env) if _has_binaries(Path(env)) else None
    candidates = [DEFAULT_BINDIR]
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, timeout=10).stdout
            if out.strip():
                candidates.append(Path(out.strip()))
    versions = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(versions, key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0, reverse=True)
    return next((c for c in candidates if _has_binaries(c)), None)


def postgres_missing_reason() -> str | None:
    """Why no server can be started here, or None."""
    if postgres_bindir() is None:
        env = os.environ.get("POSTGRES_BINDIR")
        where = (
            f"POSTGRES_BINDIR={env}" if env else f"{DEFAULT_BINDIR}, `pg_config --bindir` or /usr/lib/postgresql/*/bin"
        )
        return (
            f"PostgreSQL is not installed: no postgres, initdb, psql and pg_isready in {where}. "
            f"Install Debian's package: `{INSTALL_HINT}` (or point POSTGRES_BINDIR at a bin directory)."
        )
    if os.geteuid() == 0 and shutil.which("setpriv") is None:
        return "As root, PostgreSQL is started as another user with `setpriv`: apt-get install util-linux"
    return None


def _service_user() -> pwd.struct_passwd | None:
    """As root: the user initdb and postgres run as (`postgres`, else `nobody`). Otherwise None."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise PostgresError("Running as root, and there is neither a `postgres` nor a `nobody` user to run PostgreSQL as")


def _pids_in(directory: Path) -> list[int]:
    """Processes whose working directory is `directory`: every PostgreSQL process chdirs to
    its data directory (and the postmaster's children run in their own sessions, so they are
    not in its process group)."""
    target = str(directory.resolve())
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "cwd") == target:
                    pids.append(int(entry.name))
    return pids


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_stale_dirs() -> None:
    """Remove the temporary directories of test processes that died without `close()`."""
    for top in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        try:
            owner = int((top / "owner").read_text().strip())
        except (OSError, ValueError):
            continue
        if owner != os.getpid() and not _alive(owner) and not _pids_in(top / "data"):
            shutil.rmtree(top, ignore_errors=True)


class Postgres:
    """One PostgreSQL cluster: `start()` (initdb the first time), `stop()`, `kill()`,
    `restart()`, `close()`; the data directory and port stay the same across restarts."""

    def __init__(
        self,
        where: Path | ProcessSet,
        *,
        name: str = "postgres",
        port: int | None = None,
        role: str = "gatehouse",
        database: str = "gatehouse",
        settings: Mapping[str, str] | None = None,
    ) -> None:
        """`where`: a log directory, or a ProcessSet to run in (its log_sections and
        stop_all then include the server; still call close() to remove the data)."""
        for what in (role, database):
            if not _NAME.match(what):
                raise ValueError(f"{what!r}: use lower-case letters, digits and _")
        self.procs = where if isinstance(where, ProcessSet) else ProcessSet(where)
        self.name = name
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.role = role
        self.database = database
        self.password = secrets.token_hex(16)
        self.settings = {**DEFAULT_SETTINGS, **(settings or {})}
        self.proc: Proc | None = None
        self.dir: Path | None = None
        self.bindir: Path | None = None
        self.startup_seconds: float | None = None  # of the last start(), initdb included
        self._user = None if os.geteuid() != 0 else _service_user()
        self._names = itertools.count(1)
        self._bootstrapped = False  # the role and its database exist

    # --- where things are ---------------------------------------------------------------
    @property
    def data_dir(self) -> Path:
        return self._top() / "data"

    @property
    def socket_dir(self) -> Path:
        return self._top()

    @property
    def log_path(self) -> Path:
        return self.procs.log_dir / f"{self.name}.log"

    @property
    def url(self) -> str:
        """postgres://gatehouse:PASSWORD@127.0.0.1:PORT/gatehouse"""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        return f"postgres://{self.role}:{self.password}@{self.host}:{self.port}/{database}"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid while it runs."""
        return self.proc.pid if self.proc and self.proc.alive() else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.alive()

    def _top(self) -> Path:
        if self.dir is None:
            raise PostgresError(f"{self.name}: not started yet")
        return self.dir

    # --- life cycle -----------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> Postgres:
        """initdb (first call only), start the server, wait until it answers a query over TCP."""
        if self.alive():
            return self
        began = time.monotonic()
        if self.dir is None:
            self._initdb()
        self._launch(timeout)
        if not self._bootstrapped:
            self.psql(
                f"CREATE ROLE {self.role} LOGIN PASSWORD '{self.password}';\n"
                f"CREATE DATABASE {self.database} OWNER {self.role};",
                db=SUPERUSER,
            )
            self._bootstrapped = True
        self.psql("SELECT 1", url=self.url)  # the URL works: TCP, password, database
        self.startup_seconds = time.monotonic() - began
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: clients disconnected, checkpoint written). No-op if not running."""
        proc = self.proc
        if proc is None:
            return
        if proc.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGINT)
            try:
                proc.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill_all()
                self._reap(proc)
                raise PostgresError(f"{self.name}: no clean shutdown within {timeout:.0f}s; killed") from None
        self._reap(proc)

    def kill(self) -> None:
        """SIGKILL the postmaster and all its processes at once (a crash); the next start() recovers."""
        if self.proc is not None:
            self._kill_all()
            self._reap(self.proc)

    def restart(self, timeout: float = 30.0) -> Postgres:
        """stop() (if running) then start(): same port, data directory and password."""
        self.stop()
        return self.start(timeout)

    def close(self) -> None:
        """Stop (fast; SIGKILL if that fails) and remove the temporary directory."""
        try:
            self.stop()
        except PostgresError:
            pass
        finally:
            if self.dir is not None and not _pids_in(self.data_dir):
                shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Postgres:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- using it -----------------------------------------------------------------------
    def create_database(self, name: str | None = None) -> str:
        """A new empty database owned by the role; returns its URL. `name`: lower-case letters,
        digits, _ (None: test_1, test_2, ...)."""
        if name is None:
            name = f"test_{next(self._names)}"
        if not _NAME.match(name):
            raise ValueError(f"database name {name!r}: use lower-case letters, digits and _ (at most 63)")
        self.psql(f"CREATE DATABASE {name} OWNER {self.role}", db=SUPERUSER)
        return self.url_for(name)

    def psql(self, sql: str, db: str | None = None, *, url: str | None = None, timeout: float = 30.0) -> str:
        """Run `sql` (any number of statements, each in its own transaction unless the SQL says
        otherwise; stops at the first error) and return psql's stdout without the final newline:
        rows one per line, columns separated by `|`, no headers, no command tags.

        Connects as the superuser over the Unix socket to `db` (default: the role's database),
        or as whoever `url` says over TCP. Raises PostgresError (with psql's stderr) on failure.
        """
        if url is None:
            target = ["-h", str(self.socket_dir), "-p", str(self.port), "-U", SUPERUSER, "-d", db or self.database]
        else:
            target = ["-d", url]
        argv = [self._bin("psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-", *target]
        result = subprocess.run(
            argv,
            input=sql,
            capture_output=True,
            text=True,
            env=self._client_env(),
            timeout=timeout,
            preexec_fn=_die_with_parent,
        )
        if result.returncode != 0:
            raise PostgresError(
                f"psql failed (exit {result.returncode}) on {url or db or self.database}:\n"
                f"{result.stderr.strip()}\n--- SQL ---\n{sql}"
            )
        return result.stdout.removesuffix("\n")

    def log_sections(self, lines: int = 60) -> list[tuple[str, str]]:
        """(title, tail) of the server log (initdb's if the server never started), as ProcessSet does."""
        initdb_log = self.procs.log_dir / f"{self.name}-initdb.log"
        path = self.log_path if self.log_path.exists() or not initdb_log.exists() else initdb_log
        return [(f"{path.stem} log tail ({path})", tail(path, lines))]

    # --- internals --------------------------------------------------------------------
    def _bin(self, name: str) -> str:
        if self.bindir is None:
            reason = postgres_missing_reason()
            if reason:
                raise PostgresError(reason)
            self.bindir = postgres_bindir()
            assert self.bindir is not None
        return str(self.bindir / name)

    def _as_user(self, argv: Sequence[str]) -> list[str]:
        if self._user is None:
            return list(argv)
        return [
            "setpriv",
            f"--reuid={self._user.pw_uid}",
            f"--regid={self._user.pw_gid}",
            "--clear-groups",
            "--pdeathsig=keep",
            "--",
            *argv,
        ]

    def _server_env(self) -> dict[str, str]:
        return {"LC_ALL": "C", "LANG": "C", "HOME": str(self._top()), "TZ": "UTC"}

    def _client_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C", PGCONNECT_TIMEOUT="5", PGAPPNAME="gatehouse-tests")
        return env

    def _initdb(self) -> None:
        initdb = self._bin("initdb")  # fails with the install hint before anything is created
        _sweep_stale_dirs()
        top = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX))
        self.dir = top
        (top / "owner").write_text(f"{os.getpid()}\n")
        if self._user is not None:
            os.chown(top, self._user.pw_uid, self._user.pw_gid)
        self.procs.log_dir.mkdir(parents=True, exist_ok=True)
        log = self.procs.log_dir / f"{self.name}-initdb.log"
        argv = self._as_user(
            [
                initdb,
                "-D",
                str(self.data_dir),
                f"--username={SUPERUSER}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",  # initdb's own files only; the server's fsync stays on
                "--no-instructions",
            ]
        )
        with open(log, "wb") as out:
            out.write(f"$ {' '.join(argv)}\n".encode())
            out.flush()
            code = subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self._server_env()},
                cwd=top,
                timeout=120,
                preexec_fn=_die_with_parent,
            ).returncode
        if code != 0:
            raise PostgresError(f"initdb failed (exit {code}), log {log}:\n{tail(log, 40)}")
        settings = {**self.settings, "port": str(self.port), "unix_socket_directories": f"'{top}'"}
        with open(self.data_dir / "postgresql.conf", "a") as conf:
            conf.write("\n# harness/postgres.py\n")
            conf.writelines(f"{k} = {v}\n" for k, v in settings.items())
        (self.data_dir / "pg_hba.conf").write_text(
            "# harness/postgres.py: superuser psql over the socket; the role with its password over TCP\n"
            "local all all trust\n"
            "host all all 127.0.0.1/32 scram-sha-256\n"
        )

    def _launch(self, timeout: float) -> None:
        old = self.proc
        if old is not None and old in self.procs.procs:
            self.procs.procs.remove(old)  # one log section per server, however often restarted
        argv = self._as_user([self._bin("postgres"), "-D", str(self.data_dir)])
        self.proc = self.procs.start(self.name, argv, env=self._server_env(), cwd=self._top())
        isready = [self._bin("pg_isready"), "-q", "-h", self.host, "-p", str(self.port), "-U", SUPERUSER, "-t", "1"]

        def ready() -> bool:
            with contextlib.suppress(subprocess.SubprocessError):
                return subprocess.run(isready, env=self._client_env(), timeout=5).returncode == 0
            return False

        try:
            self.proc.wait_until(ready, f"accepting connections on {self.host}:{self.port}", timeout)
        except BaseException:
            # Leave nothing running (a later start() may retry); the error has the log tail.
            self._kill_all()
            with contextlib.suppress(PostgresError):
                self._reap(self.proc)
            raise

    def _kill_all(self) -> None:
        assert self.proc is not None
        pids = set(_pids_in(self.data_dir))
        if self.proc.alive():
            pids.add(self.proc.pid)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def _reap(self, proc: Proc, timeout: float = 10.0) -> None:
        """Wait for the postmaster and every process it left (a new server would refuse to
        start while they still hold the old shared memory), then close the log file."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.popen.wait(timeout)
        proc.stop()  # SIGKILLs whatever is left in its process group, closes the log
        deadline = time.monotonic() + timeout
        while (left := _pids_in(self.data_dir)) and time.monotonic() < deadline:
            time.sleep(0.02)
        if left:
            raise PostgresError(f"{self.name}: processes {left} still run in {self.data_dir}")


def main() -> None:
    """Run a throwaway PostgreSQL until Ctrl-C (or SIGTERM), printing its URL:

    PYTHONPATH=tests .tools/venv/bin/python -m harness.postgres [--port 5433] [--log-dir DIR]
    """
    import argparse
    import sys

    parser = argparse.ArgumentParser(description=main.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, help="TCP port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--log-dir", type=Path, help="where postgres.log goes (default: a temporary directory)")
    args = parser.parse_args()
    log_dir = args.log_dir or Path(tempfile.mkdtemp(prefix="gatehouse-pglogs-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    with Postgres(log_dir, port=args.port) as pg:
        print(f"url {pg.url}", flush=True)
        print(f"pid {pg.pid}", flush=True)
        print(f"data {pg.data_dir}", flush=True)
        print(f"log {pg.log_path}", flush=True)
        print(f"psql {pg.bindir}/psql -h {pg.socket_dir} -p {pg.port} -U {SUPERUSER} {pg.database}", flush=True)
        print(f"ready in {pg.startup_seconds:.2f}s; Ctrl-C stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while pg.alive():
                time.sleep(0.5)


if __name__ == "__main__":
    main()
