//! Why the Check refuses a call, one variant per reason, and the one mapping from a reason
//! to what the client is told ([`Answer`]: status, JSON-RPC error, headers) and what the
//! request record says (`reason`, `status`).

use gatehouse_core::{jsonrpc_error, mcp};
use serde_json::{Value, json};

use crate::approvals::{Approval, Refusal, Status};
use crate::credentials::CredentialError;
use crate::identity::IdentityError;

/// Why a call is refused. Rules are named by their id.
#[derive(Debug)]
pub enum Denial {
    /// No valid `x-gatehouse-request-id`: the filter is missing or not first in the chain.
    MissingRequestId,
    /// The route names no configured upstream: the rendered Envoy config is out of date.
    UnknownUpstream,
    /// A body the filter should have refused (it is missing or outdated).
    MalformedBody(mcp::ParseError),
    /// No token, or one that is not valid here; `resource_metadata` is where the client
    /// learns how to get one (RFC 9728).
    TokenRefused {
        error: IdentityError,
        resource_metadata: String,
    },
    /// The issuer's keys cannot be had, so no token can be verified now.
    KeysUnavailable(IdentityError),
    /// No group of the caller may use this upstream.
    UpstreamForbidden { upstream: String },
    /// The `Mcp-Session-Id` was not opened by this caller on this upstream.
    ForeignSession,
    /// A rule denies the call (`None`: no rule matched, the default deny).
    PolicyDenied { rule: Option<String> },
    /// The policy asked for an approval without naming the rule that wants it.
    ApprovalWithoutRule,
    /// The rule wants an approval, and the call is in a batch or a notification.
    ApprovalNeedsSingleRequest { rule: String },
    /// The rule wants an approval, and the gate refused before asking or holding.
    ApprovalRefused { rule: String, refusal: Refusal },
    /// The approval the call waits on is pending still (or not a grant this call may use).
    ApprovalPending(Box<Stopped>),
    /// An approver denied the call.
    ApprovalDenied(Box<Stopped>),
    /// The approval expired before anyone decided.
    ApprovalExpired(Box<Stopped>),
    /// The rule wants an approval, and the approvals store cannot record one.
    ApprovalsUnavailable { rule: String },
    /// No STS session for the caller's AWS signature.
    CredentialUnavailable(crate::aws::AwsError),
    /// The caller's session could not sign the call (internal detail).
    CouldNotSign(String),
    /// The request record could not be committed.
    AuditUnavailable,
}

/// An approval that stopped a call, and where approvers decide on it.
#[derive(Debug)]
pub struct Stopped {
    pub rule: String,
    pub approval: Approval,
    pub approver_url: String,
}

/// What a denial becomes on the wire and in the record.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
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

impl Answer {
    fn new(http_status: u16, jsonrpc_code: i64, message: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            http_status,
            jsonrpc_code,
            message: message.into(),
            reason: reason.into(),
            headers: Vec::new(),
            data: None,
        }
    }

    /// A misconfigured gateway: the client learns nothing more.
    fn internal(reason: impl Into<String>) -> Self {
        Self::new(
            500,
            jsonrpc_error::INTERNAL_ERROR,
            "The gateway is misconfigured; the request was not forwarded.",
            reason,
        )
    }

    fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }
}

/// How a record and a log name a rule.
fn rule_name(rule: &str) -> String {
    format!("rule {rule:?}")
}

impl Denial {
    /// The approval that stopped a call, by the status it stopped with.
    pub fn approval_stopped(stopped: Stopped) -> Self {
        match stopped.approval.status {
            Status::Denied => Self::ApprovalDenied(Box::new(stopped)),
            Status::Expired => Self::ApprovalExpired(Box::new(stopped)),
            Status::Pending | Status::Approved | Status::Used => Self::ApprovalPending(Box::new(stopped)),
        }
    }

