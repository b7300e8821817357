-- The session index (sessions/) of a SQLite trail, in a database file of its own beside the
-- audit database (so the indexer's writes never hold the audit database's write lock):
-- derived from the trail by the indexer, rebuildable from it (delete the file), never
-- evidence itself (the records are). `at`, `started_at`, `last_at` are recorded_at
-- times (RFC 3339, UTC, as stored).
CREATE TABLE session_cursor (
    writer TEXT   PRIMARY KEY,
    seq    INTEGER NOT NULL
);
CREATE TABLE sessions (
    id               TEXT PRIMARY KEY,
    upstream         TEXT NOT NULL,
    subject          TEXT NOT NULL,
    -- The upstream's Mcp-Session-Id; null for the calls of a server that keeps no sessions,
    -- grouped by caller, upstream and User-Agent with an idle gap.
    upstream_session TEXT,
    user_agent       TEXT NOT NULL,
    client_name      TEXT,
    client_version   TEXT,
    protocol_version TEXT,
    started_at       TEXT NOT NULL,
    last_at          TEXT NOT NULL,
    -- When the client ended it (DELETE); null while open or once idle.
    ended_at         TEXT
);
-- Newest first, paged by (last_at, id).
CREATE INDEX sessions_page ON sessions (last_at, id);
CREATE INDEX sessions_subject ON sessions (subject, last_at);
CREATE INDEX sessions_upstream ON sessions (upstream, last_at);
CREATE INDEX sessions_stateless ON sessions (subject, upstream, user_agent, last_at) WHERE upstream_session IS NULL;
-- One row per request (exchange); its session once known (an initialize's comes with its answer).
CREATE TABLE session_exchanges (
    request_id       TEXT   PRIMARY KEY,
    session_id       TEXT,
    at               TEXT   NOT NULL,
    subject          TEXT,
    upstream         TEXT,
    user_agent       TEXT,
    mcp_method       TEXT,
    tool             TEXT,
    decision         TEXT,
    approval         INTEGER NOT NULL DEFAULT 0,
    -- Values masked in the request and its answer, by kind (JSON object).
    masked           TEXT   NOT NULL DEFAULT '{}',
    -- What a search reads: the masked arguments and answers (never a clear value).
    text             TEXT   NOT NULL DEFAULT '',
    http_method      TEXT,
    -- What an initialize said about its client (JSON), until its session is known.
    client           TEXT,
    -- The upstream's session id: the one the request presented, or the one its answer set
    -- (an initialize).
    upstream_session TEXT,
    answered         INTEGER NOT NULL DEFAULT 0,
    requested        INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX session_exchanges_session ON session_exchanges (session_id, at);
CREATE INDEX session_exchanges_tool ON session_exchanges (tool, session_id);
