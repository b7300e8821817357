//! What the gateway presents to an upstream in place of the caller's token: nothing, the
//! upstream's static header, or an AWS SigV4 signature made with the caller's STS session
//! ([`crate::aws`]). The Check asks for it last, once the call may go, so a signature
//! covers the time the call is made; the client never sees any of it.

use std::collections::HashMap;
use std::time::SystemTime;

use gatehouse_core::events::UpstreamCredentialPresented;
use thiserror::Error;

use crate::aws::{AwsError, AwsSessions, sign};
use crate::config::{Secret, Upstream, UpstreamCredentials};
use crate::identity::Principal;

/// What the gateway presents to the upstream for one call.
#[derive(Debug, Clone, Default)]
pub struct UpstreamAuth {
    /// `static_header` or `aws_sigv4` (for the filter); `None`: the gateway presents nothing.
    pub kind: Option<&'static str>,
    /// Set on the request, overwriting what the client sent in them.
    pub headers: Vec<(String, Secret)>,
    /// Client headers taken off besides `authorization` (its `x-amz-*` next to a signature).
    pub remove: Vec<String>,
}

/// The call as the client sent it to the gateway.
#[derive(Debug, Clone, Copy)]
pub struct ClientCall<'a> {
    pub method: &'a str,
    /// The gateway's path and query.
    pub path: &'a str,
    pub headers: Option<&'a HashMap<String, String>>,
    pub body: &'a [u8],
}

/// Why no credential could be presented.
#[derive(Debug, Error)]
pub enum CredentialError {
    /// No STS session for this caller.
    #[error(transparent)]
    Aws(#[from] AwsError),
    /// The session could not sign the call (the detail is internal).
    #[error("could not sign: {0}")]
    Sign(String),
}

/// A credential, or why there is none, with what the record says of it: its kind and
/// public parts, never a secret (`None`: the upstream takes no credential).
pub struct Presented {
    pub auth: Result<UpstreamAuth, CredentialError>,
    pub record: Option<UpstreamCredentialPresented>,
}

/// The credential `principal`'s call to `upstream` presents, waiting for STS until `deadline`.
pub async fn present(
    sessions: &AwsSessions,
    upstream: &Upstream,
    principal: &Principal,
    call: ClientCall<'_>,
    deadline: tokio::time::Instant,
) -> Presented {
    let kind = upstream.credentials.kind();
    let aws = match &upstream.credentials {
        UpstreamCredentials::None => {
            return Presented {
                auth: Ok(UpstreamAuth::default()),
                record: None,
            };
        }
        UpstreamCredentials::StaticHeader { header, value } => {
            return Presented {
                auth: Ok(UpstreamAuth {
                    kind: Some(kind),
                    headers: vec![(header.clone(), value.clone())],
                    remove: Vec::new(),
                }),
                record: Some(UpstreamCredentialPresented::StaticHeader { header: header.clone() }),
            };
        }
        UpstreamCredentials::AwsSigv4(aws) => aws,
    };
    let record = |access_key_id: Option<&str>, error: Option<String>| UpstreamCredentialPresented::AwsSigv4 {
        role_arn: aws.role_arn.clone(),
        source_identity: principal.subject.clone(),
        access_key_id: access_key_id.map(str::to_owned),
        error,
    };
    let session = match sessions.session(&upstream.name, aws, principal, deadline).await {
        Ok(session) => session,
        Err(error) => {
            return Presented {
                record: Some(record(None, Some(error.to_string()))),
                auth: Err(error.into()),
            };
        }
    };
    let authority = upstream.authority();
    let path_and_query = sign::upstream_path_and_query(upstream.upstream_path(), call.path);
    let outgoing = sign::Outgoing {
        method: call.method,
        authority: &authority,
        path_and_query: &path_and_query,
        body: call.body,
    };
    let headers = match sign::sign_request(&session, &aws.region, &aws.service, outgoing, SystemTime::now()) {
        Ok(headers) => headers,
        Err(error) => {
            return Presented {
                auth: Err(CredentialError::Sign(error)),
                record: Some(record(Some(&session.access_key_id), Some("could not sign".into()))),
            };
        }
    };
    // The client's own x-amz-* headers would be read by AWS next to the signature.
    let remove = call
        .headers
        .into_iter()
        .flat_map(|h| h.keys())
        .filter(|name| name.starts_with("x-amz-") && !headers.iter().any(|(set, _)| set == *name))
        .cloned()
        .collect();
    Presented {
        auth: Ok(UpstreamAuth {
            kind: Some(kind),
            headers,
            remove,
        }),
        record: Some(record(Some(&session.access_key_id), None)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(credentials: UpstreamCredentials) -> Upstream {
        let config = crate::test_support::config(std::path::Path::new("/tmp"));
        Upstream {
            credentials,
            ..config.upstreams[0].clone()
        }
    }

    fn alice() -> Principal {
        Principal {
            subject: "alice".into(),
            groups: ["eng".to_owned()].into(),
        }
    }

    async fn presented(upstream: &Upstream) -> Presented {
        let config = crate::test_support::config(std::path::Path::new("/tmp"));
        let sessions = AwsSessions::new(&config).await;
        let call = ClientCall {
            method: "POST",
            path: "/mcp",
            headers: None,
            body: b"{}",
        };
        present(&sessions, upstream, &alice(), call, tokio::time::Instant::now()).await
    }

    #[tokio::test]
    async fn no_credential_presents_nothing_and_records_nothing() {
        let p = presented(&upstream(UpstreamCredentials::None)).await;
        let auth = p.auth.unwrap();
        assert!(auth.kind.is_none() && auth.headers.is_empty() && auth.remove.is_empty());
        assert!(p.record.is_none());
    }

    #[tokio::test]
    async fn a_static_header_is_presented_and_the_record_names_only_the_header() {
        let p = presented(&upstream(UpstreamCredentials::StaticHeader {
            header: "x-api-key".into(),
            value: Secret("s3cr3t-value".into()),
        }))
        .await;
        let auth = p.auth.unwrap();
        assert_eq!(auth.kind, Some("static_header"));
        assert_eq!(auth.headers.len(), 1);
        assert_eq!(auth.headers[0].0, "x-api-key");
        let record = p.record.unwrap();
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type": "static_header", "header": "x-api-key"})
        );
        assert!(!json.to_string().contains("s3cr3t"));
    }
}