    /// The one mapping from a reason to the answer.
    pub fn answer(&self) -> Answer {
        match self {
            Self::MissingRequestId => Answer::internal("request arrived without the filter's request id"),
            Self::UnknownUpstream => Answer::internal("route names no known upstream"),
            Self::MalformedBody(e) => Answer::new(
                400,
                e.jsonrpc_code(),
                e.to_string(),
                format!("malformed body at ext_authz: {e}"),
            ),
            Self::TokenRefused {
                error,
                resource_metadata,
            } => {
                let mut challenge = format!("Bearer resource_metadata=\"{resource_metadata}\"");
                if !matches!(error, IdentityError::Missing) {
                    challenge.push_str(&format!(", error=\"invalid_token\", error_description=\"{error}\""));
                }
                Answer {
                    headers: vec![("www-authenticate".into(), challenge)],
                    ..Answer::new(401, jsonrpc_error::UNAUTHORIZED, error.to_string(), error.to_string())
                }
            }
            Self::KeysUnavailable(error) => Answer::new(
                503,
                jsonrpc_error::INTERNAL_ERROR,
                "The gateway cannot verify tokens right now. Try again later.",
                error.to_string(),
            ),
            Self::UpstreamForbidden { upstream } => Answer::new(
                403,
                jsonrpc_error::FORBIDDEN,
                "You are not allowed to use this MCP server.",
                format!("no group of the caller may use upstream {upstream:?}"),
            )
            .with_data(json!({
                "rule": null,
                "reason": "None of your groups may use this MCP server (the upstream's allow_groups)."
            })),
            // The same answer as an unknown session: the client starts a new one.
            Self::ForeignSession => Answer::new(
                404,
                jsonrpc_error::INVALID_REQUEST,
                "Session not found.",
                "the session id was not opened by this caller on this upstream",
            ),
            Self::PolicyDenied { rule } => Answer::new(
                403,
                jsonrpc_error::FORBIDDEN,
                // The same words whether or not the tool exists.
                "You are not allowed to make this call.",
                format!(
                    "denied by {}",
                    rule.as_deref()
                        .map_or("no rule matched (default deny)".to_owned(), rule_name)
                ),
            )
            // Which rule, so the caller can tell a policy from a group and ask about it: the
            // same whether or not the tool exists (rules match names, not tools).
            .with_data(match rule {
                Some(rule) => json!({"rule": rule, "reason": format!("The policy rule {rule:?} denies this call.")}),
                None => json!({"rule": null, "reason": "No policy rule allows this call; the policy denies by default."}),
            }),
            Self::ApprovalWithoutRule => Answer::internal("an approval outcome without a rule"),
            Self::ApprovalNeedsSingleRequest { rule } => Answer::new(
                403,
                jsonrpc_error::FORBIDDEN,
                "This call needs an approval: send it alone, as a request (not in a batch or as a notification).",
                format!("{} requires approval; not a single request", rule_name(rule)),
            ),
            Self::ApprovalRefused { rule, refusal } => Answer::new(
                refusal.http_status(),
                refusal.jsonrpc_code(),
                refusal.message(),
                format!("{} requires approval; refused: {}", rule_name(rule), refusal.reason()),
            )
            .with_data(json!({"approval_refused": refusal.data()})),
            Self::ApprovalPending(stopped) => stopped.answer(
                200,
                jsonrpc_error::APPROVAL_REQUIRED,
                format!(
                    "This call needs approval by a member of {:?}. It is waiting as approval {}; send the same call again once it is approved.",
                    stopped.approval.approver_group, stopped.approval.id
                ),
            ),
            Self::ApprovalDenied(stopped) => stopped.answer(
                403,
                jsonrpc_error::FORBIDDEN,
                format!(
                    "An approver denied this call (approval {}): {}",
                    stopped.approval.id,
                    stopped.approval.reason.as_deref().unwrap_or("no reason given")
                ),
            ),
            Self::ApprovalExpired(stopped) => stopped.answer(
                200,
                jsonrpc_error::APPROVAL_REQUIRED,
                format!(
                    "Approval {} expired before anyone decided. Send the call again to ask anew.",
                    stopped.approval.id
                ),
            ),
            Self::ApprovalsUnavailable { rule } => Answer::new(
                503,
                jsonrpc_error::INTERNAL_ERROR,
                "This call needs an approval, and the gateway cannot record one right now. Try again later.",
                format!("{} requires approval; approvals store unavailable", rule_name(rule)),
            ),
            Self::CredentialUnavailable(error) => Answer::new(
                error.http_status(),
                jsonrpc_error::UPSTREAM_CREDENTIAL,
                format!("The gateway could not get AWS credentials for this call, so it was not forwarded: {error}"),
                match error.detail() {
                    Some(detail) => format!("aws_sigv4: {error}: {detail}"),
                    None => format!("aws_sigv4: {error}"),
                },
            ),
            Self::CouldNotSign(error) => Answer::internal(format!("aws_sigv4: could not sign: {error}")),
            Self::AuditUnavailable => Answer::new(
                503,
                jsonrpc_error::INTERNAL_ERROR,
                "The gateway cannot record this request in its audit trail, so it was not forwarded. Try again later.",
                "audit store unavailable",
            ),
        }
    }
}

