//! What the filter decides about a request, as pure functions of its headers and body.
//!
//! Bad input never reaches an upstream: a method MCP does not use, a POST that is not
//! JSON, a body over the limit, a body that is not JSON-RPC (or that another parser could
//! read as a different call, see `gatehouse_core::mcp`), or (on revision 2026-07-28)
//! routing headers that disagree with the body are each answered here with an HTTP
//! status and a JSON-RPC error body, and recorded as a `RequestRejected`.

use gatehouse_core::jsonrpc_error::{self, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, PARSE_ERROR};
use gatehouse_core::mcp::{self, Envelope, ParseError};
use gatehouse_core::{session, wire};
use gatehouse_proto::audit::v1::RequestRejected;
use serde_json::Value;

use gatehouse_core::wire::GATEHOUSE_HEADER_PREFIX;
/// The methods MCP's Streamable HTTP transport uses.
pub const ALLOWED_METHODS: &str = "GET, POST, DELETE";

/// The request headers the filter reads, taken once from the header map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    /// The path without its query string (which may carry secrets, and is not recorded).
    pub path: String,
    pub content_type: Option<String>,
    /// `None` if absent; `Some(None)` if present but not a number.
    pub content_length: Option<Option<u64>>,
    /// The token of an `Authorization: Bearer` header, only to attribute a rejection.
    pub bearer_token: Option<String>,
    pub session_id: Option<String>,
    pub protocol_version: Option<String>,
    pub mcp_method: Option<String>,
    pub mcp_name: Option<String>,
    /// `:authority` (HTTP/2) or `Host` (HTTP/1), as the client sent it.
    pub authority: Option<String>,
    pub origin: Option<String>,
}

impl RequestHead {
    /// Reads the head from header pairs (names in lower case, as Envoy gives them).
    /// Values that are not UTF-8 are read lossily: they can then only fail to match.
    pub fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let mut head = Self::default();
        for (name, value) in headers {
            let value = || String::from_utf8_lossy(value).trim().to_owned();
            match name.to_ascii_lowercase().as_str() {
                ":method" => head.method = value(),
                ":path" => {
                    let path = value();
                    head.path = path.split(['?', '#']).next().unwrap_or_default().to_owned();
                }
                "content-type" => head.content_type = Some(value()),
                "content-length" => head.content_length = Some(value().parse().ok()),
                "authorization" => head.bearer_token = wire::bearer_token(Some(&value())).map(str::to_owned),
                mcp::SESSION_ID_HEADER => head.session_id = Some(value()),
                mcp::PROTOCOL_VERSION_HEADER => head.protocol_version = Some(value()),
                mcp::METHOD_HEADER => head.mcp_method = Some(value()),
                mcp::NAME_HEADER => head.mcp_name = Some(value()),
                ":authority" | "host" => head.authority = Some(value()),
                "origin" => head.origin = Some(value()),
                _ => {}
            }
        }
        head
    }
}

/// The distinct names of client-sent `x-gatehouse-*` headers, to remove.
pub fn spoofed_header_names<'a>(names: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut spoofed: Vec<String> = names
        .into_iter()
        .filter(|n| {
            n.get(..GATEHOUSE_HEADER_PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(GATEHOUSE_HEADER_PREFIX))
        })
        .map(str::to_ascii_lowercase)
        .collect();
    spoofed.sort_unstable();
    spoofed.dedup();
    spoofed
}

/// The `Host` and `Origin` values the gateway answers to, lower case. Envoy rewrites `Host`
/// to what the upstream accepts, so an upstream's own DNS-rebinding check never sees the
/// client's: the gateway checks them. `None`: that check is off (the field was not
/// configured).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origins {
    pub hosts: Option<Vec<String>>,
    pub origins: Option<Vec<String>>,
}

