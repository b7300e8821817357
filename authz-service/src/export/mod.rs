//! The SIEM export: every committed record sent out, in order per writer, at least once.
//!
//! Each exporter (`export:` in gatehouse.yaml) follows the trail from a durable cursor in the
//! audit database (`export_cursors`: per writer, the last seq its sink acknowledged). A pass
//! reads a batch of one writer's records after the cursor, formats them (`gatehouse`: the
//! record as stored; `ocsf`: [`ocsf::event`]), sends them, and moves the cursor only once the
//! sink said it has them. A failed send is retried with the same batch, backing off up to
//! [`BACKOFF_MAX`], forever: memory holds one batch, the trail holds the rest. A record sent
//! and not yet acknowledged when the service stops is sent again: every event carries its
//! `writer:seq` id so that a sink can drop the duplicate.
//!
//! The export reads the store; it never takes part in a Check. With several replicas on one
//! PostgreSQL database each exporter runs on the replica holding its lease
//! ([`crate::db::Lease`]); another takes over when that one dies. The cursor moves only from
//! where its holder read it (`UPDATE … WHERE seq = <read>`), so a replica that lost its lease
//! without noticing never moves it back.

pub mod ocsf;
pub mod sinks;

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gatehouse_core::audit::Record;
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::audit::Store;
use crate::config::export::{Exporter, Format};
use crate::db::Lease;
use crate::on_pool;

/// How often an exporter looks for new records once it has sent everything.
pub const PASS: Duration = Duration::from_millis(500);
/// The longest wait between two attempts to send a batch.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// How often the list of writers is read again.
const WRITERS_EVERY: Duration = Duration::from_secs(30);
/// An exporter this far behind (or failing) is named by `/healthz`.
pub const BEHIND_SECONDS: f64 = 60.0;

/// One record as a sink sends it: the record, its id, and its formatted event.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// `writer:seq`: stable across retries, for a sink to drop duplicates.
    pub id: String,
    pub record: Record,
    /// The event: the record as stored, or its OCSF form.
    pub event: Value,
}

impl Outgoing {
    pub fn new(record: Record, format: Format) -> Self {
        let event = match format {
            Format::Gatehouse => serde_json::to_value(&record).unwrap_or(Value::Null),
            Format::Ocsf => ocsf::event(&record),
        };
        Self {
            id: format!("{}:{}", record.writer, record.seq),
            record,
            event,
        }
    }

    /// The event as one line of JSON.
    pub fn line(&self) -> String {
        self.event.to_string()
    }
}

/// What an exporter (or the archive) has done, for `/metrics` and `/healthz`.
#[derive(Debug, Clone, Default)]
pub struct ExporterStatus {
    pub sink: &'static str,
    pub format: &'static str,
    /// This replica holds its lease (it is the one sending).
    pub active: bool,
    /// Records committed and not yet acknowledged by the sink, over every writer.
    pub lag_records: u64,
    /// Age of the oldest of them (0 when none).
    pub lag_seconds: f64,
    pub sent: u64,
    pub failures: u64,
    /// The last failure, as safe to show (never a token).
    pub last_error: Option<String>,
}

/// Every exporter's status, shared by the exporters and the REST handlers.
#[derive(Debug, Clone, Default)]
pub struct Statuses(Arc<Mutex<BTreeMap<String, ExporterStatus>>>);

impl Statuses {
    pub fn update(&self, name: &str, f: impl FnOnce(&mut ExporterStatus)) {
        if let Ok(mut all) = self.0.lock() {
            f(all.entry(name.to_owned()).or_default());
        }
    }

    pub fn get(&self, name: &str) -> Option<ExporterStatus> {
        self.0.lock().ok().and_then(|all| all.get(name).cloned())
    }

    /// The `export` object of `/healthz`, and the names of the exporters that are behind
    /// (more than [`BEHIND_SECONDS`] of lag, or failing); only this replica's active ones.
    pub fn health(&self) -> (Value, Vec<String>) {
        let Ok(all) = self.0.lock() else {
            return (Value::Null, Vec::new());
        };
        let mut behind = Vec::new();
        let mut out = serde_json::Map::new();
        for (name, s) in all.iter() {
            let late = s.active && (s.lag_seconds > BEHIND_SECONDS || s.last_error.is_some());
            if late {
                behind.push(name.clone());
            }
            out.insert(
                name.clone(),
                json!({
                    "sink": s.sink, "active": s.active, "behind": late,
                    "lag_records": s.lag_records, "lag_seconds": (s.lag_seconds * 10.0).round() / 10.0,
                    "last_error": s.last_error,
                }),
            );
        }
        (Value::Object(out), behind)
    }

