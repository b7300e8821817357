//! The decision for one request and how it goes back to Envoy.

use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
    pb::{CheckResponse, HttpStatusCode},
};
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value::Kind};
use gatehouse_core::mask::{MaskCounts, Masker, REVEAL_IDS_HEADER, Reveal, RevealPlan};
use gatehouse_core::session::SESSION_KEY_HEADER;
use gatehouse_core::tools::{TOOLS_HEADER, ToolVisibility};
use gatehouse_core::upstream::CREDENTIAL_HEADER;
use gatehouse_core::{jsonrpc_error, mcp};
use serde_json::{Value, json};

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::{HttpRequestView, REQUEST_ID_HEADER, SessionCheck};
use crate::approvals::{Approval, Call, Gate, GrantUse, Status};
use crate::audit::NewRecord;
use crate::aws::sign;
use crate::config::{Secret, Upstream, UpstreamCredentials};
use crate::identity::Principal;
use crate::policy::{Facts, Outcome, Policy, Verdict};
use crate::{AppState, identity::IdentityError, masking::REVEAL_HEADER};

/// What a Check keeps of Envoy's timeout to commit its record and answer.
const CHECK_MARGIN: Duration = Duration::from_millis(500);

/// Why a request is refused, and what the client is told.
#[derive(Debug, Clone)]
pub struct Denial {
    pub http_status: u16,
    pub jsonrpc_code: i64,
    /// Safe to show the client.
    pub message: String,
    /// For the record and the log only.
    pub reason: String,
    /// Extra headers, such as `WWW-Authenticate`.
    pub headers: Vec<(String, String)>,
    /// More for the JSON-RPC error's `data` (next to `request_id`).
    pub data: Option<Value>,
}

impl Denial {
    /// A denial without extra headers or `data`.
    pub fn new(http_status: u16, jsonrpc_code: i64, message: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            http_status,
            jsonrpc_code,
            message: message.into(),
            reason: reason.into(),
            headers: Vec::new(),
            data: None,
        }
    }
}

/// A decided request: its record (to commit first) and its answer.
#[derive(Debug)]
pub struct Decision {
    pub request_id: String,
    pub record: Value,
    /// Records committed with the request record (an approval's `used`).
    pub extra: Vec<NewRecord>,
    /// The approval's grant this call uses: given back unless kept once the records are committed.
    pub grant: Option<GrantUse>,
    pub jsonrpc_id: Option<Value>,
    pub outcome: Result<Allowed, Denial>,
}

/// What an allowed request carries back to Envoy.
#[derive(Debug, Clone)]
pub struct Allowed {
    pub subject: String,
    /// Kinds the filter may leave in clear in the answer to this caller, per message of a batch.
    pub reveal: RevealPlan,
    /// The tools this caller could call here (`None`: no policy, every tool): the filter
    /// drops the others from `tools/list` answers.
    pub tools: Option<ToolVisibility>,
    /// The upstream's own credential, sent in place of the client's.
    pub upstream_auth: UpstreamAuth,
    /// The upstream's session id, sent in place of the caller's bound one.
    pub upstream_session: Option<String>,
    /// The key the filter tags a new upstream session id with (hex).
    pub session_key: Option<String>,
}

/// What the gateway presents to the upstream for one call.
#[derive(Debug, Clone, Default)]
pub struct UpstreamAuth {
    /// `static_header` or `aws_sigv4` (for the filter); `None`: the gateway presents nothing.
    pub kind: Option<&'static str>,
    /// Set on the request, overwriting what the client sent in them.
    pub headers: Vec<(String, Secret)>,
    /// Client headers taken off besides `authorization` (its `x-amz-*` next to a signature).
    pub remove: Vec<String>,
}

impl Decision {
    pub fn allowed(&self) -> bool {
        self.outcome.is_ok()
    }