/// Refuses a request for a `Host` the gateway does not serve, or from a browser page of
/// another origin (a request without `Origin` is not from a browser page: it passes).
pub fn check_origin(head: &RequestHead, allowed: &Origins) -> Result<(), Rejection> {
    let refuse = |what: &str, value: &str| {
        Rejection::new(
            403,
            jsonrpc_error::FORBIDDEN,
            format!("Forbidden: this gateway does not serve requests with this {what}"),
            format!("{what} {value:?} is not one the gateway serves (DNS rebinding?)"),
        )
    };
    let listed = |list: &[String], value: &str| list.iter().any(|v| v.eq_ignore_ascii_case(value));
    if let Some(hosts) = &allowed.hosts {
        let host = head.authority.as_deref().unwrap_or_default();
        if !listed(hosts, host) {
            return Err(refuse("Host", host));
        }
    }
    if let (Some(origins), Some(origin)) = (&allowed.origins, head.origin.as_deref())
        && !listed(origins, origin)
    {
        return Err(refuse("Origin", origin));
    }
    Ok(())
}

/// The session headers of an answer: the binding key the Check gave this request, and the
/// `Mcp-Session-Id` the client gets in place of the upstream's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionHeaders {
    /// The Check's `x-gatehouse-session-key` is on the answer (to remove).
    pub key_present: bool,
    /// The upstream's session id, tagged for this caller (to set).
    pub bound: Option<String>,
    /// The upstream sent a session id and there was no usable key: it goes on untagged, and
    /// the Check refuses it when the client sends it back.
    pub untagged: bool,
    /// The upstream's session id as it sent it (for the record).
    pub upstream_id: Option<String>,
}

impl SessionHeaders {
    pub fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let (mut key, mut id) = (None, None);
        let mut key_present = false;
        for (name, value) in headers {
            if name.eq_ignore_ascii_case(wire::SESSION_KEY_HEADER) {
                key_present = true;
                key = session::key_from_header(value);
            } else if name.eq_ignore_ascii_case(mcp::SESSION_ID_HEADER) && id.is_none() {
                id = std::str::from_utf8(value).ok().map(str::trim);
            }
        }
        let bound = key.zip(id).and_then(|(key, id)| session::bind(&key, id));
        Self {
            key_present,
            untagged: id.is_some() && bound.is_none(),
            bound,
            upstream_id: id.map(str::to_owned),
        }
    }
}

/// A refused request: what the client is told and what the audit trail records.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejection {
    pub status: u32,
    pub jsonrpc_code: i64,
    /// Safe to show the client: says what was wrong with its request, nothing internal.
    pub message: String,
    /// For the record (and the log): may add detail the client is not sent.
    pub reason: String,
    /// The JSON-RPC id to answer with, when the body was parsed.
    pub id: Option<Value>,
    /// The JSON-RPC method, when the body was parsed.
    pub jsonrpc_method: Option<String>,
}

impl Rejection {
    fn new(status: u32, code: i64, message: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            status,
            jsonrpc_code: code,
            message: message.into(),
            reason: reason.into(),
            id: None,
            jsonrpc_method: None,
        }
    }

    /// Used when the host fails us: the request cannot be checked, so it does not go on.
    pub fn internal(reason: impl Into<String>) -> Self {
        Self::new(
            500,
            INTERNAL_ERROR,
            "Internal error: the gateway could not check this request",
            reason,
        )
    }

    /// The JSON-RPC error body sent to the client.
    pub fn body(&self) -> Vec<u8> {
        jsonrpc_error::error_body(self.id.as_ref(), self.jsonrpc_code, &self.message, None)
    }

    /// Extra response headers besides content-type and the request id.
    pub fn extra_headers(&self) -> &'static [(&'static str, &'static str)] {
        if self.status == 405 {
            &[("allow", ALLOWED_METHODS)]
        } else {
            &[]
        }
    }

    /// The audit record of this rejection.
    pub fn record(&self, head: &RequestHead, request_id: &str, now_ms: u64) -> RequestRejected {
        RequestRejected {
            request_id: request_id.to_owned(),
            http_status: self.status,
            jsonrpc_code: i32::try_from(self.jsonrpc_code).unwrap_or(i32::MIN),
            reason: self.reason.clone(),
            http_method: head.method.clone(),
            path: head.path.clone(),
            // The upstream's id, as the Check records it (without the caller's tag).
            session_id: head
                .session_id
                .as_deref()
                .map(session::upstream_part)
                .unwrap_or_default()
                .to_owned(),
            protocol_version: head.protocol_version.clone().unwrap_or_default(),
            bearer_token: head.bearer_token.clone().unwrap_or_default(),
            observed_at_unix_ms: now_ms,
            jsonrpc_method: self.jsonrpc_method.clone().unwrap_or_default(),
        }
    }
}

