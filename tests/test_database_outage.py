"""PostgreSQL goes away under load and comes back: calls meanwhile get 503 and none reaches the
upstream unrecorded; the service recovers by itself within 5 s of the database's return.

The database here is a server of its own (stopping the run's shared one would cut the other
tests' stacks)."""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import pytest

from harness.postgres import Postgres
from harness.stack import tools_call

pytestmark = [pytest.mark.gateway, pytest.mark.postgres]


@pytest.mark.parametrize("stop", ["clean", "crash"])
def test_calls_during_a_database_outage_get_503_and_the_service_recovers(make_stack, tmp_path, stop):
    database = Postgres(tmp_path / "pg").start()
    try:
        stack = make_stack(upstream="echo", audit={"database": database.url})
        token = stack.token()
        session = stack.initialize(token)
        calls: list[tuple[float, Any, str]] = []  # (sent at, status or the error, request id)
        done = threading.Event()

        def load() -> None:
            i = 0
            while not done.is_set():
                i += 1
                sent = time.monotonic()
                try:
                    resp = stack.post(
                        tools_call("echo", {"message": f"m{i}"}, request_id=i),
                        token=token,
                        headers={"mcp-session-id": session},
                        timeout=15,
                    )
                    calls.append((sent, resp.status_code, resp.headers.get("x-gatehouse-request-id", "")))
                except httpx.HTTPError as exc:
                    calls.append((sent, repr(exc), ""))
                time.sleep(0.02)

        worker = threading.Thread(target=load, daemon=True)
        worker.start()
        time.sleep(1.5)
        if stop == "clean":
            database.stop()
        else:
            database.kill()
        down_at = time.monotonic()
        time.sleep(3)
        starting_at = time.monotonic()
        database.start()
        back_at = time.monotonic()
        deadline = back_at + 15
        while time.monotonic() < deadline and not any(t >= back_at and s == 200 for t, s, _ in calls):
            time.sleep(0.05)
        time.sleep(1)
        done.set()
        worker.join(20)

        statuses = {s for _, s, _ in calls}
        assert statuses <= {200, 503}, f"answers other than 200 and 503: {statuses - {200, 503}}"
        during = [s for t, s, _ in calls if down_at + 0.5 <= t < starting_at - 0.5]
        assert during and set(during) == {503}, f"calls while the database was down: {sorted(set(during))}"
        recovered = min((t for t, s, _ in calls if t >= back_at and s == 200), default=None)
        assert recovered is not None, "no call succeeded after the database came back"
        waited = recovered - back_at
        print(f"{stop} stop: {len(during)} calls got 503 while it was down; the first 200 {waited:.2f} s after")
        assert recovered - back_at <= 5, f"the service took {recovered - back_at:.1f} s to recover"

        # Every call the upstream received has its request record, and every 200 too.
        seen = [r.headers["x-gatehouse-request-id"][0] for r in stack.echo.received() if r.body]
        answered = [rid for _, s, rid in calls if s == 200]
        missing = [rid for rid in {*seen, *answered} if stack.audit.request(rid)["request"] is None]
        assert not missing, f"{len(missing)} calls went through without a request record: {missing[:5]}"
        result = stack.verify()
        assert result.returncode == 0, result.stdout + result.stderr
    finally:
        database.close()
