//! `export:` (the trail sent to SIEMs, any number of exporters) and `archive:` (the trail
//! sealed into S3 with Object Lock): the file's form and the validated one.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;
use url::Url;

use super::Secret;
use super::raw::{Problems, resolve};

/// One exporter as written: a name, a format and exactly one sink.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExporter {
    pub name: String,
    #[serde(default)]
    pub format: Format,
    /// Records per send (default 500).
    #[serde(default = "default_batch")]
    pub batch: u32,
    /// Bytes of events per send (default 1 MiB): a batch ends before the record that would
    /// take it over; a record bigger than this goes alone.
    #[serde(default = "default_batch_bytes")]
    pub batch_bytes: u64,
    #[serde(default)]
    pub file: Option<RawFile>,
    #[serde(default)]
    pub otlp: Option<RawOtlp>,
    #[serde(default)]
    pub splunk_hec: Option<RawHec>,
    #[serde(default)]
    pub syslog: Option<RawSyslog>,
}

fn default_batch() -> u32 {
    500
}

fn default_batch_bytes() -> u64 {
    1 << 20
}

/// What an exporter sends of each record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// The record as stored, with its chain position and hash.
    #[default]
    Gatehouse,
    /// An OCSF event (`export::ocsf`).
    Ocsf,
}

impl Format {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Gatehouse => "gatehouse",
            Self::Ocsf => "ocsf",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    pub path: String,
    /// Rotate when the file reaches this size (default 100 MiB).
    #[serde(default = "default_max_bytes")]
    pub max_bytes: u64,
    /// Rotate when the file is this old (default a day; 0: never by age).
    #[serde(default = "default_max_age_seconds")]
    pub max_age_seconds: u64,
    /// Rotated files kept (`trail.jsonl.1` newest); older ones are deleted (default 10).
    #[serde(default = "default_keep")]
    pub keep: u32,
}

fn default_max_bytes() -> u64 {
    100 * 1024 * 1024
}
fn default_max_age_seconds() -> u64 {
    86_400
}
fn default_keep() -> u32 {
    10
}

/// An OpenTelemetry Collector's OTLP/HTTP logs endpoint (protobuf).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOtlp {
    /// The full URL, e.g. `https://collector:4318/v1/logs`.
    pub endpoint: String,
    /// Extra headers (e.g. an API key), each value from a file or an environment variable.
    #[serde(default)]
    pub headers: Vec<RawSecretHeader>,
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSecretHeader {
    pub name: String,
    #[serde(default)]
    pub value_file: Option<String>,
    #[serde(default)]
    pub value_env: Option<String>,
}

/// Splunk's HTTP Event Collector.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHec {
    /// e.g. `https://splunk:8088/services/collector/event`.
    pub url: String,
    #[serde(default)]
    pub token_file: Option<String>,
    #[serde(default)]
    pub token_env: Option<String>,
    #[serde(default)]
    pub index: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub sourcetype: Option<String>,
    #[serde(default = "yes")]
    pub gzip: bool,
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

/// Syslog, RFC 5424 over TCP with octet counting (RFC 6587), TLS unless `tls: false`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSyslog {
    /// `host:port`.
    pub address: String,
    #[serde(default = "yes")]
    pub tls: bool,
    #[serde(default)]
    pub ca_file: Option<String>,
    /// The name the server's certificate must carry (default: the address's host).
    #[serde(default)]
    pub server_name: Option<String>,
    #[serde(default = "default_app_name")]
    pub app_name: String,
    /// RFC 5424 facility number (default 13, log audit).
    #[serde(default = "default_facility")]
    pub facility: u8,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn yes() -> bool {
    true
}
fn default_timeout_ms() -> u64 {
    10_000
}
fn default_app_name() -> String {
    "gatehouse".into()
}
fn default_facility() -> u8 {
    13
}

/// `archive:` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArchive {
    pub s3: RawS3,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawS3 {
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    pub region: String,
    /// Another S3 endpoint than AWS's (an S3-compatible store; tests use moto).
    #[serde(default)]
    pub endpoint: Option<String>,
    pub object_lock: RawObjectLock,
    /// A segment is sealed at this many records of one writer (default 10000)...
    #[serde(default = "default_segment_records")]
    pub segment_records: u32,
    /// ...or when its first record is this old (default 300).
    #[serde(default = "default_segment_seconds")]
    pub segment_seconds: u64,
    /// A segment holds at most this many bytes of records before gzip (default 64 MiB):
    /// the record that reaches it is the segment's last.
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    #[serde(default)]
    pub ca_file: Option<String>,
}

