//! The Check as a chain of steps: identify → upstream access → policy → approval →
//! credential, each returning what the next needs or the [`Denial`] that ends the chain.
//! Commit and answer follow in `mod.rs` and `answer.rs`. The body is parsed once
//! ([`Request::parse`]) and handed to every step; each step notes what it learned in the
//! request record.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_core::mask::{MaskCounts, Reveal};
use gatehouse_core::mcp;
use gatehouse_core::session;
use gatehouse_core::wire::{self, REQUEST_ID_HEADER, is_request_id};
use serde_json::Value;

use super::answer::{Allowed, Decision};
use super::denial::{Denial, Stopped};
use super::record::RequestRecord;
use super::{HttpRequestView, SessionCheck};
use crate::AppState;
use crate::approvals::{Call, Gate, GrantUse};
use crate::audit::NewRecord;
use crate::config::Upstream;
use crate::credentials::{self, ClientCall, UpstreamAuth};
use crate::identity::{IdentityError, Principal};
use crate::policy::{ApprovalSpec, Facts, Outcome, Policy, Verdict};

/// What a Check keeps of Envoy's timeout to commit its record and answer.
const CHECK_MARGIN: Duration = Duration::from_millis(500);

/// One Check's request, its body parsed once.
pub struct Request<'a> {
    pub view: &'a HttpRequestView<'a>,
    /// The body's messages (`None`: no body, as for a GET stream or a DELETE).
    pub envelope: Option<Result<mcp::Envelope, mcp::ParseError>>,
}

impl<'a> Request<'a> {
    pub fn parse(view: &'a HttpRequestView<'a>) -> Self {
        let envelope = (!view.body.is_empty()).then(|| mcp::parse_body(view.body));
        Self { view, envelope }
    }

    /// The messages, when the body is a valid one.
    pub fn parsed(&self) -> Option<&mcp::Envelope> {
        self.envelope.as_ref().and_then(|e| e.as_ref().ok())
    }

    fn first(&self) -> Option<&mcp::Message> {
        self.parsed().and_then(mcp::Envelope::first)
    }

    /// The id a refusal answers: the first message's, or the one invalid params came with.
    fn jsonrpc_id(&self) -> Option<Value> {
        match &self.envelope {
            Some(Err(mcp::ParseError::InvalidParams { id, .. })) => id.clone(),
            _ => self.first().and_then(|m| m.id.clone()),
        }
    }

    /// The id the audit-unavailable answer carries: the first parsed message's only.
    fn first_id(&self) -> Option<Value> {
        self.first().and_then(|m| m.id.clone())
    }
}

/// What the steps found for a call that may go.
struct Passed<'s> {
    principal: Principal,
    upstream: &'s Upstream,
    /// Why it may go, for the record.
    reason: String,
    policy: Option<Arc<Policy>>,
    upstream_session: Option<String>,
    session_key: Option<String>,
    upstream_auth: UpstreamAuth,
    /// An approval's `used` record, committed with the request record.
    extra: Vec<NewRecord>,
    grant: Option<GrantUse>,
}

/// Decides on a request: runs the steps and builds the record to commit and the answer.
pub async fn decide(state: &AppState, view: &HttpRequestView<'_>) -> Decision {
    // Envoy gives up on the Check after ext_authz_timeout_ms: what waits inside it (STS) stops
    // early enough for the answer and its record to go out first.
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(state.config.envoy.ext_authz_timeout_ms).saturating_sub(CHECK_MARGIN);
    let request = Request::parse(view);
    let mut record = RequestRecord::new(view, request.parsed(), &state.masker);
    let (request_id, passed) = match request_id(view) {
        Ok(id) => {
            let passed = steps(state, &request, &id, &mut record, deadline).await;
            (id, passed)
        }
        Err(denial) => (new_request_id(), Err(denial)),
    };
    record.apply_recording(&state.recording.current(), view.body.len() as u64);
    let (record, extra, grant, outcome) = match passed {
        Ok(passed) => {
            let (principal, upstream) = (&passed.principal, &passed.upstream.name);
            let reveal = state
                .config
                .masking
                .reveal_plan(&principal.groups, upstream, request.parsed());
            // Only a tools/list answer is filtered: other calls skip the walk and the header.
            let tools = passed
                .policy
                .as_ref()
                .filter(|_| request.parsed().is_some_and(mcp::Envelope::lists_tools))
                .map(|p| p.tool_visibility(&principal.subject, &principal.groups, upstream));
            let record = record.allowed(&passed.reason, &reveal);
            let allowed = Allowed {
                subject: passed.principal.subject,
                reveal,
                tools,
                upstream_auth: passed.upstream_auth,
                upstream_session: passed.upstream_session,
                session_key: passed.session_key,
            };
            (record, passed.extra, passed.grant, Ok(allowed))
        }
        Err(denial) => (record.denied(&denial.answer()), Vec::new(), None, Err(denial)),
    };
    Decision {
        request_id,
        record: Some(record),
        extra,
        grant,
        jsonrpc_id: request.jsonrpc_id(),
        unrecorded_jsonrpc_id: request.first_id(),
        outcome,
    }
}

