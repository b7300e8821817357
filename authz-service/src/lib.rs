//! The Gatehouse service: everything behind the `gatehouse` binary.
//!
//! Reading order: [`config`] (the one file), [`server`] (what starts), [`authz`] (the
//! decision per request), [`identity`], [`audit`] (on the [`db`]), [`ingest`] (records from the filter), [`masking`],
//! [`policy`], [`approvals`], [`credentials`] (what goes upstream in place of the caller's
//! token), [`aws`] (STS sessions per caller and SigV4),
//! [`rest`], [`envoy_config`] (the rendered Envoy bootstrap), [`cli`].

pub mod approvals;
pub mod archive;
pub mod audit;
pub mod authz;
pub mod aws;
pub mod background;
pub mod cli;
pub mod config;
pub mod credentials;
pub mod db;
pub mod envoy_config;
pub mod evidence;
pub mod export;
pub mod grpc_tls;
pub mod identity;
pub mod ingest;
pub mod masking;
pub mod metrics;
pub mod policy;
pub mod private_file;
pub mod recording;
pub mod rest;
pub mod server;
pub mod sessions;
#[cfg(test)]
pub(crate) mod test_support;

use std::sync::Arc;

/// Shared state of a running service: what the listeners serve from. Its parts are made and
/// wired in [`server::Server::start`]; none of them holds or takes the whole.
pub struct AppState {
    pub config: config::Config,
    pub identity: Arc<identity::Verifier>,
    pub audit: audit::AuditLog,
    pub metrics: metrics::Metrics,
    pub dev_issuer: Option<identity::dev_issuer::DevIssuer>,
    /// The masking engine with the configured rules (records are masked with it).
    pub masker: gatehouse_core::mask::Masker,
    /// The policy in force (`None`: no `policy` section); replaced when the file changes.
    pub policy: policy::InForce,
    /// The recording rules in force; replaced with the policy when the file changes.
    pub recording: policy::InForce<Arc<recording::Recording>>,
    pub approvals: Arc<approvals::Approvals>,
    /// STS sessions per caller for the `aws_sigv4` upstreams.
    pub aws: aws::AwsSessions,
    /// The secret that binds MCP sessions to their caller.
    pub sessions: authz::SessionSecret,
    /// The session index of the trail, for auditors.
    pub session_index: sessions::Sessions,
    /// What the exporters and the archive have done (`/metrics`, `/healthz`).
    pub export: export::Statuses,
}
