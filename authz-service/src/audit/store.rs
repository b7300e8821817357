//! The audit store: one table of chained records and one of checkpoints, on SQLite or
//! PostgreSQL ([`crate::db`]). Appends go through the writer thread (`writer.rs`); this is
//! what everything else reads.

use std::{
    collections::{HashMap, HashSet},
    str::FromStr,
    time::Duration,
};

use gatehouse_core::audit::{Checkpoint, Record};
use serde::Deserialize;
use sqlx::{
    Row,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

use crate::db::{Backend, Pool};
use crate::on_pool;

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
    /// Those of them recorded by metadata only (`recording:`): their answers keep no content.
    pub metadata_only: HashSet<String>,
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
    pool: Pool,
    /// The database URL (for the writer's own connection to PostgreSQL).
    url: String,
    /// The database file (`None` for an in-memory database, which has no writer thread, and
    /// for PostgreSQL).
    path: Option<std::path::PathBuf>,
    busy_timeout: Duration,
    /// The ingest's own read-only connection, opened on first use ([`Store::ingest_view`]).
    ingest_reader: std::sync::Arc<std::sync::Mutex<Option<rusqlite::Connection>>>,
}

/// The store could not be opened: the database, or its schema.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("{0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Schema(String),
}

impl Store {
    /// Opens the database at `url` (`sqlite://…` or `postgres://…`) and brings its schema up
    /// to date ([`crate::db::migrate`]). Commits are synchronous either way: a record the
    /// service acknowledged survives a crash or power loss.
    pub async fn open(url: &str, busy_timeout: Duration) -> Result<Self, OpenError> {
        let store = Self::connect(url, busy_timeout).await?;
        crate::db::migrate(&store.pool).await.map_err(OpenError::Schema)?;
        if let Pool::Sqlite(pool) = &store.pool {
            add_legacy_columns(pool).await?;
        }
        Ok(store)
    }

    /// Opens the database without touching its schema (`gatehouse migrate` migrates it).
    pub async fn connect(url: &str, busy_timeout: Duration) -> Result<Self, sqlx::Error> {
        if Backend::of(url) == Some(Backend::Postgres) {
            return Ok(Self::on_postgres(
                crate::db::connect_postgres(url).await?,
                url,
                busy_timeout,
            ));
        }
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
        Ok(Self {
            pool: Pool::Sqlite(pool),
            url: url.to_owned(),
            path,
            busy_timeout,
            ingest_reader: std::sync::Arc::default(),
        })
    }

    /// Another pool on this store's database, for the background work (the export, the
    /// archive, the session indexer; [`crate::background`]): on SQLite, connections of its
    /// own, whose threads start at the priority of the thread that opens them; on PostgreSQL
    /// at most 4 connections, beside the Checks' pool rather than taken from it.
    pub async fn background_pool(&self) -> Result<Self, sqlx::Error> {
        if self.backend() == Backend::Postgres {
            let pool = crate::db::connect_postgres_sized(&self.url, 4).await?;
            return Ok(Self::on_postgres(pool, &self.url, self.busy_timeout));
        }
        if self.path.is_none() {
            // An in-memory database (unit tests): another connection would be another database.
            return Ok(self.clone());
        }
        Self::connect(&self.url, self.busy_timeout).await
    }

    fn on_postgres(pool: sqlx::PgPool, url: &str, busy_timeout: Duration) -> Self {
        Self {
            pool: Pool::Postgres(pool),
            url: url.to_owned(),
            path: None,
            busy_timeout,
            ingest_reader: std::sync::Arc::default(),
        }
    }

    pub fn backend(&self) -> Backend {
        self.pool.backend()
    }