/// The chain, for a request the filter numbered.
async fn steps<'s>(
    state: &'s AppState,
    request: &Request<'_>,
    request_id: &str,
    record: &mut RequestRecord,
    deadline: tokio::time::Instant,
) -> Result<Passed<'s>, Denial> {
    let upstream = upstream(state, request.view, request_id)?;
    let principal = identify(state, request, request_id, record).await?;
    let (upstream_session, session_key) = upstream_access(state, upstream, &principal, request.view, record)?;
    let policy = state.policy.current();
    let mut passed = Passed {
        reason: "caller's group may use the upstream".to_owned(),
        policy: policy.clone(),
        upstream_session,
        session_key,
        upstream_auth: UpstreamAuth::default(),
        extra: Vec::new(),
        grant: None,
        principal,
        upstream,
    };
    if let (Some(policy), Some(env)) = (&policy, request.parsed()) {
        match policy_step(policy, &passed.principal, &upstream.name, env, record)? {
            Permit::Allowed(reason) => passed.reason = reason,
            Permit::NeedsApproval { rule, spec } => {
                approval(state, request, request_id, &mut passed, record, rule, spec).await?;
            }
        }
    }
    passed.upstream_auth = credential(
        state,
        request,
        request_id,
        &passed.principal,
        upstream,
        record,
        deadline,
    )
    .await?;
    Ok(passed)
}

/// The request id the filter set (the filter is first in the chain, so every request has one).
fn request_id(view: &HttpRequestView<'_>) -> Result<String, Denial> {
    match view.header(REQUEST_ID_HEADER).filter(|id| is_request_id(id)) {
        Some(id) => Ok(id.to_owned()),
        None => {
            tracing::error!(
                "A request reached ext_authz without a Gatehouse request id: is the gatehouse filter first in the chain?"
            );
            Err(Denial::MissingRequestId)
        }
    }
}

/// The upstream the route names.
fn upstream<'s>(state: &'s AppState, view: &HttpRequestView<'_>, request_id: &str) -> Result<&'s Upstream, Denial> {
    view.upstream
        .and_then(|name| state.config.upstreams.iter().find(|u| u.name == name))
        .ok_or_else(|| {
            tracing::error!(request_id, upstream = ?view.upstream, "The route names no known upstream; the rendered Envoy config is out of date.");
            Denial::UnknownUpstream
        })
}

/// Step 1: a well-formed call by a caller with a valid token.
async fn identify(
    state: &AppState,
    request: &Request<'_>,
    request_id: &str,
    record: &mut RequestRecord,
) -> Result<Principal, Denial> {
    if let Some(Err(e)) = &request.envelope {
        // The filter validates bodies first, so this means the filter is missing or outdated.
        return Err(Denial::MalformedBody(e.clone()));
    }
    match state.identity.verify_header(request.view.header("authorization")).await {
        Ok(principal) => {
            record.caller(&principal);
            Ok(principal)
        }
        Err(error) => {
            if let Some(detail) = error.detail() {
                tracing::info!(request_id, %error, detail, "Token refused.");
            }
            Err(match error {
                IdentityError::KeysUnavailable(_) => Denial::KeysUnavailable(error),
                error => Denial::TokenRefused {
                    error,
                    resource_metadata: resource_metadata_url(&state.config.service.public_url, request.view.path),
                },
            })
        }
    }
}

/// Step 2: the caller may use this upstream, and the session is theirs. Returns the
/// upstream's session id to forward and the key the filter tags a new one with.
fn upstream_access(
    state: &AppState,
    upstream: &Upstream,
    principal: &Principal,
    view: &HttpRequestView<'_>,
    record: &mut RequestRecord,
) -> Result<(Option<String>, Option<String>), Denial> {
    if upstream.allow_groups.is_disjoint(&principal.groups) {
        return Err(Denial::UpstreamForbidden {
            upstream: upstream.name.clone(),
        });
    }
    // A session id is a bearer capability: only the caller who opened it may use it.
    let session = match state
        .sessions
        .check(&principal.subject, &upstream.name, view.header(mcp::SESSION_ID_HEADER))
    {
        SessionCheck::None => None,
        SessionCheck::Bound(id) => {
            record.session(&id);
            Some(id)
        }
        SessionCheck::Foreign(id) => {
            record.session(&id);
            return Err(Denial::ForeignSession);
        }
    };
    let key = state
        .sessions
        .binding_key(&principal.subject, &upstream.name)
        .map(|key| session::key_header_value(&key));
    Ok((session, key))
}

