"""Free ports and child processes for end-to-end tests.

Every process writes stdout and stderr to its own log file, is waited for with a
readiness probe that fails with a clear message (and the log tail), and is killed at
teardown. Children also get SIGKILL if the test process itself dies (PR_SET_PDEATHSIG),
so nothing outlives a crashed or interrupted test run.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import httpx

_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now and not handed out before in this run."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise RuntimeError("Could not find a free port")


def tcp_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# Envoy's start-up inventory (every extension, header map sizes): hundreds of long lines
# that would push everything useful out of a log tail.
_NOISE = re.compile(r"\]\s{3}envoy\.[\w.]+: |\] {2}(request|response) (header|trailer) map: ")


def tail(path: Path, lines: int = 80, width: int = 400) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    kept = [line[:width] for line in text.splitlines() if not _NOISE.search(line)]
    return "\n".join(kept[-lines:])


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    pr_set_pdeathsig = 1
    libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


class ProcessError(RuntimeError):
    pass


class Proc:
    """One child process with its log file."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        log_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = log_dir / f"{name}.log"
        full_env = dict(os.environ)
        if env:
            full_env.update(env)
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log.write(f"$ {' '.join(self.argv)}\n".encode())
        self._log.flush()
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 80) -> str:
        return tail(self.log_path, lines)

    def _fail(self, what: str) -> ProcessError:
        return ProcessError(
            f"{self.name}: {what}\n  command: {' '.join(self.argv)}\n"
            f"  log: {self.log_path}\n--- last lines of {self.name} log ---\n{self.log_tail(40)}"
        )

    def wait_until(self, ready: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise self._fail(f"exited with code {self.popen.returncode} before {what}")
            if ready():
                return
            time.sleep(0.05)
        raise self._fail(f"not ready after {timeout:.0f}s: {what}")

    def wait_tcp(self, port: int, timeout: float = 30.0) -> None:
        self.wait_until(lambda: tcp_open(port), f"listening on 127.0.0.1:{port}", timeout)

    def wait_http(
        self,
        url: str,
        timeout: float = 30.0,
        ok: Callable[[httpx.Response], bool] = lambda r: r.status_code < 500,
    ) -> None:
        def probe() -> bool:
            try:
                return ok(httpx.get(url, timeout=1.0))
            except httpx.HTTPError:
                return False

        self.wait_until(probe, f"answering {url}", timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM the process group, SIGKILL it if it is still there after `timeout`."""
        if self.alive():
            self._signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self.popen.wait(timeout)
        else:
            # The leader is gone; make sure no child of it is left behind.
            self._signal(signal.SIGKILL)
        if not self._log.closed:
            self._log.close()

    def kill(self) -> None:
        """SIGKILL, e.g. to simulate a crash."""
        self._signal(signal.SIGKILL)
        self.popen.wait(5)

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, sig)


class ProcessSet:
    """The processes of one test setup; stopped in reverse start order."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    def start(
        self,
        name: str,
        argv: Sequence[str | os.PathLike[str]],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        proc = Proc(name, argv, self.log_dir, env=env, cwd=cwd)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            proc.stop()

    def log_sections(self, lines: int = 60) -> list[tuple[str, str]]:
        """(title, tail) per process, Envoy first: what a failing test report shows."""
        ordered = sorted(self.procs, key=lambda p: (not p.name.startswith("envoy"), p.name))
        return [(f"{p.name} log tail ({p.log_path})", p.log_tail(lines)) for p in ordered]
