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
//! A batch holds at most `batch` records and `batch_bytes` bytes of events (a bigger record
//! goes alone). When the receiver refuses the events themselves (HTTP 413, records an OTLP
//! collector rejects) the batch is halved until it passes; a record refused alone is sent as
//! a stub ([`Outgoing::stub`]): its id, chain position and hash with its large fields left out
//! and named, so the sink still holds every record in order and the whole one is read from
//! the trail or the archive.
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
/// A stub keeps the members of an event no longer than this (as JSON, name included).
const STUB_FIELD_BYTES: usize = 1024;
/// A stub longer than this keeps the record's identity only.
const STUB_MAX_BYTES: usize = 16 * 1024;
/// A stub names at most this many of the members it left out.
const STUB_MAX_NAMED: usize = 32;

/// One record as a sink sends it: the record, its id, and its formatted event.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// `writer:seq`: stable across retries, for a sink to drop duplicates.
    pub id: String,
    pub record: Record,
    /// The event: the record as stored, or its OCSF form.
    pub event: Value,
    /// The event as one line of JSON.
    line: String,
    format: Format,
    /// A stand-in for a record the sink refused ([`Outgoing::stub`]).
    pub stub: bool,
}

impl Outgoing {
    pub fn new(record: Record, format: Format) -> Self {
        let event = match format {
            Format::Gatehouse => serde_json::to_value(&record).unwrap_or(Value::Null),
            Format::Ocsf => ocsf::event(&record),
        };
        Self {
            id: format!("{}:{}", record.writer, record.seq),
            line: event.to_string(),
            record,
            event,
            format,
            stub: false,
        }
    }

    /// The event as one line of JSON.
    pub fn line(&self) -> &str {
        &self.line
    }

    /// What is sent in place of this record when the sink refuses it even alone (`why`): its
    /// event with every member longer than [`STUB_FIELD_BYTES`] as JSON (name included) left
    /// out (an object that long is entered, the rest is cut), and `export_omitted` (at the top
    /// of a gatehouse event, in `unmapped` of an OCSF one) naming them as JSON pointers, with
    /// the event's size and the receiver's reason. Still over [`STUB_MAX_BYTES`] (many small
    /// members), it is the event of the record without its data (`identity_only`). Its id,
    /// chain position and hash stay: the whole record is read from the trail or the archive.
    pub fn stub(&self, why: &str) -> Self {
        let mut event = self.event.clone();
        let mut omitted = Vec::new();
        prune(&mut event, "", &mut omitted);
        let stub = self.marked(event, &omitted, why, false);
        if stub.line.len() <= STUB_MAX_BYTES {
            return stub;
        }
        let mut record = self.record.clone();
        record.data = json!({});
        let bare = Self::new(record, self.format).event;
        self.marked(bare, &[], why, true)
    }

    /// A stub of this record with `event` as its event, `export_omitted` added.
    fn marked(&self, mut event: Value, omitted: &[String], why: &str, identity_only: bool) -> Self {
        let named: Vec<String> = omitted.iter().take(STUB_MAX_NAMED).map(|p| sinks::clip(p)).collect();
        let mut marker = json!({
            "fields": named, "event_bytes": self.line.len(), "reason": sinks::clip(why),
        });
        if omitted.len() > STUB_MAX_NAMED {
            marker["fields_not_named"] = json!(omitted.len() - STUB_MAX_NAMED);
        }
        if identity_only {
            marker["identity_only"] = json!(true);
        }
        let holder = match self.format {
            Format::Gatehouse => Some(&mut event),
            Format::Ocsf => event.get_mut("unmapped"),
        };
        if let Some(Value::Object(holder)) = holder {
            holder.insert("export_omitted".to_owned(), marker);
        }
        Self {
            id: self.id.clone(),
            record: self.record.clone(),
            line: event.to_string(),
            event,
            format: self.format,
            stub: true,
        }
    }
}

