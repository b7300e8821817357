//! `gatehouse-bench sessions`: the session index on a long trail.
//!
//! Lays down `records` records in an audit database (SQLite file or PostgreSQL, migrated by
//! the service's own code) as the gateway writes them: MCP sessions of 100 exchanges
//! (an `initialize` whose answer sets the session id, then `tools/call`s of 20 tools with
//! masked arguments and ~300-byte answers), 50 sessions interleaved at a time, 50 callers, 3
//! upstreams; each exchange a request and a response record, hashed onto one chain. Then the
//! service's indexer files all of it (timed), and the auditors' queries are timed: the list's
//! first page, by user, by tool, by time range, a search for a word in one session and for an
//! absent one, and a session's timeline page as the REST API reads it.

use std::time::Instant;

use gatehouse_core::audit::{ChainHead, Record};
use gatehouse_service::audit::Store;
use gatehouse_service::sessions::{SessionQuery, Sessions};
use rand::RngCore;
use serde_json::{Value, json};

const PER_SESSION: u64 = 100;
const INTERLEAVED: u64 = 50;
const BATCH: usize = 5_000;
const RUNS: usize = 20;
/// The word only one session's answers hold (what a search looks for).
const NEEDLE: &str = "zanzibar";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The median and 95th percentile of `runs` of `f`, in milliseconds.
async fn timed<F, Fut, T>(mut f: F) -> anyhow::Result<Value>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let mut ms = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        f().await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    Ok(json!({"p50_ms": ms[RUNS / 2], "p95_ms": ms[RUNS * 95 / 100], "runs": RUNS}))
}