/// What to do once the request headers are in.
#[derive(Debug, Clone, PartialEq)]
pub enum HeadDecision {
    /// Let the request go on (GET, DELETE).
    Forward,
    /// Hold the headers and read the whole body (POST).
    ReadBody,
    /// Answer now.
    Reject(Rejection),
    /// A POST without a body: its (empty) body has been checked already.
    Checked(Result<RequestSummary, Rejection>),
}

/// Checks the request headers.
pub fn check_head(head: &RequestHead, end_of_stream: bool, max_body_bytes: usize) -> HeadDecision {
    match head.method.as_str() {
        "GET" | "DELETE" => return HeadDecision::Forward,
        "POST" => {}
        other => {
            return HeadDecision::Reject(Rejection::new(
                405,
                INVALID_REQUEST,
                format!("Method not allowed: MCP uses {ALLOWED_METHODS}"),
                format!("HTTP method {other:?} is not used by MCP"),
            ));
        }
    }
    if !head.content_type.as_deref().is_some_and(is_json_media_type) {
        let got = head.content_type.as_deref().unwrap_or("none");
        return HeadDecision::Reject(Rejection::new(
            415,
            INVALID_REQUEST,
            "Unsupported media type: an MCP POST body must be application/json",
            format!("content-type {got:?} is not application/json"),
        ));
    }
    match head.content_length {
        Some(Some(length)) if length > max_body_bytes as u64 => {
            return HeadDecision::Reject(too_large(max_body_bytes, length));
        }
        Some(None) => {
            return HeadDecision::Reject(Rejection::new(
                400,
                INVALID_REQUEST,
                "Invalid Request: bad Content-Length",
                "content-length is not a number",
            ));
        }
        _ => {}
    }
    if end_of_stream {
        return HeadDecision::Checked(check_body(head, b""));
    }
    HeadDecision::ReadBody
}

/// Checks the size of the body buffered so far.
pub fn check_body_size(buffered: usize, max_body_bytes: usize) -> Result<(), Rejection> {
    if buffered > max_body_bytes {
        return Err(too_large(max_body_bytes, buffered as u64));
    }
    Ok(())
}

fn too_large(max: usize, got: u64) -> Rejection {
    Rejection::new(
        413,
        INVALID_REQUEST,
        format!("Request body too large: the limit is {max} bytes"),
        format!("body of {got} bytes is over the {max}-byte limit"),
    )
}

/// What the filter learned from a body it let through (logged at debug level).
#[derive(Debug, Clone, PartialEq)]
pub struct RequestSummary {
    pub batch: bool,
    pub messages: usize,
    pub method: Option<String>,
    pub target: Option<String>,
    pub jsonrpc_id: Option<String>,
    /// A message of the body (any, in a batch) is a `tools/list` request, whose answer
    /// shows only the tools the service lets this caller see.
    pub lists_tools: bool,
}