    /// The answer when the request record could not be committed.
    pub fn audit_unavailable(view: &HttpRequestView<'_>, request_id: String) -> Self {
        let jsonrpc_id = first_message(view).and_then(|m| m.id);
        Self {
            request_id,
            record: Value::Null,
            extra: Vec::new(),
            grant: None,
            jsonrpc_id,
            outcome: Err(Denial::new(
                503,
                jsonrpc_error::INTERNAL_ERROR,
                "The gateway cannot record this request in its audit trail, so it was not forwarded. Try again later.",
                "audit store unavailable",
            )),
        }
    }

    pub fn into_check_response(self) -> CheckResponse {
        match self.outcome {
            Ok(Allowed {
                subject,
                reveal,
                tools,
                upstream_auth,
                upstream_session,
                session_key,
            }) => {
                let mut ok = OkHttpResponseBuilder::new();
                if let Some(id) = upstream_session {
                    ok.add_header(
                        mcp::SESSION_ID_HEADER,
                        id,
                        Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                        false,
                    );
                }
                if let Some(key) = session_key {
                    // For the filter, which removes it and tags the upstream's session id.
                    ok.add_response_header(
                        SESSION_KEY_HEADER,
                        key,
                        Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                        true,
                    );
                }
                // The client's credential is for the gateway only; it never goes upstream.
                // (Envoy removes after it sets: an upstream credential in `authorization`
                // overwrites the client's instead.)
                if !upstream_auth
                    .headers
                    .iter()
                    .any(|(header, _)| header == "authorization")
                {
                    ok.remove_header("authorization");
                }
                for header in upstream_auth.remove {
                    ok.remove_header(header);
                }
                for (header, Secret(value)) in upstream_auth.headers {
                    ok.add_header(header, value, Some(HeaderAppendAction::OverwriteIfExistsOrAdd), false);
                }
                if let Some(kind) = upstream_auth.kind {
                    // For the filter, which removes it and turns a 401/403 to it into a clear error.
                    ok.add_response_header(
                        CREDENTIAL_HEADER,
                        kind,
                        Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                        true,
                    );
                }
                // For the filter, which removes them. Overwrite whatever the upstream sent.
                ok.add_response_header(
                    REVEAL_HEADER,
                    reveal.all.to_header(),
                    Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                    true,
                );
                ok.add_response_header(
                    REVEAL_IDS_HEADER,
                    reveal
                        .by_id
                        .as_ref()
                        .map_or_else(|| "*".to_owned(), RevealPlan::ids_header),
                    Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                    true,
                );
                if let Some(tools) = &tools {
                    ok.add_response_header(
                        TOOLS_HEADER,
                        tools.to_header(),
                        Some(HeaderAppendAction::OverwriteIfExistsOrAdd),
                        true,
                    );
                }
                let mut response = CheckResponse::with_status(tonic::Status::ok("allowed"));
                response.set_http_response(ok);
                response.set_dynamic_metadata(Some(metadata(&[
                    ("request_id", &self.request_id),
                    ("subject", &subject),
                    ("decision", "allow"),
                ])));
                response
            }
            Err(denial) => {
                let mut denied = DeniedHttpResponseBuilder::new();
                denied.set_http_status(status_code(denial.http_status));
                denied.add_header("content-type", "application/json", None, false);
                denied.add_header(REQUEST_ID_HEADER, self.request_id.clone(), None, false);
                for (k, v) in &denial.headers {
                    denied.add_header(k.clone(), v.clone(), None, false);
                }
                let mut data = json!({"request_id": self.request_id});
                if let (Some(Value::Object(more)), Some(obj)) = (denial.data, data.as_object_mut()) {
                    obj.extend(more);
                }
                let body = jsonrpc_error::error_body(
                    self.jsonrpc_id.as_ref(),
                    denial.jsonrpc_code,
                    &denial.message,
                    Some(data),
                );
                denied.set_body(String::from_utf8_lossy(&body).into_owned());
                let grpc = if denial.http_status == 401 {
                    tonic::Status::unauthenticated(denial.message)
                } else {
                    tonic::Status::permission_denied(denial.message)
                };
                let mut response = CheckResponse::with_status(grpc);
                response.set_http_response(denied);
                response
            }
        }
    }
}

