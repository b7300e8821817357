//! Where the writer thread appends: the database behind the chain ([`Sink`]). SQLite through
//! the writer's own rusqlite connection (WAL, `synchronous=FULL`), PostgreSQL through its own
//! connection with `synchronous_commit=on`. Each holds the writer id's lease while it lives:
//! two processes cannot append to one chain.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use gatehouse_core::audit::{ChainHead, Checkpoint, Record};
use rusqlite::{Connection, OpenFlags, params};
use sqlx::Connection as _;
use sqlx::postgres::{PgConnectOptions, PgConnection};

/// The database side of the writer thread. Every method blocks; the writer thread is the
/// only caller.
pub trait Sink: Send {
    /// Inserts records (each with its data's stored text) in one transaction: all or none.
    fn insert_all(&mut self, records: &[(&Record, &str)]) -> Result<(), String>;
    /// Stores a checkpoint (again: no change).
    fn insert_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), String>;
    /// The writer's last stored record, or the genesis head.
    fn read_head(&mut self, writer: &str) -> Result<ChainHead, String>;
    /// The newest checkpointed seq of `writer` (0 for none).
    fn last_checkpoint(&mut self, writer: &str) -> Result<u64, String>;
    /// Before a commit: connects if the connection was lost; `true` when it had to (the
    /// chain head may have moved: a commit whose answer was lost may have landed).
    fn ready(&mut self) -> Result<bool, String> {
        Ok(false)
    }
    /// Between two commits, off the commit's clock (SQLite resets a large WAL here).
    fn between_commits(&mut self) {}
}

// --- SQLite -------------------------------------------------------------------------

const CHECKPOINT_EVERY: Duration = Duration::from_millis(250);
/// How large the WAL may grow before the writer resets it ([`Writer::reset_wal_if_large`]),
/// and what its file is cut back to when it is reset.
#[derive(Debug, Clone, Copy)]
pub struct WalLimits {
    /// WAL frames (one per page written), as the background checkpointer last saw them, past
    /// which the writer resets the WAL.
    pub reset_frames: i64,
    /// `journal_size_limit`: the WAL file's size after a reset, in bytes.
    pub file_bytes: i64,
    /// How long the reset may wait for readers (the commits behind it wait as long).
    pub reset_wait: Duration,
}

pub const WAL_LIMITS: WalLimits = WalLimits {
    reset_frames: 16_384,
    file_bytes: 64 << 20,
    reset_wait: Duration::from_millis(10),
};

/// The writer's SQLite connection, and its lease on the writer id: an exclusive lock on a
/// file next to the database, released when the process ends however it ends.
pub struct SqliteSink {
    conn: Connection,
    wal_frames: WalFrames,
    wal_limits: WalLimits,
    _lease: File,
}

impl SqliteSink {
    /// Takes the writer id's lease, opens the writer's connection and starts the WAL
    /// checkpointer (it stops when `stop`'s sender is dropped).
    pub fn open(path: &Path, busy_timeout: Duration, writer: &str, stop: Receiver<()>) -> Result<Self, String> {
        let lease = take_file_lease(path, writer)?;
        let conn = open(path, busy_timeout).map_err(|e| e.to_string())?;
        let wal_frames = spawn_wal_checkpointer(path.to_owned(), busy_timeout, stop);
        Ok(Self {
            conn,
            wal_frames,
            wal_limits: WAL_LIMITS,
            _lease: lease,
        })
    }
}