/// Checks a complete POST body: JSON-RPC, and on 2026-07-28 the routing headers.
pub fn check_body(head: &RequestHead, body: &[u8]) -> Result<RequestSummary, Rejection> {
    let envelope = mcp::parse_body(body).map_err(|e| match e {
        ParseError::InvalidJson(why) => Rejection::new(
            400,
            PARSE_ERROR,
            "Parse error: the request body is not valid JSON",
            format!("invalid JSON: {why}"),
        ),
        ParseError::InvalidRequest(why) => Rejection::new(
            400,
            INVALID_REQUEST,
            format!("Invalid Request: {why}"),
            format!("not JSON-RPC: {why}"),
        ),
        ParseError::InvalidParams { why, id } => {
            let mut rejection = Rejection::new(
                400,
                INVALID_PARAMS,
                format!("Invalid params: {why}"),
                format!("invalid params: {why}"),
            );
            rejection.id = id;
            rejection
        }
    })?;
    let first = envelope.first();
    if let Err(mismatch) = mcp::check_routing_headers(
        head.protocol_version.as_deref(),
        head.mcp_method.as_deref(),
        head.mcp_name.as_deref(),
        &envelope,
    ) {
        let mut rejection = Rejection::new(
            400,
            mismatch.jsonrpc_code(),
            format!("Invalid Request: {mismatch}"),
            format!("routing headers disagree with the body: {mismatch}"),
        );
        if !envelope.batch {
            rejection.id = first.and_then(|m| m.id.clone());
        }
        rejection.jsonrpc_method = first.and_then(|m| m.method.clone());
        return Err(rejection);
    }
    Ok(summarize(&envelope))
}

impl RequestSummary {
    /// The id to answer this request with (a single message's id), for an error the
    /// gateway sends in place of the upstream's answer.
    pub fn reply_id(&self) -> Option<Value> {
        if self.batch {
            return None;
        }
        self.jsonrpc_id.as_deref().and_then(|id| serde_json::from_str(id).ok())
    }
}

fn summarize(envelope: &Envelope) -> RequestSummary {
    let first = envelope.first();
    RequestSummary {
        batch: envelope.batch,
        messages: envelope.messages.len(),
        method: first.and_then(|m| m.method.clone()),
        target: first.and_then(|m| m.target_name()).map(str::to_owned),
        jsonrpc_id: first.and_then(|m| m.id_text()),
        lists_tools: envelope.lists_tools(),
    }
}

/// `application/json`, with any parameters (`; charset=utf-8`).
pub fn is_json_media_type(content_type: &str) -> bool {
    media_type(content_type).eq_ignore_ascii_case("application/json")
}

