//! The request record a Check commits: what was asked (arguments masked, nothing revealed),
//! filled in by each step as it learns more, and closed with the decision. Built only as
//! the typed event ([`RequestDecided`]) that the trail stores.

use gatehouse_core::events::{
    ApprovalRef, BatchMessage, ClientInfo, FirstMessage, RequestAllowed, RequestDecided, RequestDenied, RequestFacts,
    USER_AGENT_MAX, UpstreamCredentialPresented,
};
use gatehouse_core::mask::{MaskCounts, Masker, Reveal, RevealPlan};
use gatehouse_core::{mcp, session};
use serde_json::Value;

use super::{HttpRequestView, denial::Answer};
use crate::approvals::Approval;
use crate::identity::Principal;

/// A request record being built.
#[derive(Debug)]
pub struct RequestRecord(RequestFacts);

impl RequestRecord {
    /// What the request says before anyone is identified.
    pub fn new(view: &HttpRequestView<'_>, parsed: Option<&mcp::Envelope>, masker: &Masker) -> Self {
        let mut facts = RequestFacts {
            subject: None,
            groups: Vec::new(),
            upstream: view.upstream.map(str::to_owned),
            http_method: view.method.to_owned(),
            // Without the query string: it may carry secrets.
            path: view.path.split('?').next().unwrap_or_default().to_owned(),
            // The upstream's id, without the caller's tag (see `session.rs`).
            session_id: view
                .header(mcp::SESSION_ID_HEADER)
                .map(|id| session::upstream_part(id).to_owned()),
            protocol_version: view.header(mcp::PROTOCOL_VERSION_HEADER).map(str::to_owned),
            message: None,
            batch: None,
            masked: None,
            policy_rule: None,
            approval: None,
            upstream_credential: None,
            client: parsed.and_then(|env| client_of(env, masker)),
            user_agent: view.header("user-agent").map(|ua| short_masked(ua, masker)),
            recording: None,
            content: None,
        };
        if let Some(env) = parsed {
            describe_messages(&mut facts, env, masker);
        }
        Self(facts)
    }

    /// Who made the call.
    pub fn caller(&mut self, principal: &Principal) {
        self.0.subject = Some(principal.subject.clone());
        self.0.groups = principal.groups.iter().cloned().collect();
    }

    /// The upstream's session id the caller presented (bound or foreign).
    pub fn session(&mut self, id: &str) {
        self.0.session_id = Some(id.to_owned());
    }

    /// The rule that decided (`None`: no rule matched).
    pub fn policy_rule(&mut self, rule: Option<&str>) {
        self.0.policy_rule = Some(rule.map(str::to_owned));
    }

    /// The approval the call waited for or used, and where it stands for this call.
    pub fn approval(&mut self, a: &Approval, status: &str) {
        self.0.approval = Some(ApprovalRef {
            id: a.id.clone(),
            status: status.to_owned(),
            rule: a.rule.clone(),
        });
    }

    /// Which credential went upstream, never its secret.
    pub fn upstream_credential(&mut self, presented: UpstreamCredentialPresented) {
        self.0.upstream_credential = Some(presented);
    }

    /// The tool's arguments as recorded (masked).
    pub fn masked_arguments(&self) -> Value {
        self.0.message.as_ref().map_or(Value::Null, |m| m.arguments.clone())
    }

    /// Leaves the content out if a `recording:` rule says `metadata` for this call (by what
    /// the record knows by now: caller, upstream, method, tool).
    pub fn apply_recording(&mut self, recording: &crate::recording::Recording, body_bytes: u64) {
        if recording.scope_of(&self.0).0 == crate::recording::Scope::Metadata {
            crate::recording::keep_metadata_only(&mut self.0, body_bytes);
        }
    }

    /// The call goes upstream.
    pub fn allowed(self, reason: &str, reveal: &RevealPlan) -> RequestDecided {
        RequestDecided::Allow(RequestAllowed {
            request: self.0,
            reason: reason.to_owned(),
            revealed: (!reveal.is_empty()).then(|| reveal.kinds().into_iter().collect()),
        })
    }

    /// The call is refused with `answer`.
    pub fn denied(self, answer: &Answer) -> RequestDecided {
        RequestDecided::Deny(RequestDenied {
            request: self.0,
            reason: answer.reason.clone(),
            status: answer.http_status,
        })
    }
}

/// What an `initialize` (the first message) says about the client, masked.
fn client_of(env: &mcp::Envelope, masker: &Masker) -> Option<ClientInfo> {
    let first = env.first()?;
    if first.method.as_deref() != Some("initialize") {
        return None;
    }
    let params = first.params.as_ref();
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(|s| short_masked(s, masker));
    let info = params.and_then(|p| p.get("clientInfo"));
    Some(ClientInfo {
        name: text(info.and_then(|i| i.get("name"))),
        version: text(info.and_then(|i| i.get("version"))),
        protocol_version: text(params.and_then(|p| p.get("protocolVersion"))),
    })
}

/// `text` masked (nothing revealed) and cut to [`USER_AGENT_MAX`] characters.
fn short_masked(text: &str, masker: &Masker) -> String {
    let cut: String = text.chars().take(USER_AGENT_MAX).collect();
    masker
        .mask_text(&cut, &Reveal::none(), &mut MaskCounts::default())
        .into_owned()
}

