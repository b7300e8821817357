"""Sessions for auditors (`/v1/sessions`): the exchanges of one MCP session filed under it in
order, calls to a server that keeps no sessions grouped by caller, client and idle gap, search
over masked text only, and the same access rule as the audit records."""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import httpx
import pytest
import yaml

from harness.sessions import auditor, wait_sessions
from harness.stack import Stack, gatehouse, tools_call

pytestmark = [pytest.mark.gateway, pytest.mark.both_backends]

SECRET = "AKIAIOSFODNN7EXAMPLE"


def call(stack: Stack, token: str, session: str | None, arguments: dict[str, Any], ua: str = "agent/1") -> None:
    headers = {"user-agent": ua, **({"mcp-session-id": session} if session else {})}
    resp = stack.post(tools_call("echo", arguments, request_id=7), token=token, headers=headers)
    assert resp.status_code == 200, resp.text


def test_an_mcp_session_is_filed_in_order_from_its_initialize(make_stack):
    stack = make_stack(upstream="echo")
    token = stack.token("alice")
    session = stack.initialize(token)
    call(stack, token, session, {"message": "first"})
    call(stack, token, session, {"message": f"deploy with {SECRET}"})
    with auditor(stack) as audit:
        # The initialize's answer is ingested from the filter, and may be filed after the calls
        # that presented its session id: wait for it (the client it named) as well.
        (listed,) = wait_sessions(
            audit, lambda s: bool(s) and s[0]["calls"] == 2 and s[0]["client"]["name"] is not None, user="alice"
        )
        assert listed["upstream"] == stack.upstream_name and listed["subject"] == "alice"
        assert listed["client"] == {
            "name": "gatehouse-e2e",
            "version": "0",
            "protocol_version": listed["client"]["protocol_version"],
        }
        assert listed["client"]["protocol_version"], listed
        assert listed["upstream_session"], "the session the initialize's answer set"
        assert listed["status"] == "open" and listed["denials"] == 0
        assert listed["masked"].get("aws_access_key_id", 0) >= 1, listed

        # The calls' answers are ingested from the filter after the client read them.
        deadline = time.monotonic() + 15
        while True:
            timeline = audit.get(f"/v1/sessions/{listed['id']}").json()
            if len(timeline["exchanges"]) >= 4 and timeline["exchanges"][3]["responses"]:
                break
            assert time.monotonic() < deadline, timeline
            time.sleep(0.2)
        methods = [e["method"] for e in timeline["exchanges"]]
        assert methods[:4] == ["initialize", "notifications/initialized", "tools/call", "tools/call"], methods
        assert [e["n"] for e in timeline["exchanges"]] == list(range(len(methods)))
        offsets = [e["offset_ms"] for e in timeline["exchanges"]]
        assert offsets[0] == 0 and offsets == sorted(offsets), offsets
        second = timeline["exchanges"][3]
        assert SECRET not in str(timeline), "the timeline is read from masked records"
        assert "[MASKED:aws_access_key" in second["arguments"]["message"], second
        assert second["decision"] == "allow" and second["responses"] and second["latency_ms"] is not None
        assert second["record"]["hash"] and second["responses"][0]["hash"]

        # Search reads masked text: a word of the call finds it, the clear secret never does.
        found = audit.get("/v1/sessions", params={"q": "deploy"}).json()["sessions"]
        assert [s["id"] for s in found] == [listed["id"]]
        assert audit.get("/v1/sessions", params={"q": SECRET}).json()["sessions"] == []
        assert audit.get("/v1/sessions", params={"q": "100%_"}).json()["sessions"] == [], "wildcards are literal"
        assert [s["id"] for s in audit.get("/v1/sessions", params={"tool": "echo"}).json()["sessions"]] == [
            listed["id"]
        ]
        assert audit.get("/v1/sessions", params={"tool": "other"}).json()["sessions"] == []

    # The same from the command line: a list, and the session as a transcript.
    listed_cli = gatehouse("sessions", "list", "--config", stack.config_path, "--user", "alice").stdout
    assert listed["id"] in listed_cli and "open" in listed_cli
    shown = gatehouse("sessions", "show", listed["id"], "--config", stack.config_path).stdout
    assert shown.startswith(f"Session {listed['id']} on {stack.upstream_name}: alice (gatehouse-e2e 0"), shown
    assert shown.index("#0  initialize") < shown.index("#2  tools/call echo") < shown.index("#3  tools/call echo")
    assert "[MASKED:aws_access_key_id" in shown and SECRET not in shown
    missing = gatehouse("sessions", "show", "s_doesnotexist", "--config", stack.config_path, check=False)
    assert missing.returncode == 1 and "no session s_doesnotexist" in missing.stderr


