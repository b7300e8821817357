//! Syslog: RFC 5424 messages over TCP with octet counting (RFC 6587: `LEN SP MSG`), in TLS
//! unless `tls: false` (RFC 5425). One message per record:
//!
//! ```text
//! <PRI>1 TIMESTAMP HOSTNAME APP-NAME - KIND [gatehouse@32473 id="writer:seq" hash="…"] {"event":…}
//! ```
//!
//! PRI is facility × 8 + severity (6 informational, 4 warning for a denial); TIMESTAMP the
//! record's `recorded_at` (UTC, milliseconds); HOSTNAME this machine's name (`-` when it has
//! none that RFC 5424 allows); MSGID the record's kind; MSG the event as one line of JSON in
//! UTF-8 without a BOM. 32473 is the private enterprise number RFC 5612 reserves for
//! documentation, the customary stand-in while Gatehouse has no number of its own: the
//! SD-ID names the parameters, it grants nothing.
//!
//! The server's certificate is checked against `server_name`, with the certificates of
//! `ca_file` as the only roots when given, the webpki roots otherwise. The connection is
//! kept across batches; any error drops it, and the next send connects again.
//!
//! Acknowledgement: syslog has none. Ok means the whole batch was written and flushed to
//! the connection (through TLS, into the kernel's send buffer), nothing more: a server that
//! dies before reading it loses it. Against the commonest case, a server that restarted
//! since the last batch, each send first checks whether the server closed the connection,
//! and connects again if so; a write error drops the connection, and the exporter sends the
//! whole batch again. When the sink is dropped (the service stops) a TLS connection is ended
//! with close_notify, as RFC 5425 asks: a server may take an end without it for a truncation
//! attack, and rsyslog's `ossl` driver then drops the frames it has not parsed yet.
//!
//! A record is one frame of any size, but receivers cap them: rsyslog takes 8 KiB messages
//! (`global(maxMessageSize=…)`) and 200,000-byte octet-counted frames (`imtcp`'s
//! `MaxFrameSize`) unless told otherwise, and past the frame cap it loses the framing of the
//! rest of the connection. A response record can be larger: raise both.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::rustls::{self, pki_types::CertificateDer, pki_types::ServerName, pki_types::pem::PemObject};

use crate::config::export;
use gatehouse_core::audit::Record;

use super::denied;
use super::{super::Outgoing, SinkError};

/// The structured data element's id (see the module's note on the number).
const SD_ID: &str = "gatehouse@32473";
const INFORMATIONAL: u8 = 6;
const WARNING: u8 = 4;

trait Connection: AsyncRead + AsyncWrite + Unpin + Send + Sync {
    /// Ends the connection at once, without waiting for the server.
    fn close_now(&mut self);
}

impl Connection for TcpStream {
    /// Dropping it sends FIN after what was written.
    fn close_now(&mut self) {}
}

impl Connection for tokio_rustls::client::TlsStream<TcpStream> {
    /// TLS's close_notify first (RFC 5425 4.4): a server that meets the end of the stream
    /// without it may throw away what it has not parsed yet (rsyslog's `ossl` driver does).
    fn close_now(&mut self) {
        let (tcp, tls) = self.get_mut();
        tls.send_close_notify();
        while tls.wants_write() {
            if !matches!(tls.write_tls(&mut TryWrite(tcp)), Ok(n) if n > 0) {
                break;
            }
        }
    }
}

/// A non-blocking `io::Write` over a socket, for writing outside of an async context.
struct TryWrite<'a>(&'a TcpStream);

impl std::io::Write for TryWrite<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.try_write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub struct SyslogSink {
    config: export::SyslogSink,
    /// None for plain TCP.
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    hostname: String,
    connection: Option<Box<dyn Connection>>,
}

impl fmt::Debug for SyslogSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SyslogSink")
            .field("address", &format_args!("{}:{}", self.config.host, self.config.port))
            .field("tls", &self.tls.is_some())
            .field("connected", &self.connection.is_some())
            .finish()
    }
}

impl Drop for SyslogSink {
    fn drop(&mut self) {
        if let Some(mut connection) = self.connection.take() {
            connection.close_now();
        }
    }
}

