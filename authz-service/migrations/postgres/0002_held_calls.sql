-- What the replicas share about the calls they hold now (approvals/replicas.rs).
-- Each replica says it is alive every few seconds; the held calls of one that stopped saying
-- so no longer count, and are cleared away.
CREATE TABLE replicas (
    replica TEXT   PRIMARY KEY,  -- its audit writer id (leased: one live process per id)
    seen_ms BIGINT NOT NULL
);
-- One row per Check held on an approval now: a caller's cap counts them across replicas, and
-- the approvers' page shows "alice is waiting" from them.
CREATE TABLE held_calls (
    id          TEXT   PRIMARY KEY,
    replica     TEXT   NOT NULL,
    subject     TEXT   NOT NULL,
    approval_id TEXT,
    since_ms    BIGINT NOT NULL
);
CREATE INDEX held_calls_subject ON held_calls (subject);
CREATE INDEX held_calls_approval ON held_calls (approval_id);
CREATE INDEX held_calls_replica ON held_calls (replica);
-- The clear arguments of a pending `show_clear` approval, sealed (ChaCha20-Poly1305; on
-- PostgreSQL under a key derived from service.session_key_file, so any replica can show them
-- to an approver; on SQLite under a key of the process only); deleted once the approval is no
-- longer pending. Never in the trail.
CREATE TABLE approval_clear (
    approval_id TEXT PRIMARY KEY,
    sealed      TEXT NOT NULL
);