def test_search_matches_words_of_masked_text_by_substring_in_any_case(make_stack):
    """Search reads the full-text index (trigrams: FTS5 on SQLite, pg_trgm on PostgreSQL) and
    means the same as a substring scan: any case, inside a word, every word somewhere in the
    session, answers as well as calls, words shorter than a trigram, query syntax as text."""
    stack = make_stack(upstream="echo")
    token = stack.token("alice")
    mine = stack.initialize(token)
    call(stack, token, mine, {"message": "rotate Kubernetes credentials"})
    call(stack, token, mine, {"message": 'say "hi" star* NEAR(a b) OR x: ü-Umlaut'})
    other = stack.initialize(token)
    call(stack, token, other, {"message": "deploy the kube cluster"})
    with auditor(stack) as audit:
        sessions = wait_sessions(audit, lambda s: sum(x["calls"] for x in s) == 3, user="alice")
        by_calls = {s["calls"]: s["id"] for s in sessions}
        assert set(by_calls) == {1, 2}, sessions
        first, second = by_calls[2], by_calls[1]

        def found(q: str) -> set[str]:
            resp = audit.get("/v1/sessions", params={"q": q, "user": "alice"})
            assert resp.status_code == 200, resp.text
            return {s["id"] for s in resp.json()["sessions"]}

        assert found("KUBERNETES") == {first}, "any case"
        assert found("bernet") == {first}, "inside a word"
        assert found("kube") == {first, second}
        assert found("kube rotate") == {first}, "every word"
        assert found("rotate star*") == {first}, "words of different calls of the session"
        assert found("rotate deploy") == set()
        assert found("CHO-UPSTR") == {first, second}, "the initialize's answer names the server"
        assert found("ub") == {first, second} and found("zq") == set(), "shorter than a trigram"
        for literal in ('"rotate', "star*", "NEAR(a", "OR", "x:", "ü-umlaut"):
            assert found(literal) == {first}, literal
        assert found("st*r") == set() and found("NEAR(a b)") == {first}


def test_search_has_its_trigram_index_and_works_without_one(make_stack, audit_backend, request):
    """SQLite: the session index file has the FTS5 trigram table a search reads. PostgreSQL:
    the database's owner (not a superuser) creates pg_trgm and the index, which serves a
    search; a role that may not create the extension gets a service that says so at start and
    a search that still works (by scan)."""
    stack = make_stack(upstream="echo")
    if audit_backend == "sqlite":
        with sqlite3.connect(stack.db_path.with_suffix(".sessions.db")) as db:
            plan = db.execute(
                "EXPLAIN QUERY PLAN SELECT rowid FROM session_text WHERE session_text MATCH '\"kubern\"'"
            ).fetchall()
        assert "VIRTUAL TABLE INDEX" in str(plan), plan
        return
    pg = request.getfixturevalue("postgres")
    url = yaml.safe_load(stack.config_path.read_text())["audit"]["database"]
    assert pg.psql("SELECT indexname FROM pg_indexes WHERE indexname = 'session_exchanges_text'", url=url)
    plan = pg.psql(
        "SET enable_seqscan = off; EXPLAIN SELECT session_id FROM session_exchanges WHERE text ILIKE '%kubern%'",
        url=url,
    )
    assert "session_exchanges_text" in plan, plan

    # A database the role does not own: it may create tables in it, not extensions.
    pg.psql("CREATE DATABASE search_noext", db="postgres")
    pg.psql("GRANT CREATE ON SCHEMA public TO gatehouse", db="search_noext")
    noext = make_stack(upstream="echo", audit={"database": pg.url_for("search_noext")})
    token = noext.token("alice")
    call(noext, token, noext.initialize(token), {"message": "rotate Kubernetes credentials"})
    with auditor(noext) as audit:
        # Once the call is indexed (the session may be listed from its initialize before).
        (session,) = wait_sessions(audit, lambda s: bool(s) and s[0]["calls"] == 1, user="alice")
        assert [s["id"] for s in audit.get("/v1/sessions", params={"q": "kubern"}).json()["sessions"]] == [
            session["id"]
        ]
    log = b"".join(noext.gateway_logs().values()).decode()
    assert "session search has no index" in log and "CREATE EXTENSION pg_trgm" in log


