//! The MCP message model: JSON-RPC 2.0 messages as MCP's Streamable HTTP transport
//! carries them, and what the gateway needs to know about each one.
//!
//! [`parse_body`] validates a POST body (a single message, or a batch as revision
//! 2025-03-26 allows) and classifies each message. [`check_routing_headers`] applies the
//! 2026-07-28 rule that `Mcp-Method` / `Mcp-Name` headers must agree with the body.
//!
//! The gateway decides on the body as serde_json reads it, and the upstream runs what its
//! own parser reads. So that both read the same call, bodies another parser could read
//! differently are refused (Invalid Request): an object with two keys that are equal after
//! case folding (`"name"` twice, or `"name"` and `"NAME"`: serde_json keeps the last, some
//! parsers the first, Go's `encoding/json` matches keys case-insensitively), and a key that
//! differs only in case from a member the gateway reads (`"METHOD"` next to a `result`).
//! A request whose target is not a string (`"name": ["run_query"]`) is Invalid Params.

use serde_json::{Map, Value};
use thiserror::Error;

use crate::jsonrpc_error;

/// `Mcp-Session-Id` request/response header.
pub const SESSION_ID_HEADER: &str = "mcp-session-id";
/// `MCP-Protocol-Version` request header.
pub const PROTOCOL_VERSION_HEADER: &str = "mcp-protocol-version";
/// `Mcp-Method` request header (revision 2026-07-28).
pub const METHOD_HEADER: &str = "mcp-method";
/// `Mcp-Name` request header (revision 2026-07-28).
pub const NAME_HEADER: &str = "mcp-name";
/// The only revision that allows JSON-RPC batches.
pub const BATCH_REVISION: &str = "2025-03-26";
/// The revision that requires `Mcp-Method` / `Mcp-Name` headers.
pub const ROUTING_HEADERS_REVISION: &str = "2026-07-28";

/// Why a body is not acceptable MCP.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ParseError {
    /// Not JSON at all (or nested too deeply to parse safely).
    #[error("parse error: {0}")]
    InvalidJson(String),
    /// JSON, but not a JSON-RPC 2.0 message or batch of them.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// A request whose params its method cannot take (a target that is not a string). `id`
    /// is the request's, to answer with (`None` in a batch, answered as a whole).
    #[error("invalid params: {why}")]
    InvalidParams { why: String, id: Option<Value> },
}

impl ParseError {
    /// The JSON-RPC error code a client should receive.
    pub fn jsonrpc_code(&self) -> i64 {
        match self {
            Self::InvalidJson(_) => jsonrpc_error::PARSE_ERROR,
            Self::InvalidRequest(_) => jsonrpc_error::INVALID_REQUEST,
            Self::InvalidParams { .. } => jsonrpc_error::INVALID_PARAMS,
        }
    }
}

/// What a JSON-RPC message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// Has a method and an id: expects a response.
    Request,
    /// Has a method and no id.
    Notification,
    /// Has an id and a result.
    Response,
    /// Has an id and an error.
    Error,
}

impl MessageKind {
    /// Lower-case name used in records.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Notification => "notification",
            Self::Response => "response",
            Self::Error => "error",
        }
    }
}

/// One validated JSON-RPC message.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    pub kind: MessageKind,
    /// The JSON-RPC id (a string or a number); `None` for notifications.
    pub id: Option<Value>,
    /// The method, for requests and notifications.
    pub method: Option<String>,
    /// The params, for requests and notifications.
    pub params: Option<Value>,
    /// The error code, for error responses.
    pub error_code: Option<i64>,
}

impl Message {
    /// The name a request acts on: the tool of `tools/call`, the prompt of `prompts/get`,
    /// the URI of `resources/read` and resource subscriptions.
    pub fn target_name(&self) -> Option<&str> {
        let key = target_key(self.method.as_deref()?)?;
        self.params.as_ref()?.get(key)?.as_str()
    }

    /// Whether this method names a target (so `Mcp-Name` is required with it).
    pub fn has_target(&self) -> bool {
        self.method.as_deref().and_then(target_key).is_some()
    }

    /// The arguments of a `tools/call` or `prompts/get`.
    pub fn arguments(&self) -> Option<&Value> {
        match self.method.as_deref()? {
            "tools/call" | "prompts/get" => self.params.as_ref()?.get("arguments"),
            _ => None,
        }
    }

