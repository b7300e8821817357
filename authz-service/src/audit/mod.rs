//! The audit trail: append-only, hash-chained records in a durable store.
//!
//! All appends go through one writer task per service ([`AuditLog`]), which owns the head
//! of this writer's chain and groups the records of concurrent requests into one
//! transaction, so each request pays for a shared commit rather than its own. A caller
//! gets its record back only after the commit: the ext_authz Check allows a request only
//! once its request record is durable.

mod store;
pub mod verify;

use std::time::Duration;

use gatehouse_core::audit::{ChainHead, Record, RecordKind};
use serde_json::Value;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

pub use store::{RecordQuery, Store};

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
        metrics: Metrics,
    ) -> Result<Self, AuditError> {
        let head = store.head(writer_id).await?;
        let (tx, rx) = mpsc::channel(4096);
        tokio::spawn(writer_task(store.clone(), head, rx, max_batch, metrics));
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

    /// Appends one record and returns it once durable.
    pub async fn append_one(
        &self,
        kind: RecordKind,
        request_id: &str,
        data: Value,
    ) -> Result<Record, AuditError> {
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

async fn writer_task(
    store: Store,
    mut head: ChainHead,
    mut rx: mpsc::Receiver<Append>,
    max_batch: usize,
    metrics: Metrics,
) {
    let mut pending: Vec<Append> = Vec::new();
    while let Some(first) = rx.recv().await {
        let mut count = first.records.len();
        pending.push(first);
        // Group whatever else is already waiting: concurrent requests share one commit.
        while count < max_batch {
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
        let mut next_head = head.clone();
        let built: Vec<Vec<Record>> = pending
            .iter()
            .map(|a| {
                a.records
                    .iter()
                    .map(|r| next_head.append(r.kind.as_str(), &r.request_id, &now, r.data.clone()))
                    .collect()
            })
            .collect();
        let result = store.insert_all(built.iter().flatten()).await;
        metrics.observe_commit(started.elapsed(), count);
        match result {
            Ok(()) => {
                head = next_head;
                for (append, records) in pending.drain(..).zip(built) {
                    let _ = append.done.send(Ok(records));
                }
            }
            Err(error) => {
                metrics.audit_write_failures.inc();
                tracing::error!(%error, records = count, "Could not commit audit records; the requests waiting on them are refused.");
                for append in pending.drain(..) {
                    let _ = append.done.send(Err(error.to_string()));
                }
                // The head did not move; back off briefly so a broken store is not hammered.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Record time: RFC 3339 in UTC with milliseconds, a fixed width so text order is time order.
pub fn now_rfc3339() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}
