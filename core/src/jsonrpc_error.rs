//! JSON-RPC 2.0 error bodies, the one shape in which the gateway refuses a request.
//!
//! Both the filter (malformed input) and the service (identity, policy, audit) answer
//! with these, so an MCP client always gets an error it can show.

use serde_json::{Value, json};

/// Invalid JSON was received.
pub const PARSE_ERROR: i64 = -32700;
/// The JSON sent is not a valid JSON-RPC request.
pub const INVALID_REQUEST: i64 = -32600;
/// The method does not exist: the gateway's answer on a path that serves no MCP server.
pub const METHOD_NOT_FOUND: i64 = -32601;
/// The params of a request are not what its method takes (a tool name that is not a string).
pub const INVALID_PARAMS: i64 = -32602;
/// Internal error: the gateway could not complete the request (e.g. the audit store is down).
pub const INTERNAL_ERROR: i64 = -32603;
/// MCP 2026-07-28: HTTP headers do not match the request body, or required ones are missing.
pub const HEADER_MISMATCH: i64 = -32020;
/// Implementation-defined server error range: the caller is not authenticated.
pub const UNAUTHORIZED: i64 = -32001;
/// Implementation-defined server error range: the caller may not do this.
pub const FORBIDDEN: i64 = -32003;
/// Implementation-defined server error range: the call waits for a human approval; `data`
/// holds the approval's id, status and where approvers decide. Send the same call again
/// once it is approved.
pub const APPROVAL_REQUIRED: i64 = -32030;
/// Implementation-defined server error range: the gateway could not present the upstream's
/// credential (it could not get one, or the upstream refused it). Nothing was forwarded
/// unsigned; the message says which.
pub const UPSTREAM_CREDENTIAL: i64 = -32031;
/// Implementation-defined server error range: the call needs an approval, and its caller
/// already has as many calls waiting (held, or pending approvals) as the gateway allows.
/// It was neither held nor asked; send it again once some are decided.
pub const APPROVAL_LIMIT: i64 = -32032;

/// Serializes a JSON-RPC error response. `id` is `null` when the request's id is
/// unknown (unparseable body, or no body at all).
pub fn error_body(id: Option<&Value>, code: i64, message: &str, data: Option<Value>) -> Vec<u8> {
    let mut error = json!({ "code": code, "message": message });
    if let (Some(data), Some(obj)) = (data, error.as_object_mut()) {
        obj.insert("data".to_owned(), data);
    }
    let body = json!({
        "jsonrpc": "2.0",
        "id": id.cloned().unwrap_or(Value::Null),
        "error": error,
    });
    // Serializing a `Value` cannot fail: it has no non-string keys and no custom Serialize.
    serde_json::to_vec(&body).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_body_has_null_id_when_unknown() {
        let body: Value = serde_json::from_slice(&error_body(None, PARSE_ERROR, "bad", None)).unwrap();
        assert_eq!(
            body,
            json!({"jsonrpc": "2.0", "id": null, "error": {"code": -32700, "message": "bad"}})
        );
    }

    #[test]
    fn error_body_keeps_id_and_data() {
        let id = json!("abc");
        let body: Value =
            serde_json::from_slice(&error_body(Some(&id), FORBIDDEN, "no", Some(json!({"k": 1})))).unwrap();
        assert_eq!(body["id"], "abc");
        assert_eq!(body["error"]["data"]["k"], 1);
    }
}