    /// The database URL this store was opened with (it may hold a password: never log it).
    pub fn url(&self) -> &str {
        &self.url
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
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Inserts records in one transaction, bypassing the writer thread (which is the only
    /// appender in the service): for tests that lay down a trail as a crash left it, and the
    /// benchmarks' trail fillers.
    pub async fn insert_all<'a>(&self, records: impl Iterator<Item = &'a Record>) -> Result<(), sqlx::Error> {
        let records: Vec<&Record> = records.collect();
        on_pool!(&self.pool, pool => {
            let mut tx = pool.begin().await?;
            for r in &records {
                sqlx::query(
                    "INSERT INTO audit_records (writer, seq, kind, request_id, recorded_at, prev_hash, hash, data)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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
        })
    }

    /// Records matching a query, oldest first.
    pub async fn list(&self, q: &RecordQuery) -> Result<Vec<Record>, sqlx::Error> {
        let backend = self.backend();
        let mut sql = String::from(select_records!("WHERE 1=1"));
        let mut args: Vec<&str> = Vec::new();
        for (column, op, value) in [
            (data_field(backend, "subject"), "=", &q.user),
            (data_field(backend, "upstream"), "=", &q.upstream),
            (data_field(backend, "tool"), "=", &q.tool),
            ("kind", "=", &q.kind),
            ("request_id", "=", &q.request_id),
            ("recorded_at", ">=", &q.since),
            ("recorded_at", "<", &q.until),
        ] {
            if let Some(v) = value {
                args.push(v);
                sql.push_str(&format!(" AND {column} {op} ${}", args.len()));
            }
        }
        sql.push_str(&format!(" ORDER BY recorded_at, writer, seq LIMIT ${}", args.len() + 1));
        let limit = q.limit.unwrap_or(100).clamp(1, 1000);
        on_pool!(&self.pool, pool => {
            // Only fixed column names and operators are spliced in; every value is bound.
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for a in args {
                query = query.bind(a);
            }
            query.bind(limit as i64).fetch_all(pool).await?.iter().map(record_from_row).collect()
        })
    }

    /// All records of one request (request, rejections, response parts) in chain order, at
    /// most `limit`.
    pub async fn request_records(&self, request_id: &str, limit: u32) -> Result<Vec<Record>, sqlx::Error> {
        on_pool!(&self.pool, pool => {
            sqlx::query(select_records!("WHERE request_id = $1 ORDER BY writer, seq LIMIT $2"))
                .bind(request_id)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
                .iter()
                .map(record_from_row)
                .collect()
        })
    }

    /// Whether the final part of a request's response was recorded.
    pub async fn has_final_response(&self, request_id: &str) -> Result<bool, sqlx::Error> {
        let is_final = match self.backend() {
            Backend::Sqlite => "json_extract(data, '$.final') = 1",
            Backend::Postgres => "(data::jsonb -> 'final') = 'true'::jsonb",
        };
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM audit_records WHERE request_id = $1 AND kind = 'response' AND {is_final})"
        );
        on_pool!(&self.pool, pool => {
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(request_id).fetch_one(pool).await
        })
    }

    /// What the store holds for the filter's records of these requests: which have a
    /// committed request record, and the data of each stored rejection and of each stored
    /// response part among `parts` (to compare a record that comes again).
    ///
    /// On SQLite, read on the calling thread through a read-only connection of its own, not
    /// through the pool: one short indexed look-up per ingest batch, where the pool's worker
    /// thread would add two thread hand-offs and its own per-statement overhead.
    pub async fn ingest_view(&self, request_ids: &[&str], parts: &[u64]) -> Result<IngestView, super::AuditError> {
        let mut unique: Vec<&str> = request_ids.to_vec();
        unique.sort_unstable();
        unique.dedup();
        let mut parts = parts.to_vec();
        parts.sort_unstable();
        parts.dedup();
        match &self.pool {
            Pool::Sqlite(_) => Ok(self.ingest_view_sqlite(&unique, &parts)?),
            Pool::Postgres(pool) => Ok(ingest_view_postgres(pool, &unique, &parts).await?),
        }
    }

    fn ingest_view_sqlite(&self, unique: &[&str], parts: &[u64]) -> rusqlite::Result<IngestView> {
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
        // The ids and parts are bound as two JSON arrays, so the statement's text is always
        // the same (prepared once) whatever the batch holds. A request's record is read for
        // its existence and recording scope only; a response's data only for the parts asked about (a long stream
        // has many). Two halves so that each uses the index by request (and part): a long
        // stream's batches must not read all its records every time.
        let mut query = conn.prepare_cached(
            "SELECT request_id, kind, NULL, CASE WHEN kind = 'request' THEN json_extract(data, '$.recording') ELSE data END
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
            view.add(row.get(0)?, &row.get::<_, String>(1)?, row.get(2)?, row.get(3)?);
        }
        Ok(view)
    }

    /// On PostgreSQL, waits until no other replica is storing filter records of `ids`, and
    /// holds them until the returned transaction ends (dropped: rolled back, released all
    /// the same). A batch retried while its first delivery is still being stored elsewhere
    /// then finds that delivery's records, not nothing. One service per SQLite database
    /// needs nothing more than its own claims (`None`).
    pub async fn claim_requests(
        &self,
        ids: &[&str],
    ) -> Result<Option<sqlx::Transaction<'static, sqlx::Postgres>>, sqlx::Error> {
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(None);
        };
        let mut tx = pool.begin().await?;
        // In one order everywhere, so two replicas claiming overlapping batches cannot deadlock.
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended('gatehouse ingest ' || id, 0))
             FROM (SELECT DISTINCT id FROM unnest($1::text[]) AS id ORDER BY id) AS ids",
        )
        .bind(ids)
        .execute(&mut *tx)
        .await?;
        Ok(Some(tx))
    }

    /// Filter records that share a request id and part with a different one (a rejection
    /// has no part): each group, oldest first, with the (writer, seq) of its records.
    pub async fn conflicts(&self, limit: u32) -> Result<Vec<Conflict>, sqlx::Error> {
        let sql = match self.backend() {
            Backend::Sqlite => {
                "SELECT request_id, kind, json_extract(data, '$.part'),
                        json_group_array(json_array(writer, seq))
                 FROM (SELECT * FROM audit_records WHERE kind IN ('response', 'request_rejected')
                       ORDER BY recorded_at, writer, seq)
                 GROUP BY request_id, kind, json_extract(data, '$.part')
                 HAVING count(*) > 1
                 ORDER BY min(recorded_at)
                 LIMIT $1"
            }
            Backend::Postgres => {
                "SELECT request_id, kind, (data::jsonb ->> 'part')::bigint,
                        json_agg(json_build_array(writer, seq) ORDER BY recorded_at, writer, seq)::text
                 FROM audit_records WHERE kind IN ('response', 'request_rejected')
                 GROUP BY request_id, kind, (data::jsonb ->> 'part')::bigint
                 HAVING count(*) > 1
                 ORDER BY min(recorded_at)
                 LIMIT $1"
            }
        };
        let rows: Vec<(String, String, Option<i64>, String)> =
            on_pool!(&self.pool, pool => sqlx::query_as(sql).bind(i64::from(limit)).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .map(|(request_id, kind, part, records)| Conflict {
                request_id,
                kind,
                part: part.map(|p| p as u64),
                records: serde_json::from_str(&records).unwrap_or_default(),
            })
            .collect())
    }

    /// Every writer with records.
    pub async fn writers(&self) -> Result<Vec<String>, sqlx::Error> {
        on_pool!(&self.pool, pool => {
            sqlx::query_scalar("SELECT DISTINCT writer FROM audit_records ORDER BY writer").fetch_all(pool).await
        })
    }

    /// The writer ids of the replicas that said they are alive (`approvals/replicas.rs`).
    pub async fn live_replicas(&self) -> Result<Vec<String>, sqlx::Error> {
        on_pool!(&self.pool, pool => {
            sqlx::query_scalar("SELECT replica FROM replicas").fetch_all(pool).await
        })
    }

    /// The seq of a writer's newest record (0: none).
    pub async fn head_seq(&self, writer: &str) -> Result<u64, sqlx::Error> {
        let seq: Option<i64> = on_pool!(&self.pool, pool => {
            sqlx::query_scalar("SELECT MAX(seq) FROM audit_records WHERE writer = $1").bind(writer).fetch_one(pool).await?
        });
        Ok(seq.and_then(|s| u64::try_from(s).ok()).unwrap_or(0))
    }

    /// A writer's records in chain order, `page` at a time after `after_seq`.
    pub async fn chain_page(&self, writer: &str, after_seq: u64, page: u32) -> Result<Vec<Record>, sqlx::Error> {
        on_pool!(&self.pool, pool => {
            sqlx::query(select_records!("WHERE writer = $1 AND seq > $2 ORDER BY seq LIMIT $3"))
                .bind(writer)
                .bind(after_seq as i64)
                .bind(page as i64)
                .fetch_all(pool)
                .await?
                .iter()
                .map(record_from_row)
                .collect()
        })
    }

    /// The newest `config_changed` records of any writer, newest first, at most `limit` (on
    /// their own partial index).
    pub async fn newest_configs(&self, limit: u32) -> Result<Vec<Record>, sqlx::Error> {
        on_pool!(&self.pool, pool => {
            sqlx::query(select_records!(
                "WHERE kind = 'config_changed' ORDER BY recorded_at DESC, seq DESC LIMIT $1"
            ))
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
            .iter()
            .map(record_from_row)
            .collect()
        })
    }

    /// Records with `from <= recorded_at < to` in (recorded_at, writer, seq) order, `limit` at a
    /// time after `after` (the last of the previous page).
    pub async fn records_between(
        &self,
        from: &str,
        to: &str,
        after: Option<(&str, &str, u64)>,
        limit: u32,
    ) -> Result<Vec<Record>, sqlx::Error> {
        let (at, writer, seq) = after.unwrap_or(("", "", 0));
        on_pool!(&self.pool, pool => {
            sqlx::query(select_records!(
                "WHERE recorded_at >= $1 AND recorded_at < $2 AND (recorded_at, writer, seq) > ($3, $4, $5) \
                 ORDER BY recorded_at, writer, seq LIMIT $6"
            ))
            .bind(from)
            .bind(to)
            .bind(at)
            .bind(writer)
            .bind(seq as i64)
            .bind(i64::from(limit))
            .fetch_all(pool)
            .await?
            .iter()
            .map(record_from_row)
            .collect()
        })
    }

    /// A writer's checkpoints, oldest first.
    pub async fn checkpoints(&self, writer: &str) -> Result<Vec<Checkpoint>, sqlx::Error> {
        let rows: Vec<(String, i64, String, String, String)> = on_pool!(&self.pool, pool => {
            sqlx::query_as(
                "SELECT writer, seq, hash, signed_at, signature FROM audit_checkpoints WHERE writer = $1 ORDER BY seq",
            )
            .bind(writer)
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(writer, seq, hash, signed_at, signature)| Checkpoint {
                writer,
                seq: seq as u64,
                hash,
                signed_at,
                signature,
            })
            .collect())
    }

    /// Cheap liveness probe for /healthz.
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        on_pool!(&self.pool, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ()))
    }
}

