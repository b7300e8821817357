//! The audit trail: append-only, hash-chained records in a durable store.
//!
//! All appends go through one writer thread per service ([`AuditLog`], `writer.rs`), which
//! owns the head of this writer's chain and its own connection, and groups the records of
//! concurrent requests into one transaction, so each request pays for a shared commit rather
//! than its own. A caller
//! gets its record back only after the commit: the ext_authz Check allows a request only
//! once its request record is durable.

pub mod bundle;
pub mod checkpoint;
mod sink;
mod store;
pub mod verify;
mod writer;

use std::time::Duration;

use gatehouse_core::audit::{Record, RecordKind};
use gatehouse_core::events::AuditEvent;
use serde_json::Value;
use thiserror::Error;
use tokio::sync::oneshot;

pub use store::{Conflict, IngestView, OpenError, RecordQuery, Store};
pub use writer::{LINGER, Lane};

use crate::metrics::Metrics;

/// The store could not take a record. Its text is internal: log it, don't send it.
#[derive(Debug, Error)]
pub enum AuditError {
    #[error("audit store: {0}")]
    Store(#[from] sqlx::Error),
    #[error("audit store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the audit writer has stopped")]
    WriterGone,
    #[error("audit store: {0}")]
    Invalid(String),
}

/// One record to append.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub kind: RecordKind,
    pub request_id: String,
    pub data: Value,
}

impl NewRecord {
    /// The record of `event`: its kind and data both come from the event.
    pub fn from_event(request_id: impl Into<String>, event: impl Into<AuditEvent>) -> Result<Self, AuditError> {
        let event = event.into();
        Ok(Self {
            kind: event.kind(),
            request_id: request_id.into(),
            data: event.into_data().map_err(|e| AuditError::Invalid(e.to_string()))?,
        })
    }

    /// The record of `event`, which stays the caller's.
    pub fn of(request_id: impl Into<String>, event: &AuditEvent) -> Result<Self, AuditError> {
        Ok(Self {
            kind: event.kind(),
            request_id: request_id.into(),
            data: event.to_data().map_err(|e| AuditError::Invalid(e.to_string()))?,
        })
    }
}

/// Handle to the writer thread; cheap to clone. The thread ends once every handle is gone.
#[derive(Clone)]
pub struct AuditLog {
    jobs: std::sync::mpsc::Sender<writer::Job>,
    /// Bounds the records waiting for the writer: a caller waits here when it falls behind.
    room: std::sync::Arc<tokio::sync::Semaphore>,
    store: Store,
}

/// The most appends waiting for the writer at once.
const MAX_WAITING: usize = 4096;