fn status_code(status: u16) -> HttpStatusCode {
    match status {
        200 => HttpStatusCode::Ok,
        400 => HttpStatusCode::BadRequest,
        401 => HttpStatusCode::Unauthorized,
        403 => HttpStatusCode::Forbidden,
        404 => HttpStatusCode::NotFound,
        413 => HttpStatusCode::PayloadTooLarge,
        429 => HttpStatusCode::TooManyRequests,
        503 => HttpStatusCode::ServiceUnavailable,
        _ => HttpStatusCode::InternalServerError,
    }
}

fn metadata(pairs: &[(&str, &str)]) -> Struct {
    Struct {
        fields: pairs
            .iter()
            .map(|(k, v)| {
                (
                    (*k).to_owned(),
                    PbValue {
                        kind: Some(Kind::StringValue((*v).to_owned())),
                    },
                )
            })
            .collect(),
    }
}

fn first_message(view: &HttpRequestView<'_>) -> Option<mcp::Message> {
    if view.body.is_empty() {
        return None;
    }
    mcp::parse_body(view.body)
        .ok()
        .and_then(|e| e.messages.into_iter().next())
}

/// Decides on a request. Pure apart from token verification (which may fetch keys).
pub async fn decide(state: &Arc<AppState>, view: &HttpRequestView<'_>) -> Decision {
    // Envoy gives up on the Check after ext_authz_timeout_ms: what waits inside it (STS) stops
    // early enough for the answer and its record to go out first.
    let deadline = tokio::time::Instant::now()
        + Duration::from_millis(state.config.envoy.ext_authz_timeout_ms).saturating_sub(CHECK_MARGIN);
    let request_id = view
        .header(REQUEST_ID_HEADER)
        .filter(|id| is_request_id(id))
        .map(str::to_owned);
    let envelope = if view.body.is_empty() {
        None
    } else {
        Some(mcp::parse_body(view.body))
    };
    let first = envelope.as_ref().and_then(|e| e.as_ref().ok()).and_then(|e| e.first());
    let jsonrpc_id = match &envelope {
        Some(Err(mcp::ParseError::InvalidParams { id, .. })) => id.clone(),
        _ => first.and_then(|m| m.id.clone()),
    };

    let mut record = json!({
        "subject": null,
        "groups": [],
        "upstream": view.upstream,
        "http_method": view.method,
        // Without the query string: it may carry secrets.
        "path": view.path.split('?').next().unwrap_or_default(),
        // The upstream's id, without the caller's tag (see `session.rs`).
        "session_id": view.header(mcp::SESSION_ID_HEADER).map(gatehouse_core::session::upstream_part),
        "protocol_version": view.header(mcp::PROTOCOL_VERSION_HEADER),
    });
    if let (Some(Ok(env)), Some(obj)) = (&envelope, record.as_object_mut()) {
        describe_messages(env, obj);
        mask_arguments(&state.masker, obj);
    }

    let deny = |record: Value, denial: Denial, request_id: String| {
        let mut record = record;
        if let Some(obj) = record.as_object_mut() {
            obj.insert("decision".into(), json!("deny"));
            obj.insert("reason".into(), json!(denial.reason));
            obj.insert("status".into(), json!(denial.http_status));
        }
        Decision {
            request_id,
            record,
            extra: Vec::new(),
            grant: None,
            jsonrpc_id: jsonrpc_id.clone(),
            outcome: Err(denial),
        }
    };

    let Some(request_id) = request_id else {
        tracing::error!(
            "A request reached ext_authz without a Gatehouse request id: is the gatehouse filter first in the chain?"
        );
        return deny(
            record,
            internal("request arrived without the filter's request id"),
            new_request_id(),
        );
    };
    let Some(upstream) = view
        .upstream
        .and_then(|name| state.config.upstreams.iter().find(|u| u.name == name))
    else {
        tracing::error!(request_id, upstream = ?view.upstream, "The route names no known upstream; the rendered Envoy config is out of date.");
        return deny(record, internal("route names no known upstream"), request_id);
    };
    if let Some(Err(e)) = &envelope {
        // The filter validates bodies first, so this means the filter is missing or outdated.
        let denial = Denial::new(
            400,
            e.jsonrpc_code(),
            e.to_string(),
            format!("malformed body at ext_authz: {e}"),
        );
        return deny(record, denial, request_id);
    }

    let principal = match state.identity.verify_header(view.header("authorization")).await {
        Ok(p) => p,
        Err(error) => {
            if let Some(detail) = error.detail() {
                tracing::info!(request_id, %error, detail, "Token refused.");
            }
            return deny(record, identity_denial(state, view.path, &error), request_id);
        }
    };
    if let Some(obj) = record.as_object_mut() {
        obj.insert("subject".into(), json!(principal.subject));
        obj.insert("groups".into(), json!(principal.groups));
    }
    if upstream.allow_groups.is_disjoint(&principal.groups) {
        let denial = Denial::new(
            403,
            jsonrpc_error::FORBIDDEN,
            "You are not allowed to use this MCP server.",
            format!("no group of the caller may use upstream {:?}", upstream.name),
        );
        return deny(record, denial, request_id);
    }
    // A session id is a bearer capability: only the caller who opened it may use it.
    let upstream_session =
        match state
            .sessions
            .check(&principal.subject, &upstream.name, view.header(mcp::SESSION_ID_HEADER))
        {
            SessionCheck::None => None,
            SessionCheck::Bound(id) => {
                if let Some(obj) = record.as_object_mut() {
                    obj.insert("session_id".into(), json!(id));
                }
                Some(id)
            }
            SessionCheck::Foreign(id) => {
                if let Some(obj) = record.as_object_mut() {
                    obj.insert("session_id".into(), json!(id));
                }
                // The same answer as an unknown session: the client starts a new one.
                let denial = Denial::new(
                    404,
                    jsonrpc_error::INVALID_REQUEST,
                    "Session not found.",
                    "the session id was not opened by this caller on this upstream",
                );
                return deny(record, denial, request_id);
            }
        };
    let session_key = state
        .sessions
        .binding_key(&principal.subject, &upstream.name)
        .map(hex::encode);
    let mut reason = "caller's group may use the upstream".to_owned();
    let (mut extra, mut grant) = (Vec::new(), None);
    let policy = state.policy.current();
    if let (Some(policy), Some(Ok(env))) = (&policy, &envelope) {
        let verdict = policy_verdict(policy, &principal, &upstream.name, env);
        if let Some(obj) = record.as_object_mut() {
            obj.insert("policy_rule".into(), json!(verdict.rule_id));
        }
        let rule = verdict
            .rule_id
            .map_or("no rule matched (default deny)".to_owned(), |id| format!("rule {id:?}"));
        match verdict.outcome {
            Outcome::Allow if verdict.rule_id.is_some() => reason = format!("allowed by {rule}"),
            Outcome::Allow => reason = "not a call (no method): the caller's group may use the upstream".into(),
            Outcome::Deny => {
                let denial = Denial::new(
                    403,
                    jsonrpc_error::FORBIDDEN,
                    // The same words whether or not the tool exists.
                    "You are not allowed to make this call.",
                    format!("denied by {rule}"),
                );
                return deny(record, denial, request_id);
            }
            Outcome::RequireApproval(spec) => {
                let Some(rule_id) = verdict.rule_id else {
                    return deny(record, internal("an approval outcome without a rule"), request_id);
                };
                let single = env.messages.len() == 1 && first.is_some_and(|m| m.id.is_some());
                let Some(message) = first.filter(|_| single) else {
                    let denial = Denial::new(
                        403,
                        jsonrpc_error::FORBIDDEN,
                        "This call needs an approval: send it alone, as a request (not in a batch or as a notification).",
                        format!("{rule} requires approval; not a single request"),
                    );
                    return deny(record, denial, request_id);
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
                    record.get("arguments").cloned().unwrap_or(Value::Null)
                } else {
                    let mut shown = params.clone().unwrap_or(Value::Null);
                    state
                        .masker
                        .mask_value(&mut shown, &Reveal::none(), &mut MaskCounts::default());
                    shown
                };
                let call = Call {
                    subject: &principal.subject,
                    upstream: &upstream.name,
                    method: message.method.as_deref().unwrap_or_default(),
                    tool: (message.method.as_deref() == Some("tools/call"))
                        .then(|| message.target_name())
                        .flatten(),
                    params: params.as_ref(),
                    masked_arguments: &masked,
                    rule: rule_id,
                    spec,
                    request_id: &request_id,
                };
                // The hold is spent inside Envoy's ext_authz call: answer a second before it gives up.
                let hold_ms =
                    (spec.hold_seconds * 1000).min(state.config.envoy.ext_authz_timeout_ms.saturating_sub(1000));
                match state.approvals.gate(&call, Duration::from_millis(hold_ms)).await {
                    Ok(Gate::Granted { approval, used, hold }) => {
                        if let Some(obj) = record.as_object_mut() {
                            obj.insert("approval".into(), approval_summary(&approval, "used"));
                        }
                        reason = format!(
                            "allowed by {rule}: approval {} by {}",
                            approval.id,
                            approval.decided_by.as_deref().unwrap_or("-")
                        );
                        extra.push(used);
                        grant = Some(hold);
                    }
                    Ok(Gate::Refused(refusal)) => {
                        tracing::info!(request_id, reason = %refusal.reason(), "A call that needs approval was refused.");
                        let mut denial = Denial::new(
                            refusal.http_status(),
                            refusal.jsonrpc_code(),
                            refusal.message(),
                            format!("{rule} requires approval; refused: {}", refusal.reason()),
                        );
                        denial.data = Some(json!({"approval_refused": refusal.data()}));
                        return deny(record, denial, request_id);
                    }
                    Ok(Gate::Stopped(approval)) => {
                        if let Some(obj) = record.as_object_mut() {
                            obj.insert("approval".into(), approval_summary(&approval, approval.status.as_str()));
                        }
                        return deny(record, approval_denial(state, &approval, &rule), request_id);
                    }
                    Err(error) => {
                        tracing::error!(request_id, %error, "Could not record an approval step; the call is refused.");
                        let denial = Denial::new(
                            503,
                            jsonrpc_error::INTERNAL_ERROR,
                            "This call needs an approval, and the gateway cannot record one right now. Try again later.",
                            format!("{rule} requires approval; approvals store unavailable"),
                        );
                        return deny(record, denial, request_id);
                    }
                }
            }
        }
    }
    // Last, once the call may go: an AWS signature covers the time it is made.
    let (upstream_auth, presented) = upstream_auth(state, upstream, &principal, view, deadline).await;
    if let (Some(presented), Some(obj)) = (presented, record.as_object_mut()) {
        // Which credential went upstream, never its secret.
        obj.insert("upstream_credential".into(), presented);
    }
    let upstream_auth = match upstream_auth {
        Ok(auth) => auth,
        Err(denial) => {
            tracing::warn!(
                request_id,
                reason = denial.reason,
                "No upstream credential; the call is refused."
            );
            return deny(record, denial, request_id);
        }
    };
    if let Some(obj) = record.as_object_mut() {
        obj.insert("decision".into(), json!("allow"));
        obj.insert("reason".into(), json!(reason));
    }
    let parsed = envelope.as_ref().and_then(|e| e.as_ref().ok());
    let reveal = state
        .config
        .masking
        .reveal_plan(&principal.groups, &upstream.name, parsed);
    if let (false, Some(obj)) = (reveal.is_empty(), record.as_object_mut()) {
        obj.insert("revealed".into(), json!(reveal.kinds()));
    }
    Decision {
        request_id,
        record,
        extra,
        grant,
        jsonrpc_id,
        outcome: Ok(Allowed {
            // Only a tools/list answer is filtered: other calls skip the walk and the header.
            tools: policy
                .as_ref()
                .filter(|_| matches!(&envelope, Some(Ok(env)) if env.lists_tools()))
                .map(|p| p.tool_visibility(&principal.subject, &principal.groups, &upstream.name)),
            upstream_auth,
            subject: principal.subject,
            reveal,
            upstream_session,
            session_key,
        }),
    }
}

