//! The request record a Check commits: what was asked (arguments masked, nothing revealed),
//! filled in by each step as it learns more, and closed with the decision.

use gatehouse_core::mask::{MaskCounts, Masker, Reveal, RevealPlan};
use gatehouse_core::{mcp, session};
use serde_json::{Map, Value, json};

use super::{HttpRequestView, denial::Answer};
use crate::approvals::Approval;
use crate::identity::Principal;

/// A request record being built.
#[derive(Debug)]
pub struct RequestRecord(Map<String, Value>);

impl RequestRecord {
    /// What the request says before anyone is identified.
    pub fn new(view: &HttpRequestView<'_>, parsed: Option<&mcp::Envelope>, masker: &Masker) -> Self {
        let mut record = Map::new();
        record.insert("subject".into(), Value::Null);
        record.insert("groups".into(), json!([]));
        record.insert("upstream".into(), json!(view.upstream));
        record.insert("http_method".into(), json!(view.method));
        // Without the query string: it may carry secrets.
        record.insert("path".into(), json!(view.path.split('?').next().unwrap_or_default()));
        // The upstream's id, without the caller's tag (see `session.rs`).
        record.insert(
            "session_id".into(),
            json!(view.header(mcp::SESSION_ID_HEADER).map(session::upstream_part)),
        );
        record.insert(
            "protocol_version".into(),
            json!(view.header(mcp::PROTOCOL_VERSION_HEADER)),
        );
        let mut record = Self(record);
        if let Some(env) = parsed {
            record.describe_messages(env);
            record.mask_arguments(masker);
        }
        record
    }

    fn set(&mut self, key: &str, value: Value) {
        self.0.insert(key.into(), value);
    }

    /// Who made the call.
    pub fn caller(&mut self, principal: &Principal) {
        self.set("subject", json!(principal.subject));
        self.set("groups", json!(principal.groups));
    }

    /// The upstream's session id the caller presented (bound or foreign).
    pub fn session(&mut self, id: &str) {
        self.set("session_id", json!(id));
    }

    /// The rule that decided (`None`: no rule matched).
    pub fn policy_rule(&mut self, rule: Option<&str>) {
        self.set("policy_rule", json!(rule));
    }

    /// The approval the call waited for or used, and where it stands for this call.
    pub fn approval(&mut self, a: &Approval, status: &str) {
        self.set("approval", json!({"id": a.id, "status": status, "rule": a.rule}));
    }

    /// Which credential went upstream, never its secret.
    pub fn upstream_credential(&mut self, presented: Value) {
        self.set("upstream_credential", presented);
    }

    /// The tool's arguments as recorded (masked).
    pub fn masked_arguments(&self) -> Value {
        self.0.get("arguments").cloned().unwrap_or(Value::Null)
    }

    /// The call goes upstream.
    pub fn allowed(mut self, reason: &str, reveal: &RevealPlan) -> Value {
        self.set("decision", json!("allow"));
        self.set("reason", json!(reason));
        if !reveal.is_empty() {
            self.set("revealed", json!(reveal.kinds()));
        }
        Value::Object(self.0)
    }

    /// The call is refused with `answer`.
    pub fn denied(mut self, answer: &Answer) -> Value {
        self.set("decision", json!("deny"));
        self.set("reason", json!(answer.reason));
        self.set("status", json!(answer.http_status));
        Value::Object(self.0)
    }

    fn describe_messages(&mut self, env: &mcp::Envelope) {
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
            self.set("mcp_method", json!(first.method));
            self.set("tool", json!(first.target_name()));
            self.set("arguments", first.arguments().cloned().unwrap_or(Value::Null));
            self.set("jsonrpc_id", first.id.clone().unwrap_or(Value::Null));
            self.set("message_kind", json!(first.kind.as_str()));
        }
        if env.batch {
            self.set("batch", Value::Array(env.messages.iter().map(describe).collect()));
        }
    }

    /// Masks the arguments (nothing revealed: records never hold a clear value) and notes
    /// what was masked.
    fn mask_arguments(&mut self, masker: &Masker) {
        let mut counts = MaskCounts::default();
        let none = Reveal::none();
        if let Some(arguments) = self.0.get_mut("arguments") {
            masker.mask_value(arguments, &none, &mut counts);
        }
        if let Some(Value::Array(batch)) = self.0.get_mut("batch") {
            for message in batch {
                if let Some(arguments) = message.get_mut("arguments") {
                    masker.mask_value(arguments, &none, &mut counts);
                }
            }
        }
        if !counts.is_empty() {
            self.set("masked", json!(counts));
        }
    }
}
