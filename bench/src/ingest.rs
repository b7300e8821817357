//! Ingest CPU per record (issue 12): what the service spends on one response record the
//! filter reports, from the message bytes to the record's stored text and hash.
//!
//! The records are what a current filter sends: ~1 KB tool answers and SSE events, already
//! masked by the filter with the same engine (the mixed text of [`crate::mixed`], a secret
//! or a piece of personal data every ~2 KB, and JSON rows inside a text field), plus the
//! final parts that close streams. Each record is timed through
//! [`gatehouse_service::ingest::response_event`] (parse, the ingest's masking check, the
//! typed event), its data ([`gatehouse_service::audit::NewRecord::from_event`]), the canonical
//! encoding the ingest compares deliveries by, and what the store writes and hashes.

use std::time::{Duration, Instant};

use gatehouse_core::audit::{canonical_json, record_hash};
use gatehouse_core::mask::{JsonMasked, MaskCounts, Masker, Reveal};
use gatehouse_proto::audit::v1::ResponseObserved;
use gatehouse_service::audit::NewRecord;
use gatehouse_service::ingest::response_event;
use serde_json::{Value, json};

use crate::mixed;

/// Distinct records in the measured set.
const RECORDS: usize = 96;

/// One record of each shape, in turn: a tool answer, JSON rows in a text field, an SSE event
/// and a stream's final part.
fn records(masker: &Masker) -> Vec<ResponseObserved> {
    let none = Reveal::none();
    let masked = |message: Value| -> Vec<u8> {
        let bytes = message.to_string().into_bytes();
        match masker.mask_json(&bytes, &none, &mut MaskCounts::default()) {
            JsonMasked::Changed(out) => out,
            JsonMasked::Unchanged | JsonMasked::NotJson => bytes,
        }
    };
    (0..RECORDS)
        .map(|i| {
            let seed = i as u64 + 1;
            let (message, content_type, is_final) = match i % 4 {
                0 => (
                    masked(json!({"jsonrpc": "2.0", "id": i, "result": {"content": [{"type": "text", "text": mixed::text(1024, seed)}], "isError": false}})),
                    "application/json",
                    true,
                ),
                1 => {
                    let mut rng = mixed::Rng::new(seed);
                    let rows: Vec<Value> = (0..6)
                        .map(|n| json!({"id": n, "name": mixed::text(24, seed + n), "contact": mixed::secret(&mut rng), "plan": "pro", "last_order": format!("ORD-{}", 10000 + n)}))
                        .collect();
                    let text = Value::Array(rows).to_string();
                    (
                        masked(json!({"jsonrpc": "2.0", "id": i, "result": {"content": [{"type": "text", "text": text}], "structuredContent": {"result": text}}})),
                        "text/event-stream",
                        false,
                    )
                }
                2 => (
                    masked(json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": mixed::text(768, seed)}})),
                    "text/event-stream",
                    false,
                ),
                _ => (Vec::new(), "text/event-stream", true),
            };
            ResponseObserved {
                request_id: format!("{i:032x}"),
                part: (i % 4) as u32,
                r#final: is_final,
                http_status: 200,
                content_type: content_type.into(),
                body_bytes: message.len() as u64,
                message,
                observed_at_unix_ms: 1_796_233_104_498,
                jsonrpc_id: i.to_string(),
                end_reason: if is_final { "complete".into() } else { String::new() },
                ..Default::default()
            }
        })
        .collect()
}

/// The service's work on one record, apart from I/O.
fn ingest_one(r: &ResponseObserved, masker: &Masker) -> usize {
    let event = response_event(r, "gatehouse/bench/0", masker);
    let Ok(record) = NewRecord::from_event(r.request_id.as_str(), event) else {
        return 0;
    };
    let compared = canonical_json(&record.data);
    let stored = serde_json::to_string(&record.data).unwrap_or_default();
    let hash = record_hash(
        1,
        "bench",
        record.kind.as_str(),
        &record.request_id,
        "2026-12-02T00:00:00.000Z",
        "0",
        &record.data,
    );
    compared.len() + stored.len() + hash.len()
}

/// Only parsing the message, and parsing it then masking it again as ingest did before
/// issue 12: the parts of the figure the masking check is measured against.
fn parse_only(r: &ResponseObserved) -> usize {
    serde_json::from_slice::<Value>(&r.message).map_or(0, |v| v.is_object() as usize)
}

fn parse_and_mask(r: &ResponseObserved, masker: &Masker) -> usize {
    let Ok(mut v) = serde_json::from_slice::<Value>(&r.message) else {
        return 0;
    };
    let mut counts = MaskCounts::default();
    masker.mask_message(&mut v, &Reveal::none(), &mut counts);
    counts.0.len()
}

/// Median over `runs` of the mean time per record of 20 passes over the set, in ns.
fn median_ns(set: &[ResponseObserved], runs: u32, f: impl Fn(&ResponseObserved) -> usize) -> u64 {
    for r in set {
        std::hint::black_box(f(r));
    }
    let mut per_record: Vec<Duration> = (0..runs.max(1))
        .map(|_| {
            let start = Instant::now();
            for _ in 0..20 {
                for r in set {
                    std::hint::black_box(f(r));
                }
            }
            start.elapsed() / (20 * set.len() as u32)
        })
        .collect();
    per_record.sort_unstable();
    per_record.get(per_record.len() / 2).map_or(0, |d| d.as_nanos() as u64)
}

pub fn run(runs: u32) -> Value {
    let masker = Masker::default();
    let set = records(&masker);
    let bytes: usize = set.iter().map(|r| r.message.len()).sum();
    json!({
        "records": set.len(),
        "mean_message_bytes": bytes / set.len(),
        "runs": runs,
        "median_ns_per_record": median_ns(&set, runs, |r| ingest_one(r, &masker)),
        "parse_ns_per_record": median_ns(&set, runs, parse_only),
        "parse_and_full_mask_ns_per_record": median_ns(&set, runs, |r| parse_and_mask(r, &masker)),
    })
}
