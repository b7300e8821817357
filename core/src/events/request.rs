//! The service's decision on one request: the `request` record, committed before Envoy
//! forwards anything (allowed) or answers the refusal (denied).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::mask::MaskCounts;

/// Whether a request went on to the upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
}

/// A `request` record: the decision is its discriminator (`"decision": "allow" | "deny"`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum RequestDecided {
    Allow(RequestAllowed),
    Deny(RequestDenied),
}

impl RequestDecided {
    /// What the record says about the request, whatever the decision.
    pub fn facts(&self) -> &RequestFacts {
        match self {
            Self::Allow(e) => &e.request,
            Self::Deny(e) => &e.request,
        }
    }

    pub fn decision(&self) -> Decision {
        match self {
            Self::Allow(_) => Decision::Allow,
            Self::Deny(_) => Decision::Deny,
        }
    }
}

/// The service let a request through to its upstream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestAllowed {
    #[serde(flatten)]
    pub request: RequestFacts,
    /// Why it was allowed, in words (the policy rule, the approval and its approver).
    pub reason: String,
    /// Kinds of masked values this caller was shown in clear in the answer (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revealed: Option<Vec<String>>,
}

/// The service refused a request; no upstream saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestDenied {
    #[serde(flatten)]
    pub request: RequestFacts,
    /// Why it was refused, for auditors (more detail than the client was told).
    pub reason: String,
    /// The HTTP status the client got.
    pub status: u16,
}

/// What a request record says about the request itself, allowed or denied. Fields the
/// service learns step by step (identity, policy, approval, credential) are filled as far as
/// the decision got.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestFacts {
    /// The caller's verified subject (`sub`); `null` when the token was missing or refused.
    pub subject: Option<String>,
    /// The caller's groups from the token; empty when there is no verified caller.
    pub groups: Vec<String>,
    /// The upstream (MCP server) the route names; `null` when the route names none.
    pub upstream: Option<String>,
    /// The HTTP method (`POST`, `GET`, `DELETE`).
    pub http_method: String,
    /// The request path, without its query string (which may carry secrets).
    pub path: String,
    /// The MCP session id: the upstream's id, without the caller's binding tag; `null` when
    /// the request named none.
    pub session_id: Option<String>,
    /// The `MCP-Protocol-Version` header as sent; `null` when absent.
    pub protocol_version: Option<String>,
    /// The first (or only) JSON-RPC message of the body; absent for a bodiless request or a
    /// body that did not parse.
    #[serde(flatten)]
    pub message: Option<FirstMessage>,
    /// Every message of a JSON-RPC batch (2025-03-26), in order; absent for a single message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batch: Option<Vec<BatchMessage>>,
    /// How many values of each kind were masked in the arguments (absent: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub masked: Option<MaskCounts>,
    /// The policy rule that decided: absent when no policy applied (no policy loaded, or the
    /// decision came before it), `null` when no rule matched (default deny).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "super::double_option")]
    pub policy_rule: Option<Option<String>>,
    /// The approval this call waited for or used (absent: none was involved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<ApprovalRef>,
    /// Which credential the gateway presented upstream (never its secret); absent when the
    /// upstream takes none or the decision came before it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_credential: Option<UpstreamCredentialPresented>,
    /// What an `initialize` says about the client (absent on other requests).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<ClientInfo>,
    /// The `User-Agent` header, masked and cut to [`USER_AGENT_MAX`] characters; it tells a
    /// caller's clients apart when the upstream keeps no MCP sessions. Absent when none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    /// `metadata` when a `recording:` rule chose to keep no content: the arguments are left
    /// out (`null`) and [`content`](Self::content) says what they were. Absent: `full`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recording: Option<String>,
    /// Under `metadata` recording, the size and SHA-256 of the content left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<ContentDigest>,
}

/// What a record left out under `metadata` recording: the size of what was received, and
/// the SHA-256 of the masked content a `full` record would have held (its canonical JSON):
/// it proves what was sent to anyone holding it, and reveals no clear value to anyone else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentDigest {
    /// Bytes received (the request body, or the answer's message).
    pub bytes: u64,
    /// SHA-256 (hex) of the masked content's canonical JSON.
    pub sha256: String,
}

/// The longest `User-Agent` a record keeps (characters).
pub const USER_AGENT_MAX: usize = 256;

/// The client an `initialize` names: its `clientInfo` and the protocol revision it asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub name: Option<String>,
    pub version: Option<String>,
    pub protocol_version: Option<String>,
}

/// The first (or only) JSON-RPC message of a request body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FirstMessage {
    /// Its JSON-RPC method (`tools/call`, ...); `null` for a response to the server.
    pub mcp_method: Option<String>,
    /// The tool (`tools/call`), prompt (`prompts/get`) or resource URI it names; `null` if none.
    pub tool: Option<String>,
    /// The tool's arguments, masked (nothing revealed); `null` when there are none.
    pub arguments: Value,
    /// Its JSON-RPC id as sent (number or string); `null` for a notification.
    pub jsonrpc_id: Value,
    /// `request`, `notification`, `response` or `error` (see `mcp::MessageKind`).
    pub message_kind: String,
}

/// One message of a JSON-RPC batch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchMessage {
    /// `request`, `notification`, `response` or `error`.
    pub kind: String,
    /// Its JSON-RPC method; `null` for a response.
    pub method: Option<String>,
    /// Its JSON-RPC id as sent; `null` for a notification.
    pub jsonrpc_id: Value,
    /// The tool, prompt or resource it names; `null` if none.
    pub tool: Option<String>,
    /// Its arguments, masked; `null` when there are none.
    pub arguments: Value,
}

/// The approval a request record refers to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApprovalRef {
    /// The approval's id (`apr_...`).
    pub id: String,
    /// Its status for this call: `used` (its grant let the call through), `pending`,
    /// `denied` or `expired` (the call was refused).
    pub status: String,
    /// The policy rule that required it.
    pub rule: String,
}

/// Which credential the gateway presented to the upstream for a call, by type. Never a
/// secret: only the names an auditor needs to find it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum UpstreamCredentialPresented {
    /// A configured header (an API key or a static bearer token).
    StaticHeader {
        /// The header's name.
        header: String,
    },
    /// An AWS SigV4 signature with credentials from STS.
    AwsSigv4 {
        /// The role assumed for the call.
        role_arn: String,
        /// The STS source identity: the caller's subject.
        source_identity: String,
        /// The temporary credential's access key id; absent when STS gave none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        access_key_id: Option<String>,
        /// Why there is no signature (the call was refused); absent when it was signed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
}
