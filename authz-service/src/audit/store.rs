//! The SQLite store: one table of chained records, written in grouped transactions.

use std::{
    collections::{HashMap, HashSet},
    str::FromStr,
    time::Duration,
};

use gatehouse_core::audit::{Checkpoint, Record};
use serde::Deserialize;
use sqlx::{
    Row, SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous},
};

const SCHEMA: &str = "
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
";

/// A query for whole records: the columns `record_from_row` reads, then `$rest`.
macro_rules! select_records {
    ($rest:literal) => {
        concat!(
            "SELECT writer, seq, kind, request_id, recorded_at, prev_hash, hash, data FROM audit_records ",
            $rest
        )
    };
}

/// Filters for listing records; all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordQuery {
    pub user: Option<String>,
    pub upstream: Option<String>,
    pub tool: Option<String>,
    pub kind: Option<String>,
    pub request_id: Option<String>,
    /// RFC 3339, inclusive.
    pub since: Option<String>,
    /// RFC 3339, exclusive.
    pub until: Option<String>,
    pub limit: Option<u32>,
}

/// What [`Store::ingest_view`] found.
#[derive(Debug, Default)]
pub struct IngestView {
    /// Requests with a committed request record.
    pub requested: HashSet<String>,
    /// Stored filter records by (request id, response part; `None` for a rejection): their
    /// data.
    pub stored: HashMap<(String, Option<u64>), Vec<serde_json::Value>>,
}

/// Several filter records for one request id and part (or rejection).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Conflict {
    pub request_id: String,
    pub kind: String,
    pub part: Option<u64>,
    /// (writer, seq) of each record, oldest first.
    pub records: Vec<(String, u64)>,
}

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    /// The database file (`None` for an in-memory database, which has no writer thread).
    path: Option<std::path::PathBuf>,
    busy_timeout: Duration,
    /// The ingest's own read-only connection, opened on first use ([`Store::ingest_view`]).
    ingest_reader: std::sync::Arc<std::sync::Mutex<Option<rusqlite::Connection>>>,
}

impl Store {
    /// Opens (and creates) the database. Commits are synchronous (`synchronous=FULL`): a
    /// record the service acknowledged survives a crash or power loss.
    pub async fn open(url: &str, busy_timeout: Duration) -> Result<Self, sqlx::Error> {
        // SQLite creates a database 0644 and gives its -wal and -shm the database's mode:
        // create the file 0600 first (its folder 0700) and all three stay private.
        let path = url
            .strip_prefix("sqlite://")
            .map(|p| p.split('?').next().unwrap_or(p))
            .filter(|p| !p.is_empty() && !p.starts_with(':'))
            .map(std::path::PathBuf::from);
        if let Some(path) = &path {
            crate::private_file::ensure_private_file(path).map_err(sqlx::Error::Io)?;
            if crate::private_file::is_shared(path) {
                tracing::warn!(database = %path.display(), "The audit database can be read by other users than the service's; make it 0600.");
            }
        }
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(busy_timeout);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        Ok(Self {
            pool,
            path,
            busy_timeout,
            ingest_reader: std::sync::Arc::default(),
        })
    }

    /// How long a statement waits for another connection's write lock.
    pub fn busy_timeout(&self) -> Duration {
        self.busy_timeout
    }

    /// The database file, for the writer thread's own connection.
    pub fn path(&self) -> Option<&std::path::Path> {
        self.path.as_deref()
    }

