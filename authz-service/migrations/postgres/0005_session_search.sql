-- Session search (`q`): a trigram index over the exchanges' masked text, so that ILIKE
-- '%word%' reads the index instead of every exchange's text (words of three characters or
-- more; shorter ones are read from the table).
--
-- pg_trgm ships with PostgreSQL (contrib) and is a trusted extension: the owner of the
-- database may create it. Where it cannot be created (not installed, or a role without the
-- CREATE privilege on the database), search still works, by a scan: the service says so in
-- its log at start.
DO $$
BEGIN
    CREATE EXTENSION IF NOT EXISTS pg_trgm;
    EXECUTE 'CREATE INDEX session_exchanges_text ON session_exchanges USING gin (text gin_trgm_ops)';
EXCEPTION WHEN OTHERS THEN
    RAISE NOTICE 'session search without an index: %', SQLERRM;
END
$$;