fn default_segment_records() -> u32 {
    10_000
}
fn default_segment_seconds() -> u64 {
    300
}
fn default_segment_bytes() -> u64 {
    64 << 20
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawObjectLock {
    pub mode: LockMode,
    pub days: u32,
}

/// S3 Object Lock retention mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum LockMode {
    /// Nobody, the bucket's owner included, can delete or overwrite before the date.
    #[serde(rename = "COMPLIANCE")]
    Compliance,
    /// Only with `s3:BypassGovernanceRetention`.
    #[serde(rename = "GOVERNANCE")]
    Governance,
}

impl LockMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Compliance => "COMPLIANCE",
            Self::Governance => "GOVERNANCE",
        }
    }
}

/// A validated exporter.
#[derive(Debug, Clone)]
pub struct Exporter {
    /// Unique; the key of its cursor in the audit database (renaming one starts it over).
    pub name: String,
    pub format: Format,
    pub batch: u32,
    pub batch_bytes: u64,
    pub sink: SinkConfig,
}

#[derive(Debug, Clone)]
pub enum SinkConfig {
    File(FileSink),
    Otlp(OtlpSink),
    Hec(HecSink),
    Syslog(SyslogSink),
}

impl SinkConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::File(_) => "file",
            Self::Otlp(_) => "otlp",
            Self::Hec(_) => "splunk_hec",
            Self::Syslog(_) => "syslog",
        }
    }
}

#[derive(Debug, Clone)]
pub struct FileSink {
    pub path: PathBuf,
    pub max_bytes: u64,
    /// `None`: never rotated by age.
    pub max_age: Option<Duration>,
    pub keep: u32,
}