    /// The connection pool, for state kept next to the trail (approvals).
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// Inserts records in one transaction, bypassing the writer thread (which is the only
    /// appender in the service): for tests that lay down a trail as a crash left it.
    #[cfg(test)]
    pub async fn insert_all<'a>(&self, records: impl Iterator<Item = &'a Record>) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        for r in records {
            sqlx::query(
                "INSERT INTO audit_records (writer, seq, kind, request_id, recorded_at, prev_hash, hash, data)
                 VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&r.writer)
            .bind(r.seq as i64)
            .bind(&r.kind)
            .bind(&r.request_id)
            .bind(&r.recorded_at)
            .bind(&r.prev_hash)
            .bind(&r.hash)
            .bind(serde_json::to_string(&r.data).unwrap_or_default())
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await
    }

    /// Records matching a query, oldest first.
    pub async fn list(&self, q: &RecordQuery) -> Result<Vec<Record>, sqlx::Error> {
        let mut sql = String::from(select_records!("WHERE 1=1"));
        let mut args: Vec<&str> = Vec::new();
        for (column, op, value) in [
            ("json_extract(data, '$.subject')", "=", &q.user),
            ("json_extract(data, '$.upstream')", "=", &q.upstream),
            ("json_extract(data, '$.tool')", "=", &q.tool),
            ("kind", "=", &q.kind),
            ("request_id", "=", &q.request_id),
            ("recorded_at", ">=", &q.since),
            ("recorded_at", "<", &q.until),
        ] {
            if let Some(v) = value {
                sql.push_str(&format!(" AND {column} {op} ?"));
                args.push(v);
            }
        }
        sql.push_str(" ORDER BY recorded_at, writer, seq LIMIT ?");
        // Only fixed column names and operators are spliced in; every value is bound.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for a in args {
            query = query.bind(a);
        }
        let limit = q.limit.unwrap_or(100).clamp(1, 1000);
        query
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(record_from_row)
            .collect()
    }

    /// All records of one request (request, rejections, response parts) in chain order, at
    /// most `limit`.
    pub async fn request_records(&self, request_id: &str, limit: u32) -> Result<Vec<Record>, sqlx::Error> {
        sqlx::query(select_records!("WHERE request_id = ? ORDER BY writer, seq LIMIT ?"))
            .bind(request_id)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(record_from_row)
            .collect()
    }

    /// Whether the final part of a request's response was recorded.
    pub async fn has_final_response(&self, request_id: &str) -> Result<bool, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM audit_records WHERE request_id = ? AND kind = 'response'
             AND json_extract(data, '$.final') = 1)",
        )
        .bind(request_id)
        .fetch_one(&self.pool)
        .await
    }

    /// What the store holds for the filter's records of these requests: which have a
    /// committed request record, and the data of each stored rejection and of each stored
    /// response part among `parts` (to compare a record that comes again).
    ///
    /// Read on the calling thread through a read-only connection of its own, not through the
    /// pool: one short indexed look-up per ingest batch, where the pool's worker thread would
    /// add two thread hand-offs and its own per-statement overhead.
    pub fn ingest_view(&self, request_ids: &[&str], parts: &[u64]) -> rusqlite::Result<IngestView> {
        let mut reader = self
            .ingest_reader
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let conn = match &mut *reader {
            Some(conn) => conn,
            closed @ None => {
                let path = self.path.as_deref().ok_or_else(|| {
                    rusqlite::Error::InvalidPath("the ingest needs the audit store in a database file".into())
                })?;
                let conn = rusqlite::Connection::open_with_flags(
                    path,
                    rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
                )?;
                conn.busy_timeout(self.busy_timeout)?;
                closed.insert(conn)
            }
        };
        let mut unique: Vec<&str> = request_ids.to_vec();
        unique.sort_unstable();
        unique.dedup();
        let mut parts = parts.to_vec();
        parts.sort_unstable();
        parts.dedup();
        // The ids and parts are bound as two JSON arrays, so the statement's text is always
        // the same (prepared once) whatever the batch holds. A request's record is read for
        // its existence only; a response's data only for the parts asked about (a long stream
        // has many). Two halves so that each uses the index by request (and part): a long
        // stream's batches must not read all its records every time.
        let mut query = conn.prepare_cached(
            "SELECT request_id, kind, NULL, CASE WHEN kind = 'request' THEN NULL ELSE data END
             FROM audit_records
             WHERE request_id IN (SELECT value FROM json_each(?1)) AND kind IN ('request', 'request_rejected')
             UNION ALL
             SELECT request_id, kind, json_extract(data, '$.part'), data
             FROM audit_records
             WHERE request_id IN (SELECT value FROM json_each(?1))
               AND json_extract(data, '$.part') IN (SELECT value FROM json_each(?2))
               AND kind = 'response'",
        )?;
        let ids = serde_json::to_string(&unique).unwrap_or_default();
        let parts = serde_json::to_string(&parts).unwrap_or_default();
        let mut rows = query.query(rusqlite::params![ids, parts])?;
        let mut view = IngestView::default();
        while let Some(row) = rows.next()? {
            let id: String = row.get(0)?;
            let kind: String = row.get(1)?;
            let part = match kind.as_str() {
                "request" => {
                    view.requested.insert(id);
                    continue;
                }
                "response" => row.get::<_, Option<i64>>(2)?.map(|p| p as u64),
                _ => None,
            };
            let data: String = row.get::<_, Option<String>>(3)?.unwrap_or_default();
            let data = serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data));
            view.stored.entry((id, part)).or_default().push(data);
        }
        Ok(view)
    }

    /// Filter records that share a request id and part with a different one (a rejection
    /// has no part): each group, oldest first, with the (writer, seq) of its records.
    pub async fn conflicts(&self, limit: u32) -> Result<Vec<Conflict>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT request_id, kind, json_extract(data, '$.part'),
                    json_group_array(json_array(writer, seq))
             FROM (SELECT * FROM audit_records WHERE kind IN ('response', 'request_rejected')
                   ORDER BY recorded_at, writer, seq)
             GROUP BY request_id, kind, json_extract(data, '$.part')
             HAVING count(*) > 1
             ORDER BY min(recorded_at)
             LIMIT ?",
        )
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let records: String = row.try_get(3)?;
                Ok(Conflict {
                    request_id: row.try_get(0)?,
                    kind: row.try_get(1)?,
                    part: row.try_get::<Option<i64>, _>(2)?.map(|p| p as u64),
                    records: serde_json::from_str(&records).unwrap_or_default(),
                })
            })
            .collect()
    }

    /// Every writer with records.
    pub async fn writers(&self) -> Result<Vec<String>, sqlx::Error> {
        sqlx::query_scalar("SELECT DISTINCT writer FROM audit_records ORDER BY writer")
            .fetch_all(&self.pool)
            .await
    }

    /// A writer's records in chain order, `page` at a time after `after_seq`.
    pub async fn chain_page(&self, writer: &str, after_seq: u64, page: u32) -> Result<Vec<Record>, sqlx::Error> {
        sqlx::query(select_records!("WHERE writer = ? AND seq > ? ORDER BY seq LIMIT ?"))
            .bind(writer)
            .bind(after_seq as i64)
            .bind(page as i64)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(record_from_row)
            .collect()
    }

    /// A writer's checkpoints, oldest first.
    pub async fn checkpoints(&self, writer: &str) -> Result<Vec<Checkpoint>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT writer, seq, hash, signed_at, signature FROM audit_checkpoints WHERE writer = ? ORDER BY seq",
        )
        .bind(writer)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Checkpoint {
                    writer: r.try_get(0)?,
                    seq: r.try_get::<i64, _>(1)? as u64,
                    hash: r.try_get(2)?,
                    signed_at: r.try_get(3)?,
                    signature: r.try_get(4)?,
                })
            })
            .collect()
    }

    /// Cheap liveness probe for /healthz.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map(|_| ())
    }
}

fn record_from_row(row: &SqliteRow) -> Result<Record, sqlx::Error> {
    let data: String = row.try_get(7)?;
    Ok(Record {
        writer: row.try_get(0)?,
        seq: row.try_get::<i64, _>(1)? as u64,
        kind: row.try_get(2)?,
        request_id: row.try_get(3)?,
        recorded_at: row.try_get(4)?,
        prev_hash: row.try_get(5)?,
        hash: row.try_get(6)?,
        // A row whose data is not JSON was tampered with; keep it as text so verify flags it.
        data: serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data)),
    })
}
