//! What the filter reports: the answer a client received (`response`, one record per part)
//! and the requests it refused itself (`request_rejected`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Decision, is_false};

/// One part of an upstream answer, as the filter observed it and the service stored it. A
/// JSON answer is one part; an SSE answer is one part per event and a last, `final` part
/// once the stream ends (see [`ResponsePartObserved::part_shape`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponsePartObserved {
    /// Position of this part in the answer, from 0.
    pub part: u32,
    /// The last part: the answer ended (see `end_reason`).
    #[serde(rename = "final")]
    pub is_final: bool,
    /// The HTTP status the client got.
    pub http_status: u32,
    /// The answer's media type; `null` when it had none.
    pub content_type: Option<String>,
    /// The JSON-RPC message (or batch), masked with nothing revealed; a string when it was not
    /// JSON (cut or not JSON); `null` on a part that only closes a stream.
    pub message: Value,
    /// How many values of each kind were masked in `message` (never the values).
    pub masked: BTreeMap<String, u64>,
    /// Kinds the client was shown in clear (the record itself is always masked).
    pub revealed: Vec<String>,
    /// Why the filter withheld (part of) the answer from the client, as sent (a
    /// [`Withheld`] value from a current filter); `null` when it did not.
    pub withheld: Option<String>,
    /// `message` was cut to the filter's record limit.
    pub truncated: bool,
    /// Body bytes seen for this answer so far.
    pub body_bytes: u64,
    /// When the filter saw this part, Unix milliseconds (the filter's clock).
    pub observed_at_unix_ms: u64,
    /// The SSE event's `id:`; `null` when it had none or the answer is not SSE.
    pub sse_event_id: Option<String>,
    /// The JSON-RPC id of `message` as JSON text (`"1"`, `"\"abc\""`); `null` when none.
    pub jsonrpc_id: Option<String>,
    /// `message` is a JSON-RPC error.
    pub is_error: bool,
    /// The JSON-RPC error code when `is_error`; `null` otherwise.
    pub error_code: Option<i64>,
    /// Why the answer ended, on a final part (an [`EndReason`] value from a current filter);
    /// `null` on other parts.
    pub end_reason: Option<String>,
    /// Which filter instance reported it (plugin name and VM/worker).
    pub source: String,
    /// The upstream's `Mcp-Session-Id` the answer set (the session an `initialize` opened),
    /// on the first part only; absent when it set none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    /// Under `metadata` recording (the request's record says so), `message` is `null` and this
    /// says what it held. Only the service sets it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<super::ContentDigest>,
    /// Another, different record for the same request and part was stored first (absent:
    /// no conflict). Only the service sets it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub conflict: bool,
}

/// What a response part holds, told from its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponsePart {
    /// A whole (non-streamed) answer: one part, final, with its message.
    Whole,
    /// One event of an SSE stream.
    SseEvent,
    /// The part that closes a stream (no message), or an answer with no body.
    End,
}

impl ResponsePartObserved {
    pub fn part_shape(&self) -> ResponsePart {
        match (self.is_final, self.message.is_null()) {
            (true, true) => ResponsePart::End,
            (true, false) => ResponsePart::Whole,
            (false, _) => ResponsePart::SseEvent,
        }
    }
}

/// A request the filter refused as malformed before the service or an upstream saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRejected {
    /// The caller, when the bearer token the filter passed on verified; `null` otherwise (the
    /// token itself is never stored).
    pub subject: Option<String>,
    /// The HTTP status the client got.
    pub http_status: u32,
    /// The JSON-RPC error code the client got.
    pub jsonrpc_code: i32,
    /// Why the filter refused it.
    pub reason: String,
    /// The HTTP method.
    pub http_method: String,
    /// The request path as the filter saw it.
    pub path: String,
    /// The `Mcp-Session-Id` header; `null` when absent.
    pub session_id: Option<String>,
    /// The `MCP-Protocol-Version` header; `null` when absent.
    pub protocol_version: Option<String>,
    /// The JSON-RPC method, when the filter could read one; `null` otherwise.
    pub mcp_method: Option<String>,
    /// When the filter refused it, Unix milliseconds (the filter's clock).
    pub observed_at_unix_ms: u64,
    /// Always `deny`.
    pub decision: Decision,
    /// Which filter instance reported it.
    pub source: String,
    /// Another, different rejection of the same request was stored first (absent: none).
    #[serde(default, skip_serializing_if = "is_false")]
    pub conflict: bool,
}

macro_rules! string_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal,)* }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($(#[$vmeta])* $variant,)*
        }

        impl $name {
            pub const ALL: &'static [Self] = &[$(Self::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text,)*
                }
            }

            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str() == s)
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

string_enum! {
    /// Why the filter did not give the client (part of) the answer (a response record's
    /// `withheld`).
    Withheld {
        /// A compressed body, which cannot be masked.
        Encoded = "encoded",
        /// A body over `max_response_bytes` (or Envoy's own buffer limit).
        TooLarge = "too_large",
        /// One SSE event over the event bound: replaced by a comment, the stream goes on.
        EventTooLarge = "event_too_large",
        /// The host would not give or take the body, so it could not be masked.
        Unreadable = "unreadable",
        /// A binary media type (`image/*`, `audio/*`, `video/*`, `application/octet-stream`).
        Binary = "binary",
        /// The upstream answered 401 or 403 to the gateway's own credential: the client got a
        /// JSON-RPC error instead.
        CredentialRefused = "credential_refused",
    }
}

string_enum! {
    /// Why an answer ended (a final response record's `end_reason`).
    EndReason {
        /// The answer ended normally.
        Complete = "complete",
        /// The client went away (or the stream was reset) before the end.
        ClientGone = "client_gone",
        /// The upstream reset the stream before the end.
        UpstreamReset = "upstream_reset",
    }
}