/// The credential this call presents upstream (or why there is none), and what the record
/// says of it: its kind and public parts, never a secret.
async fn upstream_auth(
    state: &AppState,
    upstream: &Upstream,
    principal: &Principal,
    view: &HttpRequestView<'_>,
    deadline: tokio::time::Instant,
) -> (Result<UpstreamAuth, Denial>, Option<Value>) {
    let kind = upstream.credentials.kind();
    let aws = match &upstream.credentials {
        UpstreamCredentials::None => return (Ok(UpstreamAuth::default()), None),
        UpstreamCredentials::StaticHeader { header, value } => {
            let auth = UpstreamAuth {
                kind: Some(kind),
                headers: vec![(header.clone(), value.clone())],
                remove: Vec::new(),
            };
            return (Ok(auth), Some(json!({"type": kind, "header": header})));
        }
        UpstreamCredentials::AwsSigv4(aws) => aws,
    };
    let mut presented = json!({"type": kind, "role_arn": aws.role_arn, "source_identity": principal.subject});
    let session = match state.aws.session(&upstream.name, aws, principal, deadline).await {
        Ok(session) => session,
        Err(error) => {
            presented["error"] = json!(error.to_string());
            let denial = Denial::new(
                error.http_status(),
                jsonrpc_error::UPSTREAM_CREDENTIAL,
                format!("The gateway could not get AWS credentials for this call, so it was not forwarded: {error}"),
                match error.detail() {
                    Some(detail) => format!("aws_sigv4: {error}: {detail}"),
                    None => format!("aws_sigv4: {error}"),
                },
            );
            return (Err(denial), Some(presented));
        }
    };
    presented["access_key_id"] = json!(session.access_key_id);
    let authority = upstream.authority();
    let path_and_query = sign::upstream_path_and_query(upstream.upstream_path(), view.path);
    let outgoing = sign::Outgoing {
        method: view.method,
        authority: &authority,
        path_and_query: &path_and_query,
        body: view.body,
    };
    let headers = match sign::sign_request(&session, &aws.region, &aws.service, outgoing, SystemTime::now()) {
        Ok(headers) => headers,
        Err(error) => {
            presented["error"] = json!("could not sign");
            return (
                Err(internal(&format!("aws_sigv4: could not sign: {error}"))),
                Some(presented),
            );
        }
    };
    // The client's own x-amz-* headers would be read by AWS next to the signature.
    let remove = view
        .headers
        .into_iter()
        .flat_map(|h| h.keys())
        .filter(|name| name.starts_with("x-amz-") && !headers.iter().any(|(set, _)| set == *name))
        .cloned()
        .collect();
    let auth = UpstreamAuth {
        kind: Some(kind),
        headers,
        remove,
    };
    (Ok(auth), Some(presented))
}

