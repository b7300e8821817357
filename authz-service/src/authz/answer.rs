//! The answer to Envoy: headers for an allowed call, or the refusal's JSON-RPC error.

use envoy_types::ext_authz::v3::{
    CheckResponseExt, DeniedHttpResponseBuilder, OkHttpResponseBuilder,
    pb::{CheckResponse, HttpStatusCode},
};
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value::Kind};
use gatehouse_core::events::RequestDecided;
use gatehouse_core::mask::RevealPlan;
use gatehouse_core::tools::ToolVisibility;
use gatehouse_core::wire::{
    CREDENTIAL_HEADER, REQUEST_ID_HEADER, REVEAL_HEADER, REVEAL_IDS_HEADER, SESSION_KEY_HEADER, TOOLS_HEADER,
};
use gatehouse_core::{jsonrpc_error, mcp};
use serde_json::{Value, json};

use super::denial::Denial;
use crate::approvals::GrantUse;
use crate::audit::{AuditError, NewRecord};
use crate::config::Secret;
use crate::credentials::UpstreamAuth;

/// A decided request: its record (to commit first) and its answer.
#[derive(Debug)]
pub struct Decision {
    pub request_id: String,
    /// The request record to commit (`None` once taken, or when none could be committed).
    pub record: Option<RequestDecided>,
    /// Records committed with the request record (an approval's `used`).
    pub extra: Vec<NewRecord>,
    /// The approval's grant this call uses: given back unless kept once the records are committed.
    pub grant: Option<GrantUse>,
    pub jsonrpc_id: Option<Value>,
    /// The id answered when the record cannot be committed: the first parsed message's
    /// (none for a body that did not parse, even one whose invalid params carry an id).
    pub unrecorded_jsonrpc_id: Option<Value>,
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

impl Decision {
    pub fn allowed(&self) -> bool {
        self.outcome.is_ok()
    }

    /// The records to commit: the request record first, then those that go with it.
    pub fn take_records(&mut self) -> Result<Vec<NewRecord>, AuditError> {
        let event = self
            .record
            .take()
            .ok_or_else(|| AuditError::Invalid("the request record was already taken".into()))?;
        let mut records = vec![NewRecord::from_event(self.request_id.clone(), event)?];
        records.append(&mut self.extra);
        Ok(records)
    }

    /// The answer when the request record could not be committed.
    pub fn audit_unavailable(self) -> Self {
        Self {
            record: None,
            extra: Vec::new(),
            grant: None,
            jsonrpc_id: self.unrecorded_jsonrpc_id.clone(),
            outcome: Err(Denial::AuditUnavailable),
            ..self
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
                let denial = denial.answer();
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
