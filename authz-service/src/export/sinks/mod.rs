//! Where an exporter sends: a JSON-lines file, an OTLP/HTTP logs endpoint, Splunk's HTTP
//! Event Collector, or syslog over TCP (TLS). Each sink's `send` returns only once the batch
//! is acknowledged (written and synced, or answered 2xx); its errors never carry a secret.

pub mod file;
pub mod hec;
pub mod otlp;
pub mod syslog;

use std::path::Path;
use std::time::Duration;

use gatehouse_core::audit::{Record, RecordKind};

use crate::config::export::SinkConfig;

use super::Outgoing;

/// A failed send or a sink that cannot be built, as safe to log and show (no token, no
/// header value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SinkError {
    pub message: String,
    /// The receiver refused these events themselves (too large, or records it rejected) and
    /// would again: the exporter splits the batch, and replaces a record refused alone by a
    /// stub naming it ([`super::Outgoing::stub`]).
    pub refused: bool,
}

impl SinkError {
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            refused: false,
        }
    }

    /// The receiver refused the events themselves (see `refused`).
    pub fn refused(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            refused: true,
        }
    }
}

/// The secret values a sink scrubs from its error texts; never shown by `Debug`.
#[derive(Clone, Default)]
pub struct Secrets(pub Vec<String>);

impl std::ops::Deref for Secrets {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.0
    }
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets(<{} redacted>)", self.0.len())
    }
}

/// One exporter's sink.
#[derive(Debug)]
pub enum Sink {
    File(file::FileSink),
    Otlp(otlp::OtlpSink),
    Hec(hec::HecSink),
    Syslog(syslog::SyslogSink),
}

impl Sink {
    /// The sink `config` describes; fails on what cannot work at all (a CA file that holds
    /// no certificate), so that the service does not start with it.
    pub fn new(config: &SinkConfig) -> Result<Self, SinkError> {
        Ok(match config {
            SinkConfig::File(c) => Self::File(file::FileSink::new(c)),
            SinkConfig::Otlp(c) => Self::Otlp(otlp::OtlpSink::new(c)?),
            SinkConfig::Hec(c) => Self::Hec(hec::HecSink::new(c)?),
            SinkConfig::Syslog(c) => Self::Syslog(syslog::SyslogSink::new(c)?),
        })
    }

    /// Sends `batch` (in order); Ok once the sink has it.
    pub async fn send(&mut self, batch: &[Outgoing]) -> Result<(), SinkError> {
        match self {
            Self::File(s) => s.send(batch).await,
            Self::Otlp(s) => s.send(batch).await,
            Self::Hec(s) => s.send(batch).await,
            Self::Syslog(s) => s.send(batch).await,
        }
    }
}

// What the sinks share.

/// The service refused the call: a `request` record denying it, or a `request_rejected`.
pub fn denied(record: &Record) -> bool {
    matches!(
        RecordKind::parse(&record.kind),
        Some(RecordKind::Request | RecordKind::RequestRejected)
    ) && record.data.get("decision").and_then(serde_json::Value::as_str) == Some("deny")
}

/// The record's `recorded_at`; none if it does not parse.
pub fn recorded_at(record: &Record) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::parse(&record.recorded_at, &time::format_description::well_known::Rfc3339).ok()
}

/// An HTTP client with the sinks' TLS rules: the certificates of `ca_file` as the only roots
/// when given (a file with none is an error), the built-in webpki roots otherwise. No
/// redirects: a sink's headers are credentials for its receiver only.
pub fn http_client(ca_file: Option<&Path>, timeout: Duration) -> Result<reqwest::Client, SinkError> {
    let mut builder = reqwest::Client::builder()
        .use_rustls_tls()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| SinkError::new(format!("cannot read {}: {e}", path.display())))?;
        let roots = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| SinkError::new(format!("{} is not PEM: {}", path.display(), describe(e))))?;
        if roots.is_empty() {
            return Err(SinkError::new(format!("{} holds no PEM certificate", path.display())));
        }
        builder = roots
            .into_iter()
            .fold(builder.tls_built_in_root_certs(false), |b, root| {
                b.add_root_certificate(root)
            });
    }
    builder
        .build()
        .map_err(|e| SinkError::new(format!("cannot build an HTTP client: {}", describe(e))))
}

/// A request error with its causes (the TLS or connection error is in the chain), without
/// the URL.
pub fn describe(e: reqwest::Error) -> String {
    if e.is_timeout() {
        return "timed out".to_owned();
    }
    let e = e.without_url();
    let mut text = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// `text` with every secret replaced: a receiver's answer may quote what it was sent.
pub fn redact(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_owned(), |text, secret| {
            text.replace(secret.as_str(), "<redacted>")
        })
}

/// A receiver's text, on one line and at most 300 characters.
pub fn clip(text: &str) -> String {
    let one_line: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    match one_line.char_indices().nth(300) {
        Some((at, _)) => format!("{}…", &one_line[..at]),
        None => one_line,
    }
}
