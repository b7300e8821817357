-- The key of the digest `digest_sha256` names, so the next digest links to it without
-- listing the bucket (a listing shows a delete marker, not the version it hides). NULL in
-- rows sealed before this column: those find their digest by listing once.
ALTER TABLE archive_state ADD COLUMN digest_key TEXT;
