-- The audit trail, its checkpoints and the approvals table (SQLite).
-- IF NOT EXISTS throughout: a database made before migrations existed already has them.
CREATE TABLE IF NOT EXISTS audit_records (
    writer      TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    kind        TEXT    NOT NULL,
    request_id  TEXT    NOT NULL,
    recorded_at TEXT    NOT NULL,
    prev_hash   TEXT    NOT NULL,
    hash        TEXT    NOT NULL,
    data        TEXT    NOT NULL,
    PRIMARY KEY (writer, seq)
);
-- By request, and within it by response part (the ingest's look-up); its prefix serves every
-- query by request id.
CREATE INDEX IF NOT EXISTS audit_records_part ON audit_records (request_id, json_extract(data, '$.part'));
CREATE INDEX IF NOT EXISTS audit_records_time ON audit_records (recorded_at);
-- Searches read the hashed `data` itself (no copies in other columns that verify would
-- not cover): index the fields they filter on.
CREATE INDEX IF NOT EXISTS audit_records_subject ON audit_records (json_extract(data, '$.subject'), recorded_at);
CREATE TABLE IF NOT EXISTS audit_checkpoints (
    writer    TEXT    NOT NULL,
    seq       INTEGER NOT NULL,
    hash      TEXT    NOT NULL,
    signed_at TEXT    NOT NULL,
    signature TEXT    NOT NULL,
    PRIMARY KEY (writer, seq)
);
CREATE TABLE IF NOT EXISTS approvals (
    id               TEXT    PRIMARY KEY,
    key              TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    subject          TEXT    NOT NULL,
    upstream         TEXT    NOT NULL,
    method           TEXT    NOT NULL,
    tool             TEXT,
    arguments        TEXT    NOT NULL,
    rule             TEXT    NOT NULL,
    approver_group   TEXT    NOT NULL,
    single_use       INTEGER NOT NULL,
    grant_ms         INTEGER NOT NULL,
    request_id       TEXT    NOT NULL,
    requested_ms     INTEGER NOT NULL,
    expires_ms       INTEGER NOT NULL,
    decided_ms       INTEGER,
    decided_by       TEXT,
    reason           TEXT,
    grant_expires_ms INTEGER,
    uses             INTEGER NOT NULL DEFAULT 0,
    -- What masking changed in the arguments (kinds and places, never a value), as JSON.
    masking          TEXT
);
-- At most one pending approval per call: an identical call joins it.
CREATE UNIQUE INDEX IF NOT EXISTS approvals_one_pending ON approvals (key) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS approvals_key ON approvals (key, status, decided_ms);
CREATE INDEX IF NOT EXISTS approvals_status ON approvals (status, expires_ms);
CREATE INDEX IF NOT EXISTS approvals_requested ON approvals (requested_ms);
CREATE INDEX IF NOT EXISTS approvals_subject ON approvals (subject, status);