/// What the policy lets through.
enum Permit<'p> {
    /// The call may go; why, for the record.
    Allowed(String),
    /// The rule (by id) wants an approval first.
    NeedsApproval { rule: &'p str, spec: &'p ApprovalSpec },
}

/// Step 3: the policy's verdict on every call in the body, its rule noted in the record.
fn policy_step<'p>(
    policy: &'p Policy,
    principal: &Principal,
    upstream: &str,
    env: &mcp::Envelope,
    record: &mut RequestRecord,
) -> Result<Permit<'p>, Denial> {
    let verdict = policy_verdict(policy, principal, upstream, env);
    record.policy_rule(verdict.rule_id);
    match (verdict.outcome, verdict.rule_id) {
        (Outcome::Allow, Some(rule)) => Ok(Permit::Allowed(format!("allowed by rule {rule:?}"))),
        (Outcome::Allow, None) => Ok(Permit::Allowed(
            "not a call (no method): the caller's group may use the upstream".into(),
        )),
        (Outcome::Deny, rule) => Err(Denial::PolicyDenied {
            rule: rule.map(str::to_owned),
        }),
        (Outcome::RequireApproval(spec), Some(rule)) => Ok(Permit::NeedsApproval { rule, spec }),
        (Outcome::RequireApproval(_), None) => Err(Denial::ApprovalWithoutRule),
    }
}

/// The policy's verdict on a request: every JSON-RPC request and notification in it must be
/// allowed (the first one that is not decides). Responses to the server's own requests, and
/// bodiless requests (GET streams, DELETE), are not calls: the upstream's groups govern them.
fn policy_verdict<'p>(policy: &'p Policy, principal: &Principal, upstream: &str, env: &mcp::Envelope) -> Verdict<'p> {
    let mut first_allow = None;
    for m in env.messages.iter().filter(|m| m.method.is_some()) {
        let tool = (m.method.as_deref() == Some("tools/call"))
            .then(|| m.target_name())
            .flatten();
        let facts = Facts {
            subject: &principal.subject,
            groups: &principal.groups,
            upstream,
            method: m.method.as_deref(),
            tool,
            arguments: m.arguments(),
        };
        let verdict = policy.evaluate(&facts);
        if verdict.outcome != &Outcome::Allow {
            return verdict;
        }
        first_allow.get_or_insert(verdict);
    }
    first_allow.unwrap_or(Verdict {
        rule_id: None,
        outcome: &Outcome::Allow,
    })
}

/// Step 4: a call the rule wants approved waits for its approval (up to the hold) or uses
/// its grant; `passed` gets the grant, its `used` record and the reason.
async fn approval(
    state: &AppState,
    request: &Request<'_>,
    request_id: &str,
    passed: &mut Passed<'_>,
    record: &mut RequestRecord,
    rule: &str,
    spec: &ApprovalSpec,
) -> Result<(), Denial> {
    let single =
        request.parsed().is_some_and(|env| env.messages.len() == 1) && request.first().is_some_and(|m| m.id.is_some());
    let Some(message) = request.first().filter(|_| single) else {
        return Err(Denial::ApprovalNeedsSingleRequest { rule: rule.to_owned() });
    };
    // Everything the call acts on makes its key; approvers see it masked.
    let params = message.params.as_ref().map(|p| {
        let mut p = p.clone();
        if let Some(obj) = p.as_object_mut() {
            obj.remove("_meta");
        }
        p
    });
    let masked = if message.method.as_deref() == Some("tools/call") {
        record.masked_arguments()
    } else {
        let mut shown = params.clone().unwrap_or(Value::Null);
        state
            .masker
            .mask_value(&mut shown, &Reveal::none(), &mut MaskCounts::default());
        shown
    };
    let call = Call {
        subject: &passed.principal.subject,
        upstream: &passed.upstream.name,
        method: message.method.as_deref().unwrap_or_default(),
        tool: (message.method.as_deref() == Some("tools/call"))
            .then(|| message.target_name())
            .flatten(),
        params: params.as_ref(),
        masked_arguments: &masked,
        rule,
        spec,
        request_id,
    };
    // The hold is spent inside Envoy's ext_authz call: answer a second before it gives up.
    let hold_ms = (spec.hold_seconds * 1000).min(state.config.envoy.ext_authz_timeout_ms.saturating_sub(1000));
    match state.approvals.gate(&call, Duration::from_millis(hold_ms)).await {
        Ok(Gate::Granted { approval, used, hold }) => {
            record.approval(&approval, "used");
            passed.reason = format!(
                "allowed by rule {rule:?}: approval {} by {}",
                approval.id,
                approval.decided_by.as_deref().unwrap_or("-")
            );
            passed.extra.push(used);
            passed.grant = Some(hold);
            Ok(())
        }
        Ok(Gate::Refused(refusal)) => {
            tracing::info!(request_id, reason = %refusal.reason(), "A call that needs approval was refused.");
            Err(Denial::ApprovalRefused {
                rule: rule.to_owned(),
                refusal,
            })
        }
        Ok(Gate::Stopped(approval)) => {
            record.approval(&approval, approval.status.as_str());
            Err(Denial::approval_stopped(Stopped {
                rule: rule.to_owned(),
                approver_url: state.approvals.approver_url(&approval.id),
                approval,
            }))
        }
        Err(error) => {
            tracing::error!(request_id, %error, "Could not record an approval step; the call is refused.");
            Err(Denial::ApprovalsUnavailable { rule: rule.to_owned() })
        }
    }
}