impl SyslogSink {
    /// Fails on a CA file without a certificate or a `server_name` that cannot name one.
    pub fn new(config: &export::SyslogSink) -> Result<Self, SinkError> {
        let tls = if config.tls {
            let server_name = ServerName::try_from(config.server_name.clone())
                .map_err(|_| SinkError::new(format!("{:?} cannot be a certificate's name", config.server_name)))?;
            Some((
                tokio_rustls::TlsConnector::from(Arc::new(tls_config(config)?)),
                server_name,
            ))
        } else {
            None
        };
        Ok(Self {
            config: config.clone(),
            tls,
            hostname: hostname(),
            connection: None,
        })
    }

    pub async fn send(&mut self, batch: &[Outgoing]) -> Result<(), SinkError> {
        let mut frames = Vec::new();
        for o in batch {
            let message = message(&self.config, &self.hostname, o);
            frames.extend_from_slice(format!("{} ", message.len()).as_bytes());
            frames.extend_from_slice(message.as_bytes());
        }
        let address = format!("{}:{}", self.config.host, self.config.port);
        let timeout = self.config.timeout;
        let kept = match self.connection.take() {
            Some(mut c) => still_open(&mut c).await.then_some(c),
            None => None,
        };
        let connection = match kept {
            Some(c) => c,
            None => self
                .connect()
                .await
                .map_err(|e| SinkError::new(format!("{address}: {e}")))?,
        };
        let connection = self.connection.insert(connection);
        let written = tokio::time::timeout(timeout, async {
            connection.write_all(&frames).await?;
            connection.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.connection = None;
                Err(SinkError::new(format!("{address}: cannot write: {e}")))
            }
            Err(_) => {
                self.connection = None;
                Err(SinkError::new(format!(
                    "{address}: the write timed out after {timeout:?}"
                )))
            }
        }
    }

    async fn connect(&self) -> Result<Box<dyn Connection>, String> {
        let timeout = self.config.timeout;
        let connecting = async {
            let tcp = TcpStream::connect((self.config.host.as_str(), self.config.port))
                .await
                .map_err(|e| format!("cannot connect: {e}"))?;
            let _ = tcp.set_nodelay(true);
            Ok::<Box<dyn Connection>, String>(match &self.tls {
                None => Box::new(tcp),
                Some((connector, name)) => Box::new(
                    connector
                        .connect(name.clone(), tcp)
                        .await
                        .map_err(|e| format!("TLS handshake failed: {e}"))?,
                ),
            })
        };
        tokio::time::timeout(timeout, connecting)
            .await
            .unwrap_or_else(|_| Err(format!("connecting timed out after {timeout:?}")))
    }
}

/// Whether a kept connection still looks usable: the server sends nothing, so anything
/// ready to read is its end (a close, a reset, a TLS alert).
async fn still_open(connection: &mut Box<dyn Connection>) -> bool {
    let mut byte = [0u8; 1];
    // Polled once: the timeout's future polls the read before its deadline.
    match tokio::time::timeout(Duration::ZERO, connection.read(&mut byte)).await {
        Err(_) => true,
        Ok(Ok(n)) => n > 0,
        Ok(Err(_)) => false,
    }
}