    /// Prometheus text for every exporter.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let Ok(all) = self.0.lock() else {
            return out;
        };
        if all.is_empty() {
            return out;
        }
        type Read = fn(&ExporterStatus) -> f64;
        let metrics: [(&str, &str, &str, Read); 5] = [
            (
                "gatehouse_export_lag_records",
                "gauge",
                "Records committed and not yet acknowledged by the exporter's sink.",
                |s| s.lag_records as f64,
            ),
            (
                "gatehouse_export_lag_seconds",
                "gauge",
                "Age of the oldest record not yet acknowledged by the exporter's sink.",
                |s| s.lag_seconds,
            ),
            (
                "gatehouse_export_sent_total",
                "counter",
                "Records the exporter's sink acknowledged.",
                |s| s.sent as f64,
            ),
            (
                "gatehouse_export_failures_total",
                "counter",
                "Failed sends (each is retried).",
                |s| s.failures as f64,
            ),
            (
                "gatehouse_export_active",
                "gauge",
                "1 where this replica holds the exporter's lease.",
                |s| f64::from(u8::from(s.active)),
            ),
        ];
        for (name, kind, help, value) in metrics {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (exporter, s) in all.iter() {
                let _ = writeln!(
                    out,
                    "{name}{{exporter=\"{exporter}\",sink=\"{}\"}} {}",
                    s.sink,
                    value(s)
                );
            }
        }
        out
    }
}

/// The cursors of one exporter in `export_cursors`.
#[derive(Clone)]
pub struct Cursors {
    store: Store,
    exporter: String,
}

impl Cursors {
    pub fn new(store: &Store, exporter: &str) -> Self {
        Self {
            store: store.clone(),
            exporter: exporter.to_owned(),
        }
    }

