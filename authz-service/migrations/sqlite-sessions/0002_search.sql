-- Session search (`q`): a trigram full-text index over the exchanges' masked text, so that a
-- search reads the index instead of every exchange's text. FTS5 with the trigram tokenizer
-- matches any substring of three characters or more, case-insensitively; shorter words are
-- read from the table (a scan).
--
-- The index is external content: it refers to session_exchanges rows by a rowid that must
-- never change, so session_exchanges is rebuilt with an INTEGER PRIMARY KEY (a VACUUM keeps
-- such ids; it may renumber an implicit rowid).
CREATE TABLE session_exchanges_v2 (
    id               INTEGER PRIMARY KEY,
    request_id       TEXT   NOT NULL UNIQUE,
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
INSERT INTO session_exchanges_v2 (request_id, session_id, at, subject, upstream, user_agent, mcp_method,
    tool, decision, approval, masked, text, http_method, client, upstream_session, answered, requested)
SELECT request_id, session_id, at, subject, upstream, user_agent, mcp_method,
    tool, decision, approval, masked, text, http_method, client, upstream_session, answered, requested
FROM session_exchanges;
DROP TABLE session_exchanges;
ALTER TABLE session_exchanges_v2 RENAME TO session_exchanges;
CREATE INDEX session_exchanges_session ON session_exchanges (session_id, at);
CREATE INDEX session_exchanges_tool ON session_exchanges (tool, session_id);

CREATE VIRTUAL TABLE session_text USING fts5(
    text, content = 'session_exchanges', content_rowid = 'id', tokenize = 'trigram'
);
INSERT INTO session_text (session_text) VALUES ('rebuild');
CREATE TRIGGER session_text_insert AFTER INSERT ON session_exchanges BEGIN
    INSERT INTO session_text (rowid, text) VALUES (new.id, new.text);
END;
-- The indexer rewrites an exchange at each part of its answer: the text only when it grew.
CREATE TRIGGER session_text_update AFTER UPDATE OF text ON session_exchanges
WHEN old.text <> new.text BEGIN
    INSERT INTO session_text (session_text, rowid, text) VALUES ('delete', old.id, old.text);
    INSERT INTO session_text (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER session_text_delete AFTER DELETE ON session_exchanges BEGIN
    INSERT INTO session_text (session_text, rowid, text) VALUES ('delete', old.id, old.text);
END;