impl From<CredentialError> for Denial {
    fn from(error: CredentialError) -> Self {
        match error {
            CredentialError::Aws(error) => Self::CredentialUnavailable(error),
            CredentialError::Sign(error) => Self::CouldNotSign(error),
        }
    }
}

impl Stopped {
    fn answer(&self, http_status: u16, jsonrpc_code: i64, message: String) -> Answer {
        let a = &self.approval;
        Answer::new(
            http_status,
            jsonrpc_code,
            message,
            format!(
                "{} requires approval: approval {} is {}",
                rule_name(&self.rule),
                a.id,
                a.status.as_str()
            ),
        )
        .with_data(json!({"approval": {
            "id": a.id,
            "status": a.status,
            "approver_group": a.approver_group,
            "approver_url": self.approver_url,
            "expires_at": a.expires_at(),
            "decided_by": a.decided_by,
            "reason": a.reason,
        }}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::AwsError;

    fn approval(status: Status) -> Approval {
        Approval {
            status,
            decided_by: None,
            reason: (status == Status::Denied).then(|| "no".into()),
            ..crate::approvals::tests::approved("apr_1", 0)
        }
    }

    fn stopped(status: Status) -> Denial {
        Denial::approval_stopped(Stopped {
            rule: "r".into(),
            approval: approval(status),
            approver_url: "https://gw/ui?approval=apr_1".into(),
        })
    }

    /// (status, code, message, reason) of a denial's answer.
    fn wire(d: &Denial) -> (u16, i64, String, String) {
        let a = d.answer();
        (a.http_status, a.jsonrpc_code, a.message, a.reason)
    }

    fn w(status: u16, code: i64, message: &str, reason: &str) -> (u16, i64, String, String) {
        (status, code, message.into(), reason.into())
    }

    #[test]
    fn denials_name_their_rule_for_the_caller() {
        let by_rule = Denial::PolicyDenied {
            rule: Some("no-destructive-sql".into()),
        }
        .answer();
        assert_eq!(
            by_rule.data,
            Some(
                json!({"rule": "no-destructive-sql", "reason": "The policy rule \"no-destructive-sql\" denies this call."})
            )
        );
        let default = Denial::PolicyDenied { rule: None }.answer();
        assert_eq!(default.data.as_ref().map(|d| &d["rule"]), Some(&Value::Null));
        let group = Denial::UpstreamForbidden { upstream: "db".into() }.answer();
        let reason = group
            .data
            .as_ref()
            .and_then(|d| d["reason"].as_str())
            .unwrap_or_default();
        assert!(reason.contains("groups") && !reason.contains("db"), "{reason}");
    }

    #[test]
    fn every_reason_maps_to_its_answer() {
        use jsonrpc_error::*;
        let misconfigured = "The gateway is misconfigured; the request was not forwarded.";
        let cases = [
            (
                Denial::MissingRequestId,
                w(
                    500,
                    INTERNAL_ERROR,
                    misconfigured,
                    "request arrived without the filter's request id",
                ),
            ),
            (
                Denial::UnknownUpstream,
                w(500, INTERNAL_ERROR, misconfigured, "route names no known upstream"),
            ),
            (
                Denial::MalformedBody(mcp::ParseError::InvalidRequest("x".into())),
                w(
                    400,
                    INVALID_REQUEST,
                    "invalid request: x",
                    "malformed body at ext_authz: invalid request: x",
                ),
            ),
            (
                Denial::KeysUnavailable(IdentityError::KeysUnavailable("down".into())),
                w(
                    503,
                    INTERNAL_ERROR,
                    "The gateway cannot verify tokens right now. Try again later.",
                    "the identity provider's keys cannot be fetched right now",
                ),
            ),
            (
                Denial::UpstreamForbidden { upstream: "db".into() },
                w(
                    403,
                    FORBIDDEN,
                    "You are not allowed to use this MCP server.",
                    "no group of the caller may use upstream \"db\"",
                ),
            ),
            (
                Denial::ForeignSession,
                w(
                    404,
                    INVALID_REQUEST,
                    "Session not found.",
                    "the session id was not opened by this caller on this upstream",
                ),
            ),
            (
                Denial::PolicyDenied { rule: Some("r".into()) },
                w(
                    403,
                    FORBIDDEN,
                    "You are not allowed to make this call.",
                    "denied by rule \"r\"",
                ),
            ),
            (
                Denial::PolicyDenied { rule: None },
                w(
                    403,
                    FORBIDDEN,
                    "You are not allowed to make this call.",
                    "denied by no rule matched (default deny)",
                ),
            ),
            (
                Denial::ApprovalWithoutRule,
                w(500, INTERNAL_ERROR, misconfigured, "an approval outcome without a rule"),
            ),
            (
                Denial::ApprovalNeedsSingleRequest { rule: "r".into() },
                w(
                    403,
                    FORBIDDEN,
                    "This call needs an approval: send it alone, as a request (not in a batch or as a notification).",
                    "rule \"r\" requires approval; not a single request",
                ),
            ),
            (
                Denial::ApprovalsUnavailable { rule: "r".into() },
                w(
                    503,
                    INTERNAL_ERROR,
                    "This call needs an approval, and the gateway cannot record one right now. Try again later.",
                    "rule \"r\" requires approval; approvals store unavailable",
                ),
            ),
            (
                stopped(Status::Denied),
                w(
                    403,
                    FORBIDDEN,
                    "An approver denied this call (approval apr_1): no",
                    "rule \"r\" requires approval: approval apr_1 is denied",
                ),
            ),
            (
                stopped(Status::Expired),
                w(
                    200,
                    APPROVAL_REQUIRED,
                    "Approval apr_1 expired before anyone decided. Send the call again to ask anew.",
                    "rule \"r\" requires approval: approval apr_1 is expired",
                ),
            ),
            (
                stopped(Status::Pending),
                w(
                    200,
                    APPROVAL_REQUIRED,
                    "This call needs approval by a member of \"ops\". It is waiting as approval apr_1; send the same call again once it is approved.",
                    "rule \"r\" requires approval: approval apr_1 is pending",
                ),
            ),
            (
                Denial::CredentialUnavailable(AwsError::Unreachable("no route".into())),
                w(
                    503,
                    UPSTREAM_CREDENTIAL,
                    "The gateway could not get AWS credentials for this call, so it was not forwarded: the gateway could not reach STS or has no AWS credentials of its own; try again later",
                    "aws_sigv4: the gateway could not reach STS or has no AWS credentials of its own; try again later: no route",
                ),
            ),
            (
                Denial::CredentialUnavailable(AwsError::TooManyTags),
                w(
                    403,
                    UPSTREAM_CREDENTIAL,
                    "The gateway could not get AWS credentials for this call, so it was not forwarded: you have more groups than an AWS session takes as tags (50); the operator can narrow tag_groups",
                    "aws_sigv4: you have more groups than an AWS session takes as tags (50); the operator can narrow tag_groups",
                ),
            ),
            (
                Denial::CouldNotSign("bad".into()),
                w(500, INTERNAL_ERROR, misconfigured, "aws_sigv4: could not sign: bad"),
            ),
            (
                Denial::AuditUnavailable,
                w(
                    503,
                    INTERNAL_ERROR,
                    "The gateway cannot record this request in its audit trail, so it was not forwarded. Try again later.",
                    "audit store unavailable",
                ),
            ),
        ];
        for (denial, expected) in cases {
            assert_eq!(wire(&denial), expected, "{denial:?}");
            let answer = denial.answer();
            // Approvals carry the approval; refusals by rule or group say which and why.
            let has_data = matches!(
                denial,
                Denial::ApprovalPending(_)
                    | Denial::ApprovalDenied(_)
                    | Denial::ApprovalExpired(_)
                    | Denial::PolicyDenied { .. }
                    | Denial::UpstreamForbidden { .. }
            );
            assert_eq!(answer.data.is_some(), has_data, "{denial:?}");
            assert!(answer.headers.is_empty(), "{denial:?}");
        }
    }

    #[test]
    fn a_refused_token_is_challenged_with_the_resource_metadata() {
        let refused = |error| Denial::TokenRefused {
            error,
            resource_metadata: "https://gw/.well-known/oauth-protected-resource/mcp".into(),
        };
        let missing = refused(IdentityError::Missing).answer();
        assert_eq!(
            (
                missing.http_status,
                missing.jsonrpc_code,
                missing.message.as_str(),
                missing.reason.as_str()
            ),
            (
                401,
                jsonrpc_error::UNAUTHORIZED,
                "a bearer token is required",
                "a bearer token is required"
            )
        );
        assert_eq!(
            missing.headers,
            [(
                "www-authenticate".to_owned(),
                r#"Bearer resource_metadata="https://gw/.well-known/oauth-protected-resource/mcp""#.to_owned()
            )]
        );
        let expired = refused(IdentityError::Expired).answer();
        assert_eq!(
            expired.headers[0].1,
            r#"Bearer resource_metadata="https://gw/.well-known/oauth-protected-resource/mcp", error="invalid_token", error_description="the bearer token has expired""#
        );
    }

    #[test]
    fn an_approval_answer_carries_the_approval_and_a_refusal_its_limit() {
        let data = stopped(Status::Pending).answer().data.unwrap();
        assert_eq!(
            data,
            json!({"approval": {
                "id": "apr_1", "status": "pending", "approver_group": "ops",
                "approver_url": "https://gw/ui?approval=apr_1",
                "expires_at": approval(Status::Pending).expires_at(),
                "decided_by": null, "reason": null,
            }})
        );
        // A stop on a grant this call could not use still reads as waiting.
        assert!(matches!(stopped(Status::Approved), Denial::ApprovalPending(_)));
        let refused = Denial::ApprovalRefused {
            rule: "r".into(),
            refusal: Refusal::TooManyPending { limit: 2 },
        }
        .answer();
        assert_eq!(
            (refused.http_status, refused.jsonrpc_code),
            (429, jsonrpc_error::APPROVAL_LIMIT)
        );
        assert_eq!(
            refused.reason,
            "rule \"r\" requires approval; refused: caller already has 2 pending approvals (max_pending_per_caller)"
        );
        assert_eq!(
            refused.data,
            Some(json!({"approval_refused": {"limit": "max_pending_per_caller", "max": 2}}))
        );
    }
}