pub async fn run(database: &str, records: u64) -> anyhow::Result<Value> {
    let store = Store::open(database, std::time::Duration::from_secs(5))
        .await
        .map_err(|e| anyhow::anyhow!("cannot open {database}: {e}"))?;
    let writer = "bench-sessions";
    let exchanges = records / 2;
    let sessions_n = exchanges.div_ceil(PER_SESSION);
    let mut rng = rand::thread_rng();
    let session_ids: Vec<String> = (0..sessions_n)
        .map(|_| {
            let mut b = [0u8; 16];
            rng.fill_bytes(&mut b);
            hex(&b)
        })
        .collect();
    let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
    let first_ms = now_ms - exchanges as i64 * 10;
    let filler = "lorem ipsum dolor sit amet ".repeat(10);

    let fill = Instant::now();
    let mut head = ChainHead::genesis(writer);
    let mut batch: Vec<Record> = Vec::with_capacity(BATCH);
    for k in 0..exchanges {
        // Groups of INTERLEAVED sessions, each exchange of the group in turn.
        let group = k / (INTERLEAVED * PER_SESSION);
        let within = k % (INTERLEAVED * PER_SESSION);
        let s = (group * INTERLEAVED + within % INTERLEAVED).min(sessions_n - 1);
        let n = within / INTERLEAVED;
        let at_ms = first_ms + k as i64 * 10;
        let at = gatehouse_service::audit::format_time(time::OffsetDateTime::from_unix_timestamp_nanos(
            i128::from(at_ms) * 1_000_000,
        )?);
        let mut id = [0u8; 16];
        id[..6].copy_from_slice(&at_ms.to_be_bytes()[2..]);
        rng.fill_bytes(&mut id[6..]);
        let request_id = hex(&id);
        let user = format!("user{}", s % 50);
        let upstream = format!("up{}", s % 3);
        let sid = &session_ids[s as usize];
        let (request, response) = if n == 0 {
            (
                json!({"subject": user, "groups": ["eng"], "upstream": upstream, "http_method": "POST",
                       "path": "/mcp", "session_id": null, "protocol_version": null, "mcp_method": "initialize",
                       "tool": null, "arguments": null, "jsonrpc_id": 1, "message_kind": "request",
                       "decision": "allow", "reason": "ok", "user_agent": format!("agent/{}", s % 5),
                       "client": {"name": "bench-agent", "version": "1", "protocol_version": "2025-11-25"}}),
                json!({"part": 0, "final": true, "http_status": 200, "content_type": "application/json",
                       "message": {"jsonrpc": "2.0", "id": 1, "result": {"capabilities": {}}}, "masked": {},
                       "revealed": [], "withheld": null, "truncated": false, "body_bytes": 80,
                       "observed_at_unix_ms": at_ms + 3, "sse_event_id": null, "jsonrpc_id": "1",
                       "is_error": false, "error_code": null, "end_reason": "complete", "source": "bench",
                       "session_id": sid}),
            )
        } else {
            let word = if s == sessions_n / 2 && n == 50 {
                NEEDLE
            } else {
                "report"
            };
            (
                json!({"subject": user, "groups": ["eng"], "upstream": upstream, "http_method": "POST",
                       "path": "/mcp", "session_id": sid, "protocol_version": "2025-11-25",
                       "mcp_method": "tools/call", "tool": format!("tool{}", n % 20),
                       "arguments": {"query": format!("find rows {n}"), "token": "[MASKED:github_token]"},
                       "jsonrpc_id": n + 1, "message_kind": "request", "decision": "allow", "reason": "ok",
                       "masked": {"github_token": 1}, "user_agent": format!("agent/{}", s % 5)}),
                json!({"part": 0, "final": true, "http_status": 200, "content_type": "application/json",
                       "message": {"jsonrpc": "2.0", "id": n + 1, "result": {"content": [{"type": "text",
                                   "text": format!("{word} {filler} [MASKED:email:tok_0123456789abcdef0123]")}]}},
                       "masked": {"email": 1}, "revealed": [], "withheld": null, "truncated": false,
                       "body_bytes": 400, "observed_at_unix_ms": at_ms + 5, "sse_event_id": null,
                       "jsonrpc_id": (n + 1).to_string(), "is_error": false, "error_code": null,
                       "end_reason": "complete", "source": "bench"}),
            )
        };
        batch.push(head.append("request", &request_id, &at, request));
        batch.push(head.append("response", &request_id, &at, response));
        if batch.len() >= BATCH {
            store.insert_all(batch.iter()).await?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        store.insert_all(batch.iter()).await?;
    }
    let filled_s = fill.elapsed().as_secs_f64();

    let sessions = Sessions::of(&store, 600).await?;
    let index = Instant::now();
    let indexed = sessions.catch_up(&store, &[writer.to_owned()]).await?;
    let index_s = index.elapsed().as_secs_f64();

    let target = sessions
        .list(&SessionQuery {
            q: Some(NEEDLE.into()),
            ..SessionQuery::default()
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .0;
    anyhow::ensure!(target.len() == 1, "the search found {} sessions, not 1", target.len());
    let target_id = target[0].id.clone();
    let since = gatehouse_service::audit::format_time(time::OffsetDateTime::from_unix_timestamp_nanos(
        i128::from(first_ms + exchanges as i64 * 5) * 1_000_000,
    )?);
    let list = |q: SessionQuery| {
        let sessions = sessions.clone();
        async move {
            let (found, _) = sessions.list(&q).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            anyhow::Ok(found.len())
        }
    };
    let q = |f: fn(&mut SessionQuery)| {
        let mut q = SessionQuery::default();
        f(&mut q);
        q
    };
    let first_page = timed(|| list(SessionQuery::default())).await?;
    let by_user = timed(|| list(q(|q| q.user = Some("user7".into())))).await?;
    let by_tool = timed(|| list(q(|q| q.tool = Some("tool3".into())))).await?;
    let by_time = timed(|| {
        list(SessionQuery {
            since: Some(since.clone()),
            ..SessionQuery::default()
        })
    })
    .await?;
    let search_hit = timed(|| list(q(|q| q.q = Some(NEEDLE.into())))).await?;
    let search_miss = timed(|| list(q(|q| q.q = Some("quetzalcoatl".into())))).await?;
    let timeline = timed(|| {
        let (sessions, store, id) = (sessions.clone(), store.clone(), target_id.clone());
        async move {
            let session = sessions.get(&id).await?.ok_or_else(|| anyhow::anyhow!("no session"))?;
            let mut views = Vec::new();
            for (i, f) in sessions.exchanges(&id, 0, 100).await?.iter().enumerate() {
                let records = store.request_records(&f.request_id, 2_000).await?;
                views.push(gatehouse_service::sessions::exchange_view(
                    i as u64,
                    f,
                    &session.started_at,
                    &records,
                ));
            }
            anyhow::ensure!(views.len() == 100, "a timeline page of {} exchanges", views.len());
            anyhow::Ok(views.len())
        }
    })
    .await?;
    Ok(json!({
        "backend": if database.starts_with("postgres") { "postgres" } else { "sqlite" },
        "records": exchanges * 2,
        "sessions": sessions_n,
        "fill_seconds": filled_s,
        "indexed_records": indexed,
        "index_seconds": index_s,
        "index_records_per_second": indexed as f64 / index_s.max(1e-9),
        "queries": {
            "list_first_page": first_page,
            "list_by_user": by_user,
            "list_by_tool": by_tool,
            "list_by_time": by_time,
            "search_one_session": search_hit,
            "search_no_session": search_miss,
            "timeline_page_100": timeline,
        },
    }))
}
