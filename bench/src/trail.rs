//! `gatehouse-bench fill-trail`: an audit database that already holds a long trail.
//!
//! Appends `records` records to `writer`'s chain in a database the service has created (its
//! schema), as the gateway writes them: `request` + `response` pairs of the bench's tools/call
//! with ~1 KB answers, each record hashed onto the chain with [`ChainHead::append`], ~5,000
//! records per transaction, with the service's SQLite settings. Request ids are the filter's
//! time-ordered form: 32 lowercase hex digits, the first 6 bytes a big-endian millisecond
//! timestamp, the other 10 random. The pairs are one millisecond apart and end now, so the
//! gateway's own records follow them in time. `gatehouse audit verify` passes on the result.

use std::{path::Path, time::Instant};

use gatehouse_core::audit::{ChainHead, Record};
use rand::RngCore;
use rusqlite::{Connection, OptionalExtension};
use serde_json::{Value, json};

pub const BATCH: u64 = 5000;

pub fn run(db: &Path, writer: &str, records: u64) -> anyhow::Result<Value> {
    let started = Instant::now();
    let conn = Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    let has_schema: Option<String> = conn
        .query_row(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'audit_records'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    anyhow::ensure!(
        has_schema.is_some(),
        "{} has no audit_records table: start `gatehouse serve` on it once first",
        db.display()
    );
    let mut head = match conn
        .query_row(
            "SELECT seq, hash FROM audit_records WHERE writer = ? ORDER BY seq DESC LIMIT 1",
            [writer],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
        )
        .optional()?
    {
        Some((seq, hash)) => ChainHead {
            writer: writer.to_owned(),
            seq: seq as u64,
            hash,
        },
        None => ChainHead::genesis(writer),
    };
    let pairs = records.div_ceil(2);
    let now_ms = time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000;
    let first_ms = now_ms - i128::from(pairs);
    let text = "x".repeat(1024);
    let mut rng = rand::thread_rng();
    let mut insert = conn.prepare(
        "INSERT INTO audit_records (writer, seq, kind, request_id, recorded_at, prev_hash, hash, data)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?;
    let mut store = |r: Record| {
        let Record {
            writer,
            seq,
            kind,
            request_id,
            recorded_at,
            prev_hash,
            hash,
            data,
        } = r;
        let data = serde_json::to_string(&data).unwrap_or_default();
        insert
            .execute((writer, seq as i64, kind, request_id, recorded_at, prev_hash, hash, data))
            .map(|_| ())
    };
    let mut written = 0u64;
    conn.execute_batch("BEGIN IMMEDIATE")?;
    for pair in 0..pairs {
        let ms = first_ms + i128::from(pair);
        let at = time::OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000)?;
        let recorded_at = gatehouse_service::audit::format_time(at);
        let id = request_id(ms as u64, &mut rng);
        store(head.append("request", &id, &recorded_at, request_data()))?;
        written += 1;
        if written < records {
            store(head.append("response", &id, &recorded_at, response_data(&text, ms as u64)))?;
            written += 1;
        }
        // ~BATCH records per transaction (a pair never straddles two).
        if written % BATCH < 2 {
            conn.execute_batch("COMMIT; BEGIN IMMEDIATE")?;
        }
    }
    conn.execute_batch("COMMIT")?;
    conn.pragma_update(None, "wal_checkpoint", "TRUNCATE")?;
    let bytes = std::fs::metadata(db)?.len();
    Ok(json!({
        "records": written,
        "head_seq": head.seq,
        "seconds": started.elapsed().as_secs_f64(),
        "db_bytes": bytes,
    }))
}

/// The filter's time-ordered request id: 6 bytes of big-endian milliseconds, 10 random.
pub fn request_id(unix_ms: u64, rng: &mut impl RngCore) -> String {
    let mut bytes = [0u8; 16];
    bytes[..6].copy_from_slice(&unix_ms.to_be_bytes()[2..]);
    rng.fill_bytes(&mut bytes[6..]);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn request_data() -> Value {
    json!({
        "arguments": {"message": "benchmark"}, "decision": "allow", "groups": ["eng"],
        "http_method": "POST", "jsonrpc_id": 1, "mcp_method": "tools/call", "message_kind": "request",
        "path": "/mcp", "protocol_version": null, "reason": "caller's group may use the upstream",
        "session_id": null, "subject": "bench", "tool": "echo", "upstream": "everything",
    })
}

fn response_data(text: &str, unix_ms: u64) -> Value {
    json!({
        "body_bytes": 1113, "content_type": "application/json", "end_reason": "complete",
        "error_code": null, "final": true, "http_status": 200, "is_error": false, "jsonrpc_id": "1",
        "masked": {},
        "message": {"id": 1, "jsonrpc": "2.0",
            "result": {"content": [{"text": text, "type": "text"}], "isError": false}},
        "observed_at_unix_ms": unix_ms, "part": 0, "revealed": [], "source": "gatehouse/1/bench0000",
        "sse_event_id": null, "truncated": false, "withheld": null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_service::audit::{Store, verify::verify_store};

    #[tokio::test]
    async fn a_filled_trail_is_one_valid_chain_of_request_and_response_pairs_in_time_order() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("audit.db");
        let url = format!("sqlite://{}", db.display());
        let store = Store::open(&url, std::time::Duration::from_secs(1)).await.unwrap();
        let out = run(&db, "w1", 2 * BATCH + 3).unwrap();
        assert_eq!(out["records"], 2 * BATCH + 3);
        let verified = verify_store(&store, None).await.unwrap();
        assert_eq!(verified.writers.len(), 1);
        assert_eq!(verified.writers[0].records, 2 * BATCH + 3);
        let records = store.chain_page("w1", 0, 10).await.unwrap();
        assert_eq!(records[0].kind, "request");
        assert_eq!(records[1].kind, "response");
        assert_eq!(records[0].request_id, records[1].request_id);
        assert!(records[0].request_id < records[2].request_id, "ids follow time");
        // A second fill continues the chain.
        run(&db, "w1", 10).unwrap();
        assert_eq!(
            verify_store(&store, None).await.unwrap().writers[0].records,
            2 * BATCH + 13
        );
    }

    #[test]
    fn request_ids_start_with_the_big_endian_milliseconds() {
        let id = request_id(0x0123_4567_89ab, &mut rand::thread_rng());
        assert_eq!(id.len(), 32);
        assert!(id.starts_with("0123456789ab"));
        assert!(id.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }
}