fn tls_config(config: &export::SyslogSink) -> Result<rustls::ClientConfig, SinkError> {
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            let pem =
                std::fs::read(path).map_err(|e| SinkError::new(format!("cannot read {}: {e}", path.display())))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                let cert = cert.map_err(|e| SinkError::new(format!("{}: not PEM: {e}", path.display())))?;
                roots
                    .add(cert)
                    .map_err(|e| SinkError::new(format!("{}: not a usable CA certificate: {e}", path.display())))?;
            }
            if roots.is_empty() {
                return Err(SinkError::new(format!("{} holds no PEM certificate", path.display())));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| SinkError::new(format!("cannot set up TLS: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// This machine's name if RFC 5424 allows it as HOSTNAME, else `-`.
fn hostname() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    header_field(name.trim(), 255)
}

/// `value` as an RFC 5424 header field (1 to `max` printable ASCII characters), else `-`.
fn header_field(value: &str, max: usize) -> String {
    let ok = !value.is_empty() && value.len() <= max && value.bytes().all(|b| b.is_ascii_graphic());
    if ok { value.to_owned() } else { "-".to_owned() }
}

/// One record as an RFC 5424 message (without its octet count).
fn message(config: &export::SyslogSink, hostname: &str, o: &Outgoing) -> String {
    let record = &o.record;
    format!(
        "<{pri}>1 {time} {hostname} {app} - {msgid} [{SD_ID} id=\"{id}\" hash=\"{hash}\"] {msg}",
        pri = u16::from(config.facility) * 8 + u16::from(severity(record)),
        time = crate::audit::normalize_time(&record.recorded_at).unwrap_or_else(|| "-".to_owned()),
        app = header_field(&config.app_name, 48),
        msgid = header_field(&record.kind, 32),
        id = param_value(&o.id),
        hash = param_value(&record.hash),
        msg = o.line(),
    )
}

fn severity(record: &Record) -> u8 {
    if denied(record) { WARNING } else { INFORMATIONAL }
}

/// A structured data PARAM-VALUE: `"`, `\` and `]` escaped with `\` (RFC 5424 6.3.3).
fn param_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::otlp::tests::{outgoing, tool_call};
    use super::*;

    fn config(port: u16, tls: bool) -> export::SyslogSink {
        export::SyslogSink {
            host: "127.0.0.1".into(),
            port,
            tls,
            ca_file: None,
            server_name: "127.0.0.1".into(),
            app_name: "gatehouse".into(),
            facility: 13,
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn a_message_has_every_rfc5424_field_in_place() {
        let o = outgoing("w1", 2, "request", tool_call("deny"));
        let text = message(&config(514, true), "gw-0", &o);
        let expected_head = format!(
            "<108>1 2026-03-04T05:06:07.089Z gw-0 gatehouse - request [gatehouse@32473 id=\"w1:2\" hash=\"{}\"] ",
            o.record.hash
        );
        assert!(text.starts_with(&expected_head), "{text}");
        assert_eq!(&text[expected_head.len()..], o.line());
        let allowed = message(
            &config(514, true),
            "gw-0",
            &outgoing("w1", 1, "request", tool_call("allow")),
        );
        assert!(allowed.starts_with("<110>1 "), "13 * 8 + 6: {allowed}");
    }

    #[test]
    fn param_values_escape_quote_backslash_and_bracket() {
        assert_eq!(param_value(r#"a"b\c]d[e"#), r#"a\"b\\c\]d[e"#);
    }

    #[test]
    fn header_fields_fall_back_to_nil() {
        assert_eq!(header_field("host name", 255), "-");
        assert_eq!(header_field("", 255), "-");
        assert_eq!(header_field("höst", 255), "-");
        assert_eq!(header_field(&"x".repeat(33), 32), "-");
        assert_eq!(header_field("gw-0.example", 255), "gw-0.example");
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "nothing here\n").unwrap();
        let mut c = config(6514, true);
        c.ca_file = Some(path);
        let error = SyslogSink::new(&c).unwrap_err();
        assert!(error.message.contains("holds no PEM certificate"), "{error}");
    }

    #[tokio::test]
    async fn frames_are_octet_counted_and_a_closed_connection_is_replaced() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut sink = SyslogSink::new(&config(port, false)).unwrap();
        let batch = [
            outgoing("w", 1, "request", tool_call("allow")),
            outgoing("w", 2, "response", serde_json::json!({"text": "é ] \" \\"})),
        ];

        sink.send(&batch).await.unwrap();
        let (mut first, _) = listener.accept().await.unwrap();
        let frames = read_frames(&mut first, 2).await;
        assert_eq!(frames[0], message(&sink.config, &sink.hostname, &batch[0]));
        assert_eq!(frames[1], message(&sink.config, &sink.hostname, &batch[1]));

        // The server closes its end: the next batch goes over a new connection.
        drop(first);
        tokio::time::sleep(Duration::from_millis(50)).await;
        sink.send(&batch[..1]).await.unwrap();
        let (mut second, _) = listener.accept().await.unwrap();
        assert_eq!(read_frames(&mut second, 1).await.len(), 1);

        // Nobody listens any more: an error, and the batch is for the exporter to resend.
        drop(second);
        drop(listener);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let error = sink.send(&batch[..1]).await.unwrap_err();
        assert!(error.message.contains(&format!("127.0.0.1:{port}")), "{error}");
    }

    /// Reads `n` octet-counted frames.
    async fn read_frames(socket: &mut TcpStream, n: usize) -> Vec<String> {
        let mut frames = Vec::new();
        for _ in 0..n {
            let mut length = Vec::new();
            loop {
                let byte = socket.read_u8().await.unwrap();
                if byte == b' ' {
                    break;
                }
                length.push(byte);
            }
            let length: usize = String::from_utf8(length).unwrap().parse().unwrap();
            let mut frame = vec![0u8; length];
            socket.read_exact(&mut frame).await.unwrap();
            frames.push(String::from_utf8(frame).unwrap());
        }
        frames
    }
}