def test_another_caller_presenting_the_session_id_gets_a_session_of_their_own(make_stack):
    stack = make_stack(upstream="echo")
    alice, mallory = stack.token("alice"), stack.token("mallory")
    session = stack.initialize(alice)
    call(stack, alice, session, {"message": "mine"})
    stolen = stack.post(
        tools_call("echo", {"message": "theirs"}, request_id=7), token=mallory, headers={"mcp-session-id": session}
    )
    assert stolen.status_code != 200 or "error" in stolen.text
    with auditor(stack) as audit:
        (alices,) = wait_sessions(audit, lambda s: bool(s) and s[0]["calls"] == 1, user="alice")
        (mallorys,) = wait_sessions(audit, lambda s: bool(s), user="mallory")
        assert mallorys["id"] != alices["id"] and mallorys["denials"] >= 1
        timeline = audit.get(f"/v1/sessions/{alices['id']}").json()
        assert all(e["decision"] == "allow" for e in timeline["exchanges"]), "the attempt is not in alice's session"


def test_calls_without_a_session_are_grouped_by_caller_client_and_idle_gap(make_stack):
    stack = make_stack(upstream="echo", audit={"session_idle_seconds": 2})
    token = stack.token("bob")
    call(stack, token, None, {"message": "a1"}, ua="agent-a")
    call(stack, token, None, {"message": "b1"}, ua="agent-b")
    call(stack, token, None, {"message": "a2"}, ua="agent-a")
    with auditor(stack) as audit:
        sessions = wait_sessions(audit, lambda s: sum(x["calls"] for x in s) == 3, user="bob")
        by_agent = {s["user_agent"]: s for s in sessions}
        assert set(by_agent) == {"agent-a", "agent-b"} and by_agent["agent-a"]["calls"] == 2
        assert all(s["upstream_session"] is None for s in sessions)
        time.sleep(2.5)
        # Past the idle gap: the first ones are idle (ended at their last call), a new call starts anew.
        idle = audit.get("/v1/sessions", params={"user": "bob", "status": "idle"}).json()["sessions"]
        assert {s["id"] for s in idle} == {s["id"] for s in sessions}
        assert all(s["ended_at"] == s["last_at"] for s in idle)
        call(stack, token, None, {"message": "a3"}, ua="agent-a")
        wait_sessions(audit, lambda s: len(s) == 3, user="bob")
        fresh = audit.get("/v1/sessions", params={"user": "bob", "status": "open"}).json()["sessions"]
        assert len(fresh) == 1 and fresh[0]["calls"] == 1 and fresh[0]["user_agent"] == "agent-a"
        # Paged: one at a time, newest first, no session twice.
        seen, before = [], None
        while True:
            page = audit.get(
                "/v1/sessions", params={"user": "bob", "limit": 1, **({"before": before} if before else {})}
            ).json()
            seen += [s["id"] for s in page["sessions"]]
            before = page["next"]
            if not before:
                break
        assert len(seen) == 3 and len(set(seen)) == 3 and seen[0] == fresh[0]["id"]


def test_only_auditors_see_sessions_and_bad_queries_are_refused(make_stack):
    stack = make_stack(upstream="echo")
    token = stack.token("alice")
    call(stack, token, stack.initialize(token), {"message": "x"})
    with auditor(stack) as audit:
        (session,) = wait_sessions(audit, lambda s: bool(s), user="alice")
        assert audit.get("/v1/sessions/s_doesnotexist").status_code == 404
        for params in ({"status": "maybe"}, {"since": "yesterday"}, {"before": "nonsense"}, {"limit": "x"}, {"x": 1}):
            assert audit.get("/v1/sessions", params=params).status_code == 400, params
        # Quotes and SQL in a search are only words.
        assert audit.get("/v1/sessions", params={"q": "x' OR '1'='1"}).json()["sessions"] == []
    for headers in (
        {"authorization": f"Bearer {stack.token('alice')}"},  # an MCP token
        {"authorization": f"Bearer {stack.auditor_token('eve', ('eng',))}"},  # not an auditor
    ):
        for path in ("/v1/sessions", f"/v1/sessions/{session['id']}", "/v1/sessions/s_doesnotexist"):
            resp = httpx.get(stack.rest_url + path, headers=headers, timeout=10)
            assert resp.status_code in (401, 403), (path, resp.status_code)
            assert session["id"] not in resp.text
