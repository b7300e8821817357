//! `gatehouse-bench`: the two halves of `make bench`.
//!
//! - `upstream`: a minimal, fast Streamable-HTTP MCP server that answers `initialize`,
//!   `tools/list` and `tools/call` with a fixed-size JSON result, so the benchmark measures
//!   the gateway, not the server.
//! - `load`: an open-loop load generator. Requests are *scheduled* at a fixed rate and each
//!   latency is measured from its scheduled start, so a stalled gateway shows up as latency
//!   instead of silently lowering the offered rate (no coordinated omission).

use std::{
    net::SocketAddr,
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
    /// Serve a fast MCP server on `listen` at path /mcp.
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
        /// Requests per second.
        #[arg(long)]
        rate: u32,
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
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Upstream { listen, answer_bytes } => upstream(listen, answer_bytes).await,
        Command::Load {
            url,
            rate,
            seconds,
            warmup_seconds,
            headers,
            max_in_flight,
        } => {
            let headers = headers
                .iter()
                .map(|h| {
                    h.split_once(':')
                        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                        .ok_or_else(|| anyhow::anyhow!("--header {h:?} is not `Name: value`"))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let report = load(&url, rate, seconds, warmup_seconds, &headers, max_in_flight).await?;
            println!("{report}");
            Ok(())
        }
    }
}

async fn upstream(listen: SocketAddr, answer_bytes: usize) -> anyhow::Result<()> {
    let text: Arc<str> = "x".repeat(answer_bytes).into();
    let app = Router::new().route(
        "/mcp",
        post(move |headers: HeaderMap, body: Bytes| {
            let text = text.clone();
            async move { answer(&headers, &body, &text) }
        }),
    );
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

fn answer(_headers: &HeaderMap, body: &[u8], text: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Ok(req) = serde_json::from_slice::<Value>(body) else {
        return (axum::http::StatusCode::BAD_REQUEST, "bad json").into_response();
    };
    let id = req.get("id").cloned();
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
            json!({"content": [{"type": "text", "text": text}], "isError": false})
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
) -> anyhow::Result<Value> {
    let uri: hyper::Uri = url.parse()?;
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(max_in_flight)
        .build_http();
    let body = Bytes::from_static(
        br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"benchmark"}}}"#,
    );
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let total = u64::from(rate) * u64::from(seconds + warmup_seconds);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(max_in_flight));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Outcome>();
    let start = Instant::now();
    let measure_from = start + Duration::from_secs(u64::from(warmup_seconds));
    let mut overloaded = 0u64;
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
    let pct = |p: f64| -> f64 {
        if latencies.is_empty() {
            return f64::NAN;
        }
        let idx = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[idx.min(latencies.len() - 1)].as_secs_f64() * 1000.0
    };
    let measured = (start.elapsed().as_secs_f64() - f64::from(warmup_seconds)).max(0.001);
    Ok(json!({
        "offered_rate": rate,
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