    /// The id as compact JSON text (`1`, `"abc"`), as records carry it.
    pub fn id_text(&self) -> Option<String> {
        self.id.as_ref().map(Value::to_string)
    }
}

/// A parsed POST body: one message, or a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub batch: bool,
    pub messages: Vec<Message>,
}

impl Envelope {
    /// The first message (every envelope has at least one).
    pub fn first(&self) -> Option<&Message> {
        self.messages.first()
    }

    /// Whether any message (in a batch too) is a `tools/list` request: its answer is filtered
    /// to the tools the caller may call.
    pub fn lists_tools(&self) -> bool {
        self.messages.iter().any(|m| m.method.as_deref() == Some("tools/list"))
    }
}

/// Parses and validates a body as MCP JSON-RPC.
pub fn parse_body(body: &[u8]) -> Result<Envelope, ParseError> {
    // serde_json refuses nesting deeper than 128 levels, so a deep body is an error, not a
    // stack overflow.
    let value: Value = serde_json::from_slice(body).map_err(|e| match inexact_number(body) {
        // JSON, but a number overflows f64 (`1e400`): refused as below, not as a syntax error.
        Some(number) if e.to_string().starts_with("number out of range") => inexact(&number, None),
        _ => ParseError::InvalidJson(e.to_string()),
    })?;
    // The body is JSON; a second pass refuses keys another parser could read differently.
    if let Some(key) = crate::json_keys::repeated_key(body, fold_key) {
        return Err(ParseError::InvalidRequest(format!(
            "the key {key:?} appears twice in one object (keys differing only in case count as the same)"
        )));
    }
    let envelope = parse_value(value)?;
    // Only requests: an answer's numbers are the upstream's to send, and its summary
    // (id, error code) must not be lost over them.
    if envelope.messages.iter().any(|m| m.method.is_some())
        && let Some(number) = inexact_number(body)
    {
        let id = match envelope.messages.as_slice() {
            [only] if !envelope.batch => only.id.clone(),
            _ => None,
        };
        return Err(inexact(&number, id));
    }
    Ok(envelope)
}

fn inexact(number: &str, id: Option<Value>) -> ParseError {
    ParseError::InvalidParams {
        why: format!("the number {number} is beyond what the gateway holds exactly"),
        id,
    }
}

