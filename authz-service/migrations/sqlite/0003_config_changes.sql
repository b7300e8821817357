-- The service's configuration records (`config_changed`), newest first: the service compares
-- its configuration at start with the newest one, and the evidence pack lists them by period.
-- Partial: only those few records are in it.
CREATE INDEX IF NOT EXISTS audit_records_config ON audit_records (recorded_at) WHERE kind = 'config_changed';
