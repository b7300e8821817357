//! The file as written: serde types with `deny_unknown_fields`, checked by `validate`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use gatehouse_core::mask::{CustomRule, MaskConfig, Masker, Style};
use serde::Deserialize;
use url::Url;

use super::{ConfigError, ConfigErrors};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub service: Service,
    pub identity: Identity,
    pub audit: Audit,
    pub upstreams: Vec<Upstream>,
    pub envoy: Envoy,
    #[serde(default)]
    pub masking: Masking,
    #[serde(default)]
    pub policy: Option<Policy>,
    #[serde(default)]
    pub approvals: Approvals,
    /// What the trail keeps of each call (`full` unless a rule says `metadata`).
    #[serde(default)]
    pub recording: Vec<crate::recording::RawRecordingRule>,
    /// Where the trail is sent (SIEMs), each exporter with its own cursor.
    #[serde(default)]
    pub export: Vec<super::export::RawExporter>,
    /// Where the trail is sealed (S3 with Object Lock).
    #[serde(default)]
    pub archive: Option<super::export::RawArchive>,
}

/// `approvals:`: where approvers decide and whom to notify.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approvals {
    /// The approvers' page as they reach it (default: `http://{service.rest_listen}/ui`).
    #[serde(default)]
    pub ui_url: Option<String>,
    #[serde(default)]
    pub webhook: Option<Webhook>,
    /// The `aud` approvers' tokens must carry: distinct from `identity.audience`, so a
    /// token an agent holds for MCP can never approve.
    #[serde(default = "default_approvals_audience")]
    pub audience: String,
    #[serde(default = "default_max_held_per_caller")]
    pub max_held_per_caller: u32,
    #[serde(default = "default_max_pending_per_caller")]
    pub max_pending_per_caller: u32,
    #[serde(default = "default_max_held")]
    pub max_held: u32,
}

impl Default for Approvals {
    fn default() -> Self {
        Self {
            ui_url: None,
            webhook: None,
            audience: default_approvals_audience(),
            max_held_per_caller: default_max_held_per_caller(),
            max_pending_per_caller: default_max_pending_per_caller(),
            max_held: default_max_held(),
        }
    }
}

fn default_audit_audience() -> String {
    "gatehouse-audit".into()
}

fn default_approvals_audience() -> String {
    "gatehouse-approvals".into()
}
fn default_max_held_per_caller() -> u32 {
    8
}
fn default_max_pending_per_caller() -> u32 {
    20
}
fn default_max_held() -> u32 {
    256
}

/// A Slack-compatible incoming webhook (`{"text": ...}`), told of every new approval.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webhook {
    /// The URL, or `url_env`: the name of an environment variable holding it (webhook URLs
    /// are secrets: whoever has one can post to the channel).
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub url_env: Option<String>,
    #[serde(default = "default_webhook_attempts")]
    pub attempts: u32,
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_webhook_attempts() -> u32 {
    4
}
fn default_webhook_timeout_ms() -> u64 {
    5000
}

/// `policy:`: ordered rules over identity, upstream, method, tool and arguments.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub rules: Vec<crate::policy::RawRule>,
}

/// `masking:`: the engine's rules (see `gatehouse_core::mask::MaskConfig`) plus where the
/// token key lives and who may see which kinds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Masking {
    #[serde(default)]
    pub token_key_file: Option<String>,
    #[serde(default)]
    pub default_style: Style,
    #[serde(default)]
    pub styles: BTreeMap<String, Style>,
    #[serde(default)]
    pub disabled: Vec<String>,
    #[serde(default)]
    pub sensitive_keys: Vec<String>,
    #[serde(default)]
    pub custom: Vec<CustomRule>,
    /// A gitleaks configuration file whose rules are added (relative to this file).
    #[serde(default)]
    pub gitleaks: Option<String>,
    #[serde(default)]
    pub reveal: Vec<RevealRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevealRule {
    pub kinds: Vec<String>,
    pub groups: Vec<String>,
    #[serde(default)]
    pub upstreams: Option<Vec<String>>,
    #[serde(default)]
    pub tools: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub rest_listen: String,
    pub grpc_listen: String,
    pub public_url: String,
    /// The secret that binds MCP sessions to their caller (hex, created if missing).
    #[serde(default)]
    pub session_key_file: Option<String>,
    /// mTLS on the gRPC listener (ext_authz and audit ingest).
    #[serde(default)]
    pub grpc_tls: Option<GrpcTls>,
    /// Serve gRPC without TLS: only on a loopback address, and only when said here.
    #[serde(default)]
    pub grpc_plaintext: bool,
    /// Where Envoy reaches the service's replicas (`host:port`; a DNS name lists every
    /// address it resolves to). Default: `grpc_listen` alone.
    #[serde(default)]
    pub grpc_endpoints: Vec<String>,
    /// On SIGTERM, how long the service keeps serving while its health check says
    /// NOT_SERVING, so Envoy moves new Checks to other replicas first. Default: 5 with
    /// `grpc_endpoints`, else 0.
    #[serde(default)]
    pub drain_seconds: Option<u64>,
    /// On SIGTERM, how long it then waits for the Checks in flight (held ones too).
    #[serde(default = "default_shutdown_grace")]
    pub shutdown_grace_seconds: u64,
}

fn default_shutdown_grace() -> u64 {
    30
}

