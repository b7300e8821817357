//! SigV4 over the request as the upstream will receive it.
//!
//! The service answers the Check before Envoy's router rewrites the request, so it signs
//! what the route will send: the upstream URL's path (the route replaces the gateway's
//! path with it, keeping the query), the upstream's authority as `Host` (the route's host
//! rewrite), the method, and the body Envoy gave the Check (`pack_as_bytes`: the exact
//! bytes forwarded). No filter after ext_authz changes any of them.

use std::time::SystemTime;

use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4::SigningParams;

use super::Session;
use crate::config::Secret;

/// What is signed: the request as it leaves Envoy for the upstream.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    pub method: &'a str,
    /// `host[:port]`, as the route sets `Host`.
    pub authority: &'a str,
    /// Path and query, percent-encoded as sent.
    pub path_and_query: &'a str,
    pub body: &'a [u8],
}

/// The headers to set on the request (`authorization`, `x-amz-date`, `x-amz-security-token`):
/// their values are secrets for as long as they are valid.
pub fn sign_request(
    session: &Session,
    region: &str,
    service: &str,
    request: Outgoing<'_>,
    time: SystemTime,
) -> Result<Vec<(String, Secret)>, String> {
    let params = SigningParams::builder()
        .identity(&session.identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| e.to_string())?
        .into();
    let uri = format!("https://{}{}", request.authority, request.path_and_query);
    let signable = SignableRequest::new(
        request.method,
        uri,
        std::iter::once(("host", request.authority)),
        SignableBody::Bytes(request.body),
    )
    .map_err(|e| e.to_string())?;
    let (instructions, _signature) = sign(signable, &params).map_err(|e| e.to_string())?.into_parts();
    let (headers, _params) = instructions.into_parts();
    Ok(headers
        .into_iter()
        .map(|h| (h.name().to_owned(), Secret(h.value().to_owned())))
        .collect())
}

/// The path and query the route sends upstream: the upstream's path, then the query the
/// client sent (the route matches the gateway's path exactly and replaces all of it).
pub fn upstream_path_and_query(upstream_path: &str, client_path: &str) -> String {
    match client_path.split_once('?') {
        Some((_, query)) => format!("{upstream_path}?{query}"),
        None => upstream_path.to_owned(),
    }
}
