//! `gatehouse-bench`: the two halves of `make bench`.
//!
//! - `upstream`: a minimal, fast Streamable-HTTP MCP server that answers `initialize`,
//!   `tools/list` and `tools/call` with a fixed-size JSON result, so the benchmark measures
//!   the gateway, not the server.
//! - `load`: an open-loop load generator. Requests are *scheduled* at a fixed rate and each
//!   latency is measured from its scheduled start, so a stalled gateway shows up as latency
//!   instead of silently lowering the offered rate (no coordinated omission). With `--closed`,
//!   a closed loop instead: `--connections` connections, each sending its next call as soon as
//!   the previous answer arrives (the maximum rate).
//! - `fetch`: sequential calls of one tool, for throughput of large answers.
//! - `mask`: the masking engine's native throughput on the same mixed text the upstream
//!   serves (see [`mixed`]).
//! - `policy`: the policy engine's decision cost with 1,000 rules (see [`policy`]).
//! - `sign`: SigV4 over a 1 KB call with a cached STS session (see [`sign`]).
//! - `ingest-cpu`: the service's CPU per response record at ingest (see [`ingest`]).
//! - `disk`: fsync, fdatasync and one SQLite commit on the disk under a directory (see [`disk`]).
//! - `fill-trail`: an audit database filled with a long valid trail (see [`trail`]).

mod disk;
mod export;
mod ingest;
mod mixed;
mod policy;
mod sessions;
mod sign;
mod trail;

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, http::HeaderMap, routing::post};
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use serde_json::{Value, json};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve a fast MCP server on `listen` at path /mcp, and OTLP/HEC receivers that answer
    /// success (`/v1/logs`, `/services/collector/event`).
    Upstream {
        #[arg(long)]
        listen: SocketAddr,
        /// Size of the text in each tools/call answer.
        #[arg(long, default_value_t = 1024)]
        answer_bytes: usize,
    },
    /// Send tools/call requests at a fixed rate and print latency figures as JSON.
    Load {
        #[arg(long)]
        url: String,
        /// Requests per second (open loop).
        #[arg(long, required_unless_present = "closed")]
        rate: Option<u32>,
        /// A closed loop instead: each connection sends its next call when the previous answer
        /// has arrived; latency from each call's send.
        #[arg(long)]
        closed: bool,
        /// Connections of the closed loop.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// Closed loop: stop after this many calls (after warm-up) instead of after `seconds`.
        #[arg(long)]
        requests: Option<u64>,
        /// Seconds of load (after warm-up).
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        #[arg(long, default_value_t = 1)]
        warmup_seconds: u32,
        /// Extra request header, `Name: value` (repeatable).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// Stop scheduling new requests while this many are outstanding (counted as errors).
        #[arg(long, default_value_t = 2000)]
        max_in_flight: usize,
        /// Tool to call (see `upstream`).
        #[arg(long, default_value = "echo")]
        tool: String,
    },
    /// Call one tool `count` times in a row; print median latency and throughput as JSON.
    Fetch {
        #[arg(long)]
        url: String,
        #[arg(long)]
        tool: String,
        #[arg(long, default_value_t = 20)]
        count: u32,
        #[arg(long = "header")]
        headers: Vec<String>,
    },
    /// Native masking throughput (MB/s) on mixed text, a tools/call answer and an SSE stream.
    Mask {
        /// Size of each input.
        #[arg(long, default_value_t = 1 << 20)]
        bytes: usize,
        #[arg(long, default_value_t = 15)]
        runs: u32,
    },
    /// Policy decision cost: `Policy::evaluate` times with 1,000 generated rules, as JSON.
    Policy {
        /// Timed evaluations per request (each timed alone, after a tenth as many unmeasured).
        #[arg(long, default_value_t = 200_000)]
        iterations: u32,
        /// Also write the rules and the caller they are measured for (JSON), for a gateway.
        #[arg(long)]
        rules_out: Option<PathBuf>,
    },
    /// Signing cost: SigV4 over a 1 KB call with a cached session, as JSON.
    Sign {
        #[arg(long, default_value_t = 100_000)]
        iterations: u32,
    },
    /// Ingest CPU per response record (masked ~1 KB answers and SSE events), as JSON.
    IngestCpu {
        #[arg(long, default_value_t = 15)]
        runs: u32,
    },
    /// fsync, fdatasync (4 KiB writes) and one SQLite commit (one ~1 KB row, WAL,
    /// synchronous=FULL) in `dir`, each timed alone: p50/p99 as JSON.
    Disk {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value_t = 300)]
        writes: u32,
    },
    /// Append `records` request/response records to `writer`'s chain in an audit database the
    /// service has created; prints what it wrote as JSON.
    FillTrail {
        #[arg(long)]
        db: PathBuf,
        #[arg(long)]
        writer: String,
        #[arg(long)]
        records: u64,
    },
    /// Fill a new audit database (`sqlite://FILE` or `postgres://…`) with `records` records of
    /// MCP sessions, index them, and time the auditors' session queries; prints JSON.
    Sessions {
        #[arg(long)]
        database: String,
        #[arg(long, default_value_t = 1_000_000)]
        records: u64,
    },
    /// Fill a new SQLite trail with `records` records and time one exporter draining it to
    /// each sink (file, OTLP, Splunk HEC, syslog) on one core; prints JSON.
    Export {
        #[arg(long, default_value_t = 100_000)]
        records: u64,
    },
}

