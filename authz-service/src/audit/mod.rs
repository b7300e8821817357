//! The audit trail: append-only, hash-chained records in a durable store.
//!
//! All appends go through one writer task per service ([`AuditLog`]), which owns the head
//! of this writer's chain and groups the records of concurrent requests into one
//! transaction, so each request pays for a shared commit rather than its own. A caller
//! gets its record back only after the commit: the ext_authz Check allows a request only
//! once its request record is durable.

pub mod checkpoint;
mod store;
pub mod verify;

use std::time::Duration;

use gatehouse_core::audit::{ChainHead, Record, RecordKind};
use gatehouse_core::events::AuditEvent;
use serde_json::Value;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

pub use store::{Conflict, IngestView, RecordQuery, Store};

use crate::metrics::Metrics;

/// The store could not take a record. Its text is internal: log it, don't send it.
#[derive(Debug, Error)]
pub enum AuditError {
    #[error("audit store: {0}")]
    Store(#[from] sqlx::Error),
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

struct Append {
    records: Vec<NewRecord>,
    done: oneshot::Sender<Result<Vec<Record>, String>>,
}

/// Handle to the writer task; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Append>,
    store: Store,
}

impl AuditLog {
    /// Opens the store and starts the writer task for `writer_id`.
    pub async fn start(
        store: Store,
        writer_id: &str,
        max_batch: usize,
        checkpoints: Option<Checkpointer>,
        metrics: Metrics,
    ) -> Result<Self, AuditError> {
        let head = store.head(writer_id).await?;
        // After a crash the newest records have no checkpoint yet: count from the newest one
        // stored, so the first tick signs them rather than a full interval later.
        let checkpointed = match &checkpoints {
            Some(_) => store.checkpoints(writer_id).await?.last().map_or(0, |c| c.seq),
            None => head.seq,
        };
        let (tx, rx) = mpsc::channel(4096);
        let writer = Writer {
            store: store.clone(),
            head,
            checkpointed,
            max_batch,
            checkpoints,
            metrics,
        };
        tokio::spawn(writer.run(rx));
        Ok(Self { tx, store })
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Appends records (in this order, contiguous in the chain) and returns them once durable.
    pub async fn append(&self, records: Vec<NewRecord>) -> Result<Vec<Record>, AuditError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(Append { records, done })
            .await
            .map_err(|_| AuditError::WriterGone)?;
        wait.await
            .map_err(|_| AuditError::WriterGone)?
            .map_err(AuditError::Invalid)
    }

    /// Signs a checkpoint of everything written so far (on shutdown).
    pub async fn checkpoint_now(&self) {
        let (done, wait) = oneshot::channel();
        if self
            .tx
            .send(Append {
                records: Vec::new(),
                done,
            })
            .await
            .is_ok()
        {
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

/// Signs a checkpoint after `every_records` records or `every` time, whichever is first.
pub struct Checkpointer {
    pub signer: checkpoint::CheckpointSigner,
    pub every_records: u64,
    pub every: Duration,
    /// Also append each checkpoint here: a copy outside the audit store, so deleting the
    /// newest records *and* their checkpoints from the store is still caught.
    pub log_file: Option<std::path::PathBuf>,
}

struct Writer {
    store: Store,
    head: ChainHead,
    /// The newest record a checkpoint vouches for.
    checkpointed: u64,
    max_batch: usize,
    checkpoints: Option<Checkpointer>,
    metrics: Metrics,
}

impl Writer {
    async fn run(mut self, mut rx: mpsc::Receiver<Append>) {
        let mut tick = tokio::time::interval(self.checkpoints.as_ref().map_or(Duration::from_secs(3600), |c| c.every));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut checkpointed = self.checkpointed;
        loop {
            tokio::select! {
                next = rx.recv() => {
                    let Some(first) = next else { break };
                    if first.records.is_empty() {
                        // A flush request: vouch for everything written so far.
                        if self.checkpoints.is_some() && self.head.seq > checkpointed {
                            checkpointed = self.checkpoint().await.unwrap_or(checkpointed);
                        }
                        let _ = first.done.send(Ok(Vec::new()));
                        continue;
                    }
                    self.commit(first, &mut rx).await;
                    if let Some(c) = &self.checkpoints
                        && self.head.seq >= checkpointed + c.every_records
                    {
                        checkpointed = self.checkpoint().await.unwrap_or(checkpointed);
                    }
                }
                _ = tick.tick() => {
                    if self.checkpoints.is_some() && self.head.seq > checkpointed {
                        checkpointed = self.checkpoint().await.unwrap_or(checkpointed);
                    }
                }
            }
        }
        // Shutting down: vouch for everything written.
        if self.checkpoints.is_some() && self.head.seq > checkpointed {
            let _ = self.checkpoint().await;
        }
    }

    async fn checkpoint(&self) -> Option<u64> {
        let c = self.checkpoints.as_ref()?;
        let checkpoint = c.signer.sign(&self.head, &now_rfc3339());
        if let Some(path) = &c.log_file
            && let Err(error) = checkpoint::append_to_log(path, &checkpoint)
        {
            tracing::error!(%error, log_file = %path.display(), "Could not append a checkpoint to the checkpoint log.");
        }
        match self.store.insert_checkpoint(&checkpoint).await {
            Ok(()) => Some(checkpoint.seq),
            Err(error) => {
                tracing::error!(%error, seq = checkpoint.seq, "Could not store an audit checkpoint; will try again.");
                None
            }
        }
    }

    async fn commit(&mut self, first: Append, rx: &mut mpsc::Receiver<Append>) {
        let mut count = first.records.len();
        let mut pending = vec![first];
        // Group whatever else is already waiting: concurrent requests share one commit.
        while count < self.max_batch {
            match rx.try_recv() {
                Ok(next) => {
                    count += next.records.len();
                    pending.push(next);
                }
                Err(_) => break,
            }
        }
        let started = std::time::Instant::now();
        let now = now_rfc3339();
        let mut next_head = self.head.clone();
        let built: Vec<Vec<Record>> = pending
            .iter()
            .map(|a| {
                a.records
                    .iter()
                    .map(|r| next_head.append(r.kind.as_str(), &r.request_id, &now, r.data.clone()))
                    .collect()
            })
            .collect();
        let result = self.store.insert_all(built.iter().flatten()).await;
        self.metrics.observe_commit(started.elapsed(), count);
        match result {
            Ok(()) => {
                self.head = next_head;
                for (append, records) in pending.into_iter().zip(built) {
                    let _ = append.done.send(Ok(records));
                }
            }
            Err(error) => {
                self.metrics.audit_write_failures.inc();
                tracing::error!(%error, records = count, "Could not commit audit records; the requests waiting on them are refused.");
                for append in pending {
                    let _ = append.done.send(Err(error.to_string()));
                }
                // The commit may still have landed (an error after COMMIT reached disk), or
                // another process wrote with this writer id: trust the store, not memory.
                match self.store.head(&self.head.writer).await {
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
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
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