/// The media type of a content-type value, without parameters.
pub fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or_default().trim()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn head(pairs: &[(&str, &str)]) -> RequestHead {
        RequestHead::from_headers(pairs.iter().map(|(n, v)| (*n, v.as_bytes())))
    }

    fn post(extra: &[(&str, &str)]) -> RequestHead {
        let mut pairs = vec![
            (":method", "POST"),
            (":path", "/mcp"),
            ("content-type", "application/json"),
        ];
        pairs.extend_from_slice(extra);
        head(&pairs)
    }

    fn rejected(d: HeadDecision) -> Rejection {
        match d {
            HeadDecision::Reject(r) | HeadDecision::Checked(Err(r)) => r,
            other => panic!("not rejected: {other:?}"),
        }
    }

    fn error_of(r: &Rejection) -> Value {
        serde_json::from_slice(&r.body()).unwrap()
    }

    #[test]
    fn reads_the_head() {
        let h = RequestHead::from_headers([
            (":method", &b"POST"[..]),
            (":path", b"/mcp?api_key=secret"),
            ("Authorization", b"bearer  eyJ.x.y "),
            ("mcp-session-id", b"s1"),
            ("mcp-protocol-version", b"2025-06-18"),
            ("mcp-name", b"\xffecho"),
            ("content-length", b"12"),
        ]);
        assert_eq!(h.path, "/mcp");
        assert_eq!(h.bearer_token.as_deref(), Some("eyJ.x.y"));
        assert_eq!(h.session_id.as_deref(), Some("s1"));
        assert_eq!(h.protocol_version.as_deref(), Some("2025-06-18"));
        assert_eq!(h.mcp_name.as_deref(), Some("\u{FFFD}echo"));
        assert_eq!(h.content_length, Some(Some(12)));
        assert_eq!(head(&[("authorization", "Basic abc")]).bearer_token, None);
        assert_eq!(head(&[("authorization", "Bearer ")]).bearer_token, None);
    }

    #[test]
    fn finds_every_spoofed_header_once() {
        let names = [
            "x-gatehouse-request-id",
            "X-Gatehouse-User",
            "x-gatehouse-user",
            "x-gate",
            "host",
        ];
        assert_eq!(
            spoofed_header_names(names),
            ["x-gatehouse-request-id", "x-gatehouse-user"]
        );
    }

    #[test]
    fn a_foreign_host_or_origin_is_refused() {
        let allowed = Origins {
            hosts: Some(vec!["127.0.0.1:8080".into(), "gw.example.com".into()]),
            origins: Some(vec!["https://gw.example.com".into()]),
        };
        let with = |pairs: &[(&str, &str)]| check_origin(&head(pairs), &allowed);
        assert_eq!(with(&[("host", "127.0.0.1:8080")]), Ok(()));
        assert_eq!(with(&[(":authority", "GW.example.com")]), Ok(()));
        assert_eq!(
            with(&[(":authority", "gw.example.com"), ("origin", "https://GW.example.com")]),
            Ok(())
        );
        for pairs in [
            &[("host", "evil.example.com")][..],
            &[("host", "127.0.0.1:8081")],
            &[("host", "gw.example.com.evil.example.com")],
            &[],
            &[("host", "127.0.0.1:8080"), ("origin", "http://evil.example.com")],
            &[("host", "127.0.0.1:8080"), ("origin", "null")],
            &[
                ("host", "127.0.0.1:8080"),
                ("origin", "https://gw.example.com.evil.example.com"),
            ],
        ] {
            let r = with(pairs).unwrap_err();
            assert_eq!((r.status, r.jsonrpc_code), (403, -32003), "{pairs:?}");
            assert_eq!(error_of(&r)["error"]["code"], -32003);
        }
        // Not configured: no check.
        assert_eq!(check_origin(&head(&[("host", "evil")]), &Origins::default()), Ok(()));
    }

    #[test]
    fn the_upstreams_session_id_is_tagged_with_the_checks_key() {
        let key = [7u8; 32];
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let read = |pairs: &[(&str, &str)]| SessionHeaders::from_headers(pairs.iter().map(|(n, v)| (*n, v.as_bytes())));
        let s = read(&[("x-gatehouse-session-key", &hex), ("Mcp-Session-Id", "abc")]);
        assert!(s.key_present && !s.untagged);
        assert_eq!(
            s.upstream_id.as_deref(),
            Some("abc"),
            "the record says the upstream's own id"
        );
        let bound = s.bound.unwrap();
        assert_eq!(session::unbind(&key, &bound), Some("abc"));
        // No session id: nothing to set, the key still goes.
        assert_eq!(
            read(&[("x-gatehouse-session-key", &hex)]),
            SessionHeaders {
                key_present: true,
                ..Default::default()
            }
        );
        // No usable key: the id goes on untagged (the Check refuses it later).
        for key in ["", "zz", &hex[2..], &format!("{hex}00")] {
            let s = read(&[("x-gatehouse-session-key", key), ("mcp-session-id", "abc")]);
            assert_eq!((s.key_present, s.bound, s.untagged), (true, None, true), "{key}");
        }
        assert!(read(&[("mcp-session-id", "abc")]).untagged);
    }

    #[test]
    fn methods_other_than_get_post_delete_get_405() {
        assert_eq!(
            check_head(&head(&[(":method", "GET")]), true, 10),
            HeadDecision::Forward
        );
        assert_eq!(
            check_head(&head(&[(":method", "DELETE")]), true, 10),
            HeadDecision::Forward
        );
        for m in ["PUT", "PATCH", "OPTIONS", "HEAD", ""] {
            let r = rejected(check_head(&head(&[(":method", m)]), true, 10));
            assert_eq!((r.status, r.jsonrpc_code), (405, -32600), "{m}");
            assert_eq!(r.extra_headers(), [("allow", "GET, POST, DELETE")]);
        }
    }

    #[test]
    fn a_post_must_be_json() {
        for ct in [
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
        ] {
            assert_eq!(
                check_head(&post(&[("content-type", ct)]), false, 10),
                HeadDecision::ReadBody
            );
        }
        let no_ct = head(&[(":method", "POST")]);
        for h in [
            post(&[("content-type", "text/plain")]),
            no_ct,
            post(&[("content-type", "application/jsonx")]),
        ] {
            let r = rejected(check_head(&h, false, 10));
            assert_eq!((r.status, r.jsonrpc_code), (415, -32600));
            assert_eq!(error_of(&r)["id"], Value::Null);
        }
    }

    #[test]
    fn an_oversize_post_is_refused_before_its_body() {
        let r = rejected(check_head(&post(&[("content-length", "11")]), false, 10));
        assert_eq!(r.status, 413);
        assert_eq!(
            check_head(&post(&[("content-length", "10")]), false, 10),
            HeadDecision::ReadBody
        );
        assert_eq!(
            rejected(check_head(&post(&[("content-length", "x")]), false, 10)).status,
            400
        );
        assert_eq!(check_body_size(10, 10), Ok(()));
        assert_eq!(check_body_size(11, 10).unwrap_err().status, 413);
    }

    #[test]
    fn a_post_without_body_is_a_parse_error() {
        let r = rejected(check_head(&post(&[]), true, 10));
        assert_eq!((r.status, r.jsonrpc_code), (400, -32700));
    }

    #[test]
    fn malformed_json_gets_400_parse_error() {
        let r = check_body(&post(&[]), b"{\"jsonrpc\": ").unwrap_err();
        assert_eq!((r.status, r.jsonrpc_code), (400, -32700));
        let body = error_of(&r);
        assert_eq!(body["error"]["code"], -32700);
        assert_eq!(body["id"], Value::Null);
        assert!(r.reason.starts_with("invalid JSON"), "{}", r.reason);
    }

    #[test]
    fn json_that_is_not_jsonrpc_gets_400_invalid_request() {
        let r = check_body(&post(&[]), br#"{"hello": "world"}"#).unwrap_err();
        assert_eq!((r.status, r.jsonrpc_code), (400, -32600));
        assert_eq!(error_of(&r)["error"]["code"], -32600);
    }

    #[test]
    fn a_call_the_upstream_could_read_differently_is_refused() {
        let not_a_string = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":["run_query"]}}"#;
        let r = check_body(&post(&[]), not_a_string).unwrap_err();
        assert_eq!((r.status, r.jsonrpc_code), (400, -32602));
        assert_eq!(error_of(&r)["error"]["code"], -32602);
        assert_eq!(error_of(&r)["id"], 1, "invalid params answer the request's id");
        for body in [
            &br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","NAME":"b"}}"#[..],
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a","name":"b"}}"#,
            br#"{"jsonrpc":"2.0","id":1,"result":{},"METHOD":"tools/call"}"#,
        ] {
            let r = check_body(&post(&[]), body).unwrap_err();
            assert_eq!((r.status, r.jsonrpc_code), (400, -32600), "{}", r.reason);
        }
    }

    #[test]
    fn valid_messages_and_batches_pass() {
        let call = br#"{"jsonrpc":"2.0","id":"a1","method":"tools/call","params":{"name":"echo"}}"#;
        let s = check_body(&post(&[]), call).unwrap();
        assert_eq!(s.method.as_deref(), Some("tools/call"));
        assert_eq!(s.target.as_deref(), Some("echo"));
        assert_eq!(s.jsonrpc_id.as_deref(), Some("\"a1\""));
        let batch =
            br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"}]"#;
        let s = check_body(&post(&[("mcp-protocol-version", "2025-03-26")]), batch).unwrap();
        assert!(s.batch);
        assert_eq!(s.messages, 2);
        assert!(!s.lists_tools);
    }

    #[test]
    fn a_tools_list_is_noticed_anywhere_in_a_batch() {
        let h = post(&[("mcp-protocol-version", "2025-03-26")]);
        let list = br#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#;
        assert!(check_body(&h, list).unwrap().lists_tools);
        let batch = br#"[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"tools/list"}]"#;
        let s = check_body(&h, batch).unwrap();
        assert_eq!((s.method.as_deref(), s.lists_tools), (Some("ping"), true));
        let answer = br#"{"jsonrpc":"2.0","id":1,"result":{"tools":[]}}"#;
        assert!(!check_body(&h, answer).unwrap().lists_tools);
    }

    #[test]
    fn routing_headers_must_agree_with_the_body_on_2026_07_28() {
        let call = br#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"echo"}}"#;
        let v = ("mcp-protocol-version", "2026-07-28");
        let ok = post(&[v, ("mcp-method", "tools/call"), ("mcp-name", "echo")]);
        assert!(check_body(&ok, call).is_ok());
        for (extra, says) in [
            (vec![v, ("mcp-name", "echo")], "Mcp-Method header is required"),
            (
                vec![v, ("mcp-method", "tools/list"), ("mcp-name", "echo")],
                "Mcp-Method header does not match",
            ),
            (vec![v, ("mcp-method", "tools/call")], "Mcp-Name header is required"),
            (
                vec![v, ("mcp-method", "tools/call"), ("mcp-name", "rm")],
                "Mcp-Name header does not match",
            ),
        ] {
            let r = check_body(&post(&extra), call).unwrap_err();
            assert_eq!((r.status, r.jsonrpc_code), (400, -32020));
            assert!(r.message.contains(says), "{} / {says}", r.message);
            let body = error_of(&r);
            assert_eq!(body["id"], json!(7), "the error answers the request's id");
            assert_eq!(r.jsonrpc_method.as_deref(), Some("tools/call"));
        }
        // Older revisions do not need them.
        assert!(check_body(&post(&[("mcp-protocol-version", "2025-06-18")]), call).is_ok());
    }

    #[test]
    fn the_record_carries_the_callers_identity_but_not_the_query() {
        let h = post(&[
            (":path", "/mcp?token=x"),
            ("authorization", "Bearer tok"),
            ("mcp-session-id", "s"),
            ("mcp-protocol-version", "2025-06-18"),
        ]);
        let r = check_body(&h, b"nope").unwrap_err();
        let rec = r.record(&h, "abc", 42);
        assert_eq!(rec.request_id, "abc");
        assert_eq!(rec.http_status, 400);
        assert_eq!(rec.jsonrpc_code, -32700);
        assert_eq!(rec.http_method, "POST");
        assert_eq!(rec.path, "/mcp");
        assert_eq!(rec.bearer_token, "tok");
        assert_eq!(rec.session_id, "s");
        let tagged = post(&[("mcp-session-id", "0123456789abcdef0123456789abcdef.up-1")]);
        assert_eq!(r.record(&tagged, "abc", 42).session_id, "up-1");
        assert_eq!(rec.protocol_version, "2025-06-18");
        assert_eq!(rec.observed_at_unix_ms, 42);
    }

    #[test]
    fn a_withheld_answer_replies_with_the_requests_id() {
        let h = post(&[]);
        let id = |body: &[u8]| check_body(&h, body).unwrap().reply_id();
        assert_eq!(id(br#"{"jsonrpc":"2.0","id":"a","method":"ping"}"#), Some(json!("a")));
        assert_eq!(id(br#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#), Some(json!(7)));
        assert_eq!(id(br#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#), None);
        assert_eq!(id(br#"[{"jsonrpc":"2.0","id":1,"method":"ping"}]"#), None, "a batch");
    }
}