/// What a request record says about the approval it waited for or used.
fn approval_summary(a: &Approval, status: &str) -> Value {
    json!({"id": a.id, "status": status, "rule": a.rule})
}

/// The answer to a call still waiting for (or refused by) an approval.
fn approval_denial(state: &AppState, approval: &Approval, rule: &str) -> Denial {
    let a = approval;
    let (http_status, code, message) = match a.status {
        Status::Denied => (
            403,
            jsonrpc_error::FORBIDDEN,
            format!(
                "An approver denied this call (approval {}): {}",
                a.id,
                a.reason.as_deref().unwrap_or("no reason given")
            ),
        ),
        Status::Expired => (
            200,
            jsonrpc_error::APPROVAL_REQUIRED,
            format!(
                "Approval {} expired before anyone decided. Send the call again to ask anew.",
                a.id
            ),
        ),
        Status::Pending | Status::Approved | Status::Used => (
            200,
            jsonrpc_error::APPROVAL_REQUIRED,
            format!(
                "This call needs approval by a member of {:?}. It is waiting as approval {}; send the same call again once it is approved.",
                a.approver_group, a.id
            ),
        ),
    };
    Denial {
        http_status,
        jsonrpc_code: code,
        message,
        reason: format!(
            "{rule} requires approval: approval {} is {}",
            approval.id,
            approval.status.as_str()
        ),
        headers: Vec::new(),
        data: Some(json!({"approval": {
            "id": approval.id,
            "status": approval.status,
            "approver_group": approval.approver_group,
            "approver_url": state.approvals.approver_url(&approval.id),
            "expires_at": approval.expires_at(),
            "decided_by": approval.decided_by,
            "reason": approval.reason,
        }})),
    }
}