fn parse_headers(headers: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    headers
        .iter()
        .map(|h| {
            h.split_once(':')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| anyhow::anyhow!("--header {h:?} is not `Name: value`"))
        })
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Upstream { listen, answer_bytes } => upstream(listen, answer_bytes).await,
        Command::Load {
            url,
            rate,
            closed,
            connections,
            requests,
            seconds,
            warmup_seconds,
            headers,
            max_in_flight,
            tool,
        } => {
            let headers = parse_headers(&headers)?;
            let warmup = Duration::from_secs(u64::from(warmup_seconds));
            let report = match rate {
                _ if closed => {
                    let stop = match requests {
                        Some(n) => Stop::After(n),
                        None => Stop::At(Duration::from_secs(u64::from(seconds))),
                    };
                    closed_loop(&url, connections, stop, warmup, &headers, &tool).await?
                }
                Some(rate) => load(&url, rate, seconds, warmup_seconds, &headers, max_in_flight, &tool).await?,
                None => anyhow::bail!("--rate or --closed"),
            };
            println!("{report}");
            Ok(())
        }
        Command::Fetch {
            url,
            tool,
            count,
            headers,
        } => {
            let report = fetch(&url, &tool, count, &parse_headers(&headers)?).await?;
            println!("{report}");
            Ok(())
        }
        Command::Mask { bytes, runs } => {
            println!("{}", mask_throughput(bytes, runs));
            Ok(())
        }
        Command::Policy { iterations, rules_out } => {
            println!("{}", policy::run(iterations, rules_out.as_deref())?);
            Ok(())
        }
        Command::Sign { iterations } => {
            println!("{}", sign::run(iterations)?);
            Ok(())
        }
        Command::IngestCpu { runs } => {
            println!("{}", ingest::run(runs));
            Ok(())
        }
        Command::Disk { dir, writes } => {
            println!("{}", disk::run(&dir, writes)?);
            Ok(())
        }
        Command::FillTrail { db, writer, records } => {
            println!("{}", trail::run(&db, &writer, records)?);
            Ok(())
        }
        Command::Sessions { database, records } => {
            println!("{}", sessions::run(&database, records).await?);
            Ok(())
        }
        Command::Export { records } => {
            println!("{}", export::run(records).await?);
            Ok(())
        }
    }
}

fn call_body(tool: &str) -> Bytes {
    Bytes::from(
        json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": {"message": "benchmark"}}})
            .to_string(),
    )
}

/// Times `f` alone `iterations` times (after a tenth as many unmeasured), sorted.
pub(crate) fn timed(iterations: u32, mut f: impl FnMut()) -> Vec<Duration> {
    for _ in 0..iterations / 10 {
        f();
    }
    let mut times = Vec::with_capacity(iterations as usize);
    for _ in 0..iterations {
        let start = Instant::now();
        f();
        times.push(start.elapsed());
    }
    times.sort_unstable();
    times
}

pub(crate) fn us(sorted: &[Duration], p: f64) -> f64 {
    crate::percentile(sorted, p).map_or(f64::NAN, |d| d.as_secs_f64() * 1e6)
}

