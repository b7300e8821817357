//! `gatehouse.yaml`: the one file that drives the service and the rendered Envoy config.
//!
//! [`raw`] mirrors the file with `deny_unknown_fields`; [`Config::load`] turns it into the
//! validated [`Config`], reporting every problem at once with the path of the bad field.

pub mod changes;
pub mod export;
mod gitleaks;
mod raw;

use std::{
    collections::BTreeSet,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use url::Url;

/// Every problem found in a config file, each with the path of its field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

/// One problem at one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} problem(s) in the configuration:", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "  {}: {}", e.path, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the file was read from; relative paths were resolved against its folder.
    pub source: PathBuf,
    /// The text it was read from (its SHA-256 and digests are recorded, `config_changed`).
    pub text: String,
    pub service: Service,
    pub identity: Identity,
    pub audit: Audit,
    pub upstreams: Vec<Upstream>,
    pub envoy: Envoy,
    pub masking: crate::masking::MaskingPolicy,
    /// `None`: no `policy:` section; the upstreams' `allow_groups` alone decide.
    pub policy: Option<crate::policy::Policy>,
    /// `recording:`: what the trail keeps of each call (empty: everything in full).
    pub recording: crate::recording::Recording,
    pub approvals: Approvals,
    /// `export:`: the exporters sending the trail to SIEMs (none by default).
    pub export: Vec<export::Exporter>,
    /// `archive:`: S3 with Object Lock (none by default).
    pub archive: Option<export::Archive>,
}

/// Where approvers decide and whom to tell about a new approval.
#[derive(Debug, Clone)]
pub struct Approvals {
    /// The approvers' page (in JSON-RPC errors and notifications).
    pub ui_url: Url,
    pub webhook: Option<Webhook>,
    /// The `aud` of approvers' tokens (`/v1/approvals`, the page); never `identity.audience`.
    pub audience: String,
    /// Calls of one caller held in a Check at once; more are refused, not held.
    pub max_held_per_caller: u32,
    /// Pending approvals one caller may have open; a new one beyond is refused.
    pub max_pending_per_caller: u32,
    /// Calls held in Checks at once over all callers: each holds an Envoy connection to
    /// the service for up to its hold time, so Envoy's circuit breaker on the ext_authz
    /// cluster is sized from this (plus headroom for the calls that do not wait).
    pub max_held: u32,
}

/// A Slack-compatible incoming webhook. Its URL is a secret: never log it.
#[derive(Clone)]
pub struct Webhook {
    pub url: Url,
    pub attempts: u32,
    pub timeout: std::time::Duration,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook")
            .field("url", &"<secret>")
            .field("attempts", &self.attempts)
            .field("timeout", &self.timeout)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct Service {
    pub rest_listen: SocketAddr,
    pub grpc_listen: SocketAddr,
    /// The gateway's public base URL, as clients reach it (for OAuth resource metadata,
    /// and the `Host`/`Origin` the gateway answers to).
    pub public_url: Url,
    /// The secret binding MCP sessions to their caller; `None`: a random one per process.
    pub session_key_file: Option<PathBuf>,
    /// mTLS on the gRPC listener; `None` only for plain gRPC on loopback, said explicitly.
    pub grpc_tls: Option<GrpcTls>,
    /// Where Envoy reaches the replicas (at least one: `grpc_listen` when none are given).
    pub grpc_endpoints: Vec<Endpoint>,
    /// On SIGTERM: how long to keep serving while the health check says NOT_SERVING.
    pub drain: std::time::Duration,
    /// On SIGTERM, after the drain: the longest wait for the Checks in flight.
    pub shutdown_grace: std::time::Duration,
}

/// A service replica as Envoy reaches it: an IP address, or a DNS name to resolve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl Endpoint {
    pub fn is_ip(&self) -> bool {
        self.host.parse::<std::net::IpAddr>().is_ok()
    }
}

/// mTLS between Envoy and the service's gRPC listener (ext_authz and audit ingest). The
/// service accepts only clients with a certificate `ca_file` signed; Envoy checks the
/// service's certificate against the same CA and presents `client_cert_file`.
#[derive(Debug, Clone)]
pub struct GrpcTls {
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Identity {
    pub issuer: String,
    pub audience: String,
    pub groups_claim: String,
    pub leeway_seconds: u64,
    /// Overrides discovery: where to fetch the issuer's keys.
    pub jwks_url: Option<Url>,
    pub dev_issuer: Option<DevIssuer>,
}

/// The built-in issuer for demos and tests. Never enable it in production.
#[derive(Debug, Clone)]
pub struct DevIssuer {
    pub key_file: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Audit {
    /// `sqlite://PATH` (the default store).
    pub database: String,
    pub writer_id: String,
    pub auditor_group: String,
    /// The audience of auditors' tokens (the audit REST API), distinct from the MCP one.
    pub audience: String,
    /// How many records one commit may group.
    pub max_batch: usize,
    pub checkpoint: Option<CheckpointPolicy>,
    /// A session of a server that keeps none ends after this long without a call (and any
    /// session shows as idle after it).
    pub session_idle_seconds: u64,
}

/// When the writer signs a checkpoint of its chain head.
#[derive(Debug, Clone)]
pub struct CheckpointPolicy {
    pub key_file: PathBuf,
    pub every_records: u64,
    pub every_seconds: u64,
    /// A copy of every checkpoint, one JSON line each, outside the audit store.
    pub log_file: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub url: Url,
    /// The path on the gateway's listeners that routes to this upstream.
    pub path: String,
    pub allow_groups: BTreeSet<String>,
    /// The CAs an https upstream's certificate must chain to (`None`: the system's).
    pub ca_file: Option<PathBuf>,
    pub credentials: UpstreamCredentials,
}

/// The credential the gateway sends an upstream in place of the client's.
#[derive(Debug, Clone, Default)]
pub enum UpstreamCredentials {
    #[default]
    None,
    /// `header: value`, overwriting whatever the client sent in that header.
    StaticHeader { header: String, value: Secret },
    /// SigV4 as the caller: each caller's own STS session of the role signs its calls.
    AwsSigv4(std::sync::Arc<AwsSigv4>),
}

impl UpstreamCredentials {
    /// The `type` in the config and in records.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::None => "none",
            Self::StaticHeader { .. } => "static_header",
            Self::AwsSigv4(_) => "aws_sigv4",
        }
    }
}