    /// Every writer this exporter has a cursor for, with its seq.
    pub async fn all(&self) -> Result<BTreeMap<String, u64>, sqlx::Error> {
        let rows: Vec<(String, i64)> = on_pool!(self.store.pool(), pool => {
            sqlx::query_as("SELECT writer, seq FROM export_cursors WHERE exporter = $1")
                .bind(&self.exporter)
                .fetch_all(pool)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(|(w, s)| (w, u64::try_from(s).unwrap_or(0)))
            .collect())
    }

    /// Moves the cursor of `writer` from `from` to `to`; false when it was not at `from` any
    /// more (another replica moved it).
    pub async fn advance(&self, writer: &str, from: u64, to: u64) -> Result<bool, sqlx::Error> {
        let now = crate::audit::format_time(time::OffsetDateTime::now_utc());
        let (from, to) = (
            i64::try_from(from).unwrap_or(i64::MAX),
            i64::try_from(to).unwrap_or(i64::MAX),
        );
        let moved = on_pool!(self.store.pool(), pool => {
            if from == 0 {
                sqlx::query(
                    "INSERT INTO export_cursors (exporter, writer, seq, updated_at) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (exporter, writer) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at \
                     WHERE export_cursors.seq = 0",
                )
                .bind(&self.exporter)
                .bind(writer)
                .bind(to)
                .bind(&now)
                .execute(pool)
                .await?
                .rows_affected()
            } else {
                sqlx::query(
                    "UPDATE export_cursors SET seq = $1, updated_at = $2 WHERE exporter = $3 AND writer = $4 AND seq = $5",
                )
                .bind(to)
                .bind(&now)
                .bind(&self.exporter)
                .bind(writer)
                .bind(from)
                .execute(pool)
                .await?
                .rows_affected()
            }
        });
        Ok(moved == 1)
    }
}

/// The writers whose records there are to follow: those of the trail (read every
/// [`WRITERS_EVERY`]), the live replicas, and those with a cursor.
#[derive(Debug, Default)]
pub struct Writers {
    known: Vec<String>,
    read_at: Option<tokio::time::Instant>,
}

impl Writers {
    pub async fn current(&mut self, store: &Store, with_cursor: impl IntoIterator<Item = String>) -> Vec<String> {
        if self.read_at.is_none_or(|at| at.elapsed() >= WRITERS_EVERY) {
            match store.writers().await {
                Ok(found) => {
                    self.known = found;
                    self.read_at = Some(tokio::time::Instant::now());
                }
                Err(error) => tracing::warn!(%error, "Could not list the trail's writers for the export."),
            }
        }
        let mut all = self.known.clone();
        all.extend(with_cursor);
        if let Ok(live) = store.live_replicas().await {
            all.extend(live);
        }
        all.sort();
        all.dedup();
        all
    }
}

/// Seconds since a record's `recorded_at`.
pub fn age_seconds(recorded_at: &str) -> f64 {
    time::OffsetDateTime::parse(recorded_at, &time::format_description::well_known::Rfc3339)
        .map(|t| (time::OffsetDateTime::now_utc() - t).as_seconds_f64().max(0.0))
        .unwrap_or(0.0)
}

/// Runs `exporter` until `stop`: follows every writer's chain from its cursor and sends to
/// `sink` (built at start, [`sinks::Sink::new`]).
pub async fn run(
    exporter: Exporter,
    mut sink: sinks::Sink,
    store: Store,
    statuses: Statuses,
    mut stop: watch::Receiver<bool>,
) {
    let name = exporter.name.clone();
    statuses.update(&name, |s| {
        s.sink = exporter.sink.kind();
        s.format = exporter.format.as_str();
    });
    let cursors = Cursors::new(&store, &name);
    let mut lease = Lease::new(store.pool(), store.url(), &format!("export:{name}"));
    let mut writers = Writers::default();
    let mut idle = true;
    loop {
        if idle {
            tokio::select! {
                () = tokio::time::sleep(PASS) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        idle = true;
        let active = lease.hold().await;
        statuses.update(&name, |s| s.active = active);
        if !active {
            continue;
        }
        let at = match cursors.all().await {
            Ok(at) => at,
            Err(error) => {
                tracing::warn!(exporter = %name, %error, "Could not read the export's cursors; will try again.");
                continue;
            }
        };
        // What was unsent when this pass read it, less what it sent.
        let (mut lag_records, mut lag_seconds, mut sent) = (0u64, 0f64, 0u64);
        for writer in writers.current(&store, at.keys().cloned()).await {
            let from = at.get(&writer).copied().unwrap_or(0);
            let records = match store.chain_page(&writer, from, exporter.batch).await {
                Ok(records) => records,
                Err(error) => {
                    tracing::warn!(exporter = %name, %error, "Could not read the trail for the export; will try again.");
                    continue;
                }
            };
            let (Some(first), Some(last)) = (records.first(), records.last()) else {
                continue;
            };
            let head = store.head_seq(&writer).await.unwrap_or(last.seq);
            lag_records += head.saturating_sub(from);
            lag_seconds = lag_seconds.max(age_seconds(&first.recorded_at));
            let last = last.seq;
            let batch: Vec<Outgoing> = records.into_iter().map(|r| Outgoing::new(r, exporter.format)).collect();
            match send_until_acknowledged(&name, &mut sink, &batch, &statuses, &mut lease, &mut stop).await {
                Sent::Acknowledged => {}
                Sent::Stopped => return,
                // Another replica sends now: leave the batch (and the cursor) to it.
                Sent::LeaseLost => break,
            }
            match cursors.advance(&writer, from, last).await {
                Ok(true) => {
                    sent += batch.len() as u64;
                    statuses.update(&name, |s| s.sent += batch.len() as u64);
                }
                Ok(false) => {
                    tracing::info!(exporter = %name, writer = %writer, "The export's cursor was moved by another replica.")
                }
                Err(error) => {
                    tracing::warn!(exporter = %name, %error, "Could not move the export's cursor; the batch will be sent again.")
                }
            }
            // A full batch: there may be more now, no pause.
            if batch.len() as u32 == exporter.batch {
                idle = false;
            }
        }
        let left = lag_records.saturating_sub(sent);
        statuses.update(&name, |s| {
            s.lag_records = left;
            s.lag_seconds = if left > 0 { lag_seconds } else { 0.0 };
        });
    }
}

/// How a send ended.
enum Sent {
    Acknowledged,
    /// The service is stopping.
    Stopped,
    /// The lease went to another replica while the sink was failing.
    LeaseLost,
}

/// Sends `batch` until the sink acknowledges it, backing off between attempts, as long as this
/// replica holds the lease.
async fn send_until_acknowledged(
    name: &str,
    sink: &mut sinks::Sink,
    batch: &[Outgoing],
    statuses: &Statuses,
    lease: &mut Lease,
    stop: &mut watch::Receiver<bool>,
) -> Sent {
    let mut wait = PASS;
    loop {
        match sink.send(batch).await {
            Ok(()) => {
                statuses.update(name, |s| s.last_error = None);
                return Sent::Acknowledged;
            }
            Err(error) => {
                let message = error.to_string();
                let oldest = batch.first().map_or(0.0, |o| age_seconds(&o.record.recorded_at));
                tracing::warn!(exporter = %name, error = %message, retry_in_ms = wait.as_millis() as u64, "Export failed; will send the batch again.");
                statuses.update(name, |s| {
                    s.failures += 1;
                    s.last_error = Some(message);
                    s.lag_seconds = s.lag_seconds.max(oldest);
                    s.lag_records = s.lag_records.max(batch.len() as u64);
                });
            }
        }
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return Sent::Stopped,
        }
        if !lease.hold().await {
            statuses.update(name, |s| s.active = false);
            return Sent::LeaseLost;
        }
        wait = (wait * 2).min(BACKOFF_MAX);
    }
}