/// An exclusive lock on `<database>.writer-<hash of the id>.lock`: a second live process with
/// the same writer id on the same database cannot take it.
fn take_file_lease(database: &Path, writer: &str) -> Result<File, String> {
    use sha2::Digest;
    let digest = hex::encode(&sha2::Sha256::digest(writer.as_bytes())[..8]);
    let mut name = database.as_os_str().to_owned();
    name.push(format!(".writer-{digest}.lock"));
    let path = PathBuf::from(name);
    crate::private_file::ensure_private_file(&path).map_err(|e| format!("cannot create {}: {e}", path.display()))?;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(format!(
            "the audit writer id {writer:?} is in use by another live process on this database \
             (its lease {} is held): give each process its own audit.writer_id",
            path.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => Err(format!("cannot lock {}: {e}", path.display())),
    }
}

impl Sink for SqliteSink {
    fn insert_all(&mut self, records: &[(&Record, &str)]) -> Result<(), String> {
        insert_all(&mut self.conn, records).map_err(|e| e.to_string())
    }

    fn insert_checkpoint(&mut self, checkpoint: &Checkpoint) -> Result<(), String> {
        insert_checkpoint(&self.conn, checkpoint).map_err(|e| e.to_string())
    }

    fn read_head(&mut self, writer: &str) -> Result<ChainHead, String> {
        read_head(&self.conn, writer).map_err(|e| e.to_string())
    }

    fn last_checkpoint(&mut self, writer: &str) -> Result<u64, String> {
        last_checkpoint(&self.conn, writer).map_err(|e| e.to_string())
    }

    fn between_commits(&mut self) {
        self.reset_wal_if_large();
    }
}

/// Opens the writer's own connection to the database at `path`: WAL, `synchronous=FULL` (a
/// commit returns once it is on disk), no automatic checkpoint (see [`spawn_wal_checkpointer`]),
/// the WAL file cut back to [`WAL_LIMITS`]' size when it is reset.
pub fn open(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    open_with(path, busy_timeout, WAL_LIMITS)
}

fn open_with(path: &Path, busy_timeout: Duration, limits: WalLimits) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(busy_timeout)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "journal_size_limit", limits.file_bytes)?;
    Ok(conn)
}

impl SqliteSink {
    /// Starts the WAL over once the background checkpointer saw it hold
    /// [`WalLimits::reset_frames`]: a `RESTART` checkpoint between two commits copies what its
    /// last pass left (a few commits' worth) and lets the next commit write the WAL from its
    /// start, its file cut back to [`WalLimits::file_bytes`]. It waits for readers at most
    /// [`WalLimits::reset_wait`] (the requests waiting meanwhile wait as long) and otherwise
    /// leaves it to a later commit.
    fn reset_wal_if_large(&mut self) {
        if self.wal_frames.load(Ordering::Relaxed) < self.wal_limits.reset_frames {
            return;
        }
        self.wal_frames.store(0, Ordering::Relaxed);
        let busy_ms = match self
            .conn
            .query_row("PRAGMA busy_timeout", [], |row| row.get::<_, i64>(0))
        {
            Ok(ms) => ms,
            Err(error) => {
                tracing::warn!(%error, "Could not read the audit writer's busy timeout; the WAL is not reset now.");
                return;
            }
        };
        let reset = self
            .conn
            .busy_timeout(self.wal_limits.reset_wait)
            .and_then(|()| wal_checkpoint(&self.conn, "RESTART"));
        if let Err(error) = self.conn.busy_timeout(Duration::from_millis(busy_ms.unsigned_abs())) {
            tracing::error!(%error, "Could not restore the audit writer's busy timeout.");
        }
        match reset {
            Ok((0, _, _)) => {}
            Ok((_, frames, _)) => tracing::debug!(
                frames,
                "The audit store's WAL could not be reset yet (readers); will try again."
            ),
            Err(error) => tracing::warn!(%error, "A WAL reset of the audit store failed; will try again."),
        }
    }
}

/// Inserts records with their data's stored text, in one transaction.
fn insert_all(conn: &mut Connection, records: &[(&Record, &str)]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    {
        let mut insert = tx.prepare_cached(
            "INSERT INTO audit_records (writer, seq, kind, request_id, recorded_at, prev_hash, hash, data)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )?;
        for (r, text) in records {
            insert.execute(params![
                r.writer,
                r.seq as i64,
                r.kind,
                r.request_id,
                r.recorded_at,
                r.prev_hash,
                r.hash,
                text,
            ])?;
        }
    }
    tx.commit()
}

fn insert_checkpoint(conn: &Connection, c: &Checkpoint) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT OR IGNORE INTO audit_checkpoints (writer, seq, hash, signed_at, signature) VALUES (?, ?, ?, ?, ?)",
    )?
    .execute(params![c.writer, c.seq as i64, c.hash, c.signed_at, c.signature])
    .map(|_| ())
}