#[derive(Debug, Clone)]
pub struct OtlpSink {
    pub endpoint: Url,
    /// Header names lower-case; values are secrets.
    pub headers: Vec<(String, Secret)>,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct HecSink {
    pub url: Url,
    pub token: Secret,
    pub index: Option<String>,
    pub source: Option<String>,
    pub sourcetype: Option<String>,
    pub gzip: bool,
    pub ca_file: Option<PathBuf>,
    pub timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct SyslogSink {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub ca_file: Option<PathBuf>,
    /// The name the server's certificate is checked against.
    pub server_name: String,
    pub app_name: String,
    pub facility: u8,
    pub timeout: Duration,
}

/// The validated `archive:`.
#[derive(Debug, Clone)]
pub struct Archive {
    pub bucket: String,
    /// Empty, or ends with `/`.
    pub prefix: String,
    pub region: String,
    pub endpoint: Option<Url>,
    pub lock_mode: LockMode,
    pub lock_days: u32,
    pub segment_records: u32,
    pub segment_age: Duration,
    /// The most bytes of records (before gzip) a new segment holds, past its last record.
    pub segment_bytes: u64,
    pub ca_file: Option<PathBuf>,
}

/// A sink's URL. Never echoed in a problem (a URL may carry a secret), and refused with
/// credentials in it: those belong in a token or header file.
fn sink_url(at: &str, value: &str, p: &mut Problems) -> Option<Url> {
    match Url::parse(value) {
        Ok(url) if matches!(url.scheme(), "http" | "https") && url.host_str().is_some() => {
            if !url.username().is_empty() || url.password().is_some() {
                p.add(
                    at,
                    "must not carry credentials: give them as a token or header (file or env)",
                );
                return None;
            }
            Some(url)
        }
        _ => {
            p.add(at, "must be an absolute http or https URL");
            None
        }
    }
}

fn timeout(at: &str, ms: u64, p: &mut Problems) -> Duration {
    if !(100..=120_000).contains(&ms) {
        p.add(format!("{at}.timeout_ms"), "must be between 100 and 120000");
    }
    Duration::from_millis(ms)
}

fn ca_file(at: &str, file: Option<&str>, base: &Path, p: &mut Problems) -> Option<PathBuf> {
    let path = resolve(base, file?);
    if let Err(e) = std::fs::metadata(&path) {
        p.add(format!("{at}.ca_file"), format!("cannot read {}: {e}", path.display()));
    }
    Some(path)
}

/// A secret from exactly one of a file (its first line's end trimmed) and an environment
/// variable. Never echoed in a problem.
fn secret(
    at: &str,
    what: &str,
    file: Option<&str>,
    env: Option<&str>,
    base: &Path,
    p: &mut Problems,
) -> Option<Secret> {
    let value = match (file, env) {
        (Some(file), None) => {
            let path = resolve(base, file);
            match std::fs::read_to_string(&path) {
                Ok(text) => Some(text.trim_end_matches(['\r', '\n']).to_owned()),
                Err(e) => {
                    p.add(
                        format!("{at}.{what}_file"),
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            }
        }
        (None, Some(var)) => match std::env::var(var) {
            Ok(value) => Some(value),
            Err(_) => {
                p.add(
                    format!("{at}.{what}_env"),
                    format!("the environment variable {var} is not set"),
                );
                None
            }
        },
        _ => {
            p.add(at, format!("give exactly one of {what}_file and {what}_env"));
            None
        }
    }?;
    if value.is_empty() || value.chars().any(|c| c.is_control()) {
        p.add(format!("{at}.{what}"), "must be non-empty text on one line");
        return None;
    }
    Some(Secret(value))
}

/// Checks `export:`; every problem goes to `p`.
pub(super) fn validate_export(raw: Vec<RawExporter>, base: &Path, p: &mut Problems) -> Vec<Exporter> {
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for (i, e) in raw.into_iter().enumerate() {
        let at = format!("export[{i}]");
        let name_ok = !e.name.is_empty()
            && e.name.len() <= 64
            && e.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !name_ok {
            p.add(format!("{at}.name"), "must be 1 to 64 letters, digits, '-' or '_'");
        } else if !names.insert(e.name.clone()) {
            p.add(
                format!("{at}.name"),
                format!("{:?} is used by another exporter", e.name),
            );
        }
        if !(1..=5000).contains(&e.batch) {
            p.add(format!("{at}.batch"), "must be between 1 and 5000");
        }
        if !(4096..=(64 << 20)).contains(&e.batch_bytes) {
            p.add(
                format!("{at}.batch_bytes"),
                "must be between 4096 and 67108864 (64 MiB)",
            );
        }
        let given = [
            e.file.is_some(),
            e.otlp.is_some(),
            e.splunk_hec.is_some(),
            e.syslog.is_some(),
        ];
        if given.iter().filter(|g| **g).count() != 1 {
            p.add(&at, "give exactly one sink: file, otlp, splunk_hec or syslog");
            continue;
        }
        let sink = if let Some(f) = e.file {
            if f.max_bytes < 4096 {
                p.add(format!("{at}.file.max_bytes"), "must be at least 4096");
            }
            if f.keep == 0 || f.keep > 1000 {
                p.add(format!("{at}.file.keep"), "must be between 1 and 1000");
            }
            Some(SinkConfig::File(FileSink {
                path: resolve(base, &f.path),
                max_bytes: f.max_bytes,
                max_age: (f.max_age_seconds > 0).then(|| Duration::from_secs(f.max_age_seconds)),
                keep: f.keep,
            }))
        } else if let Some(o) = e.otlp {
            let at = format!("{at}.otlp");
            let endpoint = sink_url(&format!("{at}.endpoint"), &o.endpoint, p);
            let mut headers = Vec::new();
            for (j, h) in o.headers.into_iter().enumerate() {
                let hat = format!("{at}.headers[{j}]");
                let name = h.name.to_ascii_lowercase();
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
                    p.add(format!("{hat}.name"), "must be a header name (letters, digits, '-')");
                }
                if let Some(value) = secret(&hat, "value", h.value_file.as_deref(), h.value_env.as_deref(), base, p) {
                    headers.push((name, value));
                }
            }
            let ca_file = ca_file(&at, o.ca_file.as_deref(), base, p);
            let timeout = timeout(&at, o.timeout_ms, p);
            endpoint.map(|endpoint| {
                SinkConfig::Otlp(OtlpSink {
                    endpoint,
                    headers,
                    ca_file,
                    timeout,
                })
            })
        } else if let Some(h) = e.splunk_hec {
            let at = format!("{at}.splunk_hec");
            let url = sink_url(&format!("{at}.url"), &h.url, p);
            let token = secret(&at, "token", h.token_file.as_deref(), h.token_env.as_deref(), base, p);
            let ca_file = ca_file(&at, h.ca_file.as_deref(), base, p);
            let timeout = timeout(&at, h.timeout_ms, p);
            url.zip(token).map(|(url, token)| {
                SinkConfig::Hec(HecSink {
                    url,
                    token,
                    index: h.index,
                    source: h.source,
                    sourcetype: h.sourcetype,
                    gzip: h.gzip,
                    ca_file,
                    timeout,
                })
            })
        } else if let Some(s) = e.syslog {
            let at = format!("{at}.syslog");
            let parsed = s
                .address
                .rsplit_once(':')
                .and_then(|(host, port)| Some((host.trim_matches(['[', ']']).to_owned(), port.parse::<u16>().ok()?)))
                .filter(|(host, port)| !host.is_empty() && *port > 0);
            if parsed.is_none() {
                p.add(format!("{at}.address"), format!("{:?} is not host:port", s.address));
            }
            if !s.tls && s.ca_file.is_some() {
                p.add(
                    format!("{at}.ca_file"),
                    "only a TLS connection has a certificate to check",
                );
            }
            let app_ok =
                !s.app_name.is_empty() && s.app_name.len() <= 48 && s.app_name.chars().all(|c| c.is_ascii_graphic());
            if !app_ok {
                p.add(format!("{at}.app_name"), "must be 1 to 48 printable ASCII characters");
            }
            if s.facility > 23 {
                p.add(format!("{at}.facility"), "must be between 0 and 23");
            }
            let ca_file = ca_file(&at, s.ca_file.as_deref(), base, p);
            let timeout = timeout(&at, s.timeout_ms, p);
            parsed.map(|(host, port)| {
                SinkConfig::Syslog(SyslogSink {
                    server_name: s.server_name.unwrap_or_else(|| host.clone()),
                    host,
                    port,
                    tls: s.tls,
                    ca_file,
                    app_name: s.app_name,
                    facility: s.facility,
                    timeout,
                })
            })
        } else {
            None
        };
        if let Some(sink) = sink {
            out.push(Exporter {
                name: e.name,
                format: e.format,
                batch: e.batch,
                batch_bytes: e.batch_bytes,
                sink,
            });
        }
    }
    out
}

/// Checks `archive:`.
pub(super) fn validate_archive(raw: Option<RawArchive>, base: &Path, p: &mut Problems) -> Option<Archive> {
    let s3 = raw?.s3;
    let at = "archive.s3";
    // Bucket names as S3 takes them (3-63 lower-case letters, digits, '.', '-').
    let bucket_ok = (3..=63).contains(&s3.bucket.len())
        && s3
            .bucket
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-');
    if !bucket_ok {
        p.add(format!("{at}.bucket"), "must be an S3 bucket name");
    }
    let mut prefix = s3.prefix.trim_start_matches('/').to_owned();
    if !prefix.is_empty() && !prefix.ends_with('/') {
        prefix.push('/');
    }
    if prefix.chars().any(|c| c.is_control()) {
        p.add(format!("{at}.prefix"), "must hold no control characters");
    }
    p.non_empty(&format!("{at}.region"), &s3.region);
    let endpoint = s3
        .endpoint
        .as_deref()
        .and_then(|e| sink_url(&format!("{at}.endpoint"), e, p));
    if s3.object_lock.days == 0 || s3.object_lock.days > 36_500 {
        p.add(format!("{at}.object_lock.days"), "must be between 1 and 36500");
    }
    if s3.segment_records == 0 || s3.segment_records > 1_000_000 {
        p.add(format!("{at}.segment_records"), "must be between 1 and 1000000");
    }
    if s3.segment_seconds == 0 || s3.segment_seconds > 86_400 {
        p.add(format!("{at}.segment_seconds"), "must be between 1 and 86400");
    }
    if !(1024..=1 << 30).contains(&s3.segment_bytes) {
        p.add(format!("{at}.segment_bytes"), "must be between 1 KiB and 1 GiB");
    }
    let ca_file = ca_file(at, s3.ca_file.as_deref(), base, p);
    Some(Archive {
        bucket: s3.bucket,
        prefix,
        region: s3.region,
        endpoint,
        lock_mode: s3.object_lock.mode,
        lock_days: s3.object_lock.days,
        segment_records: s3.segment_records,
        segment_age: Duration::from_secs(s3.segment_seconds),
        segment_bytes: s3.segment_bytes,
        ca_file,
    })
}