/// The first number literal of `json` (outside strings) that serde_json cannot hold
/// exactly, so that two different literals would read as one value: the policy, the
/// approval shown and the audit record would then see another number than the upstream
/// runs, and a grant for one would release the other. An integer must fit i64 or u64; a
/// literal with a fraction or an exponent must be the shortest spelling of the f64 it
/// reads as (trailing zeros aside), which no other literal shares.
fn inexact_number(json: &[u8]) -> Option<String> {
    let mut i = 0;
    let mut in_string = false;
    while let Some(&b) = json.get(i) {
        if in_string {
            match b {
                // The escaped byte cannot end the string.
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if b != b'-' && !b.is_ascii_digit() {
            i += 1;
            continue;
        }
        let end = json
            .get(i..)
            .and_then(|rest| {
                rest.iter()
                    .position(|c| !matches!(c, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
            })
            .map_or(json.len(), |n| i + n);
        let token = std::str::from_utf8(json.get(i..end)?).ok()?;
        if !number_is_exact(token) {
            return Some(token.to_owned());
        }
        i = end;
    }
    None
}

fn number_is_exact(token: &str) -> bool {
    if !token.contains(['.', 'e', 'E']) {
        return token.parse::<i64>().is_ok() || token.parse::<u64>().is_ok();
    }
    match token.parse::<f64>() {
        Ok(x) if x.is_finite() => decimal_digits(token) == decimal_digits(&format!("{x:e}")),
        _ => false,
    }
}

/// A decimal literal as (significant digits, position of the decimal point after the
/// first of them): `-1.50e2` and `150` are both ("15", 3); zero is ("", 0) whatever its
/// spelling. `None` for an exponent too large to matter (it reads as 0 or infinity).
fn decimal_digits(literal: &str) -> Option<(String, i64)> {
    let unsigned = literal.trim_start_matches('-');
    let (mantissa, exponent) = unsigned.split_once(['e', 'E']).unwrap_or((unsigned, "0"));
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let digits = format!("{whole}{fraction}");
    let significant = digits.trim_start_matches('0');
    let leading_zeros = i64::try_from(digits.len() - significant.len()).ok()?;
    let significant = significant.trim_end_matches('0');
    if significant.is_empty() {
        return Some((String::new(), 0));
    }
    let exponent = exponent.parse::<i64>().ok()?;
    let point = i64::try_from(whole.len())
        .ok()?
        .checked_add(exponent)?
        .checked_sub(leading_zeros)?;
    Some((significant.to_owned(), point))
}

/// A key as a case-insensitive parser matches it: every character upper- then lower-cased
/// (so `ſ` and the Kelvin sign fold to `s` and `k`, as in Go's `encoding/json`).
pub fn fold_key(key: &str) -> String {
    key.chars()
        .flat_map(char::to_uppercase)
        .flat_map(char::to_lowercase)
        .collect()
}

/// The members of a message, and of a request's params, that the gateway decides on.
const MESSAGE_KEYS: &[&str] = &["jsonrpc", "id", "method", "params", "result", "error"];
const PARAMS_KEYS: &[&str] = &["name", "arguments", "uri", "_meta"];

/// A key that a case-insensitive parser would read as one of `known`, but serde_json does not.
fn near_miss(obj: &Map<String, Value>, known: &[&str]) -> Option<String> {
    obj.keys().find_map(|key| {
        let folded = fold_key(key);
        known
            .iter()
            .find(|k| **k != key && **k == folded)
            .map(|k| format!("the key {key:?} differs from {k:?} only in case"))
    })
}

/// Validates an already-parsed JSON value as MCP JSON-RPC.
pub fn parse_value(value: Value) -> Result<Envelope, ParseError> {
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(ParseError::InvalidRequest("empty batch".into()));
            }
            let messages = items
                .into_iter()
                .enumerate()
                .map(|(i, item)| {
                    parse_message(item).map_err(|e| match e {
                        ParseError::InvalidRequest(why) => ParseError::InvalidRequest(format!("batch item {i}: {why}")),
                        ParseError::InvalidParams { why, .. } => ParseError::InvalidParams {
                            why: format!("batch item {i}: {why}"),
                            id: None,
                        },
                        other => other,
                    })
                })
                .collect::<Result<_, _>>()?;
            Ok(Envelope { batch: true, messages })
        }
        other => Ok(Envelope {
            batch: false,
            messages: vec![parse_message(other)?],
        }),
    }
}

fn parse_message(value: Value) -> Result<Message, ParseError> {
    let invalid = |why: &str| ParseError::InvalidRequest(why.to_owned());
    let Value::Object(mut obj) = value else {
        return Err(invalid("a JSON-RPC message must be an object"));
    };
    if let Some(why) = near_miss(&obj, MESSAGE_KEYS) {
        return Err(ParseError::InvalidRequest(why));
    }
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(invalid("\"jsonrpc\" must be \"2.0\""));
    }
    let id = match obj.remove("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_))) => Some(id),
        Some(_) => return Err(invalid("\"id\" must be a string or a number")),
    };
    match obj.remove("method") {
        Some(Value::String(method)) => {
            let params = match obj.remove("params") {
                None => None,
                Some(p @ (Value::Object(_) | Value::Array(_))) => Some(p),
                Some(_) => return Err(invalid("\"params\" must be an object or an array")),
            };
            check_params(&method, params.as_ref(), id.as_ref())?;
            let kind = if id.is_some() {
                MessageKind::Request
            } else {
                MessageKind::Notification
            };
            Ok(Message {
                kind,
                id,
                method: Some(method),
                params,
                error_code: None,
            })
        }
        Some(_) => Err(invalid("\"method\" must be a string")),
        None => parse_response(id, &obj),
    }
}

/// The key naming what a method acts on (see [`Message::target_name`]).
fn target_key(method: &str) -> Option<&'static str> {
    match method {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => Some("uri"),
        _ => None,
    }
}