/// The writer's last record, or the genesis head.
pub fn read_head(conn: &Connection, writer: &str) -> rusqlite::Result<ChainHead> {
    let row = conn
        .prepare_cached("SELECT seq, hash FROM audit_records WHERE writer = ? ORDER BY seq DESC LIMIT 1")?
        .query_row([writer], |row| Ok((row.get::<_, i64>(0)?, row.get::<_, String>(1)?)));
    match row {
        Ok((seq, hash)) => Ok(ChainHead {
            writer: writer.to_owned(),
            seq: seq as u64,
            hash,
        }),
        Err(rusqlite::Error::QueryReturnedNoRows) => Ok(ChainHead::genesis(writer)),
        Err(error) => Err(error),
    }
}

/// The newest checkpointed seq of `writer` (0 for none).
pub fn last_checkpoint(conn: &Connection, writer: &str) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT COALESCE(MAX(seq), 0) FROM audit_checkpoints WHERE writer = ?",
        [writer],
        |row| row.get::<_, i64>(0),
    )
    .map(|seq| seq as u64)
}

/// Copies the WAL into the database in the background, so no commit pays for it: a passive
/// checkpoint (it never blocks the writer) every [`CHECKPOINT_EVERY`]. It publishes how many
/// frames the WAL held at its last pass: a passive checkpoint never starts the WAL over while
/// writes go on, so the writer resets it itself once it is large ([`Writer`]). Ends when
/// `stop`'s sender is dropped.
pub fn spawn_wal_checkpointer(path: PathBuf, busy_timeout: Duration, stop: Receiver<()>) -> WalFrames {
    let frames = WalFrames::default();
    let published = frames.clone();
    let spawned = std::thread::Builder::new()
        .name("audit-wal-checkpoint".into())
        .spawn(move || {
            let conn = match open(&path, busy_timeout) {
                Ok(conn) => conn,
                Err(error) => {
                    tracing::error!(%error, "Could not open the audit store for WAL checkpoints; the WAL grows until restart.");
                    return;
                }
            };
            while let Err(RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_EVERY) {
                match wal_checkpoint(&conn, "PASSIVE") {
                    Ok((_, in_wal, _)) => published.store(in_wal, Ordering::Relaxed),
                    Err(error) => tracing::warn!(%error, "A WAL checkpoint of the audit store failed; will try again."),
                }
            }
        });
    if let Err(error) = spawned {
        tracing::error!(%error, "Could not start the audit store's WAL checkpoint thread.");
    }
    frames
}

/// The WAL's size in frames at the background checkpointer's last pass.
pub type WalFrames = Arc<AtomicI64>;

/// `PRAGMA wal_checkpoint(mode)`: (busy, frames in the WAL, frames copied).
fn wal_checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| {
        Ok((row.get(0)?, row.get(1)?, row.get(2)?))
    })
}

// --- PostgreSQL ----------------------------------------------------------------------

/// How long one statement of the writer may take before its connection is dropped (and the
/// requests waiting on it refused): a partitioned database must not hold the writer.
const PG_STATEMENT_TIMEOUT: Duration = Duration::from_secs(3);

/// The writer's own PostgreSQL connection. It holds the writer id's lease: a session
/// advisory lock, released by the server when the connection ends (the process died, the
/// network went). After a lost connection it connects again on the next commit and takes the
/// lease again; if another process took it meanwhile, every commit is refused.
pub struct PgSink {
    options: PgConnectOptions,
    runtime: tokio::runtime::Handle,
    writer: String,
    conn: Option<PgConnection>,
    reconnected: bool,
}

impl PgSink {
    /// Connects and takes the lease; a writer id another live process holds is refused.
    pub fn open(options: PgConnectOptions, runtime: tokio::runtime::Handle, writer: &str) -> Result<Self, String> {
        let mut sink = Self {
            options,
            runtime,
            writer: writer.to_owned(),
            conn: None,
            reconnected: false,
        };
        sink.connection()?;
        sink.reconnected = false;
        Ok(sink)
    }

