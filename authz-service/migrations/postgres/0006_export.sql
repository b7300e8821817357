-- The SIEM export (`export:`): each exporter's cursor per writer, the last seq its sink
-- acknowledged. An exporter sends from the record after it, so a record is delivered at least
-- once whatever stops the service.
CREATE TABLE export_cursors (
    exporter   TEXT    NOT NULL,
    writer     TEXT    NOT NULL,
    seq        BIGINT  NOT NULL,
    updated_at TEXT    NOT NULL,
    PRIMARY KEY (exporter, writer)
);
-- The S3 archive (`archive:`), per writer: the last seq sealed in a digest that was
-- uploaded, that digest's SHA-256 (the next digest links to it), and the segment being
-- uploaded (sealed_seq+1 ..= pending_last), sealed again exactly as it was after a crash.
CREATE TABLE archive_state (
    writer        TEXT    PRIMARY KEY,
    sealed_seq    BIGINT  NOT NULL,
    digest_sha256 TEXT,
    pending_last  BIGINT,
    updated_at    TEXT    NOT NULL
);