/// `service.grpc_tls`: one CA signs the service's certificate and Envoy's client certificate.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcTls {
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
    pub client_cert_file: String,
    pub client_key_file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Identity {
    pub issuer: String,
    pub audience: String,
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    #[serde(default)]
    pub jwks_url: Option<String>,
    #[serde(default)]
    pub dev_issuer: Option<DevIssuer>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevIssuer {
    #[serde(default)]
    pub enabled: bool,
    pub key_file: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Audit {
    pub database: String,
    pub writer_id: String,
    pub auditor_group: String,
    /// The audience of auditors' tokens for the audit REST API: never an MCP token.
    #[serde(default = "default_audit_audience")]
    pub audience: String,
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    #[serde(default)]
    pub checkpoint: Option<Checkpoint>,
    /// Calls to a server that keeps no MCP sessions start a new session after this long.
    #[serde(default = "default_session_idle_seconds")]
    pub session_idle_seconds: u64,
}

fn default_session_idle_seconds() -> u64 {
    600
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Checkpoint {
    pub key_file: String,
    #[serde(default = "default_checkpoint_records")]
    pub every_records: u64,
    #[serde(default = "default_checkpoint_seconds")]
    pub every_seconds: u64,
    #[serde(default)]
    pub log_file: Option<String>,
}

fn default_checkpoint_records() -> u64 {
    1000
}
fn default_checkpoint_seconds() -> u64 {
    10
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Upstream {
    pub name: String,
    pub url: String,
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub allow_groups: Vec<String>,
    /// PEM file of the CAs that sign an https upstream's certificate (default: the system's).
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub credentials: Option<Credentials>,
}

/// What the gateway sends the upstream as its credential (the client's never goes there).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Credentials {
    None,
    /// A fixed secret in one header, read from a file or an environment variable.
    StaticHeader {
        header: String,
        #[serde(default)]
        value_file: Option<String>,
        #[serde(default)]
        value_env: Option<String>,
        /// Put before the secret, e.g. `"Bearer "`.
        #[serde(default)]
        prefix: Option<String>,
    },
    /// SigV4 as the caller, with an STS session of a role assumed for each caller.
    AwsSigv4 {
        role_arn: String,
        region: String,
        /// The signing name of the service (`execute-api`, `lambda`, `bedrock-agentcore`…).
        service: String,
        #[serde(default = "default_session_duration_s")]
        session_duration_s: u64,
        #[serde(default)]
        external_id: Option<String>,
        /// An IAM policy (as YAML or JSON) that narrows the role for these sessions.
        #[serde(default)]
        session_policy: Option<serde_json::Value>,
        /// Where STS is (default: the standard chain's, normally AWS's regional endpoint).
        #[serde(default)]
        sts_endpoint: Option<String>,
        /// Which of the caller's groups become session tags (globs; default: all).
        #[serde(default)]
        tag_groups: Option<Vec<String>>,
    },
}

fn default_session_duration_s() -> u64 {
    3600
}

/// Headers a credential may not be put in: the ones Envoy, MCP or Gatehouse rely on.
const RESERVED_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "content-type",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "upgrade",
    "accept",
    "accept-encoding",
];

fn validate_credentials(c: Option<Credentials>, base: &Path, at: &str, p: &mut Problems) -> super::UpstreamCredentials {
    match c {
        None | Some(Credentials::None) => super::UpstreamCredentials::None,
        Some(Credentials::StaticHeader {
            header,
            value_file,
            value_env,
            prefix,
        }) => validate_static_header(header, value_file, value_env, prefix, base, at, p),
        Some(Credentials::AwsSigv4 {
            role_arn,
            region,
            service,
            session_duration_s,
            external_id,
            session_policy,
            sts_endpoint,
            tag_groups,
        }) => {
            let at = format!("{at}.credentials");
            // As STS and IAM define them: a bad value is refused here, not on the first call.
            let role_ok = role_arn
                .strip_prefix("arn:")
                .and_then(|r| r.split_once(":iam::"))
                .is_some_and(|(partition, rest)| {
                    (partition == "aws" || partition.starts_with("aws-"))
                        && rest.split_once(":role/").is_some_and(|(account, name)| {
                            account.len() == 12
                                && account.bytes().all(|b| b.is_ascii_digit())
                                && !name.is_empty()
                                && name
                                    .chars()
                                    .all(|c| c.is_ascii_alphanumeric() || "+=,.@_-/".contains(c))
                        })
                });
            if !role_ok {
                p.add(
                    format!("{at}.role_arn"),
                    format!("{role_arn:?} is not an IAM role ARN (arn:aws:iam::<12-digit account>:role/<name>)"),
                );
            }
            let name_ok = |v: &str| {
                !v.is_empty()
                    && v.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            };
            if !name_ok(&region) {
                p.add(
                    format!("{at}.region"),
                    format!("{region:?} is not an AWS region name (like us-east-1)"),
                );
            }
            if !name_ok(&service) {
                p.add(
                    format!("{at}.service"),
                    format!("{service:?} is not a signing name (like execute-api or lambda)"),
                );
            }
            if !(900..=43_200).contains(&session_duration_s) {
                p.add(
                    format!("{at}.session_duration_s"),
                    format!("{session_duration_s} is outside what STS allows (900 to 43200 seconds)"),
                );
            }
            if let Some(id) = &external_id
                && (!(2..=1224).contains(&id.len())
                    || !id.chars().all(|c| c.is_ascii_alphanumeric() || "_+=,.@:/-".contains(c)))
            {
                p.add(
                    format!("{at}.external_id"),
                    "must be 2 to 1224 of A-Z a-z 0-9 _ + = , . @ : / -",
                );
            }
            let session_policy = session_policy.map(|v| v.to_string());
            if session_policy.as_ref().is_some_and(|v| v.len() > 2048) {
                p.add(
                    format!("{at}.session_policy"),
                    "is over the 2048 characters STS takes for a session policy",
                );
            }
            let sts_endpoint = sts_endpoint.and_then(|u| p.url(&format!("{at}.sts_endpoint"), &u, &["http", "https"]));
            // STS answers with the session's secret key: only over TLS, or on this machine.
            if let Some(url) = &sts_endpoint
                && url.scheme() == "http"
                && !matches!(url.host_str(), Some("127.0.0.1" | "[::1]" | "localhost"))
            {
                p.add(
                    format!("{at}.sts_endpoint"),
                    "must be https (plain http only on loopback): STS answers with secret keys",
                );
            }
            super::UpstreamCredentials::AwsSigv4(std::sync::Arc::new(super::AwsSigv4 {
                role_arn,
                region,
                service,
                session_duration: std::time::Duration::from_secs(session_duration_s),
                external_id,
                session_policy,
                sts_endpoint,
                tag_groups,
            }))
        }
    }
}

fn validate_static_header(
    header: String,
    value_file: Option<String>,
    value_env: Option<String>,
    prefix: Option<String>,
    base: &Path,
    at: &str,
    p: &mut Problems,
) -> super::UpstreamCredentials {
    let header = header.to_ascii_lowercase();
    let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
    if header.is_empty()
        || !header.chars().all(token)
        || RESERVED_HEADERS.contains(&header.as_str())
        || header.starts_with(gatehouse_core::wire::GATEHOUSE_HEADER_PREFIX)
        || header.starts_with("mcp-")
    {
        p.add(
            format!("{at}.credentials.header"),
            format!(
                "{header:?} cannot carry a credential (a header name that is not reserved by HTTP, MCP or Gatehouse)"
            ),
        );
    }
    let secret = match (value_file, value_env) {
        (Some(file), None) => {
            let path = resolve(base, &file);
            match std::fs::read_to_string(&path) {
                Ok(text) => Some(text.trim_end_matches(['\r', '\n']).to_owned()),
                Err(e) => {
                    p.add(
                        format!("{at}.credentials.value_file"),
                        format!("cannot read {}: {e}", path.display()),
                    );
                    None
                }
            }
        }
        (None, Some(var)) => match std::env::var(&var) {
            Ok(value) => Some(value),
            Err(_) => {
                p.add(
                    format!("{at}.credentials.value_env"),
                    format!("the environment variable {var} is not set"),
                );
                None
            }
        },
        _ => {
            p.add(
                format!("{at}.credentials"),
                "give exactly one of value_file and value_env",
            );
            None
        }
    };
    // The value itself is never echoed: it is the secret. Visible ASCII only (and spaces
    // inside), so it is a valid header value whatever the proxy.
    let printable = |v: &str| v.chars().all(|c| c == ' ' || c.is_ascii_graphic());
    match secret {
        Some(s) if s.trim().is_empty() || !printable(&s) || !printable(prefix.as_deref().unwrap_or_default()) => {
            p.add(
                format!("{at}.credentials"),
                "the secret is empty or holds characters a header value cannot (visible ASCII only)",
            );
            super::UpstreamCredentials::None
        }
        Some(s) => super::UpstreamCredentials::StaticHeader {
            header,
            value: super::Secret(format!("{}{s}", prefix.unwrap_or_default())),
        },
        None => super::UpstreamCredentials::None,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Envoy {
    pub admin_listen: String,
    /// Envoy's admin shows the whole config and can stop Envoy: loopback only unless this
    /// says otherwise.
    #[serde(default)]
    pub admin_allow_remote: bool,
    #[serde(default)]
    pub http_listen: Option<String>,
    #[serde(default)]
    pub https_listen: Option<String>,
    #[serde(default)]
    pub tls_cert: Option<String>,
    #[serde(default)]
    pub tls_key: Option<String>,
    pub wasm: String,
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: u64,
    #[serde(default = "default_ext_authz_timeout_ms")]
    pub ext_authz_timeout_ms: u64,
    #[serde(default = "default_stream_idle_timeout_s")]
    pub stream_idle_timeout_s: u64,
    #[serde(default = "default_max_response_bytes")]
    pub max_response_bytes: u64,
    /// More `Host` values the gateway answers to, besides its public URL and listeners.
    #[serde(default)]
    pub allowed_hosts: Vec<String>,
    /// More `Origin` values a browser request may come from (`scheme://host[:port]`).
    #[serde(default)]
    pub allowed_origins: Vec<String>,
}

fn default_groups_claim() -> String {
    "groups".into()
}
fn default_leeway() -> u64 {
    30
}
fn default_max_batch() -> usize {
    256
}
fn default_max_request_bytes() -> u64 {
    1024 * 1024
}
fn default_ext_authz_timeout_ms() -> u64 {
    2000
}
fn default_stream_idle_timeout_s() -> u64 {
    300
}
fn default_max_response_bytes() -> u64 {
    8 * 1024 * 1024
}

/// Collects problems so that every one is reported, not just the first.
#[derive(Default)]
pub(super) struct Problems(Vec<ConfigError>);

impl Problems {
    pub(super) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ConfigError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn addr(&mut self, path: &str, value: &str) -> Option<SocketAddr> {
        match value.parse::<SocketAddr>() {
            Ok(addr) => Some(addr),
            Err(_) => {
                self.add(path, format!("{value:?} is not an IP:port address"));
                None
            }
        }
    }

    pub(super) fn url(&mut self, path: &str, value: &str, schemes: &[&str]) -> Option<Url> {
        match Url::parse(value) {
            Ok(url) if schemes.contains(&url.scheme()) && url.host_str().is_some() => Some(url),
            Ok(_) => {
                self.add(
                    path,
                    format!("{value:?} must be an absolute {} URL", schemes.join(" or ")),
                );
                None
            }
            Err(e) => {
                self.add(path, format!("{value:?} is not a URL: {e}"));
                None
            }
        }
    }

    pub(super) fn non_empty(&mut self, path: &str, value: &str) {
        if value.trim().is_empty() {
            self.add(path, "must not be empty");
        }
    }
}

/// Without TLS any local process could call the Check or write the trail: plain gRPC is
/// allowed only on loopback and only when the file says so.
fn validate_grpc_tls(s: &Service, listen: Option<SocketAddr>, base: &Path, p: &mut Problems) -> Option<super::GrpcTls> {
    match &s.grpc_tls {
        Some(tls) => {
            if s.grpc_plaintext {
                p.add(
                    "service.grpc_plaintext",
                    "cannot be true together with service.grpc_tls",
                );
            }
            // The files are read when the service starts (the demo creates them after the check).
            Some(super::GrpcTls {
                ca_file: resolve(base, &tls.ca_file),
                cert_file: resolve(base, &tls.cert_file),
                key_file: resolve(base, &tls.key_file),
                client_cert_file: resolve(base, &tls.client_cert_file),
                client_key_file: resolve(base, &tls.client_key_file),
            })
        }
        None if !s.grpc_plaintext => {
            p.add(
                "service.grpc_tls",
                "required: Envoy must call the service over mTLS (or set grpc_plaintext: true on a loopback grpc_listen)",
            );
            None
        }
        None => {
            if listen.is_some_and(|a| !a.ip().is_loopback()) {
                p.add(
                    "service.grpc_plaintext",
                    "plain gRPC is allowed only on a loopback grpc_listen: configure service.grpc_tls",
                );
            }
            None
        }
    }
}

/// `service.grpc_endpoints` as (host, port); `grpc_listen` alone when there are none.
fn validate_endpoints(endpoints: &[String], listen: Option<SocketAddr>, p: &mut Problems) -> Vec<super::Endpoint> {
    if endpoints.is_empty() {
        return listen
            .map(|a| super::Endpoint {
                host: a.ip().to_string(),
                port: a.port(),
            })
            .into_iter()
            .collect();
    }
    let mut out = Vec::new();
    for (i, e) in endpoints.iter().enumerate() {
        let at = format!("service.grpc_endpoints[{i}]");
        let parsed = e.rsplit_once(':').and_then(|(host, port)| {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = port.parse::<u16>().ok().filter(|p| *p != 0)?;
            let valid = !host.is_empty()
                && (host.parse::<std::net::IpAddr>().is_ok()
                    || host.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
            valid.then(|| super::Endpoint {
                host: host.to_owned(),
                port,
            })
        });
        match parsed {
            Some(endpoint) => out.push(endpoint),
            None => p.add(
                &at,
                format!("{e:?} is not host:port (an IP address or a DNS name, and a port)"),
            ),
        }
    }
    out
}

pub(super) fn resolve(base: &Path, value: &str) -> PathBuf {
    let p = Path::new(value);
    if p.is_absolute() { p.to_path_buf() } else { base.join(p) }
}

impl Config {
    pub fn validate(self, source: &Path, base: &Path) -> Result<super::Config, ConfigErrors> {
        let mut p = Problems::default();

        let rest_listen = p.addr("service.rest_listen", &self.service.rest_listen);
        let grpc_listen = p.addr("service.grpc_listen", &self.service.grpc_listen);
        let public_url = p.url("service.public_url", &self.service.public_url, &["http", "https"]);
        let grpc_tls = validate_grpc_tls(&self.service, grpc_listen, base, &mut p);
        let grpc_endpoints = validate_endpoints(&self.service.grpc_endpoints, grpc_listen, &mut p);
        let drain_seconds = self
            .service
            .drain_seconds
            .unwrap_or(if self.service.grpc_endpoints.is_empty() { 0 } else { 5 });
        if drain_seconds > 300 {
            p.add("service.drain_seconds", "must be at most 300");
        }
        if self.service.shutdown_grace_seconds > 3600 {
            p.add("service.shutdown_grace_seconds", "must be at most 3600");
        }

        p.non_empty("identity.issuer", &self.identity.issuer);
        p.non_empty("identity.audience", &self.identity.audience);
        p.non_empty("identity.groups_claim", &self.identity.groups_claim);
        if self.identity.leeway_seconds > 300 {
            p.add(
                "identity.leeway_seconds",
                "at most 300 seconds of clock leeway is accepted",
            );
        }
        let jwks_url = self
            .identity
            .jwks_url
            .as_deref()
            .and_then(|u| p.url("identity.jwks_url", u, &["http", "https"]));
        let dev_issuer = match self.identity.dev_issuer {
            Some(d) if d.enabled => {
                p.non_empty("identity.dev_issuer.key_file", &d.key_file);
                Some(super::DevIssuer {
                    key_file: resolve(base, &d.key_file),
                })
            }
            _ => None,
        };

        match crate::db::Backend::of(&self.audit.database) {
            Some(crate::db::Backend::Sqlite) => {}
            Some(crate::db::Backend::Postgres) => {
                if let Err(e) = crate::db::pg_options(&self.audit.database) {
                    p.add(
                        "audit.database",
                        format!("not a PostgreSQL URL: {}", crate::db::redact(&e.to_string())),
                    );
                }
            }
            None => p.add(
                "audit.database",
                "must be sqlite://PATH or postgres://USER@HOST:PORT/DATABASE",
            ),
        }
        let writer_id = match expand_env(&self.audit.writer_id) {
            Ok(id) => id,
            Err(message) => {
                p.add("audit.writer_id", message);
                String::new()
            }
        };
        p.non_empty("audit.writer_id", &self.audit.writer_id);
        p.non_empty("audit.auditor_group", &self.audit.auditor_group);
        p.non_empty("audit.audience", &self.audit.audience);
        if self.audit.audience == self.identity.audience {
            p.add(
                "audit.audience",
                "must differ from identity.audience (an agent's MCP token must not read the trail)",
            );
        }
        if !(1..=10_000).contains(&self.audit.max_batch) {
            p.add("audit.max_batch", "must be between 1 and 10000");
        }
        let checkpoint = self.audit.checkpoint.map(|c| {
            p.non_empty("audit.checkpoint.key_file", &c.key_file);
            if !(1..=1_000_000).contains(&c.every_records) {
                p.add("audit.checkpoint.every_records", "must be between 1 and 1000000");
            }
            if !(1..=3600).contains(&c.every_seconds) {
                p.add("audit.checkpoint.every_seconds", "must be between 1 and 3600");
            }
            super::CheckpointPolicy {
                key_file: resolve(base, &c.key_file),
                every_records: c.every_records,
                every_seconds: c.every_seconds,
                log_file: c.log_file.as_deref().map(|f| resolve(base, f)),
            }
        });
        let database = match self.audit.database.strip_prefix("sqlite://") {
            Some(file) if !file.is_empty() && !file.starts_with(':') => {
                format!("sqlite://{}", resolve(base, file).display())
            }
            _ => self.audit.database.clone(),
        };

        if self.upstreams.is_empty() {
            p.add("upstreams", "at least one upstream is required");
        }
        let mut names = BTreeSet::new();
        let mut paths = BTreeSet::new();
        let mut upstreams = Vec::new();
        for (i, u) in self.upstreams.into_iter().enumerate() {
            let at = format!("upstreams[{i}]");
            let name_ok = !u.name.is_empty()
                && u.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !name_ok {
                p.add(format!("{at}.name"), "must be non-empty letters, digits, '-' or '_'");
            } else if !names.insert(u.name.clone()) {
                p.add(
                    format!("{at}.name"),
                    format!("{:?} is used by another upstream", u.name),
                );
            }
            let url = p.url(&format!("{at}.url"), &u.url, &["http", "https"]);
            let ca_file = u.ca_file.as_deref().map(|f| resolve(base, f));
            let credentials = validate_credentials(u.credentials, base, &at, &mut p);
            if let Some(file) = &ca_file {
                if url.as_ref().is_some_and(|url| url.scheme() != "https") {
                    p.add(
                        format!("{at}.ca_file"),
                        "only an https upstream has a certificate to check",
                    );
                }
                if let Err(e) = std::fs::metadata(file) {
                    p.add(format!("{at}.ca_file"), format!("cannot read {}: {e}", file.display()));
                }
            }
            let path = u.path.unwrap_or_else(|| format!("/mcp/{}", u.name));
            if !path.starts_with('/') || path.contains(['?', '#', ' ']) || (path.len() > 1 && path.ends_with('/')) {
                p.add(
                    format!("{at}.path"),
                    format!("{path:?} must start with '/', not end with '/', and hold no query"),
                );
            } else if path.starts_with("/.well-known") {
                p.add(format!("{at}.path"), "paths under /.well-known are the gateway's own");
            } else if !paths.insert(path.clone()) {
                p.add(format!("{at}.path"), format!("{path:?} is used by another upstream"));
            }
            if u.allow_groups.is_empty() {
                p.add(
                    format!("{at}.allow_groups"),
                    "no group may use this upstream; list at least one",
                );
            }
            if let Some(url) = url {
                upstreams.push(super::Upstream {
                    name: u.name,
                    url,
                    path,
                    allow_groups: u.allow_groups.into_iter().collect(),
                    ca_file,
                    credentials,
                });
            }
        }

        let masking = validate_masking(self.masking, &upstreams, base, &mut p);
        let policy = self.policy.and_then(|policy| {
            for (i, rule) in policy.rules.iter().enumerate() {
                for name in rule.upstreams.iter().flatten() {
                    if !upstreams.iter().any(|u| &u.name == name) {
                        p.add(
                            format!("policy.rules[{i}].upstreams"),
                            format!("{name:?} is not an upstream"),
                        );
                    }
                }
            }
            match crate::policy::Policy::compile(&policy.rules) {
                Ok(compiled) => Some(compiled),
                Err(problems) => {
                    for (path, message) in problems {
                        p.add(path, message);
                    }
                    None
                }
            }
        });

        for (i, rule) in self.recording.iter().enumerate() {
            for name in rule.upstreams.iter().flatten() {
                if !upstreams.iter().any(|u| &u.name == name) {
                    p.add(
                        format!("recording[{i}].upstreams"),
                        format!("{name:?} is not an upstream"),
                    );
                }
            }
        }
        let recording = crate::recording::Recording::compile(&self.recording).unwrap_or_else(|problems| {
            for (path, message) in problems {
                p.add(path, message);
            }
            crate::recording::Recording::default()
        });
        let export = super::export::validate_export(self.export, base, &mut p);
        let archive = super::export::validate_archive(self.archive, base, &mut p);
        if archive.is_some() && checkpoint.is_none() {
            p.add(
                "archive",
                "each segment's digest is signed with the checkpoint key: configure audit.checkpoint",
            );
        }

        let e = self.envoy;
        if let Some(policy) = &policy {
            for (id, hold) in policy.holds() {
                // The Check waits inside Envoy's ext_authz call: it must answer before that times out.
                if hold * 1000 + 1000 > e.ext_authz_timeout_ms {
                    p.add(
                        "envoy.ext_authz_timeout_ms",
                        format!(
                            "rule {id:?} holds calls for {hold} s: raise this to at least {} or lower its hold_seconds",
                            hold * 1000 + 1000
                        ),
                    );
                }
            }
        }
        let approvals = validate_approvals(self.approvals, rest_listen, &self.identity.audience, &mut p);
        let admin_listen = p.addr("envoy.admin_listen", &e.admin_listen);
        if admin_listen.is_some_and(|a| !a.ip().is_loopback()) && !e.admin_allow_remote {
            p.add(
                "envoy.admin_listen",
                "Envoy's admin interface shows the whole configuration and can shut Envoy down: keep it on loopback \
                 (or set admin_allow_remote: true and protect it yourself)",
            );
        }
        let http_listen = e.http_listen.as_deref().map(|a| p.addr("envoy.http_listen", a));
        let https_listen = e.https_listen.as_deref().map(|a| p.addr("envoy.https_listen", a));
        if http_listen.is_none() && https_listen.is_none() {
            p.add("envoy", "at least one of http_listen and https_listen is required");
        }
        if https_listen.is_some() {
            if e.tls_cert.is_none() {
                p.add("envoy.tls_cert", "required with https_listen");
            }
            if e.tls_key.is_none() {
                p.add("envoy.tls_key", "required with https_listen");
            }
        }
        let allowed_hosts = validate_hosts(&e.allowed_hosts, &mut p);
        let allowed_origins = validate_origins(&e.allowed_origins, &mut p);
        if !(1024..=64 * 1024 * 1024).contains(&e.max_request_bytes) {
            p.add("envoy.max_request_bytes", "must be between 1 KiB and 64 MiB");
        }
        if !(50..=600_000).contains(&e.ext_authz_timeout_ms) {
            p.add("envoy.ext_authz_timeout_ms", "must be between 50 and 600000");
        }
        if !(64 * 1024..=256 * 1024 * 1024).contains(&e.max_response_bytes) {
            p.add("envoy.max_response_bytes", "must be between 64 KiB and 256 MiB");
        }
        if e.stream_idle_timeout_s == 0 {
            p.add(
                "envoy.stream_idle_timeout_s",
                "must be at least 1 second (0 would let dead streams live forever)",
            );
        }

        if !p.0.is_empty() {
            return Err(ConfigErrors(p.0));
        }
        // Every Option below is Some: a None pushed a problem above.
        let missing = || {
            ConfigErrors(vec![ConfigError {
                path: "$".into(),
                message: "internal: incomplete validation".into(),
            }])
        };
        Ok(super::Config {
            source: source.to_path_buf(),
            text: String::new(),
            service: super::Service {
                rest_listen: rest_listen.ok_or_else(missing)?,
                grpc_listen: grpc_listen.ok_or_else(missing)?,
                public_url: public_url.ok_or_else(missing)?,
                grpc_tls,
                session_key_file: self.service.session_key_file.map(|f| resolve(base, &f)),
                grpc_endpoints,
                drain: std::time::Duration::from_secs(drain_seconds),
                shutdown_grace: std::time::Duration::from_secs(self.service.shutdown_grace_seconds),
            },
            identity: super::Identity {
                issuer: self.identity.issuer,
                audience: self.identity.audience,
                groups_claim: self.identity.groups_claim,
                leeway_seconds: self.identity.leeway_seconds,
                jwks_url,
                dev_issuer,
            },
            audit: super::Audit {
                database,
                writer_id,
                auditor_group: self.audit.auditor_group,
                audience: self.audit.audience,
                max_batch: self.audit.max_batch,
                session_idle_seconds: self.audit.session_idle_seconds,
                checkpoint,
            },
            upstreams,
            envoy: super::Envoy {
                admin_listen: admin_listen.ok_or_else(missing)?,
                http_listen: http_listen.flatten(),
                https_listen: https_listen.flatten(),
                tls_cert: e.tls_cert.map(|c| resolve(base, &c)),
                tls_key: e.tls_key.map(|k| resolve(base, &k)),
                wasm: resolve(base, &e.wasm),
                max_request_bytes: e.max_request_bytes,
                ext_authz_timeout_ms: e.ext_authz_timeout_ms,
                stream_idle_timeout_s: e.stream_idle_timeout_s,
                max_response_bytes: e.max_response_bytes,
                allowed_hosts,
                allowed_origins,
            },
            masking,
            policy,
            recording,
            approvals: approvals.ok_or_else(missing)?,
            export,
            archive,
        })
    }
}

/// `host` or `host:port`, lower-cased (Host is case-insensitive).
fn validate_hosts(hosts: &[String], p: &mut Problems) -> Vec<String> {
    let mut valid = Vec::new();
    for (i, host) in hosts.iter().enumerate() {
        let ok = !host.is_empty()
            && Url::parse(&format!("http://{host}")).is_ok_and(|u| {
                u.path() == "/"
                    && u.query().is_none()
                    && u.username().is_empty()
                    && !host.contains(['/', '@', '?', '#'])
            });
        if ok {
            valid.push(host.to_ascii_lowercase());
        } else {
            p.add(
                format!("envoy.allowed_hosts[{i}]"),
                format!("{host:?} is not a host or host:port"),
            );
        }
    }
    valid
}

/// `scheme://host[:port]` exactly as a browser sends it in `Origin` (no path, no slash).
fn validate_origins(origins: &[String], p: &mut Problems) -> Vec<String> {
    let mut valid = Vec::new();
    for (i, origin) in origins.iter().enumerate() {
        match Url::parse(origin) {
            Ok(u)
                if matches!(u.scheme(), "http" | "https")
                    && u.host_str().is_some()
                    && u.origin().ascii_serialization() == origin.to_ascii_lowercase() =>
            {
                valid.push(origin.to_ascii_lowercase());
            }
            _ => p.add(
                format!("envoy.allowed_origins[{i}]"),
                format!("{origin:?} is not an origin like https://app.example.com (scheme, host, port only)"),
            ),
        }
    }
    valid
}

fn validate_approvals(
    a: Approvals,
    rest_listen: Option<SocketAddr>,
    mcp_audience: &str,
    p: &mut Problems,
) -> Option<super::Approvals> {
    p.non_empty("approvals.audience", &a.audience);
    if a.audience == mcp_audience {
        p.add(
            "approvals.audience",
            "must differ from identity.audience (an MCP token must not be able to approve)",
        );
    }
    for (field, value) in [
        ("approvals.max_held_per_caller", a.max_held_per_caller),
        ("approvals.max_pending_per_caller", a.max_pending_per_caller),
        ("approvals.max_held", a.max_held),
    ] {
        if value == 0 {
            p.add(field, "must be at least 1");
        }
    }
    if a.max_held_per_caller > a.max_held {
        p.add(
            "approvals.max_held_per_caller",
            "must not be more than approvals.max_held",
        );
    }
    let ui_url = match a.ui_url {
        Some(u) => p.url("approvals.ui_url", &u, &["http", "https"]),
        None => rest_listen.and_then(|r| Url::parse(&format!("http://{r}/ui")).ok()),
    };
    let webhook = a.webhook.and_then(|w| {
        let url = match (w.url, w.url_env) {
            (Some(url), None) => Some(url),
            (None, Some(var)) => match std::env::var(&var) {
                Ok(url) => Some(url),
                Err(_) => {
                    p.add(
                        "approvals.webhook.url_env",
                        format!("the environment variable {var} is not set"),
                    );
                    None
                }
            },
            _ => {
                p.add("approvals.webhook", "give exactly one of url and url_env");
                None
            }
        };
        // The URL itself is never echoed: it is a secret.
        let url = url.and_then(|u| match Url::parse(&u) {
            Ok(url) if matches!(url.scheme(), "http" | "https") => Some(url),
            _ => {
                p.add("approvals.webhook", "the URL must be an http or https URL");
                None
            }
        });
        if !(1..=10).contains(&w.attempts) {
            p.add("approvals.webhook.attempts", "must be between 1 and 10");
        }
        if !(100..=60_000).contains(&w.timeout_ms) {
            p.add("approvals.webhook.timeout_ms", "must be between 100 and 60000");
        }
        url.map(|url| super::Webhook {
            url,
            attempts: w.attempts,
            timeout: std::time::Duration::from_millis(w.timeout_ms),
        })
    });
    Some(super::Approvals {
        ui_url: ui_url?,
        webhook,
        audience: a.audience,
        max_held_per_caller: a.max_held_per_caller,
        max_pending_per_caller: a.max_pending_per_caller,
        max_held: a.max_held,
    })
}

/// A key for compiling the rules at validation time; the real key is read when serving.
const PLACEHOLDER_TOKEN_KEY: &str = "00000000000000000000000000000000";

fn validate_masking(
    m: Masking,
    upstreams: &[super::Upstream],
    base: &Path,
    p: &mut Problems,
) -> crate::masking::MaskingPolicy {
    let imported = match &m.gitleaks {
        Some(file) => super::gitleaks::load(&resolve(base, file), "masking.gitleaks", &mut |field, message| {
            p.add(field, message)
        }),
        None => super::gitleaks::Loaded::default(),
    };
    let rules = MaskConfig {
        disabled: m.disabled,
        sensitive_keys: m.sensitive_keys,
        custom: m.custom,
        gitleaks: imported.rules,
        styles: m.styles,
        default_style: m.default_style,
        token_key: None,
    };
    let uses_token = rules.default_style == Style::Token || rules.styles.values().any(|s| *s == Style::Token);
    if uses_token && m.token_key_file.is_none() {
        p.add("masking.token_key_file", "required when a kind uses the token style");
    }
    let kinds: BTreeSet<String> = gatehouse_core::mask::builtin_kinds()
        .iter()
        .map(|k| (*k).to_owned())
        .chain(rules.custom.iter().map(|c| c.name.clone()))
        .chain(rules.gitleaks.iter().map(|r| r.id.clone()))
        .collect();
    let check = MaskConfig {
        token_key: uses_token.then(|| PLACEHOLDER_TOKEN_KEY.to_owned()),
        ..rules.clone()
    };
    if let Err(e) = Masker::new(&check) {
        for problem in e.problems {
            // The engine names the rule field (`custom[0].pattern: …`,
            // `gitleaks[aws-access-token].regex: …`) when it can.
            match problem.split_once(": ") {
                Some((field, message)) if !field.contains(' ') => p.add(format!("masking.{field}"), message),
                _ => p.add("masking", problem),
            }
        }
    }
    let mut reveal = Vec::new();
    for (i, r) in m.reveal.into_iter().enumerate() {
        let at = format!("masking.reveal[{i}]");
        if r.kinds.is_empty() {
            p.add(format!("{at}.kinds"), "list at least one kind");
        }
        for kind in &r.kinds {
            if !kinds.contains(kind) {
                p.add(format!("{at}.kinds"), format!("{kind:?} is not a known kind"));
            }
        }
        if r.groups.is_empty() {
            p.add(format!("{at}.groups"), "list at least one group");
        }
        for name in r.upstreams.iter().flatten() {
            if !upstreams.iter().any(|u| &u.name == name) {
                p.add(format!("{at}.upstreams"), format!("{name:?} is not an upstream"));
            }
        }
        reveal.push(crate::masking::RevealRule {
            kinds: r.kinds.into_iter().collect(),
            groups: r.groups.into_iter().collect(),
            upstreams: r.upstreams.map(|u| u.into_iter().collect()),
            tools: r.tools,
        });
    }
    crate::masking::MaskingPolicy {
        rules,
        token_key_file: m.token_key_file.map(|f| resolve(base, &f)),
        reveal,
        notes: imported.notes,
    }
}

/// Every structural problem of a document that does not deserialize as a whole (serde stops
/// at the first): each section is read on its own, unknown fields and fields of the wrong
/// type are taken out one by one and the section read again, and required sections that
/// are missing are named. Paths are the config's (`service.rest_listen`, `upstreams[0].url`).
/// `text` with each `${NAME}` replaced by that environment variable (e.g. a writer id
/// derived from the pod name: `gatehouse-${POD_NAME}`). An unset or empty one is an error.
pub fn expand_env(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("{text:?}: `${{` without a closing `}}`"))?;
        let name = &after[..end];
        let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(format!("{text:?}: ${{{name}}} is not an environment variable name"));
        }
        match std::env::var(name) {
            Ok(value) if !value.is_empty() => out.push_str(&value),
            _ => {
                return Err(format!(
                    "{text:?} names ${{{name}}}, which is not set in the environment"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

pub fn structure_problems(doc: &serde_yaml::Value) -> Structure {
    use serde_yaml::Value;
    const SECTIONS: [(&str, bool); 9] = [
        ("service", true),
        ("identity", true),
        ("audit", true),
        ("upstreams", true),
        ("envoy", true),
        ("masking", false),
        ("policy", false),
        ("approvals", false),
        ("recording", false),
    ];
    let mut problems = Vec::new();
    let problem = |path: String, message: String| super::ConfigError { path, message };
    let Value::Mapping(map) = doc else {
        return Structure {
            problems: vec![problem("$".into(), "the file must be a mapping of sections".into())],
            repaired: None,
            stand_ins: Vec::new(),
        };
    };
    let mut repaired = serde_yaml::Mapping::new();
    let mut stand_ins = Vec::new();
    let mut every_section_reads = true;
    for key in map.keys() {
        let name = key.as_str().unwrap_or_default();
        if !SECTIONS.iter().any(|(s, _)| *s == name) {
            let expected: Vec<&str> = SECTIONS.iter().map(|(s, _)| *s).collect();
            let shown = serde_yaml::to_string(key).unwrap_or_default();
            problems.push(problem(
                shown.trim().to_owned(),
                format!("unknown section (expected one of {})", expected.join(", ")),
            ));
        }
    }
    for (name, required) in SECTIONS {
        let section = match map.get(name) {
            Some(section) => section.clone(),
            None if required => {
                problems.push(problem(name.into(), "missing: this section is required".into()));
                // Stand-ins of its own (not reported again) let the other sections' values be checked.
                stand_ins.push(name.to_owned());
                if name == "upstreams" {
                    Value::Sequence(Vec::new())
                } else {
                    Value::Mapping(serde_yaml::Mapping::new())
                }
            }
            None => continue,
        };
        // Read from text, not from the value: only then do serde_yaml's errors carry the
        // path inside the section (`grpc_tls.cert_file: …`).
        let read = |v: &Value| -> Result<(), serde_yaml::Error> {
            let text = serde_yaml::to_string(v)?;
            match name {
                "service" => serde_yaml::from_str::<Service>(&text).map(drop),
                "identity" => serde_yaml::from_str::<Identity>(&text).map(drop),
                "audit" => serde_yaml::from_str::<Audit>(&text).map(drop),
                "upstreams" => serde_yaml::from_str::<Vec<Upstream>>(&text).map(drop),
                "envoy" => serde_yaml::from_str::<Envoy>(&text).map(drop),
                "masking" => serde_yaml::from_str::<Masking>(&text).map(drop),
                "policy" => serde_yaml::from_str::<Option<Policy>>(&text).map(drop),
                "recording" => serde_yaml::from_str::<Vec<crate::recording::RawRecordingRule>>(&text).map(drop),
                _ => serde_yaml::from_str::<Approvals>(&text).map(drop),
            }
        };
        let mut own = Vec::new();
        let read_as = section_problems(name, section, read, &mut own, &mut stand_ins);
        if map.contains_key(name) {
            problems.extend(own);
        }
        match read_as {
            Some(section) => {
                repaired.insert(Value::String(name.to_owned()), section);
            }
            None => every_section_reads = false,
        }
    }
    Structure {
        problems,
        repaired: every_section_reads.then_some(Value::Mapping(repaired)),
        stand_ins,
    }
}

/// What the structural pass found in a file that does not read as a config.
pub struct Structure {
    /// Every structural problem: unknown sections and fields, missing ones, wrong types.
    pub problems: Vec<super::ConfigError>,
    /// The file with the unknown and mistyped fields taken out and stand-ins for the missing
    /// ones, when that reads: its values can then be checked as a whole file's are.
    pub repaired: Option<serde_yaml::Value>,
    /// Paths that hold a stand-in in `repaired` (a problem about them is not the file's).
    pub stand_ins: Vec<String>,
}

impl Structure {
    /// Whether `path` is, or is inside, a stand-in.
    pub fn stands_in(&self, path: &str) -> bool {
        self.stand_ins.iter().any(|s| {
            path.strip_prefix(s.as_str())
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('.') || rest.starts_with('['))
        })
    }
}

/// Reads `section` again and again, taking out the field each error names and standing in
/// for each missing one, until it reads (then it is returned) or an error names nothing that
/// can be taken out. The stand-ins' paths are added to `stand_ins`.
fn section_problems(
    name: &str,
    mut section: serde_yaml::Value,
    read: impl Fn(&serde_yaml::Value) -> Result<(), serde_yaml::Error>,
    problems: &mut Vec<super::ConfigError>,
    stand_ins: &mut Vec<String>,
) -> Option<serde_yaml::Value> {
    let mut reported: Vec<String> = Vec::new();
    // Required fields found missing, and the stand-ins tried for each so far.
    let mut missing: Vec<(String, usize)> = Vec::new();
    for _ in 0..64 {
        let Err(e) = read(&section) else {
            stand_ins.extend(missing.into_iter().map(|(path, _)| path));
            return Some(section);
        };
        let text = e.to_string();
        // The location is in the section's text, not the file's: leave it out.
        let text = text.split(" at line ").next().unwrap_or_default().to_owned();
        // serde_yaml prefixes the path inside the section (`grpc_tls.cert_file: …`, `[0].url: …`).
        let (inner, message) = match text.split_once(": ") {
            Some((p, m)) if !p.is_empty() && !p.contains(' ') => {
                // A list's items come as `.[0]`.
                (Some(p.trim_start_matches('.').to_owned()), m.to_owned())
            }
            _ => (None, text.clone()),
        };
        let join = |field: &str| match &inner {
            Some(p) if p.starts_with('[') => format!("{name}{p}.{field}"),
            Some(p) => format!("{name}.{p}.{field}"),
            None => format!("{name}.{field}"),
        };
        let at = match &inner {
            Some(p) if p.starts_with('[') => format!("{name}{p}"),
            Some(p) => format!("{name}.{p}"),
            None => name.to_owned(),
        };
        if let Some(field) = quoted_field(&message, "unknown field `") {
            problems.push(super::ConfigError {
                path: join(&field),
                message: message
                    .split_once(", expected")
                    .map_or(message.clone(), |(m, _)| m.to_owned()),
            });
            if !remove_path(&mut section, inner.as_deref(), Some(&field)) {
                return None;
            }
            continue;
        }
        if let Some(field) = quoted_field(&message, "missing field `") {
            let path = join(&field);
            // A field already reported for its type is missing now because it was taken out.
            if !reported.contains(&path) {
                problems.push(super::ConfigError {
                    path: path.clone(),
                    message: "missing: this field is required".into(),
                });
            }
            // Put a stand-in there to read on: the next error is about something else.
            missing.push((path, 0));
            if !insert_stand_in(&mut section, inner.as_deref(), &field, 0) {
                return None;
            }
            continue;
        }
        // A stand-in of the wrong type: try the next kind of value.
        if let Some((_, tries)) = missing.iter_mut().find(|(p, _)| *p == at) {
            *tries += 1;
            let (parent, field) = match at.rsplit_once('.') {
                Some((parent, field)) => (parent.strip_prefix(name).map(|p| p.trim_start_matches('.')), field),
                None => (None, at.as_str()),
            };
            let parent = parent.filter(|p| !p.is_empty());
            if !insert_stand_in(&mut section, parent, field, *tries) {
                return None;
            }
            continue;
        }
        problems.push(super::ConfigError {
            path: at.clone(),
            message: message.clone(),
        });
        reported.push(at);
        if inner.is_none() || !remove_path(&mut section, inner.as_deref(), None) {
            return None;
        }
    }
    None
}

/// Sets member `field` of the mapping at `path` in `value` to the `kind`th stand-in (a
/// string, a mapping, a list, a number, a boolean). `false` when there is none left or no
/// such mapping.
fn insert_stand_in(value: &mut serde_yaml::Value, path: Option<&str>, field: &str, kind: usize) -> bool {
    use serde_yaml::Value;
    let stand_in = match kind {
        0 => Value::String("stand-in".into()),
        1 => Value::Mapping(serde_yaml::Mapping::new()),
        2 => Value::Sequence(Vec::new()),
        3 => Value::Number(0.into()),
        4 => Value::Bool(false),
        _ => return false,
    };
    match node_at(value, &path_steps(path)) {
        Some(Value::Mapping(map)) => {
            map.insert(Value::String(field.to_owned()), stand_in);
            true
        }
        _ => false,
    }
}

/// serde_yaml's path (`a.b[0].c`) as steps: `a`, `b`, `[0]`, `c`.
fn path_steps(path: Option<&str>) -> Vec<String> {
    let mut steps = Vec::new();
    for part in path.unwrap_or_default().split('.').filter(|p| !p.is_empty()) {
        let (name, mut rest) = part.split_at(part.find('[').unwrap_or(part.len()));
        if !name.is_empty() {
            steps.push(name.to_owned());
        }
        while let Some(close) = rest.find(']') {
            let (index, after) = rest.split_at(close + 1);
            steps.push(index.to_owned());
            rest = after;
        }
    }
    steps
}

/// The node `steps` lead to in `value`, if there is one.
fn node_at<'v>(value: &'v mut serde_yaml::Value, steps: &[String]) -> Option<&'v mut serde_yaml::Value> {
    steps.iter().try_fold(value, |node, step| {
        match step.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            Some(i) => node.get_mut(i.parse::<usize>().ok()?),
            None => node.get_mut(step.as_str()),
        }
    })
}

/// The name in backquotes after `prefix` in `message`.
fn quoted_field(message: &str, prefix: &str) -> Option<String> {
    let rest = message.split_once(prefix)?.1;
    Some(rest.split_once('`')?.0.to_owned())
}

/// Takes out of `value` the node at `path` (serde_yaml's `a.b[0].c`), then its member
/// `field` when given. `false` when there is no such node.
fn remove_path(value: &mut serde_yaml::Value, path: Option<&str>, field: Option<&str>) -> bool {
    let mut steps = path_steps(path);
    steps.extend(field.map(str::to_owned));
    let Some((last, parents)) = steps.split_last() else {
        return false;
    };
    match (
        last.strip_prefix('[').and_then(|s| s.strip_suffix(']')),
        node_at(value, parents),
    ) {
        (Some(i), Some(serde_yaml::Value::Sequence(items))) => match i.parse::<usize>() {
            Ok(i) if i < items.len() => {
                items.remove(i);
                true
            }
            _ => false,
        },
        (None, Some(serde_yaml::Value::Mapping(map))) => map.remove(last.as_str()).is_some(),
        _ => false,
    }
}