/// The `p` quantile (0 to 1) of sorted durations, nearest rank; `None` when empty.
fn percentile(sorted: &[Duration], p: f64) -> Option<Duration> {
    let last = sorted.len().checked_sub(1)?;
    let idx = (last as f64 * p).round() as usize;
    sorted.get(idx.min(last)).copied()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

async fn fetch(url: &str, tool: &str, count: u32, headers: &[(String, String)]) -> anyhow::Result<Value> {
    let uri: hyper::Uri = url.parse()?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut times = Vec::new();
    let mut sizes = Vec::new();
    let mut errors = 0u32;
    for _ in 0..count {
        let mut req = hyper::Request::post(uri.clone())
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req.body(Full::new(call_body(tool)))?;
        let start = Instant::now();
        match client.request(req).await {
            Ok(resp) if resp.status().is_success() => match resp.into_body().collect().await {
                Ok(body) => {
                    times.push(start.elapsed().as_secs_f64() * 1000.0);
                    sizes.push(body.to_bytes().len() as f64);
                }
                Err(_) => errors += 1,
            },
            _ => errors += 1,
        }
    }
    let ms = median(times);
    let bytes = median(sizes);
    Ok(
        json!({"tool": tool, "count": count, "errors": errors, "median_ms": ms, "median_bytes": bytes,
        "mb_per_s": bytes / 1e6 / (ms / 1000.0)}),
    )
}

/// Median MB/s over `runs` of `f` on `len` bytes.
fn rate(len: usize, runs: u32, mut f: impl FnMut() -> u64) -> (f64, u64) {
    let mut found = 0;
    let rates = (0..runs.max(1))
        .map(|_| {
            let start = Instant::now();
            found = f();
            len as f64 / 1e6 / start.elapsed().as_secs_f64()
        })
        .collect();
    (median(rates), found)
}

fn mask_throughput(bytes: usize, runs: u32) -> Value {
    use gatehouse_core::mask::{CustomRule, JsonMasked, MaskConfig, MaskCounts, Masker, Reveal, SseMasker};
    let masker = Masker::default();
    let none = Reveal::none();
    let text = mixed::text(bytes, 7);
    let answer = mixed::tools_call_answer(&json!(1), bytes).to_string();
    let sse = mixed::sse_answer(&json!(1), bytes, 16 * 1024);
    let small = mixed::tools_call_answer(&json!(1), 1024).to_string();

    let (text_rate, text_found) = rate(text.len(), runs, || {
        let mut c = MaskCounts::default();
        std::hint::black_box(masker.mask_text(&text, &none, &mut c));
        c.total()
    });
    let (json_rate, json_found) = rate(answer.len(), runs, || {
        let mut c = MaskCounts::default();
        let out = masker.mask_json(answer.as_bytes(), &none, &mut c);
        assert!(!matches!(out, JsonMasked::NotJson));
        c.total()
    });
    let (sse_rate, sse_found) = rate(sse.len(), runs, || {
        let mut c = MaskCounts::default();
        let mut m = SseMasker::new(1 << 20);
        let mut out = Vec::with_capacity(sse.len());
        for chunk in sse.as_bytes().chunks(16 * 1024) {
            m.push(&masker, &none, chunk, &mut out, &mut c, |_| {});
        }
        m.finish(&masker, &none, &mut out, &mut c, |_| {});
        c.total()
    });
    // Adversarial inputs: long digit runs (card, SSN, phone and IBAN candidates everywhere)
    // and `@` everywhere (e-mail candidates read backwards); and one custom regex rule.
    let digits: String = {
        let mut rng = mixed::Rng::new(3);
        (0..bytes)
            .map(|i| match i % 17 {
                16 => ' ',
                _ if i % 5 == 4 => '-',
                _ => char::from(b'0' + rng.below(10) as u8),
            })
            .collect()
    };
    let ats = "a@b.".repeat(bytes / 4);
    let (digits_rate, _) = rate(digits.len(), runs, || {
        let mut c = MaskCounts::default();
        std::hint::black_box(masker.mask_text(&digits, &none, &mut c));
        c.total()
    });
    let (ats_rate, _) = rate(ats.len(), runs, || {
        let mut c = MaskCounts::default();
        std::hint::black_box(masker.mask_text(&ats, &none, &mut c));
        c.total()
    });
    let custom = Masker::new(&MaskConfig {
        custom: vec![CustomRule {
            name: "ticket".into(),
            pattern: r"(?i)\bticket-\d{4,64}\b".into(),
        }],
        ..MaskConfig::default()
    })
    .expect("a valid rule");
    let (custom_rate, _) = rate(text.len(), runs, || {
        let mut c = MaskCounts::default();
        std::hint::black_box(custom.mask_text(&text, &none, &mut c));
        c.total()
    });
    let imported = Masker::new(&MaskConfig {
        gitleaks: gitleaks_rules(150),
        ..MaskConfig::default()
    })
    .expect("valid rules");
    let (gitleaks_rate, gitleaks_found) = rate(text.len(), runs, || {
        let mut c = MaskCounts::default();
        std::hint::black_box(imported.mask_text(&text, &none, &mut c));
        c.total()
    });
    let small_runs = 2000;
    let start = Instant::now();
    for _ in 0..small_runs {
        let mut c = MaskCounts::default();
        std::hint::black_box(masker.mask_json(small.as_bytes(), &none, &mut c));
    }
    let small_us = start.elapsed().as_secs_f64() * 1e6 / f64::from(small_runs);
    json!({
        "bytes": bytes,
        "text_mb_per_s": text_rate, "text_masked": text_found,
        "json_mb_per_s": json_rate, "json_masked": json_found,
        "sse_mb_per_s": sse_rate, "sse_masked": sse_found,
        "digits_mb_per_s": digits_rate, "at_sign_mb_per_s": ats_rate, "text_custom_rule_mb_per_s": custom_rate,
        "text_gitleaks_rules": 150, "text_gitleaks_mb_per_s": gitleaks_rate, "text_gitleaks_masked": gitleaks_found,
        "answer_1kb_us": small_us,
    })
}

/// `n` rules in gitleaks' shapes, as a large imported file has them: most are vendor tokens
/// with a fixed prefix (the prefix is the keyword), one in ten finds a key by the name it is
/// assigned to and masks only its secret group, and every third has an entropy threshold.
/// Their keywords are ones a gitleaks file uses and ordinary text holds now and then
/// (`key`, `token`, `secret`, `api`), so some rules run on most texts.
fn gitleaks_rules(n: usize) -> Vec<gatehouse_core::mask::GitleaksRule> {
    use gatehouse_core::mask::{Entropy, GitleaksRule};
    const NAMES: [&str; 6] = ["token", "secret", "key", "api", "auth", "access"];
    (0..n)
        .map(|i| {
            let (regex, keywords, secret_group) = if i % 10 == 0 {
                let name = NAMES[i / 10 % NAMES.len()];
                (
                    format!(
                        r#"(?i)[\w.-]{{0,50}}?(?:vendor{i}[_-]?{name})(?:[ \t\w.-]{{0,20}})[\s'"]{{0,3}}(?:=|:|=>)[\x60'"\s=]{{0,5}}([a-z0-9]{{32}})(?:[\x60'"\s;]|$)"#
                    ),
                    vec![name.to_owned()],
                    1,
                )
            } else {
                (format!(r"\b(v{i}k_[A-Za-z0-9]{{32,40}})\b"), vec![format!("v{i}k_")], 0)
            };
            GitleaksRule {
                id: format!("vendor-{i}"),
                regex,
                secret_group,
                entropy: Entropy(if i % 3 == 0 { 3.0 } else { 0.0 }),
                keywords,
                allowlists: Vec::new(),
            }
        })
        .collect()
}

/// Pre-built large answers (tools `mixed_json`, `mixed_sse`, `mixed_1kb`).
struct Answers {
    plain: String,
    json: String,
    sse: String,
    small: String,
}

async fn upstream(listen: SocketAddr, answer_bytes: usize) -> anyhow::Result<()> {
    // The JSON-RPC id is patched in by text replacement so a 1 MB answer is not rebuilt.
    let placeholder = json!("__ID__");
    let answers = Arc::new(Answers {
        plain: "x".repeat(answer_bytes),
        json: mixed::tools_call_answer(&placeholder, 1 << 20).to_string(),
        sse: mixed::sse_answer(&placeholder, 1 << 20, 16 * 1024),
        small: mixed::tools_call_answer(&placeholder, 1024).to_string(),
    });
    let app = Router::new()
        .route(
            "/mcp",
            post(move |headers: HeaderMap, body: Bytes| {
                let answers = answers.clone();
                async move { answer(&headers, &body, &answers) }
            }),
        )
        .merge(export::receiver_routes());
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

fn answer(_headers: &HeaderMap, body: &[u8], answers: &Answers) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return (axum::http::StatusCode::BAD_REQUEST, "bad json").into_response();
    };
    let id = req.get("id").cloned();
    let tool = req.pointer("/params/name").and_then(Value::as_str);
    if let (Some(id), Some("tools/call"), Some(tool @ ("mixed_json" | "mixed_sse" | "mixed_1kb"))) =
        (&id, req.get("method").and_then(Value::as_str), tool)
    {
        let (template, content_type) = match tool {
            "mixed_json" => (&answers.json, "application/json"),
            "mixed_sse" => (&answers.sse, "text/event-stream"),
            _ => (&answers.small, "application/json"),
        };
        let body = template.replace("\"__ID__\"", &id.to_string());
        return ([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response();
    }
    let result = match req.get("method").and_then(Value::as_str) {
        Some("initialize") => json!({
            "protocolVersion": "2025-06-18",
            "capabilities": {"tools": {}},
            "serverInfo": {"name": "gatehouse-bench-upstream", "version": "0"},
        }),
        Some("tools/list") => {
            json!({"tools": [{"name": "echo", "inputSchema": {"type": "object"}}]})
        }
        Some("tools/call") => {
            json!({"content": [{"type": "text", "text": answers.plain}], "isError": false})
        }
        _ => return axum::http::StatusCode::ACCEPTED.into_response(),
    };
    let Some(id) = id else {
        return axum::http::StatusCode::ACCEPTED.into_response();
    };
    axum::Json(json!({"jsonrpc": "2.0", "id": id, "result": result})).into_response()
}

struct Outcome {
    scheduled: Instant,
    latency: Duration,
    ok: bool,
}

async fn load(
    url: &str,
    rate: u32,
    seconds: u32,
    warmup_seconds: u32,
    headers: &[(String, String)],
    max_in_flight: usize,
    tool: &str,
) -> anyhow::Result<Value> {
    let uri: hyper::Uri = url.parse()?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(max_in_flight)
        .build_http();
    let body = call_body(tool);
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let total = u64::from(rate) * u64::from(seconds + warmup_seconds);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(u64::from(warmup_seconds));
    let mut overloaded = 0u64;
    let mut sent = 0u64;
    for i in 0..total {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let Ok(permit) = in_flight.clone().try_acquire_owned() else {
            if scheduled >= measure_from {
                overloaded += 1;
            }
            continue;
        };
        let mut req = hyper::Request::post(uri.clone())
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream");
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req.body(Full::new(body.clone()))?;
        sent += 1;
        let (client, tx) = (client.clone(), tx.clone());
        tokio::spawn(async move {
            let ok = match client.request(req).await {
                Ok(resp) => {
                    let status = resp.status();
                    resp.into_body().collect().await.is_ok() && status.is_success()
                }
                Err(_) => false,
            };
            let _ = tx.send(Outcome {
                scheduled,
                latency: scheduled.elapsed(),
                ok,
            });
            drop(permit);
        });
    }
    drop(tx);
    let mut latencies = Vec::new();
    let mut errors = 0u64;
    while let Some(o) = rx.recv().await {
        if o.scheduled < measure_from {
            continue;
        }
        if o.ok {
            latencies.push(o.latency);
        } else {
            errors += 1;
        }
    }
    latencies.sort_unstable();
    let pct = |p: f64| percentile(&latencies, p).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    let measured = (start.elapsed().as_secs_f64() - f64::from(warmup_seconds)).max(0.001);
    Ok(json!({
        "offered_rate": rate,
        "sent": sent,
        "ok": latencies.len(),
        "errors": errors,
        "overloaded": overloaded,
        "achieved_rate": latencies.len() as f64 / measured,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
    }))
}

/// When a closed loop ends.
#[derive(Clone, Copy)]
enum Stop {
    /// This long after the warm-up.
    At(Duration),
    /// Once this many calls have been sent after the warm-up.
    After(u64),
}

/// `connections` connections, each sending its next tools/call when the previous answer has
/// arrived, until `stop`. Calls sent during `warmup` are not counted; latency is from each
/// call's send to its whole answer; a failed call (transport error or non-2xx) is an error.
async fn closed_loop(
    url: &str,
    connections: usize,
    stop: Stop,
    warmup: Duration,
    headers: &[(String, String)],
    tool: &str,
) -> anyhow::Result<Value> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let uri: hyper::Uri = url.parse()?;
    let body = call_body(tool);
    let start = Instant::now();
    let measure_from = start + warmup;
    let counted = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..connections.max(1) {
        let (uri, body, headers) = (uri.clone(), body.clone(), headers.to_vec());
        let (counted, sent) = (counted.clone(), sent.clone());
        workers.spawn(async move {
            // One client, one connection per worker: its calls never overlap.
            let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(1)
                .build_http();
            let (mut latencies, mut errors) = (Vec::new(), 0u64);
            loop {
                let now = Instant::now();
                let measured = now >= measure_from;
                match stop {
                    Stop::At(d) if now >= measure_from + d => break,
                    Stop::After(n) if measured && counted.fetch_add(1, Ordering::Relaxed) >= n => break,
                    _ => {}
                }
                let mut req = hyper::Request::post(uri.clone())
                    .header("content-type", "application/json")
                    .header("accept", "application/json, text/event-stream");
                for (k, v) in &headers {
                    req = req.header(k, v);
                }
                let Ok(req) = req.body(Full::new(body.clone())) else {
                    errors += 1;
                    break;
                };
                sent.fetch_add(1, Ordering::Relaxed);
                let ok = match client.request(req).await {
                    Ok(resp) => {
                        let status = resp.status();
                        resp.into_body().collect().await.is_ok() && status.is_success()
                    }
                    Err(_) => false,
                };
                if measured {
                    if ok {
                        latencies.push(now.elapsed());
                    } else {
                        errors += 1;
                    }
                }
                if !ok {
                    // A refused connection fails at once: do not spin.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            (latencies, errors)
        });
    }
    let (mut latencies, mut errors) = (Vec::new(), 0u64);
    while let Some(done) = workers.join_next().await {
        let (l, e) = done?;
        latencies.extend(l);
        errors += e;
    }
    let measured = start.elapsed().saturating_sub(warmup).as_secs_f64().max(0.001);
    latencies.sort_unstable();
    let pct = |p: f64| percentile(&latencies, p).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    Ok(json!({
        "mode": "closed",
        "connections": connections,
        "sent": sent.load(Ordering::Relaxed),
        "ok": latencies.len(),
        "errors": errors,
        "overloaded": 0,
        "seconds": measured,
        "achieved_rate": latencies.len() as f64 / measured,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": pct(1.0),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn free_addr() -> SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    #[tokio::test]
    async fn the_closed_loop_counts_every_call_and_every_failure() {
        let addr = free_addr();
        tokio::spawn(upstream(addr, 1024));
        let url = format!("http://{addr}/mcp");
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let r = closed_loop(&url, 4, Stop::After(200), Duration::ZERO, &[], "echo")
            .await
            .unwrap();
        assert_eq!((r["ok"].as_u64(), r["errors"].as_u64()), (Some(200), Some(0)));
        let timed = closed_loop(
            &url,
            2,
            Stop::At(Duration::from_millis(200)),
            Duration::ZERO,
            &[],
            "echo",
        )
        .await
        .unwrap();
        assert!(timed["ok"].as_u64().unwrap() > 0 && timed["achieved_rate"].as_f64().unwrap() > 0.0);

        let nobody = format!("http://{}/mcp", free_addr());
        let r = closed_loop(&nobody, 2, Stop::After(20), Duration::ZERO, &[], "echo")
            .await
            .unwrap();
        assert_eq!(r["ok"].as_u64(), Some(0));
        assert!(r["errors"].as_u64().unwrap() >= 20, "{r}");
    }
}
