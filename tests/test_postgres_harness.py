"""harness/postgres.py itself: a real PostgreSQL on 127.0.0.1 as a non-root user, separate
databases, the role's password enforced over TCP, data kept across a clean stop and across a
crash (SIGKILL of every server process), the same URL after a restart, and no server left
behind when the test process dies.

PostgreSQL is Debian's `postgresql` package; when it is missing these tests fail with the
reason rather than skip: CI installs it."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness.postgres import Postgres, PostgresError, _pids_in, postgres_missing_reason

pytestmark = pytest.mark.postgres

TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    reason = postgres_missing_reason()
    if reason:
        pytest.fail(reason)
    with Postgres(tmp_path_factory.mktemp("postgres")) as server:
        yield server


def test_server_settings_and_url(pg: Postgres) -> None:
    assert re.fullmatch(rf"postgres://gatehouse:[0-9a-f]{{32}}@127\.0\.0\.1:{pg.port}/gatehouse", pg.url)
    settings = pg.psql(
        "SELECT current_setting('listen_addresses'), current_setting('port'), current_setting('fsync'),"
        " current_setting('synchronous_commit'), current_setting('unix_socket_directories'),"
        " current_setting('max_connections'), current_setting('shared_buffers')"
    )
    assert settings.split("|") == ["127.0.0.1", str(pg.port), "on", "on", str(pg.socket_dir), "100", "32MB"]
    status = Path(f"/proc/{pg.pid}/status").read_text()
    uid = int(re.search(r"^Uid:\s+(\d+)", status, re.M).group(1))  # type: ignore[union-attr]
    assert uid != 0, "the server must not run as root"
    # The URL is the role's, over TCP; its password is checked.
    assert pg.psql("SELECT current_user, current_database()", url=pg.url) == "gatehouse|gatehouse"
    wrong = pg.url.replace(pg.password, "0" * 32)
    with pytest.raises(PostgresError, match="password authentication failed"):
        pg.psql("SELECT 1", url=wrong)
    assert any("postgres log tail" in title for title, _ in pg.log_sections())


def test_databases_are_separate(pg: Postgres) -> None:
    first, second = pg.create_database(), pg.create_database("second_db")
    assert second.endswith("/second_db") and first != second
    pg.psql("CREATE TABLE items (id int PRIMARY KEY, note text); INSERT INTO items VALUES (1, 'first')", url=first)
    assert pg.psql("SELECT note FROM items", url=first) == "first"
    assert pg.psql("SELECT to_regclass('items') IS NULL", url=second) == "t"
    assert pg.psql("SELECT count(*) FROM items", db=first.rsplit("/", 1)[1]) == "1"  # superuser, socket
    with pytest.raises(ValueError):
        pg.create_database("Robert'); DROP TABLE students;--")


def test_stop_kill_restart_keep_data(pg: Postgres) -> None:
    url, port = pg.create_database("durable"), pg.port
    pg.psql("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)", url=url)

    pg.stop()
    assert not pg.alive() and not _pids_in(pg.data_dir)
    pg.start()
    assert (pg.port, pg.url_for("durable")) == (port, url)
    assert pg.psql("SELECT array_agg(id ORDER BY id) FROM t", url=url) == "{1}"

    # Committed (synchronous_commit on) just before every server process is SIGKILLed.
    pg.psql("INSERT INTO t VALUES (2)", url=url)
    old_pid = pg.pid
    pg.kill()
    assert not pg.alive() and not _pids_in(pg.data_dir)
    with pytest.raises(PostgresError, match="connect|refused|No such file"):
        pg.psql("SELECT 1", url=url, timeout=10)
    pg.restart()
    assert pg.pid != old_pid and pg.port == port
    assert "not properly shut down" in pg.log_path.read_text()  # crash recovery ran
    assert pg.psql("SELECT array_agg(id ORDER BY id) FROM t", url=url) == "{1,2}"
    # Another new connection, as the superuser over the socket, and the role over TCP again.
    assert pg.psql("SELECT count(*) FROM t", db="durable") == "2"
    pg.psql("INSERT INTO t VALUES (3)", url=url)
    assert pg.psql("SELECT max(id) FROM t", url=url) == "3"


def test_server_dies_with_the_test_process(tmp_path: Path) -> None:
    """The standalone runner stands in for a pytest process that is SIGKILLed."""
    reason = postgres_missing_reason()
    if reason:
        pytest.fail(reason)
    runner = subprocess.Popen(
        [sys.executable, "-m", "harness.postgres", "--log-dir", str(tmp_path)],
        cwd=TESTS,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONPATH": str(TESTS)},
    )
    try:
        lines = {}
        assert runner.stdout is not None
        for line in runner.stdout:
            key, _, value = line.rstrip("\n").partition(" ")
            lines[key] = value
            if key == "ready":
                break
        assert "pid" in lines and "data" in lines, lines
        pid, data = int(lines["pid"]), Path(lines["data"])
        assert _pids_in(data), "the server should be running"
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait(5)
    deadline = time.monotonic() + 10
    while _pids_in(data) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _pids_in(data), f"postgres processes outlived their parent: {_pids_in(data)}"
    with pytest.raises(OSError):
        os.readlink(f"/proc/{pid}/cwd")  # gone, or a zombie waiting for init
    # Its temporary directory is left; the next start sweeps it (owner dead). Clean up here.
    shutil.rmtree(data.parent, ignore_errors=True)