/// A method that acts on a target must name it with a string, and take its arguments as an
/// object: otherwise the policy would decide on no tool (a rule for the tool never matches)
/// while an upstream may still read one.
fn check_params(method: &str, params: Option<&Value>, id: Option<&Value>) -> Result<(), ParseError> {
    let invalid = |why: String| ParseError::InvalidParams { why, id: id.cloned() };
    if let Some(Value::Object(p)) = params
        && let Some(why) = near_miss(p, PARAMS_KEYS)
    {
        return Err(ParseError::InvalidRequest(format!("params: {why}")));
    }
    let Some(key) = target_key(method) else {
        return Ok(());
    };
    let Some(Value::Object(p)) = params else {
        return Err(invalid(format!(
            "{method} takes params as an object with a string {key:?}"
        )));
    };
    if !p.get(key).is_some_and(Value::is_string) {
        return Err(invalid(format!("params.{key} of {method} must be a string")));
    }
    if p.get("arguments").is_some_and(|a| !a.is_object()) {
        return Err(invalid(format!("params.arguments of {method} must be an object")));
    }
    Ok(())
}

fn parse_response(id: Option<Value>, obj: &Map<String, Value>) -> Result<Message, ParseError> {
    let invalid = |why: &str| ParseError::InvalidRequest(why.to_owned());
    let (result, error) = (obj.get("result"), obj.get("error"));
    match (result, error) {
        (Some(_), None) => {
            let id = id.ok_or_else(|| invalid("a response needs an \"id\""))?;
            Ok(Message {
                kind: MessageKind::Response,
                id: Some(id),
                method: None,
                params: None,
                error_code: None,
            })
        }
        (None, Some(error)) => {
            let code = error
                .get("code")
                .and_then(Value::as_i64)
                .ok_or_else(|| invalid("\"error.code\" must be an integer"))?;
            if !error.get("message").is_some_and(Value::is_string) {
                return Err(invalid("\"error.message\" must be a string"));
            }
            // An error answering an unparseable request may carry a null id: keep it absent.
            Ok(Message {
                kind: MessageKind::Error,
                id,
                method: None,
                params: None,
                error_code: Some(code),
            })
        }
        (Some(_), Some(_)) => Err(invalid("a response has either \"result\" or \"error\", not both")),
        (None, None) => Err(invalid(
            "neither a request (\"method\") nor a response (\"result\"/\"error\")",
        )),
    }
}

/// Why the 2026-07-28 routing headers do not fit the body.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HeaderMismatch {
    #[error("the Mcp-Method header is required with MCP-Protocol-Version {ROUTING_HEADERS_REVISION}")]
    MethodMissing,
    #[error("the Mcp-Method header does not match the method in the body")]
    MethodDiffers,
    #[error("the Mcp-Name header is required for this method with MCP-Protocol-Version {ROUTING_HEADERS_REVISION}")]
    NameMissing,
    #[error("the Mcp-Name header does not match the name in the body")]
    NameDiffers,
    #[error("JSON-RPC batches are not allowed in MCP revision {0}")]
    BatchNotAllowed(String),
}

impl HeaderMismatch {
    /// The JSON-RPC error code a client should receive: MCP's `HEADER_MISMATCH` for the
    /// routing headers, Invalid Request for a batch on a revision without batches.
    pub fn jsonrpc_code(&self) -> i64 {
        match self {
            Self::BatchNotAllowed(_) => jsonrpc_error::INVALID_REQUEST,
            _ => jsonrpc_error::HEADER_MISMATCH,
        }
    }
}

