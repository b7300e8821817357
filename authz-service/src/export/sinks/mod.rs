//! Where an exporter sends: a JSON-lines file, an OTLP/HTTP logs endpoint, Splunk's HTTP
//! Event Collector, or syslog over TCP (TLS). Each sink's `send` returns only once the batch
//! is acknowledged (written and synced, or answered 2xx); its errors never carry a secret.

pub mod file;
pub mod hec;
pub mod otlp;
pub mod syslog;

use crate::config::export::SinkConfig;

use super::Outgoing;

/// A failed send or a sink that cannot be built, as safe to log and show (no token, no
/// header value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SinkError(pub String);

impl SinkError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
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