/// Removes from the object `value` every member longer than [`STUB_FIELD_BYTES`] as JSON
/// (its name included), entering those that are objects; the JSON pointer of each removed one
/// goes to `omitted`.
fn prune(value: &mut Value, at: &str, omitted: &mut Vec<String>) {
    let Value::Object(members) = value else {
        return;
    };
    members.retain(|name, member| {
        if name.len() + serde_json::to_string(member).map_or(0, |t| t.len()) <= STUB_FIELD_BYTES {
            return true;
        }
        let path = format!("{at}/{}", name.replace('~', "~0").replace('/', "~1"));
        if member.is_object() && name.len() <= STUB_FIELD_BYTES {
            prune(member, &path, omitted);
            return true;
        }
        omitted.push(path);
        false
    });
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
    /// Records the sink refused even alone, sent as stubs.
    pub stubs: u64,
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
        let metrics: [(&str, &str, &str, Read); 6] = [
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
                "gatehouse_export_stubs_total",
                "counter",
                "Records the sink refused even alone (too large, rejected), sent as a stub naming them.",
                |s| s.stubs as f64,
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
            let read = records.len();
            let mut batch = bounded(records, exporter.format, exporter.batch_bytes);
            match send_until_acknowledged(&name, &mut sink, &mut batch, &statuses, &mut lease, &mut stop).await {
                Sent::Acknowledged => {}
                Sent::Stopped => return,
                // Another replica sends now: leave the batch (and the cursor) to it.
                Sent::LeaseLost => break,
            }
            let Some(last) = batch.last().map(|o| o.record.seq) else {
                continue;
            };
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
            // A full page, or one cut short: there may be more now, no pause.
            if read as u32 == exporter.batch || batch.len() < read {
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

/// `records` as events, up to `max_bytes` of them (the first one whatever its size).
fn bounded(records: Vec<Record>, format: Format, max_bytes: u64) -> Vec<Outgoing> {
    let mut out: Vec<Outgoing> = Vec::with_capacity(records.len());
    let mut bytes = 0u64;
    for record in records {
        let o = Outgoing::new(record, format);
        bytes += o.line().len() as u64 + 1;
        if bytes > max_bytes && !out.is_empty() {
            break;
        }
        out.push(o);
    }
    out
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
/// replica holds the lease. When the sink refuses the events themselves, the batch is halved
/// (the rest is read again by the next pass) and sent at once; a record refused alone is
/// replaced by its stub. So what is acknowledged may be the first part of `batch` only.
async fn send_until_acknowledged(
    name: &str,
    sink: &mut sinks::Sink,
    batch: &mut Vec<Outgoing>,
    statuses: &Statuses,
    lease: &mut Lease,
    stop: &mut watch::Receiver<bool>,
) -> Sent {
    let mut wait = PASS;
    loop {
        let error = match sink.send(batch).await {
            Ok(()) => {
                statuses.update(name, |s| s.last_error = None);
                return Sent::Acknowledged;
            }
            Err(error) => error,
        };
        statuses.update(name, |s| s.failures += 1);
        let alone_as_stub = batch.len() == 1 && batch[0].stub;
        if error.refused && !alone_as_stub {
            if *stop.borrow() {
                return Sent::Stopped;
            }
            if batch.len() > 1 {
                tracing::info!(exporter = %name, records = batch.len(), error = %error, "The sink refused the batch; sending it in halves.");
                batch.truncate(batch.len() / 2);
            } else {
                let stub = batch[0].stub(&sinks::clip(&error.message));
                tracing::error!(
                    exporter = %name, id = %stub.id, bytes = batch[0].line().len(), error = %error,
                    "The sink refused a record even alone; sending a stub that names it (the whole record is in the trail)."
                );
                statuses.update(name, |s| s.stubs += 1);
                batch[0] = stub;
            }
            continue;
        }
        let message = error.to_string();
        let oldest = batch.first().map_or(0.0, |o| age_seconds(&o.record.recorded_at));
        tracing::warn!(exporter = %name, error = %message, retry_in_ms = wait.as_millis() as u64, "Export failed; will send the batch again.");
        statuses.update(name, |s| {
            s.last_error = Some(message);
            s.lag_seconds = s.lag_seconds.max(oldest);
            s.lag_records = s.lag_records.max(batch.len() as u64);
        });
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::sinks::otlp::tests::{outgoing, tool_call};
    use super::*;

    #[test]
    fn a_batch_ends_before_the_record_that_takes_it_over_its_bytes_and_a_big_one_goes_alone() {
        let small = || outgoing("w", 1, "request", tool_call("allow")).record;
        let big = || {
            let mut data = tool_call("allow");
            data["arguments"] = json!({"text": "x".repeat(10_000)});
            outgoing("w", 2, "request", data).record
        };
        let one = Outgoing::new(small(), Format::Gatehouse).line().len() as u64 + 1;
        let cut = bounded(vec![small(), small(), small()], Format::Gatehouse, 2 * one + 1);
        assert_eq!(cut.len(), 2);
        assert_eq!(
            bounded(vec![small(), small()], Format::Gatehouse, 2 * one).len(),
            2,
            "exactly full"
        );
        assert_eq!(bounded(vec![big(), small()], Format::Gatehouse, 4096).len(), 1, "alone");
        assert_eq!(bounded(vec![small(), big()], Format::Ocsf, 4096).len(), 1);
    }

    #[test]
    fn a_stub_keeps_the_records_identity_and_small_fields_and_names_what_it_left_out() {
        let mut data = tool_call("allow");
        data["arguments"] = json!({"text": "x".repeat(10_000), "n": 1});
        data["a/b"] = json!("y".repeat(2_000));
        for format in [Format::Gatehouse, Format::Ocsf] {
            let whole = Outgoing::new(outgoing("w", 7, "request", data.clone()).record, format);
            let stub = whole.stub("HTTP 413: too large");
            assert!(stub.stub && !whole.stub);
            assert_eq!((stub.id.as_str(), &stub.record), ("w:7", &whole.record));
            assert!(stub.line().len() < 3_000, "{}", stub.line());
            assert!(!stub.line().contains("xxxx") && !stub.line().contains("yyyy"));
            let event: Value = serde_json::from_str(stub.line()).unwrap();
            assert_eq!(event, stub.event);
            let omitted = match format {
                Format::Gatehouse => {
                    assert_eq!(event["data"]["tool"], json!("search"), "small fields stay");
                    assert_eq!(event["data"]["arguments"]["n"], json!(1), "a long object is entered");
                    assert_eq!(event["hash"], json!(whole.record.hash));
                    &event["export_omitted"]
                }
                Format::Ocsf => {
                    assert_eq!(event["metadata"]["uid"], json!("w:7"));
                    assert_eq!(event["unmapped"]["hash"], json!(whole.record.hash));
                    assert_eq!(event["class_uid"], whole.event["class_uid"]);
                    &event["unmapped"]["export_omitted"]
                }
            };
            let fields: Vec<&str> = omitted["fields"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f.as_str().unwrap())
                .collect();
            if format == Format::Gatehouse {
                assert_eq!(fields, ["/data/a~1b", "/data/arguments/text"]);
            }
            assert!(
                !fields.is_empty() && fields.iter().all(|f| f.starts_with('/')),
                "{fields:?}"
            );
            assert_eq!(omitted["event_bytes"], json!(whole.line().len()));
            assert_eq!(omitted["reason"], json!("HTTP 413: too large"));
        }
    }

    #[test]
    fn a_stub_stays_small_whatever_the_arguments_are_made_of() {
        // Thousands of small members, and a member whose name alone is long.
        let mut data = tool_call("allow");
        data["arguments"] = (0..5_000)
            .map(|i| (format!("k{i}"), json!(i)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        data["k".repeat(5_000)] = json!(1);
        for format in [Format::Gatehouse, Format::Ocsf] {
            let whole = Outgoing::new(outgoing("w", 9, "request", data.clone()).record, format);
            let stub = whole.stub("rejected");
            assert!(stub.line().len() <= STUB_MAX_BYTES, "{} bytes", stub.line().len());
            assert!(!stub.line().contains("kkkkkkkk") && !stub.line().contains("\"k4999\""));
            let omitted = match format {
                Format::Gatehouse => &stub.event["export_omitted"],
                Format::Ocsf => &stub.event["unmapped"]["export_omitted"],
            };
            assert_eq!(omitted["identity_only"], json!(true), "{omitted}");
            assert_eq!(stub.id, "w:9");
        }
        // A long name with a small value is left out and named (clipped).
        let mut data = tool_call("allow");
        data["k".repeat(2_000)] = json!(1);
        let stub = Outgoing::new(outgoing("w", 1, "request", data).record, Format::Gatehouse).stub("x");
        let fields = stub.event["export_omitted"]["fields"].as_array().unwrap();
        assert_eq!(fields.len(), 1);
        assert!(fields[0].as_str().unwrap().starts_with("/data/kkk") && fields[0].as_str().unwrap().len() < 400);
        assert!(stub.event["export_omitted"].get("identity_only").is_none());
    }
}