    /// The open connection, connecting (and taking the lease) first if there is none.
    fn connection(&mut self) -> Result<&mut PgConnection, String> {
        if self.conn.is_none() {
            let writer = self.writer.clone();
            let options = self.options.clone();
            let conn = self.run_timed(async move {
                let mut conn = PgConnection::connect_with(&options).await?;
                let leased: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
                    .bind(format!("gatehouse audit writer {writer}"))
                    .fetch_one(&mut conn)
                    .await?;
                Ok::<_, sqlx::Error>((conn, leased))
            })?;
            let (conn, leased) = conn;
            if !leased {
                return Err(format!(
                    "the audit writer id {:?} is in use by another live process on this database: \
                     give each replica its own audit.writer_id (or let it be derived from the pod name)",
                    self.writer
                ));
            }
            self.conn = Some(conn);
            self.reconnected = true;
        }
        self.conn.as_mut().ok_or_else(|| "no connection".to_owned())
    }

    /// Runs `work` on the service's runtime from this (non-runtime) thread, within
    /// [`PG_STATEMENT_TIMEOUT`].
    fn run_timed<T>(&self, work: impl std::future::Future<Output = Result<T, sqlx::Error>>) -> Result<T, String> {
        self.runtime
            .block_on(async { tokio::time::timeout(PG_STATEMENT_TIMEOUT, work).await })
            .map_err(|_| format!("the audit database did not answer within {PG_STATEMENT_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())
    }

    /// Runs `work` on the connection (connecting first if needed). `work` hands the
    /// connection back with its result; a failure or a timeout drops it, so the next call
    /// connects again (and takes the lease again).
    fn with_connection<T, Fut>(&mut self, work: impl FnOnce(PgConnection) -> Fut) -> Result<T, String>
    where
        Fut: std::future::Future<Output = (PgConnection, Result<T, sqlx::Error>)>,
    {
        self.connection()?;
        let conn = self.conn.take().ok_or_else(|| "no connection".to_owned())?;
        let outcome = self
            .runtime
            .block_on(async { tokio::time::timeout(PG_STATEMENT_TIMEOUT, work(conn)).await });
        match outcome {
            Ok((conn, Ok(value))) => {
                self.conn = Some(conn);
                Ok(value)
            }
            Ok((_, Err(error))) => Err(error.to_string()),
            Err(_) => Err(format!(
                "the audit database did not answer within {PG_STATEMENT_TIMEOUT:?}"
            )),
        }
    }
}

/// A batch of records as one array per column (bound to one `INSERT … SELECT FROM UNNEST`).
#[derive(Default)]
struct Columns<'a> {
    writer: Vec<&'a str>,
    seq: Vec<i64>,
    kind: Vec<&'a str>,
    request_id: Vec<&'a str>,
    recorded_at: Vec<&'a str>,
    prev_hash: Vec<&'a str>,
    hash: Vec<&'a str>,
    data: Vec<&'a str>,
}

impl Sink for PgSink {
    fn insert_all(&mut self, records: &[(&Record, &str)]) -> Result<(), String> {
        let mut columns = Columns::default();
        for (r, text) in records {
            columns.writer.push(&r.writer);
            columns.seq.push(r.seq as i64);
            columns.kind.push(&r.kind);
            columns.request_id.push(&r.request_id);
            columns.recorded_at.push(&r.recorded_at);
            columns.prev_hash.push(&r.prev_hash);
            columns.hash.push(&r.hash);
            columns.data.push(text);
        }
        // One statement for the whole batch: one round trip, one synchronous commit.
        self.with_connection(|mut conn| async move {
            let result = sqlx::query(
                "INSERT INTO audit_records (writer, seq, kind, request_id, recorded_at, prev_hash, hash, data)
                     SELECT * FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[],
                                          $6::text[], $7::text[], $8::text[])",
            )
            .bind(&columns.writer)
            .bind(&columns.seq)
            .bind(&columns.kind)
            .bind(&columns.request_id)
            .bind(&columns.recorded_at)
            .bind(&columns.prev_hash)
            .bind(&columns.hash)
            .bind(&columns.data)
            .execute(&mut conn)
            .await
            .map(drop);
            (conn, result)
        })
    }

