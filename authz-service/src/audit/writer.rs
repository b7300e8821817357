//! The writer thread: the only code that appends to this writer's chain.
//!
//! It owns its own SQLite connection and prepared insert, so a group commit is one hop from
//! the async side (a channel send) and one back (a oneshot), with no round trip per
//! statement. Two lanes: what a caller is waiting on right now (the Check's request record,
//! approval steps) commits at once, together with whatever else is waiting; the ingest's
//! response records linger up to [`LINGER`] and ride along with the next urgent commit, so
//! they do not hold the disk while a request waits. Both are durable before their sender
//! hears back. WAL checkpoints run on a thread of their own ([`spawn_wal_checkpointer`]), never
//! inside a commit; only the WAL's reset, once it is large, runs here between two commits
//! ([`Writer::reset_wal_if_large`]).

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use gatehouse_core::audit::{ChainHead, Checkpoint, Record, canonical_json};
use rusqlite::{Connection, OpenFlags, params};
use tokio::sync::oneshot;

use super::{Checkpointer, NewRecord, checkpoint, now_rfc3339};
use crate::metrics::Metrics;

/// How long the ingest's records may wait for an urgent commit to ride along with.
pub const LINGER: Duration = Duration::from_millis(10);
/// The most lingering records one commit takes (along with urgent ones, or on their own), so
/// an ingest batch never makes the request that commits next wait for many inserts. The
/// async side splits a batch into jobs of at most this many ([`super::AuditLog::append_lingering`]).
pub const RIDE_ALONG: usize = 16;
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

/// Which lane a job waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Someone is waiting on it now: commit at once.
    Now,
    /// May wait up to [`LINGER`] to share an urgent commit.
    Linger,
}

/// A record ready to append: its data's canonical encoding (what its hash covers) and its
/// stored text are made by the task that sends it, so the one thread that appends only
/// hashes and inserts.
pub struct Prepared {
    record: NewRecord,
    canonical: Vec<u8>,
    text: String,
}

impl Prepared {
    pub fn new(record: NewRecord) -> Self {
        Self {
            canonical: canonical_json(&record.data),
            text: serde_json::to_string(&record.data).unwrap_or_default(),
            record,
        }
    }
}

/// What the async side asks of the writer.
pub enum Job {
    Append {
        records: Vec<Prepared>,
        lane: Lane,
        done: oneshot::Sender<Result<Vec<Record>, String>>,
    },
    /// Commit everything waiting and sign a checkpoint of it (on shutdown).
    Flush { done: oneshot::Sender<()> },
}

struct Waiting {
    records: Vec<Prepared>,
    done: oneshot::Sender<Result<Vec<Record>, String>>,
}

pub struct Writer {
    conn: Connection,
    head: ChainHead,
    /// The newest record a checkpoint vouches for.
    checkpointed: u64,
    max_batch: usize,
    checkpoints: Option<Checkpointer>,
    metrics: Metrics,
    now: VecDeque<Waiting>,
    lingering: VecDeque<Waiting>,
    /// When the oldest lingering job must be committed.
    linger_until: Option<Instant>,
    wal_frames: WalFrames,
    wal_limits: WalLimits,
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

impl Writer {
    pub fn new(
        conn: Connection,
        head: ChainHead,
        checkpointed: u64,
        max_batch: usize,
        checkpoints: Option<Checkpointer>,
        metrics: Metrics,
        wal_frames: WalFrames,
    ) -> Self {
        Self {
            conn,
            head,
            checkpointed,
            max_batch,
            checkpoints,
            metrics,
            now: VecDeque::new(),
            lingering: VecDeque::new(),
            linger_until: None,
            wal_frames,
            wal_limits: WAL_LIMITS,
        }
    }