impl AuditLog {
    /// Starts the writer thread for `writer_id` on the store's database, continuing its chain
    /// from the stored head.
    pub async fn start(
        store: Store,
        writer_id: &str,
        max_batch: usize,
        checkpoints: Option<Checkpointer>,
        metrics: Metrics,
    ) -> Result<Self, AuditError> {
        let writer_id = writer_id.to_owned();
        // What the writer thread needs to open its sink: a database file, or PostgreSQL.
        let target = match store.backend() {
            crate::db::Backend::Sqlite => SinkTarget::Sqlite(
                store
                    .path()
                    .ok_or_else(|| AuditError::Invalid("the audit store must be a database file".into()))?
                    .to_owned(),
                store.busy_timeout(),
            ),
            crate::db::Backend::Postgres => SinkTarget::Postgres(
                Box::new(crate::db::pg_options(store.url())?),
                tokio::runtime::Handle::current(),
            ),
        };
        let (ready, started) = oneshot::channel();
        let (jobs, inbox) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                let (stop_housekeeping, stop) = std::sync::mpsc::channel::<()>();
                let opened = target.open(&writer_id, stop).and_then(|mut sink| {
                    let head = sink.read_head(&writer_id)?;
                    // After a crash the newest records have no checkpoint yet: count from the
                    // newest one stored, so the first tick signs them rather than a full
                    // interval later.
                    let checkpointed = match &checkpoints {
                        Some(_) => sink.last_checkpoint(&writer_id)?,
                        None => head.seq,
                    };
                    Ok((sink, head, checkpointed))
                });
                let (sink, head, checkpointed) = match opened {
                    Ok(opened) => opened,
                    Err(error) => {
                        let _ = ready.send(Err(error));
                        return;
                    }
                };
                let _ = ready.send(Ok(()));
                writer::Writer::new(sink, head, checkpointed, max_batch, checkpoints, metrics).run(inbox);
                drop(stop_housekeeping);
            })
            .map_err(|e| AuditError::Invalid(format!("cannot start the audit writer: {e}")))?;
        started
            .await
            .map_err(|_| AuditError::WriterGone)?
            .map_err(AuditError::Invalid)?;
        Ok(Self {
            jobs,
            room: std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_WAITING)),
            store,
        })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Appends records (in this order, contiguous in the chain) and returns them once durable.
    /// For what a caller waits on now: it commits at once.
    pub async fn append(&self, records: Vec<NewRecord>) -> Result<Vec<Record>, AuditError> {
        self.append_in(records, Lane::Now).await
    }

    /// Appends records nobody waits on right now (the filter's response records): they may
    /// wait up to [`writer::LINGER`] to share a commit, in chunks of at most
    /// [`writer::RIDE_ALONG`] so that none makes a waiting request pay for many inserts.
    /// Durable once this returns, in this order; on an error, the chunks before it may be
    /// stored (the ingest recognises them when the filter retries).
    pub async fn append_lingering(&self, mut records: Vec<NewRecord>) -> Result<Vec<Record>, AuditError> {
        let _room = self.room.acquire().await.map_err(|_| AuditError::WriterGone)?;
        let mut chunks = Vec::new();
        while !records.is_empty() {
            let rest = records.split_off(records.len().min(writer::RIDE_ALONG));
            chunks.push(std::mem::replace(&mut records, rest));
        }
        let mut waits = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            let (done, wait) = oneshot::channel();
            self.jobs
                .send(writer::Job::Append {
                    records: chunk.into_iter().map(writer::Prepared::new).collect(),
                    lane: Lane::Linger,
                    done,
                })
                .map_err(|_| AuditError::WriterGone)?;
            waits.push(wait);
        }
        let mut written = Vec::new();
        for wait in waits {
            written.extend(
                wait.await
                    .map_err(|_| AuditError::WriterGone)?
                    .map_err(AuditError::Invalid)?,
            );
        }
        Ok(written)
    }

    async fn append_in(&self, records: Vec<NewRecord>, lane: Lane) -> Result<Vec<Record>, AuditError> {
        let _room = self.room.acquire().await.map_err(|_| AuditError::WriterGone)?;
        let (done, wait) = oneshot::channel();
        self.jobs
            .send(writer::Job::Append {
                records: records.into_iter().map(writer::Prepared::new).collect(),
                lane,
                done,
            })
            .map_err(|_| AuditError::WriterGone)?;
        wait.await
            .map_err(|_| AuditError::WriterGone)?
            .map_err(AuditError::Invalid)
    }

    /// Commits what is waiting and signs a checkpoint of everything written so far (on shutdown).
    pub async fn checkpoint_now(&self) {
        let (done, wait) = oneshot::channel();
        if self.jobs.send(writer::Job::Flush { done }).is_ok() {
            let _ = wait.await;
        }
    }

    /// Appends the record of one event and returns it once durable.
    pub async fn append_event(&self, request_id: &str, event: impl Into<AuditEvent>) -> Result<Record, AuditError> {
        let record = NewRecord::from_event(request_id, event)?;
        self.append_one(record.kind, &record.request_id, record.data).await
    }

    /// Appends one record and returns it once durable.
    pub async fn append_one(&self, kind: RecordKind, request_id: &str, data: Value) -> Result<Record, AuditError> {
        let mut out = self
            .append(vec![NewRecord {
                kind,
                request_id: request_id.to_owned(),
                data,
            }])
            .await?;
        out.pop().ok_or(AuditError::WriterGone)
    }
}

/// Where the writer thread appends.
enum SinkTarget {
    Sqlite(std::path::PathBuf, Duration),
    Postgres(Box<sqlx::postgres::PgConnectOptions>, tokio::runtime::Handle),
}

impl SinkTarget {
    /// Opens the sink and takes the writer id's lease (`stop` ends SQLite's WAL checkpointer
    /// when its sender is dropped).
    fn open(self, writer_id: &str, stop: std::sync::mpsc::Receiver<()>) -> Result<Box<dyn sink::Sink>, String> {
        Ok(match self {
            Self::Sqlite(path, busy_timeout) => Box::new(sink::SqliteSink::open(&path, busy_timeout, writer_id, stop)?),
            Self::Postgres(options, runtime) => Box::new(sink::PgSink::open(*options, runtime, writer_id)?),
        })
    }
}

/// Signs a checkpoint after `every_records` records or `every` time, whichever is first.
pub struct Checkpointer {
    pub signer: checkpoint::CheckpointSigner,
    pub every_records: u64,
    pub every: Duration,
    /// Also append each checkpoint here: a copy outside the audit store, so deleting the
    /// newest records *and* their checkpoints from the store is still caught.
    pub log_file: Option<std::path::PathBuf>,
}

/// Record time: RFC 3339 in UTC with milliseconds, a fixed width so text order is time order.
pub fn now_rfc3339() -> String {
    format_time(time::OffsetDateTime::now_utc())
}

/// The record time format: UTC, milliseconds, fixed width.
pub fn format_time(t: time::OffsetDateTime) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");
    t.to_offset(time::UtcOffset::UTC).format(&format).unwrap_or_default()
}

/// Parses any RFC 3339 time into the record time format, so text comparison is time order.
pub fn normalize_time(s: &str) -> Option<String> {
    time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(format_time)
}

#[cfg(test)]
mod tests;
