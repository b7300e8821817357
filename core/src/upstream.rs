//! What the service and the filter agree on about the credential the gateway presents to
//! an upstream.
//!
//! The service names the credential's kind in [`CREDENTIAL_HEADER`](crate::wire::CREDENTIAL_HEADER) on the answer (Envoy adds
//! it on the way back); the filter removes it, and when the upstream refused the gateway's own
//! credential ([`is_refusal`]), the client gets [`refused_body`] instead of the upstream's
//! answer, which may quote what was signed (AWS's signature errors quote the canonical
//! request, session token included).

use serde_json::Value;

use crate::jsonrpc_error::{UPSTREAM_CREDENTIAL, error_body};

/// Whether the upstream's status refuses the gateway's credential of `kind` rather than
/// answering the call: AWS answers 403 to a bad signature; behind a static credential only
/// a 401 says so (a 403 may be the server's own answer to the call).
pub fn is_refusal(kind: &str, status: u32) -> bool {
    match kind {
        "aws_sigv4" => matches!(status, 401 | 403),
        _ => status == 401,
    }
}

/// The JSON-RPC error that replaces the upstream's refusal of the gateway's credential;
/// `data.request_id` names the call in the audit trail.
pub fn refused_body(id: Option<&Value>, request_id: &str, kind: &str, upstream_status: u32) -> Vec<u8> {
    let what = match kind {
        "aws_sigv4" => "the gateway's AWS signature",
        _ => "the gateway's credential",
    };
    let message = format!(
        "The upstream refused {what} (HTTP {upstream_status}); the call was not run. \
         The gateway's operator can find why in its audit trail."
    );
    let data = serde_json::json!({ "request_id": request_id });
    error_body(id, UPSTREAM_CREDENTIAL, &message, Some(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refusal_is_a_json_rpc_error_with_the_callers_id() {
        let body = refused_body(Some(&Value::from(7)), "r1", "aws_sigv4", 403);
        let v: Value = serde_json::from_slice(&body).unwrap_or_default();
        assert_eq!(v["id"], 7);
        assert_eq!(v["error"]["code"], UPSTREAM_CREDENTIAL);
        assert_eq!(v["error"]["data"]["request_id"], "r1");
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .contains("AWS signature (HTTP 403)")
        );
        assert!(is_refusal("aws_sigv4", 401) && is_refusal("aws_sigv4", 403) && !is_refusal("aws_sigv4", 404));
        assert!(is_refusal("static_header", 401) && !is_refusal("static_header", 403));
        assert!(!is_refusal("aws_sigv4", 200));
    }
}
