//! `gatehouse-bench export`: how fast one exporter drains a trail, per sink, on one core.
//!
//! Fills a new SQLite audit database with `records` records (the `fill-trail` pairs: a
//! tools/call and its ~1 KB answer), then runs the service's own exporter (`export::run`) on
//! a single-threaded runtime of its own thread (one core at most) against each sink in turn,
//! from an empty cursor until every record is acknowledged: a JSON-lines file (synced per
//! batch), OTLP/HTTP and Splunk HEC to receivers in this process (on the other threads; they
//! read each body whole and answer success), and syslog over plain TCP to a listener that reads
//! and discards. Prints JSON: records/s per sink and format. The bench upstream serves the same
//! OTLP and HEC receivers (`receiver_routes`).

use std::time::{Duration, Instant};

use gatehouse_service::audit::Store;
use gatehouse_service::config::Secret;
use gatehouse_service::config::export::{Exporter, FileSink, Format, HecSink, OtlpSink, SinkConfig, SyslogSink};
use gatehouse_service::export::{self, Statuses, sinks::Sink};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

pub async fn run(records: u64) -> anyhow::Result<Value> {
    let dir = std::env::temp_dir().join(format!("gatehouse-bench-export-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let result = measure(&dir, records).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn measure(dir: &std::path::Path, records: u64) -> anyhow::Result<Value> {
    let db = dir.join("audit.db");
    let url = format!("sqlite://{}", db.display());
    // The service's schema, then the trail.
    drop(
        Store::open(&url, Duration::from_secs(5))
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?,
    );
    crate::trail::run(&db, "bench-export", records)?;

    let http = receivers().await?;
    let syslog = discard_listener().await?;
    let timeout = Duration::from_secs(10);
    let sinks = [
        (
            "file",
            Format::Gatehouse,
            SinkConfig::File(FileSink {
                path: dir.join("trail.jsonl"),
                max_bytes: 1 << 30,
                max_age: None,
                keep: 2,
            }),
        ),
        (
            "file",
            Format::Ocsf,
            SinkConfig::File(FileSink {
                path: dir.join("trail.ocsf.jsonl"),
                max_bytes: 1 << 30,
                max_age: None,
                keep: 2,
            }),
        ),
        (
            "otlp",
            Format::Gatehouse,
            SinkConfig::Otlp(OtlpSink {
                endpoint: format!("http://{http}/v1/logs").parse()?,
                headers: Vec::new(),
                ca_file: None,
                timeout,
            }),
        ),
        (
            "splunk_hec",
            Format::Gatehouse,
            SinkConfig::Hec(HecSink {
                url: format!("http://{http}/services/collector/event").parse()?,
                token: Secret("bench-token".into()),
                index: None,
                source: None,
                sourcetype: None,
                gzip: true,
                ca_file: None,
                timeout,
            }),
        ),
        (
            "syslog",
            Format::Gatehouse,
            SinkConfig::Syslog(SyslogSink {
                host: "127.0.0.1".into(),
                port: syslog.port(),
                tls: false,
                ca_file: None,
                server_name: "127.0.0.1".into(),
                app_name: "gatehouse".into(),
                facility: 13,
                timeout,
            }),
        ),
    ];
    let mut out = Vec::new();
    for (i, (kind, format, sink)) in sinks.into_iter().enumerate() {
        let exporter = Exporter {
            name: format!("bench-{i}"),
            format,
            batch: 500,
            batch_bytes: 1 << 20,
            sink,
        };
        let seconds = drain(&url, exporter, records)?;
        let rate = records as f64 / seconds;
        eprintln!("export: {kind} ({}) {rate:.0} records/s", format.as_str());
        out.push(json!({"sink": kind, "format": format.as_str(), "seconds": seconds, "records_per_second": rate}));
    }
    Ok(json!({"records": records, "batch": 500, "runs": out}))
}

/// Runs `exporter` from an empty cursor on a one-thread runtime until `records` are
/// acknowledged; the seconds it took.
fn drain(url: &str, exporter: Exporter, records: u64) -> anyhow::Result<f64> {
    let url = url.to_owned();
    std::thread::spawn(move || -> anyhow::Result<f64> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        runtime.block_on(async move {
            let store = Store::open(&url, Duration::from_secs(5))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            let sink = Sink::new(&exporter.sink).map_err(|e| anyhow::anyhow!("{e}"))?;
            let statuses = Statuses::default();
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let name = exporter.name.clone();
            let started = Instant::now();
            let task = tokio::spawn(export::run(exporter, sink, store, statuses.clone(), stopped));
            loop {
                tokio::time::sleep(Duration::from_millis(20)).await;
                let status = statuses.get(&name).unwrap_or_default();
                if status.sent >= records {
                    break;
                }
                anyhow::ensure!(
                    started.elapsed() < Duration::from_secs(600),
                    "the exporter is stuck: {status:?}"
                );
            }
            let seconds = started.elapsed().as_secs_f64();
            let _ = stop.send(true);
            let _ = task.await;
            Ok(seconds)
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the exporter's thread panicked"))?
}

/// An OTLP and HEC receiver on a free port (`receiver_routes`).
async fn receivers() -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, receiver_routes()).await });
    Ok(addr)
}

/// OTLP/HTTP logs (`/v1/logs`) and Splunk HEC (`/services/collector/event`) receivers: each
/// body read whole, success answered. The bench upstream serves them too, for a gateway's
/// exporters under load.
pub fn receiver_routes() -> axum::Router {
    use axum::{Router, body::Bytes, routing::post};
    Router::new()
        .route(
            "/v1/logs",
            post(|_body: Bytes| async { ([("content-type", "application/x-protobuf")], Vec::new()) }),
        )
        .route(
            "/services/collector/event",
            post(|_body: Bytes| async { ([("content-type", "application/json")], r#"{"text":"Success","code":0}"#) }),
        )
}

/// A TCP listener that reads and discards whatever each connection sends.
async fn discard_listener() -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 64 * 1024];
                while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    Ok(addr)
}
