-- The audit trail, its checkpoints and the approvals table (PostgreSQL).
-- `data` is the record's JSON as text, exactly as written (its hash covers the canonical
-- form); the indexes read it as jsonb.
CREATE TABLE audit_records (
    writer      TEXT   NOT NULL,
    seq         BIGINT NOT NULL,
    kind        TEXT   NOT NULL,
    request_id  TEXT   NOT NULL,
    recorded_at TEXT   NOT NULL,
    prev_hash   TEXT   NOT NULL,
    hash        TEXT   NOT NULL,
    data        TEXT   NOT NULL,
    PRIMARY KEY (writer, seq)
);
-- By request, and within it by response part (the ingest's look-up); its prefix serves every
-- query by request id.
CREATE INDEX audit_records_part ON audit_records (request_id, ((data::jsonb ->> 'part')::bigint));
CREATE INDEX audit_records_time ON audit_records (recorded_at);
CREATE INDEX audit_records_subject ON audit_records ((data::jsonb ->> 'subject'), recorded_at);
CREATE TABLE audit_checkpoints (
    writer    TEXT   NOT NULL,
    seq       BIGINT NOT NULL,
    hash      TEXT   NOT NULL,
    signed_at TEXT   NOT NULL,
    signature TEXT   NOT NULL,
    PRIMARY KEY (writer, seq)
);
CREATE TABLE approvals (
    id               TEXT   PRIMARY KEY,
    key              TEXT   NOT NULL,
    status           TEXT   NOT NULL,
    subject          TEXT   NOT NULL,
    upstream         TEXT   NOT NULL,
    method           TEXT   NOT NULL,
    tool             TEXT,
    arguments        TEXT   NOT NULL,
    rule             TEXT   NOT NULL,
    approver_group   TEXT   NOT NULL,
    single_use       BOOLEAN NOT NULL,
    grant_ms         BIGINT NOT NULL,
    request_id       TEXT   NOT NULL,
    requested_ms     BIGINT NOT NULL,
    expires_ms       BIGINT NOT NULL,
    decided_ms       BIGINT,
    decided_by       TEXT,
    reason           TEXT,
    grant_expires_ms BIGINT,
    uses             BIGINT NOT NULL DEFAULT 0,
    -- What masking changed in the arguments (kinds and places, never a value), as JSON.
    masking          TEXT
);
-- At most one pending approval per call: an identical call joins it.
CREATE UNIQUE INDEX approvals_one_pending ON approvals (key) WHERE status = 'pending';
CREATE INDEX approvals_key ON approvals (key, status, decided_ms);
CREATE INDEX approvals_status ON approvals (status, expires_ms);
CREATE INDEX approvals_requested ON approvals (requested_ms);
CREATE INDEX approvals_subject ON approvals (subject, status);