/// Step 5, last, once the call may go: an AWS signature covers the time it is made.
async fn credential(
    state: &AppState,
    request: &Request<'_>,
    request_id: &str,
    principal: &Principal,
    upstream: &Upstream,
    record: &mut RequestRecord,
    deadline: tokio::time::Instant,
) -> Result<UpstreamAuth, Denial> {
    let view = request.view;
    let call = ClientCall {
        method: view.method,
        path: view.path,
        headers: view.headers,
        body: view.body,
    };
    let presented = credentials::present(&state.aws, upstream, principal, call, deadline).await;
    if let Some(presented) = presented.record {
        record.upstream_credential(presented);
    }
    presented.auth.map_err(|error| {
        let denial = Denial::from(error);
        tracing::warn!(
            request_id,
            reason = denial.answer().reason,
            "No upstream credential; the call is refused."
        );
        denial
    })
}

/// RFC 9728: the metadata of resource `https://gw/mcp` is at
/// `https://gw/.well-known/oauth-protected-resource/mcp`.
pub fn resource_metadata_url(public_url: &url::Url, path: &str) -> String {
    let base = public_url.as_str().trim_end_matches('/');
    let path = path.split('?').next().unwrap_or_default().trim_end_matches('/');
    format!("{base}/.well-known/oauth-protected-resource{path}")
}

/// A request id for a Check that came without one (it is refused, and recorded under it).
pub fn new_request_id() -> String {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    wire::format_request_id(now_ms, &rand::random())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ids(body: &[u8]) -> (Option<Value>, Option<Value>) {
        let view = HttpRequestView {
            body,
            ..HttpRequestView::default()
        };
        let request = Request::parse(&view);
        (request.jsonrpc_id(), request.first_id())
    }

    #[test]
    fn the_body_is_parsed_once_and_both_answer_ids_come_from_it() {
        let call = br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"echo"}}"#;
        assert_eq!(ids(call), (Some(json!(4)), Some(json!(4))));
        // Invalid params keep their id for the refusal; a record that cannot be written does not.
        let bad = br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":["echo"]}}"#;
        assert_eq!(ids(bad), (Some(json!(4)), None));
        assert_eq!(
            ids(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#),
            (None, None)
        );
        assert_eq!(ids(b""), (None, None));
    }

    #[test]
    fn only_the_filters_request_ids_are_taken() {
        let with = |id: &str| {
            let headers = std::collections::HashMap::from([(REQUEST_ID_HEADER.to_owned(), id.to_owned())]);
            let view = HttpRequestView {
                headers: Some(&headers),
                ..HttpRequestView::default()
            };
            request_id(&view).ok()
        };
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(with(id).as_deref(), Some(id));
        for bad in ["../../etc", "0123456789ABCDEF0123456789ABCDEF", &id[1..], ""] {
            assert!(with(bad).is_none(), "{bad}");
        }
        assert!(is_request_id(&new_request_id()));
    }

    #[test]
    fn resource_metadata_sits_under_the_well_known_path_of_the_resource() {
        let url = url::Url::parse("https://gw.example/").unwrap();
        assert_eq!(
            resource_metadata_url(&url, "/mcp/?x=1"),
            "https://gw.example/.well-known/oauth-protected-resource/mcp"
        );
    }
}