/// An `aws_sigv4` upstream credential.
#[derive(Debug, Clone)]
pub struct AwsSigv4 {
    pub role_arn: String,
    pub region: String,
    /// The signing name (`execute-api`, `lambda`…).
    pub service: String,
    pub session_duration: std::time::Duration,
    pub external_id: Option<String>,
    /// JSON.
    pub session_policy: Option<String>,
    pub sts_endpoint: Option<Url>,
    /// Globs of the groups that become session tags (`None`: all).
    pub tag_groups: Option<Vec<String>>,
}

/// A secret value: its Debug form never shows it.
#[derive(Clone)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Upstream {
    /// `host[:port]` of the upstream URL, the port only when it is not the scheme's: the Host
    /// header it accepts, as any client sends it (and as a SigV4 signature covers it).
    pub fn authority(&self) -> String {
        let host = self.url.host_str().unwrap_or_default();
        match self.url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        }
    }

    /// The path the route sends instead of the gateway's (the upstream URL's).
    pub fn upstream_path(&self) -> &str {
        match self.url.path() {
            "" => "/",
            p => p,
        }
    }

    pub fn is_tls(&self) -> bool {
        self.url.scheme() == "https"
    }
}

#[derive(Debug, Clone)]
pub struct Envoy {
    pub admin_listen: SocketAddr,
    pub http_listen: Option<SocketAddr>,
    pub https_listen: Option<SocketAddr>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub wasm: PathBuf,
    pub max_request_bytes: u64,
    pub ext_authz_timeout_ms: u64,
    /// How long an SSE stream may stay silent before Envoy closes it.
    pub stream_idle_timeout_s: u64,
    /// The largest JSON answer the filter buffers to mask (larger ones are refused).
    pub max_response_bytes: u64,
    /// `Host` values accepted besides the public URL's and the listeners' (lower case).
    pub allowed_hosts: Vec<String>,
    /// `Origin` values accepted besides the public URL's and the listeners' (lower case).
    pub allowed_origins: Vec<String>,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                path: path.display().to_string(),
                message: format!("cannot read: {e}"),
            }])
        })?;
        Self::parse(&text, path)
    }

    /// Validates config text; `path` names the file and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigErrors> {
        let syntax = |e: serde_yaml::Error| {
            let at = e
                .location()
                .map(|l| format!(" (line {}, column {})", l.line(), l.column()))
                .unwrap_or_default();
            ConfigErrors(vec![ConfigError {
                path: "$".into(),
                message: format!("{e}{at}"),
            }])
        };
        let doc: serde_yaml::Value = serde_yaml::from_str(text).map_err(syntax)?;
        let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
        match serde_yaml::from_value::<raw::Config>(doc.clone()) {
            Ok(raw) => raw.validate(path, &base).map(|mut config| {
                config.text = text.to_owned();
                config
            }),
            Err(e) => Err(Self::partial_file_problems(&doc, path, &base).unwrap_or_else(|| syntax(e))),
        }
    }

    /// A document that is YAML but not a config: every structural problem, not the first, and
    /// then the values' problems, checked on the file with stand-ins for what is missing.
    /// `None` when the structural pass finds nothing to say.
    fn partial_file_problems(doc: &serde_yaml::Value, path: &Path, base: &Path) -> Option<ConfigErrors> {
        let structure = raw::structure_problems(doc);
        if structure.problems.is_empty() {
            return None;
        }
        let mut problems = structure.problems.clone();
        let repaired = structure.repaired.as_ref();
        if let Some(Err(ConfigErrors(values))) = repaired
            .and_then(|r| serde_yaml::from_value::<raw::Config>(r.clone()).ok())
            .map(|raw| raw.validate(path, base))
        {
            problems.extend(values.into_iter().filter(|p| !structure.stands_in(&p.path)));
        }
        Some(ConfigErrors(problems))
    }
}

#[cfg(test)]
pub(crate) mod tests;
