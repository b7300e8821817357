//! Signing cost (issue 5): what SigV4 over a 1 KB call costs the Check once the caller's
//! STS session is cached. The end-to-end figure (a gateway signing every call for an
//! `aws_sigv4` upstream) is measured by `scripts/bench.py` against the same gateway without.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use gatehouse_service::aws::Session;
use gatehouse_service::aws::sign::{Outgoing, sign_request};
use serde_json::{Value, json};

use crate::{timed, us};

/// A tools/call of 1 KB, as the load generator's but with a longer argument.
fn body() -> Vec<u8> {
    let mut call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
        "params": {"name": "echo", "arguments": {"message": ""}}});
    let pad = 1024 - call.to_string().len();
    call["params"]["arguments"]["message"] = json!("x".repeat(pad));
    call.to_string().into_bytes()
}

pub fn run(iterations: u32) -> anyhow::Result<Value> {
    let credentials = Credentials::new(
        "ASIABENCHEXAMPLE0001",
        "bench-secret-access-key-0000000000000000",
        Some("bench-session-token-".repeat(40)),
        None,
        "bench",
    );
    let session = Session {
        identity: credentials.into(),
        access_key_id: "ASIABENCHEXAMPLE0001".into(),
        expires: SystemTime::now() + Duration::from_secs(3600),
    };
    let body = body();
    let request = Outgoing {
        method: "POST",
        authority: "abcdef1234.execute-api.us-east-1.amazonaws.com",
        path_and_query: "/prod/mcp",
        body: &body,
    };
    let headers = sign_request(&session, "us-east-1", "execute-api", request, SystemTime::now())
        .map_err(|e| anyhow::anyhow!("cannot sign: {e}"))?;
    anyhow::ensure!(
        headers.len() == 3,
        "expected three signed headers, got {}",
        headers.len()
    );
    let times = timed(iterations, || {
        let signed = sign_request(&session, "us-east-1", "execute-api", request, SystemTime::now());
        std::hint::black_box(signed).ok();
    });
    Ok(json!({
        "body_bytes": body.len(),
        "iterations": iterations,
        "p50_us": us(&times, 0.5),
        "p99_us": us(&times, 0.99),
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_1_kb_call_is_signed() {
        assert_eq!(super::body().len(), 1024);
        let out = super::run(10).expect("signs");
        assert!(out["p50_us"].as_f64().is_some_and(|us| us > 0.0));
    }
}