/// Checks the request headers a revision requires against the parsed body.
///
/// Only messages with a method are checked (a POST that carries a client's response to a
/// server request has no method to route on).
pub fn check_routing_headers(
    protocol_version: Option<&str>,
    method_header: Option<&str>,
    name_header: Option<&str>,
    envelope: &Envelope,
) -> Result<(), HeaderMismatch> {
    if envelope.batch
        && let Some(version) = protocol_version
        && version != BATCH_REVISION
    {
        return Err(HeaderMismatch::BatchNotAllowed(version.to_owned()));
    }
    if protocol_version != Some(ROUTING_HEADERS_REVISION) {
        return Ok(());
    }
    let Some(message) = envelope.first().filter(|m| m.method.is_some()) else {
        return Ok(());
    };
    let method_header = method_header.ok_or(HeaderMismatch::MethodMissing)?;
    if Some(method_header) != message.method.as_deref() {
        return Err(HeaderMismatch::MethodDiffers);
    }
    if message.has_target() {
        let name_header = name_header.ok_or(HeaderMismatch::NameMissing)?;
        if Some(name_header) != message.target_name() {
            return Err(HeaderMismatch::NameDiffers);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<Envelope, ParseError> {
        parse_body(&serde_json::to_vec(&v).unwrap())
    }

    #[test]
    fn classifies_a_tool_call() {
        let env = parse(json!({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
            "params": {"name": "echo", "arguments": {"message": "hi"}}}))
        .unwrap();
        assert!(!env.batch);
        let m = env.first().unwrap();
        assert_eq!(m.kind, MessageKind::Request);
        assert_eq!(m.target_name(), Some("echo"));
        assert_eq!(m.arguments(), Some(&json!({"message": "hi"})));
        assert_eq!(m.id_text().as_deref(), Some("7"));
    }

    #[test]
    fn classifies_notifications_responses_and_errors() {
        let n = parse(json!({"jsonrpc": "2.0", "method": "notifications/initialized"})).unwrap();
        assert_eq!(n.messages[0].kind, MessageKind::Notification);
        let r = parse(json!({"jsonrpc": "2.0", "id": "a", "result": {}})).unwrap();
        assert_eq!(r.messages[0].kind, MessageKind::Response);
        let e = parse(json!({"jsonrpc": "2.0", "id": 1, "error": {"code": -32601, "message": "no"}})).unwrap();
        assert_eq!(e.messages[0].kind, MessageKind::Error);
        assert_eq!(e.messages[0].error_code, Some(-32601));
    }

    #[test]
    fn resource_reads_are_named_by_uri() {
        let env = parse(json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read",
            "params": {"uri": "file:///etc/hosts"}}))
        .unwrap();
        assert_eq!(env.messages[0].target_name(), Some("file:///etc/hosts"));
        assert_eq!(env.messages[0].arguments(), None);
    }

    #[test]
    fn batches_are_parsed_item_by_item() {
        let env = parse(json!([
            {"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
            {"jsonrpc": "2.0", "method": "notifications/initialized"}
        ]))
        .unwrap();
        assert!(env.batch);
        assert_eq!(env.messages.len(), 2);
        let err = parse(json!([{"jsonrpc": "2.0", "id": 1, "method": "x"}, 5])).unwrap_err();
        assert_eq!(
            err,
            ParseError::InvalidRequest("batch item 1: a JSON-RPC message must be an object".into())
        );
    }

    #[test]
    fn malformed_json_is_a_parse_error() {
        for body in [&b"{"[..], b"", b"{\"jsonrpc\": \"2.0\",}", b"\xff\xfe"] {
            let err = parse_body(body).unwrap_err();
            assert_eq!(err.jsonrpc_code(), -32700, "{body:?}");
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let deep = "[".repeat(100_000) + &"]".repeat(100_000);
        assert_eq!(parse_body(deep.as_bytes()).unwrap_err().jsonrpc_code(), -32700);
        let twice = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"q","arguments":{"sql":"SELECT secret","sql":"SELECT 1"}}}"#;
        assert_eq!(parse_body(twice).unwrap_err().jsonrpc_code(), -32600);
    }

    #[test]
    fn json_that_is_not_jsonrpc_is_an_invalid_request() {
        for v in [
            json!(42),
            json!([]),
            json!({"hello": "world"}),
            json!({"jsonrpc": "1.0", "id": 1, "method": "x"}),
            json!({"jsonrpc": "2.0", "id": {"a": 1}, "method": "x"}),
            json!({"jsonrpc": "2.0", "id": null, "method": "x"}),
            json!({"jsonrpc": "2.0", "id": 1, "method": 5}),
            json!({"jsonrpc": "2.0", "id": 1, "method": "x", "params": "s"}),
            json!({"jsonrpc": "2.0", "id": 1}),
            json!({"jsonrpc": "2.0", "result": {}}),
            json!({"jsonrpc": "2.0", "id": 1, "result": {}, "error": {"code": 1, "message": "m"}}),
            json!({"jsonrpc": "2.0", "id": 1, "error": {"code": "x", "message": "m"}}),
        ] {
            assert_eq!(parse(v.clone()).unwrap_err().jsonrpc_code(), -32600, "{v}");
        }
    }

    #[test]
    fn a_target_that_is_not_a_string_is_invalid_params() {
        for params in [
            json!({"name": ["run_query"]}),
            json!({"name": {"0": "run_query"}}),
            json!({"name": 7}),
            json!({"name": null}),
            json!({"arguments": {}}),
            json!(["run_query"]),
            json!({"name": "run_query", "arguments": ["x"]}),
        ] {
            for method in ["tools/call", "prompts/get"] {
                let v = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
                assert_eq!(parse(v.clone()).unwrap_err().jsonrpc_code(), -32602, "{v}");
            }
        }
        let err =
            parse(json!({"jsonrpc": "2.0", "id": "q", "method": "tools/call", "params": {"name": 1}})).unwrap_err();
        assert!(
            matches!(err, ParseError::InvalidParams { id: Some(ref id), .. } if id == "q"),
            "{err:?}"
        );
        let batch = json!([{"jsonrpc": "2.0", "id": "q", "method": "tools/call", "params": {"name": 1}}]);
        assert!(matches!(
            parse(batch).unwrap_err(),
            ParseError::InvalidParams { id: None, .. }
        ));
        let no_params = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call"});
        assert_eq!(parse(no_params).unwrap_err().jsonrpc_code(), -32602);
        let uri = json!({"jsonrpc": "2.0", "id": 1, "method": "resources/read", "params": {"uri": 5}});
        assert_eq!(parse(uri).unwrap_err().jsonrpc_code(), -32602);
        // Methods without a target keep their free-form params.
        let list = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"name": 5}});
        assert!(parse(list).is_ok());
    }

    #[test]
    fn keys_a_parser_could_read_differently_are_refused() {
        let refused = [
            // Duplicates: serde_json keeps the last, other parsers the first.
            &br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"safe","name":"run_query"}}"#[..],
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","method":"tools/call","params":{"name":"x"}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x"},"params":{"name":"y"}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{},"arguments":{"a":1}}}"#,
            // Deep inside the arguments too: a policy condition reads them.
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":{"b":1,"b":2}}}}"#,
            // Case variants a case-insensitive parser (Go) reads as the same key.
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"safe","NAME":"run_query"}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"safe","Name":"run_query"}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"ping","METHOD":"tools/call"}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":{},"METHOD":"tools/call","PARAMS":{"name":"x"}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/list","Params":{"name":"x"}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"safe","Arguments":{"a":1}}}"#,
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"q":1,"Q":2}}}"#,
            // Unicode folding, as Go's: the long s and the Kelvin sign.
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\",\"params\":{\"name\":\"a\",\"\u{17f}\":1,\"s\":2}}".as_bytes(),
            "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"a\",\"arguments\":{\"\u{212a}\":1,\"k\":2}}}".as_bytes(),
            // Escapes are read before comparing.
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"safe","n\u0061me":"run_query"}}"#,
            br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"ping","Method":"tools/call"}]"#,
        ];
        for body in refused {
            let err = parse_body(body).unwrap_err();
            assert_eq!(err.jsonrpc_code(), -32600, "{}: {err}", String::from_utf8_lossy(body));
        }
        // Different keys that merely look alike stay allowed.
        let ok = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"x","arguments":{"a":1,"ab":2,"_meta":3}}}"#;
        assert!(parse_body(ok).is_ok());
    }

    #[test]
    fn folding_matches_a_case_insensitive_parser() {
        assert_eq!(fold_key("NaMe"), "name");
        assert_eq!(fold_key("\u{17f}"), "s");
        assert_eq!(fold_key("\u{212a}"), "k");
        assert_ne!(fold_key("name"), fold_key("names"));
    }

    #[test]
    fn many_keys_are_checked_without_quadratic_cost() {
        let keys: Vec<String> = (0..50_000).map(|i| format!("\"k{i}\":{i}")).collect();
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"x","arguments":{{{}}}}}}}"#,
            keys.join(",")
        );
        assert!(parse_body(body.as_bytes()).is_ok());
    }

    fn call(name: &str) -> Envelope {
        parse(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": name}})).unwrap()
    }

    #[test]
    fn routing_headers_must_match_on_2026_07_28() {
        let v = Some(ROUTING_HEADERS_REVISION);
        let env = call("echo");
        assert_eq!(check_routing_headers(v, Some("tools/call"), Some("echo"), &env), Ok(()));
        assert_eq!(
            check_routing_headers(v, None, Some("echo"), &env),
            Err(HeaderMismatch::MethodMissing)
        );
        assert_eq!(
            check_routing_headers(v, Some("tools/list"), Some("echo"), &env),
            Err(HeaderMismatch::MethodDiffers)
        );
        assert_eq!(
            check_routing_headers(v, Some("tools/call"), None, &env),
            Err(HeaderMismatch::NameMissing)
        );
        assert_eq!(
            check_routing_headers(v, Some("tools/call"), Some("rm_rf"), &env),
            Err(HeaderMismatch::NameDiffers)
        );
        let list = parse(json!({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})).unwrap();
        assert_eq!(check_routing_headers(v, Some("tools/list"), None, &list), Ok(()));
    }

    fn raw(body: &str) -> Result<Envelope, ParseError> {
        parse_body(body.as_bytes())
    }

    #[test]
    fn numbers_the_gateway_cannot_hold_exactly_are_invalid_params() {
        let call = |args: &str| {
            format!(r#"{{"jsonrpc":"2.0","id":"q","method":"tools/call","params":{{"name":"t","arguments":{args}}}}}"#)
        };
        for refused in [
            "36893488147419103232",
            "-9223372036854775809",
            "18446744073709551616",
            "1e400",
            "-1e400",
            "1e-400",
            "4e-324",
            "0.10000000000000001",
            "9007199254740993.0",
            "3.14159265358979323846",
            "1.5e99999999999999999999",
        ] {
            let err = raw(&call(&format!(r#"{{"a":[1,{{"n":{refused}}}]}}"#))).unwrap_err();
            // serde_json itself refuses what overflows f64: no id to answer with then.
            let overflows = refused.parse::<f64>().is_ok_and(f64::is_infinite);
            assert!(
                matches!(&err, ParseError::InvalidParams { id, why }
                    if (overflows || id.as_ref().is_some_and(|id| id == "q")) && why.contains(refused)),
                "{refused}: {err:?}"
            );
        }
        for fine in [
            "9007199254740993",
            "18446744073709551615",
            "-9223372036854775808",
            "0",
            "-0",
            "-0.0",
            "0e99999999999999999999",
            "0.1",
            "1.10",
            "1E2",
            "100.0",
            "1e22",
            "0.30000000000000004",
            "5e-324",
            "1.7976931348623157e308",
            "-2.5E-3",
        ] {
            assert!(raw(&call(&format!(r#"{{"n":{fine}}}"#))).is_ok(), "{fine}");
        }
    }

    #[test]
    fn number_tokens_inside_strings_are_not_numbers() {
        let body = r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"t","arguments":
            {"a":"36893488147419103232","b\"1e400":"x\\","1e400":"\"0.10000000000000001\"","c":7}}}"#;
        assert!(raw(body).is_ok());
        let batch =
            r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"x","params":{"n":1e400000}}]"#;
        assert!(matches!(raw(batch), Err(ParseError::InvalidParams { id: None, .. })));
        let batch = r#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"x","params":{"n":36893488147419103232}}]"#;
        assert!(matches!(raw(batch), Err(ParseError::InvalidParams { id: None, .. })));
    }

    #[test]
    fn an_answer_may_carry_any_number() {
        let answer = r#"{"jsonrpc":"2.0","id":1,"result":{"n":36893488147419103232}}"#;
        assert!(raw(answer).is_ok());
    }

    #[test]
    fn routing_headers_are_not_required_on_older_revisions() {
        let env = call("echo");
        assert_eq!(check_routing_headers(Some("2025-06-18"), None, None, &env), Ok(()));
        assert_eq!(check_routing_headers(None, Some("bogus"), None, &env), Ok(()));
    }

    #[test]
    fn batches_only_on_2025_03_26() {
        let batch = parse(json!([{"jsonrpc": "2.0", "id": 1, "method": "tools/list"}])).unwrap();
        assert_eq!(check_routing_headers(Some("2025-03-26"), None, None, &batch), Ok(()));
        assert_eq!(check_routing_headers(None, None, None, &batch), Ok(()));
        assert_eq!(
            check_routing_headers(Some("2025-06-18"), None, None, &batch),
            Err(HeaderMismatch::BatchNotAllowed("2025-06-18".into()))
        );
    }
}