/// The messages of the body, their arguments masked (nothing revealed: records never hold
/// a clear value), and what was masked.
fn describe_messages(facts: &mut RequestFacts, env: &mcp::Envelope, masker: &Masker) {
    let mut counts = MaskCounts::default();
    let none = Reveal::none();
    let mut masked = |arguments: Option<&Value>| {
        let mut arguments = arguments.cloned().unwrap_or(Value::Null);
        masker.mask_value(&mut arguments, &none, &mut counts);
        arguments
    };
    facts.message = env.first().map(|first| FirstMessage {
        mcp_method: first.method.clone(),
        tool: first.target_name().map(str::to_owned),
        arguments: masked(first.arguments()),
        jsonrpc_id: first.id.clone().unwrap_or(Value::Null),
        message_kind: first.kind.as_str().to_owned(),
    });
    if env.batch {
        facts.batch = Some(
            env.messages
                .iter()
                .map(|m| BatchMessage {
                    kind: m.kind.as_str().to_owned(),
                    method: m.method.clone(),
                    jsonrpc_id: m.id.clone().unwrap_or(Value::Null),
                    tool: m.target_name().map(str::to_owned),
                    arguments: masked(m.arguments()),
                })
                .collect(),
        );
    }
    if !counts.is_empty() {
        facts.masked = Some(counts);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use gatehouse_core::events::AuditEvent;
    use serde_json::json;

    use super::*;

    fn view<'a>(headers: &'a HashMap<String, String>, body: &'a [u8]) -> HttpRequestView<'a> {
        HttpRequestView {
            method: "POST",
            path: "/mcp?token=secret",
            headers: Some(headers),
            body,
            upstream: Some("everything"),
        }
    }

    fn data(event: RequestDecided) -> Value {
        AuditEvent::from(event).to_data().unwrap()
    }

    #[test]
    fn a_batch_is_described_message_by_message_with_its_arguments_masked() {
        let headers = HashMap::from([("mcp-protocol-version".to_owned(), "2025-03-26".to_owned())]);
        let body =
            br#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"m":"a@b.io"}}},
                        {"jsonrpc":"2.0","method":"notifications/initialized"}]"#;
        let env = mcp::parse_body(body).unwrap();
        let mut record = RequestRecord::new(&view(&headers, body), Some(&env), &Masker::default());
        record.caller(&Principal {
            subject: "alice".into(),
            groups: ["eng".to_owned(), "a".to_owned()].into(),
        });
        record.policy_rule(None);
        let denied = Answer {
            http_status: 403,
            jsonrpc_code: -32003,
            message: String::new(),
            reason: "denied by no rule matched (default deny)".into(),
            headers: Vec::new(),
            data: None,
        };
        assert_eq!(record.masked_arguments(), json!({"m": "[MASKED:email]"}));
        assert_eq!(
            data(record.denied(&denied)),
            json!({
                "subject": "alice", "groups": ["a", "eng"], "upstream": "everything",
                "http_method": "POST", "path": "/mcp", "session_id": null, "protocol_version": "2025-03-26",
                "mcp_method": "tools/call", "tool": "echo", "arguments": {"m": "[MASKED:email]"},
                "jsonrpc_id": 1, "message_kind": "request",
                "batch": [
                    {"kind": "request", "method": "tools/call", "jsonrpc_id": 1, "tool": "echo",
                     "arguments": {"m": "[MASKED:email]"}},
                    {"kind": "notification", "method": "notifications/initialized", "jsonrpc_id": null,
                     "tool": null, "arguments": null},
                ],
                // The first message is counted as itself and as batch item 0, as earlier builds did.
                "masked": {"email": 2},
                "policy_rule": null,
                "decision": "deny", "reason": "denied by no rule matched (default deny)", "status": 403,
            })
        );
    }

    #[test]
    fn an_initialize_names_its_client_and_the_user_agent_is_kept_masked() {
        let headers = HashMap::from([(
            "user-agent".to_owned(),
            format!("agent/1.0 key=AKIAIOSFODNN7EXAMPLE {}", "x".repeat(400)),
        )]);
        let body = br#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-11-25",
            "capabilities":{},"clientInfo":{"name":"claude-code","version":"2.1.0"}}}"#;
        let env = mcp::parse_body(body).unwrap();
        let record = RequestRecord::new(&view(&headers, body), Some(&env), &Masker::default());
        let data = data(record.allowed("ok", &RevealPlan::default()));
        assert_eq!(
            data["client"],
            json!({"name": "claude-code", "version": "2.1.0", "protocol_version": "2025-11-25"})
        );
        let ua = data["user_agent"].as_str().unwrap();
        assert!(ua.starts_with("agent/1.0 key=[MASKED:aws_access_key"), "{ua}");
        assert!(
            ua.chars().count() <= USER_AGENT_MAX + 40,
            "cut before masking: {}",
            ua.len()
        );
        // Other requests name no client.
        let call = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        let env = mcp::parse_body(call).unwrap();
        let record = RequestRecord::new(&view(&headers, call), Some(&env), &Masker::default());
        assert!(data_has_no_client(record));
    }

    fn data_has_no_client(record: RequestRecord) -> bool {
        data(record.allowed("ok", &RevealPlan::default()))
            .get("client")
            .is_none()
    }

    #[test]
    fn a_bodiless_request_says_only_what_its_head_says_until_a_step_adds_more() {
        let headers = HashMap::from([("mcp-session-id".to_owned(), "s-1".to_owned())]);
        let record = RequestRecord::new(&view(&headers, b""), None, &Masker::default());
        let allowed = data(record.allowed("caller's group may use the upstream", &RevealPlan::default()));
        assert_eq!(
            allowed,
            json!({
                "subject": null, "groups": [], "upstream": "everything", "http_method": "POST",
                "path": "/mcp", "session_id": "s-1", "protocol_version": null,
                "decision": "allow", "reason": "caller's group may use the upstream",
            })
        );
    }
}