fn describe_messages(env: &mcp::Envelope, obj: &mut serde_json::Map<String, Value>) {
    let describe = |m: &mcp::Message| {
        json!({
            "kind": m.kind.as_str(),
            "method": m.method,
            "jsonrpc_id": m.id,
            "tool": m.target_name(),
            "arguments": m.arguments(),
        })
    };
    if let Some(first) = env.first() {
        obj.insert("mcp_method".into(), json!(first.method));
        obj.insert("tool".into(), json!(first.target_name()));
        obj.insert("arguments".into(), first.arguments().cloned().unwrap_or(Value::Null));
        obj.insert("jsonrpc_id".into(), first.id.clone().unwrap_or(Value::Null));
        obj.insert("message_kind".into(), json!(first.kind.as_str()));
    }
    if env.batch {
        obj.insert(
            "batch".into(),
            Value::Array(env.messages.iter().map(describe).collect()),
        );
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

/// Masks the arguments in a request record (nothing revealed: records never hold a clear
/// value) and notes what was masked.
fn mask_arguments(masker: &Masker, obj: &mut serde_json::Map<String, Value>) {
    let mut counts = MaskCounts::default();
    let none = Reveal::none();
    if let Some(arguments) = obj.get_mut("arguments") {
        masker.mask_value(arguments, &none, &mut counts);
    }
    if let Some(Value::Array(batch)) = obj.get_mut("batch") {
        for message in batch {
            if let Some(arguments) = message.get_mut("arguments") {
                masker.mask_value(arguments, &none, &mut counts);
            }
        }
    }
    if !counts.is_empty() {
        obj.insert("masked".into(), json!(counts));
    }
}

fn identity_denial(state: &AppState, path: &str, error: &IdentityError) -> Denial {
    if let IdentityError::KeysUnavailable(_) = error {
        return Denial::new(
            503,
            jsonrpc_error::INTERNAL_ERROR,
            "The gateway cannot verify tokens right now. Try again later.",
            error.to_string(),
        );
    }
    let metadata = resource_metadata_url(state, path);
    let mut challenge = format!("Bearer resource_metadata=\"{metadata}\"");
    if !matches!(error, IdentityError::Missing) {
        challenge.push_str(&format!(", error=\"invalid_token\", error_description=\"{error}\""));
    }
    Denial {
        http_status: 401,
        jsonrpc_code: jsonrpc_error::UNAUTHORIZED,
        message: error.to_string(),
        reason: error.to_string(),
        headers: vec![("www-authenticate".into(), challenge)],
        data: None,
    }
}

/// RFC 9728: the metadata of resource `https://gw/mcp` is at
/// `https://gw/.well-known/oauth-protected-resource/mcp`.
pub fn resource_metadata_url(state: &AppState, path: &str) -> String {
    let base = state.config.service.public_url.as_str().trim_end_matches('/');
    let path = path.split('?').next().unwrap_or_default().trim_end_matches('/');
    format!("{base}/.well-known/oauth-protected-resource{path}")
}

fn internal(reason: &str) -> Denial {
    Denial::new(
        500,
        jsonrpc_error::INTERNAL_ERROR,
        "The gateway is misconfigured; the request was not forwarded.",
        reason,
    )
}

fn is_request_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn new_request_id() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}
