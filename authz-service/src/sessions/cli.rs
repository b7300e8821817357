//! `gatehouse sessions list|show`: the session index read from the audit database directly
//! (the index itself is kept by a running service).

use std::fmt::Write;
use std::process::ExitCode;

use anyhow::Context;
use serde_json::Value;

use super::{Session, SessionQuery, Sessions, exchange_view};
use crate::audit::Store;
use crate::config::Config;

/// The most exchanges `show` prints.
const SHOW_MAX: u32 = 10_000;
/// The longest argument or answer text `show` prints per line.
const LINE_MAX: usize = 160;

async fn open(config: &Config) -> anyhow::Result<(Store, Sessions)> {
    // Read only: like `audit verify`, it never migrates the database.
    let store = Store::connect(&config.audit.database, std::time::Duration::from_secs(5)).await?;
    let sessions = Sessions::existing(&store, config.audit.session_idle_seconds).await?;
    match sessions.behind(&store).await {
        Ok(0) => {}
        Ok(n) => {
            eprintln!("note: the session index is {n} records behind the trail (a running service keeps it up to date)")
        }
        Err(error) => eprintln!("note: cannot tell how far the session index is behind: {error}"),
    }
    Ok((store, sessions))
}

pub async fn list(config: &Config, query: SessionQuery) -> anyhow::Result<ExitCode> {
    let (_store, sessions) = open(config).await?;
    let (found, next) = match sessions.list(&query).await {
        Ok(found) => found,
        Err(super::QueryError::Invalid(problem)) => {
            eprintln!("error: {problem}");
            return Ok(ExitCode::from(2));
        }
        Err(super::QueryError::Store(error)) => return Err(error.into()),
    };
    println!(
        "{:<26}  {:<10}  {:<14}  {:<24}  {:<6}  {:>5}  {:>6}  {:>6}  {:>6}",
        "SESSION", "STATUS", "USER", "STARTED", "UPSTREAM", "CALLS", "DENIED", "APPROV", "MASKED"
    );
    for s in &found {
        println!(
            "{:<26}  {:<10}  {:<14}  {:<24}  {:<6}  {:>5}  {:>6}  {:>6}  {:>6}",
            s.id,
            s.status,
            s.subject.as_deref().unwrap_or("-"),
            s.started_at,
            s.upstream,
            s.calls,
            s.denials,
            s.approvals,
            s.masked.values().sum::<u64>()
        );
    }
    if let Some(next) = next {
        println!("(more: --before '{next}')");
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn show(config: &Config, id: &str) -> anyhow::Result<ExitCode> {
    let (store, sessions) = open(config).await?;
    let Some(session) = sessions.get(id).await? else {
        eprintln!("error: no session {id}");
        return Ok(ExitCode::from(1));
    };
    let mut exchanges = Vec::new();
    for (n, filed) in sessions.exchanges(id, 0, SHOW_MAX).await?.iter().enumerate() {
        let records = store.request_records(&filed.request_id, 2_000).await?;
        exchanges.push(exchange_view(n as u64, filed, &session.started_at, &records));
    }
    print!("{}", transcript(&session, &exchanges));
    Ok(ExitCode::SUCCESS)
}

pub async fn export(config: &Config, id: &str, out: &std::path::Path) -> anyhow::Result<ExitCode> {
    let policy = config
        .audit
        .checkpoint
        .as_ref()
        .context("an export is signed with the checkpoint key: configure audit.checkpoint.key_file")?;
    let signer = crate::audit::checkpoint::CheckpointSigner::load(&policy.key_file)?;
    let external = match &policy.log_file {
        Some(path) if path.exists() => crate::audit::checkpoint::read_log(path)?,
        _ => Vec::new(),
    };
    let (store, sessions) = open(config).await?;
    match super::export::export(&store, &sessions, id, &signer, &external).await {
        Ok(done) => {
            done.bundle.write_dir(out)?;
            let about = &done.bundle.manifest.about;
            println!(
                "Exported session {} ({}): {} exchanges, {} records, {} chain links, to {}",
                done.session.id,
                done.session.status,
                about["exchanges"],
                about["records"],
                about["links"],
                out.display()
            );
            for note in &done.bundle.manifest.notes {
                println!("note: {note}");
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(super::export::ExportError::NotFound(id)) => {
            eprintln!("error: no session {id}");
            Ok(ExitCode::from(1))
        }
        Err(super::export::ExportError::Refused(problem)) => {
            eprintln!("error: {problem}");
            Ok(ExitCode::from(1))
        }
        Err(error) => Err(anyhow::anyhow!(error)),
    }
}

/// A session as a readable transcript: a heading, then one block per exchange with its time
/// offset, method and tool, masked arguments, decision, and the answer.
pub fn transcript(session: &Session, exchanges: &[Value]) -> String {
    let mut out = String::new();
    let client = &session.client;
    let _ = writeln!(
        out,
        "Session {} on {}: {} ({} {}, protocol {}), {}",
        session.id,
        printable(&session.upstream),
        printable(session.subject.as_deref().unwrap_or("(no verified caller)")),
        printable(client["name"].as_str().unwrap_or("unknown client")),
        printable(client["version"].as_str().unwrap_or("")),
        printable(client["protocol_version"].as_str().unwrap_or("-")),
        session.status
    );
    let masked: Vec<String> = session.masked.iter().map(|(k, n)| format!("{k} {n}")).collect();
    let _ = writeln!(
        out,
        "Started {}, last {}; {} exchanges, {} calls, {} denied, {} with approvals; masked: {}",
        session.started_at,
        session.last_at,
        session.exchanges,
        session.calls,
        session.denials,
        session.approvals,
        if masked.is_empty() {
            "nothing".into()
        } else {
            masked.join(", ")
        }
    );
    for e in exchanges {
        let offset = e["offset_ms"].as_i64().unwrap_or(0);
        let what = match (e["method"].as_str(), e["tool"].as_str()) {
            (Some(m), Some(t)) => format!("{m} {t}"),
            (Some(m), None) => m.to_owned(),
            (None, _) => e["http_method"].as_str().unwrap_or("?").to_owned(),
        };
        let mut decision = e["decision"].as_str().unwrap_or("?").to_owned();
        if let Some(rule) = e["policy_rule"].as_str() {
            let _ = write!(decision, " by {rule}");
        }
        if let Some(ms) = e["latency_ms"].as_i64() {
            let _ = write!(decision, ", answered in {ms} ms");
        }
        let (what, decision) = (printable(&what), printable(&decision));
        let _ = writeln!(
            out,
            "\n+{}.{:03}s  #{}  {what}  [{decision}]",
            offset / 1000,
            offset % 1000,
            e["n"]
        );
        if !e["arguments"].is_null() {
            let _ = writeln!(out, "    args:   {}", short(&e["arguments"]));
        }
        if e["decision"] == "deny" {
            let _ = writeln!(out, "    denied: {}", printable(e["reason"].as_str().unwrap_or("")));
        }
        for step in e["approval"].as_array().into_iter().flatten() {
            let by = step["approver"]
                .as_str()
                .map(|a| format!(" by {a}"))
                .unwrap_or_default();
            let _ = writeln!(out, "    approval {}{by}", step["event"].as_str().unwrap_or("?"));
        }
        for part in e["responses"].as_array().into_iter().flatten() {
            if !part["message"].is_null() {
                let _ = writeln!(out, "    answer: {}", short(&part["message"]));
            }
        }
    }
    out
}

/// `value` as one line of at most [`LINE_MAX`] characters, control characters escaped (a
/// caller's or upstream's text must not move the terminal's cursor or fake a line).
fn short(value: &Value) -> String {
    let text = match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut line = printable(&text.chars().take(LINE_MAX).collect::<String>());
    if text.chars().count() > LINE_MAX {
        line.push('…');
    }
    line
}

/// `text` with control characters written as escapes.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}
