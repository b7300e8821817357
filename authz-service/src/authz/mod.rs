//! Envoy ext_authz (v3, gRPC): the decision point for every MCP request.
//!
//! For each request: find the upstream (from the route's context extensions, so routing
//! and decisions cannot disagree), verify the caller's token, check the upstream's groups,
//! and commit the request record to the audit trail *before* answering OK. If the record
//! cannot be committed the request is denied: no unaudited request reaches an upstream.
//! The client's `Authorization` header is removed from what goes upstream. An
//! `Mcp-Session-Id` must be one the caller opened on this upstream (`session.rs`); the
//! upstream gets its own plain id back.
//!
//! Reading order: `check.rs` (the steps: identify, upstream access, policy, approval,
//! credential), `denial.rs` (every reason a call is refused and its one answer),
//! `record.rs` (the request record the steps fill in), then [`commit`] here and
//! `answer.rs` (what goes back to Envoy).

mod answer;
pub mod check;
mod denial;
mod record;
mod session;

use std::{collections::HashMap, sync::Arc, time::Instant};

use envoy_types::ext_authz::v3::pb::{Authorization, CheckRequest, CheckResponse};

pub use answer::{Allowed, Decision};
pub use check::resource_metadata_url;
pub use denial::{Answer, Denial, Stopped};
pub use session::{SessionCheck, SessionSecret};

use crate::{
    AppState,
    approvals::GrantUse,
    audit::{AuditError, NewRecord},
};

/// The context extension (set per route in the rendered Envoy config) naming the upstream.
pub const UPSTREAM_EXTENSION: &str = "upstream";

pub struct AuthzService {
    state: Arc<AppState>,
}

impl AuthzService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self { state }
    }
}

/// What Envoy told us about one HTTP request.
#[derive(Debug, Default)]
pub struct HttpRequestView<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub headers: Option<&'a HashMap<String, String>>,
    pub body: &'a [u8],
    pub upstream: Option<&'a str>,
}

impl<'a> HttpRequestView<'a> {
    pub fn from_check(req: &'a CheckRequest) -> Self {
        let attrs = req.attributes.as_ref();
        let http = attrs.and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref());
        let upstream = attrs
            .and_then(|a| a.context_extensions.get(UPSTREAM_EXTENSION))
            .map(String::as_str);
        match http {
            Some(h) => Self {
                method: &h.method,
                path: &h.path,
                headers: Some(&h.headers),
                // pack_as_bytes puts the body in raw_body; fall back to the UTF-8 `body`.
                body: if h.raw_body.is_empty() {
                    h.body.as_bytes()
                } else {
                    &h.raw_body
                },
                upstream,
            },
            None => Self {
                upstream,
                ..Self::default()
            },
        }
    }

    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.and_then(|h| h.get(name)).map(String::as_str)
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let view = HttpRequestView::from_check(&req);
        let state = &self.state;
        let mut decided = check::decide(state, &view).await;
        let request_id = decided.request_id.clone();
        let (committed, grant) = match decided.take_records() {
            Ok(records) => commit(state, records, decided.grant.take()).await,
            // The grant is dropped unrecorded: its use is given back.
            Err(error) => (Err(error), None),
        };
        let used_grant = grant.is_some();
        let response = match committed {
            Ok(record) => {
                tracing::info!(
                    request_id = %request_id,
                    seq = record.seq,
                    subject = record.data.get("subject").and_then(serde_json::Value::as_str).unwrap_or("-"),
                    upstream = view.upstream.unwrap_or("-"),
                    decision = if decided.allowed() { "allow" } else { "deny" },
                    "Request decided."
                );
                if decided.allowed() {
                    state.metrics.checks_allowed.inc();
                } else {
                    state.metrics.checks_denied.inc();
                }
                if used_grant {
                    state.metrics.approvals_used.inc();
                }
                decided.into_check_response()
            }
            Err(error) => {
                state.metrics.checks_failed.inc();
                // The task dropped the grant it did not keep: its use is given back.
                log_audit_failure(&request_id, &error);
                decided.audit_unavailable().into_check_response()
            }
        };
        state.metrics.check_latency.observe(started.elapsed());
        // Kept only here, with nothing left to wait for: had Envoy given up on the Check
        // at any await above, this future was dropped with the grant, which gave the use
        // back and recorded that (`use_returned`) after its committed `used`.
        if let Some(grant) = grant {
            grant.keep();
        }
        Ok(tonic::Response::new(response))
    }
}

/// Commits a decision's records. With an approval's grant, the commit runs in its own task
/// (a Check Envoy gives up on must not stop it half-way) and hands the grant back once its
/// `used` record is committed; an uncommitted one is dropped there, giving the use back.
/// The caller keeps the grant when it answers.
async fn commit(
    state: &AppState,
    records: Vec<NewRecord>,
    grant: Option<GrantUse>,
) -> (Result<gatehouse_core::audit::Record, AuditError>, Option<GrantUse>) {
    let first = |r: Result<Vec<_>, AuditError>| r.map(|mut r| r.swap_remove(0));
    let Some(mut grant) = grant else {
        // The common case: no state to keep in step, no task to spawn.
        return (first(state.audit.append(records).await), None);
    };
    let audit = state.audit.clone();
    tokio::spawn(async move {
        let result = first(audit.append(records).await);
        match result {
            Ok(record) => {
                grant.recorded(&audit);
                (Ok(record), Some(grant))
            }
            Err(error) => (Err(error), None),
        }
    })
    .await
    .unwrap_or_else(|e| (Err(AuditError::Invalid(format!("commit task failed: {e}"))), None))
}

fn log_audit_failure(request_id: &str, error: &AuditError) {
    tracing::error!(request_id, %error, "Could not record the request; it is denied and not forwarded.");
}

#[cfg(test)]
mod tests;