    fn insert_checkpoint(&mut self, c: &Checkpoint) -> Result<(), String> {
        self.with_connection(|mut conn| async move {
            let result = sqlx::query(
                "INSERT INTO audit_checkpoints (writer, seq, hash, signed_at, signature)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            )
            .bind(&c.writer)
            .bind(c.seq as i64)
            .bind(&c.hash)
            .bind(&c.signed_at)
            .bind(&c.signature)
            .execute(&mut conn)
            .await
            .map(drop);
            (conn, result)
        })
    }

    fn read_head(&mut self, writer: &str) -> Result<ChainHead, String> {
        let row: Option<(i64, String)> = self.with_connection(|mut conn| async move {
            let result =
                sqlx::query_as("SELECT seq, hash FROM audit_records WHERE writer = $1 ORDER BY seq DESC LIMIT 1")
                    .bind(writer)
                    .fetch_optional(&mut conn)
                    .await;
            (conn, result)
        })?;
        Ok(match row {
            Some((seq, hash)) => ChainHead {
                writer: writer.to_owned(),
                seq: seq as u64,
                hash,
            },
            None => ChainHead::genesis(writer),
        })
    }

    fn last_checkpoint(&mut self, writer: &str) -> Result<u64, String> {
        let seq: i64 = self.with_connection(|mut conn| async move {
            let result = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM audit_checkpoints WHERE writer = $1")
                .bind(writer)
                .fetch_one(&mut conn)
                .await;
            (conn, result)
        })?;
        Ok(seq as u64)
    }

    fn ready(&mut self) -> Result<bool, String> {
        self.connection()?;
        Ok(std::mem::take(&mut self.reconnected))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use gatehouse_core::audit::RecordKind;
    use serde_json::json;
    use tokio::sync::oneshot;

    use super::*;
    use crate::audit::NewRecord;
    use crate::audit::writer::{Job, Lane, Prepared, Writer};
    use crate::metrics::Metrics;

    /// Commits that never pause (a busy gateway): a passive checkpoint alone never starts the
    /// WAL over, so without the writer's reset its file grows by everything written.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_starts_over_under_commits_that_never_pause() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.db");
        let url = format!("sqlite://{}", path.display());
        let _schema = super::super::Store::open(&url, Duration::from_secs(5)).await.unwrap();
        let limits = WalLimits {
            reset_frames: 200,
            file_bytes: 1 << 20,
            reset_wait: Duration::from_millis(10),
        };
        let conn = open_with(&path, Duration::from_secs(5), limits).unwrap();
        let (stop_checkpoints, stop) = std::sync::mpsc::channel::<()>();
        let wal_frames = spawn_wal_checkpointer(path.clone(), Duration::from_secs(5), stop);
        let sink = SqliteSink {
            conn,
            wal_frames,
            wal_limits: limits,
            _lease: take_file_lease(&path, "w").unwrap(),
        };
        let writer = Writer::new(Box::new(sink), ChainHead::genesis("w"), 0, 64, None, Metrics::default());
        let (jobs, inbox) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || writer.run(inbox));
        let wal = dir.path().join("audit.db-wal");
        // A WAL that starts over is cut back to `file_bytes`: its file shrinks.
        let (mut last, mut shrinks) = (0, 0);
        let until = Instant::now() + Duration::from_secs(3);
        for i in 0_u64.. {
            if Instant::now() > until {
                break;
            }
            let record = NewRecord {
                kind: RecordKind::Request,
                request_id: format!("{i:032x}"),
                data: json!({"x": "x".repeat(2000)}),
            };
            let (done, wait) = oneshot::channel();
            let job = Job::Append {
                records: vec![Prepared::new(record)],
                lane: Lane::Now,
                done,
            };
            jobs.send(job).unwrap();
            wait.await.unwrap().unwrap();
            let size = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
            shrinks += usize::from(size < last);
            last = size;
        }
        drop(jobs);
        thread.join().unwrap();
        drop(stop_checkpoints);
        assert!(
            shrinks >= 2,
            "the WAL started over {shrinks} times in 3 s of commits; it is {last} bytes"
        );
    }
}