impl IngestView {
    /// One row of the look-up: a request's existence, or a stored filter record's data.
    fn add(&mut self, id: String, kind: &str, part: Option<i64>, data: Option<String>) {
        let part = match kind {
            "request" => {
                if data.as_deref() == Some("metadata") {
                    self.metadata_only.insert(id.clone());
                }
                self.requested.insert(id);
                return;
            }
            "response" => part.map(|p| p as u64),
            _ => None,
        };
        let data = data.unwrap_or_default();
        let data = serde_json::from_str(&data).unwrap_or(serde_json::Value::String(data));
        self.stored.entry((id, part)).or_default().push(data);
    }
}

/// [`Store::ingest_view`] on PostgreSQL: the same two halves, each on the index by request
/// (and part).
async fn ingest_view_postgres(pool: &sqlx::PgPool, ids: &[&str], parts: &[u64]) -> Result<IngestView, sqlx::Error> {
    let parts: Vec<i64> = parts.iter().map(|&p| p as i64).collect();
    let rows = sqlx::query(
        "SELECT request_id, kind, NULL::bigint, CASE WHEN kind = 'request' THEN data::jsonb ->> 'recording' ELSE data END
         FROM audit_records
         WHERE request_id = ANY($1) AND kind IN ('request', 'request_rejected')
         UNION ALL
         SELECT request_id, kind, (data::jsonb ->> 'part')::bigint, data
         FROM audit_records
         WHERE request_id = ANY($1) AND (data::jsonb ->> 'part')::bigint = ANY($2) AND kind = 'response'",
    )
    .bind(ids)
    .bind(&parts)
    .fetch_all(pool)
    .await?;
    let mut view = IngestView::default();
    for row in rows {
        view.add(
            row.try_get(0)?,
            &row.try_get::<String, _>(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
        );
    }
    Ok(view)
}

/// A field of the record's JSON `data` as text, in the backend's SQL.
fn data_field(backend: Backend, name: &'static str) -> &'static str {
    match (backend, name) {
        (Backend::Sqlite, "subject") => "json_extract(data, '$.subject')",
        (Backend::Sqlite, "upstream") => "json_extract(data, '$.upstream')",
        (Backend::Sqlite, "tool") => "json_extract(data, '$.tool')",
        (Backend::Postgres, "subject") => "(data::jsonb ->> 'subject')",
        (Backend::Postgres, "upstream") => "(data::jsonb ->> 'upstream')",
        (Backend::Postgres, "tool") => "(data::jsonb ->> 'tool')",
        _ => "NULL",
    }
}

/// A table made before migrations existed, missing a column a later version added.
async fn add_legacy_columns(pool: &sqlx::SqlitePool) -> Result<(), sqlx::Error> {
    let table: Option<(String,)> =
        sqlx::query_as("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'approvals'")
            .fetch_optional(pool)
            .await?;
    if table.is_some_and(|(sql,)| !sql.contains("masking")) {
        sqlx::query("ALTER TABLE approvals ADD COLUMN masking TEXT")
            .execute(pool)
            .await?;
    }
    Ok(())
}

fn record_from_row<R: Row>(row: &R) -> Result<Record, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
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