    /// Serves jobs until every sender is gone, then commits what is left and vouches for it.
    pub fn run(mut self, jobs: Receiver<Job>) {
        let every = self.checkpoints.as_ref().map(|c| c.every);
        // The first tick is at once: a tail a crash left unsigned is signed on restart.
        let mut next_tick = every.map(|_| Instant::now());
        let mut flushes = Vec::new();
        loop {
            let deadline = [next_tick, self.linger_until].into_iter().flatten().min();
            let first = match deadline {
                Some(at) => jobs.recv_timeout(at.saturating_duration_since(Instant::now())),
                None => jobs.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            let open = match first {
                Ok(job) => {
                    self.take(job, &mut flushes);
                    // Group whatever else is already waiting: concurrent callers share a commit.
                    while let Ok(job) = jobs.try_recv() {
                        self.take(job, &mut flushes);
                    }
                    true
                }
                Err(RecvTimeoutError::Timeout) => true,
                Err(RecvTimeoutError::Disconnected) => false,
            };
            // Urgent jobs first; lingering ones one chunk at a time once due, with whatever
            // became urgent meanwhile going before the next chunk. Checkpoints fall due between
            // commits: a writer that is never idle still signs every `every_records` and tick.
            loop {
                let lingering: usize = self.lingering.iter().map(|w| w.records.len()).sum();
                let linger_due = self.linger_until.is_some_and(|at| at <= Instant::now());
                if !self.now.is_empty() {
                    self.commit_urgent();
                } else if lingering > 0 && (linger_due || lingering >= self.max_batch || !flushes.is_empty() || !open) {
                    self.commit_lingering();
                } else {
                    break;
                }
                self.checkpoint_if_due(&mut next_tick, every, false);
                self.reset_wal_if_large();
                while let Ok(job) = jobs.try_recv() {
                    self.take(job, &mut flushes);
                }
            }
            if self.lingering.is_empty() {
                self.linger_until = None;
            }
            self.checkpoint_if_due(&mut next_tick, every, !flushes.is_empty() || !open);
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
            if !open {
                return;
            }
        }
    }

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

    /// Signs a checkpoint when `every_records` records, the tick (or `now`: a flush, the end)
    /// has come and there is something new to vouch for.
    fn checkpoint_if_due(&mut self, next_tick: &mut Option<Instant>, every: Option<Duration>, now: bool) {
        let tick_due = next_tick.is_some_and(|at| at <= Instant::now());
        if tick_due {
            *next_tick = every.map(|e| Instant::now() + e);
        }
        let by_count = self
            .checkpoints
            .as_ref()
            .is_some_and(|c| self.head.seq >= self.checkpointed + c.every_records);
        if by_count || ((tick_due || now) && self.head.seq > self.checkpointed) {
            self.checkpoint();
        }
    }

    fn take(&mut self, job: Job, flushes: &mut Vec<oneshot::Sender<()>>) {
        match job {
            Job::Append { records, lane, done } if !records.is_empty() => {
                let waiting = Waiting { records, done };
                match lane {
                    Lane::Now => self.now.push_back(waiting),
                    Lane::Linger => {
                        self.linger_until.get_or_insert_with(|| Instant::now() + LINGER);
                        self.lingering.push_back(waiting);
                    }
                }
            }
            Job::Append { done, .. } => {
                let _ = done.send(Ok(Vec::new()));
            }
            Job::Flush { done } => flushes.push(done),
        }
    }

    /// One transaction: urgent jobs up to `max_batch` records, and lingering ones along.
    fn commit_urgent(&mut self) {
        let mut batch = take_up_to(&mut self.now, self.max_batch);
        batch.extend(take_up_to(&mut self.lingering, RIDE_ALONG));
        self.commit(batch);
    }

    fn commit_lingering(&mut self) {
        let batch = take_up_to(&mut self.lingering, RIDE_ALONG);
        self.commit(batch);
    }

    fn commit(&mut self, batch: Vec<Waiting>) {
        let count: usize = batch.iter().map(|w| w.records.len()).sum();
        let started = Instant::now();
        let now = now_rfc3339();
        let mut next_head = self.head.clone();
        let mut texts = Vec::with_capacity(count);
        let mut built = Vec::with_capacity(batch.len());
        let mut senders = Vec::with_capacity(batch.len());
        for waiting in batch {
            let records: Vec<Record> = waiting
                .records
                .into_iter()
                .map(|p| {
                    texts.push(p.text);
                    let r = p.record;
                    next_head.append_encoded(r.kind.as_str(), &r.request_id, &now, r.data, &p.canonical)
                })
                .collect();
            built.push(records);
            senders.push(waiting.done);
        }
        let result = insert_all(&mut self.conn, built.iter().flatten().zip(&texts));
        self.metrics.observe_commit(started.elapsed(), count);
        match result {
            Ok(()) => {
                self.head = next_head;
                for (done, records) in senders.into_iter().zip(built) {
                    let _ = done.send(Ok(records));
                }
            }
            Err(error) => {
                self.metrics.audit_write_failures.inc();
                tracing::error!(%error, records = count, "Could not commit audit records; the requests waiting on them are refused.");
                for done in senders {
                    let _ = done.send(Err(error.to_string()));
                }
                // The commit may still have landed (an error after COMMIT reached disk), or
                // another process wrote with this writer id: trust the store, not memory.
                match read_head(&self.conn, &self.head.writer) {
                    Ok(stored) if stored.seq != self.head.seq || stored.hash != self.head.hash => {
                        tracing::error!(
                            expected_seq = self.head.seq,
                            stored_seq = stored.seq,
                            "The audit store's chain head is not the one this writer holds; continuing from the store's. Is another service using this writer id?"
                        );
                        self.head = stored;
                    }
                    _ => {}
                }
                // Back off briefly so a broken store is not hammered.
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    fn checkpoint(&mut self) {
        let Some(c) = self.checkpoints.as_ref() else {
            return;
        };
        let checkpoint = c.signer.sign(&self.head, &now_rfc3339());
        if let Some(path) = &c.log_file
            && let Err(error) = checkpoint::append_to_log(path, &checkpoint)
        {
            tracing::error!(%error, log_file = %path.display(), "Could not append a checkpoint to the checkpoint log.");
        }
        match insert_checkpoint(&self.conn, &checkpoint) {
            Ok(()) => self.checkpointed = checkpoint.seq,
            Err(error) => {
                tracing::error!(%error, seq = checkpoint.seq, "Could not store an audit checkpoint; will try again.");
            }
        }
    }
}

/// Whole jobs from the front of `queue` while they fit in `limit` records (at least one).
fn take_up_to(queue: &mut VecDeque<Waiting>, limit: usize) -> Vec<Waiting> {
    let mut out = Vec::new();
    let mut count = 0;
    while let Some(next) = queue.front() {
        if !out.is_empty() && count + next.records.len() > limit {
            break;
        }
        count += next.records.len();
        out.extend(queue.pop_front());
    }
    out
}

/// Inserts records with their data's stored text, in one transaction.
fn insert_all<'a>(
    conn: &mut Connection,
    records: impl Iterator<Item = (&'a Record, &'a String)>,
) -> rusqlite::Result<()> {
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

#[cfg(test)]
mod tests {
    use gatehouse_core::audit::RecordKind;
    use serde_json::json;

    use super::*;

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
        let frames = spawn_wal_checkpointer(path.clone(), Duration::from_secs(5), stop);
        let mut writer = Writer::new(conn, ChainHead::genesis("w"), 0, 64, None, Metrics::default(), frames);
        writer.wal_limits = limits;
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
