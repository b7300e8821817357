//! AWS credentials per caller: the gateway assumes the upstream's role with STS *as the
//! caller* (source identity = the token's subject, one session tag per group), keeps the
//! session until shortly before it expires, and signs each call with it (SigV4, [`sign`]).
//!
//! The base credentials are the service's own, from the standard AWS chain (environment,
//! profile, web identity, container or instance role); clients never see any of them.
//! A cache entry is per upstream, caller and tag set, and one lock per entry makes
//! concurrent calls by one caller wait for a single AssumeRole.

pub mod sign;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_config::{BehaviorVersion, Region, retry::RetryConfig, timeout::TimeoutConfig};
use aws_credential_types::Credentials;
use aws_sdk_sts::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sts::types::Tag;
use aws_smithy_runtime_api::client::identity::Identity;
use gatehouse_core::tools::glob_match;

use crate::config::{AwsSigv4, Config, UpstreamCredentials};
use crate::identity::Principal;

/// Most tags one session may carry (STS).
const MAX_TAGS: usize = 50;
/// A session is renewed when less than this much of it is left (or a quarter of its
/// duration, if that is shorter), and never used with less than [`MIN_LEFT`].
const RENEW_BEFORE: Duration = Duration::from_secs(300);
const MIN_LEFT: Duration = Duration::from_secs(60);
/// Entries kept before expired ones are dropped.
const PRUNE_ABOVE: usize = 1024;

/// One caller's session of a role: what signs their calls.
#[derive(Clone)]
pub struct Session {
    /// For signing; its Debug form hides the secret key and token.
    pub identity: Identity,
    /// Not a secret: CloudTrail shows it, and the record keeps it to match the two.
    pub access_key_id: String,
    pub expires: SystemTime,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("access_key_id", &self.access_key_id)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// Why no session could be had. `Display` is safe for the client and the record.
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// The detail (for the log and the record) may name endpoints and the base identity.
    #[error("the gateway could not reach STS or has no AWS credentials of its own; try again later")]
    Unreachable(String),
    #[error("STS refused to assume the role for you ({code})")]
    Refused { code: String, message: String },
    #[error(
        "STS gave credentials that expire at {expires} ({left_s} s from now by the gateway's clock): is the gateway's clock right?"
    )]
    Expired { expires: String, left_s: i64 },
    #[error("your identity {0:?} cannot name an AWS session (2 to 64 of A-Z a-z 0-9 _ + = , . @ -)")]
    Subject(String),
    #[error("your group {0:?} cannot be an AWS session tag; the operator can leave it out with tag_groups")]
    Group(String),
    #[error("you have more groups than an AWS session takes as tags ({MAX_TAGS}); the operator can narrow tag_groups")]
    TooManyTags,
}

impl AwsError {
    /// The HTTP status for the client: the caller's own problems are 403, STS's are 503.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Unreachable(_) | Self::Expired { .. } => 503,
            Self::Refused { .. } | Self::Subject(_) | Self::Group(_) | Self::TooManyTags => 403,
        }
    }

    /// More for the log and the record than the client is told.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Self::Refused { message, .. } | Self::Unreachable(message) => Some(message),
            _ => None,
        }
    }
}

type Key = (String, String, Vec<(String, String)>);
type Entry = Arc<tokio::sync::Mutex<Option<Session>>>;

/// STS clients of the `aws_sigv4` upstreams and the sessions they gave.
pub struct AwsSessions {
    clients: HashMap<String, aws_sdk_sts::Client>,
    cache: Mutex<HashMap<Key, Entry>>,
}

impl AwsSessions {
    /// One STS client per `aws_sigv4` upstream, on the standard chain's base credentials.
    /// Nothing is fetched until the first call.
    pub async fn new(config: &Config) -> Self {
        let mut clients = HashMap::new();
        let aws: Vec<_> = config
            .upstreams
            .iter()
            .filter_map(|u| match &u.credentials {
                UpstreamCredentials::AwsSigv4(a) => Some((u.name.clone(), a.clone())),
                _ => None,
            })
            .collect();
        if let Some((_, first)) = aws.first() {
            // Inside the Check, which Envoy gives up on after ext_authz_timeout_ms.
            let budget = Duration::from_millis(config.envoy.ext_authz_timeout_ms.saturating_sub(500).clamp(500, 5000));
            let http = aws_smithy_http_client::Builder::new()
                .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                    aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
                ))
                .build_https();
            let base = aws_config::defaults(BehaviorVersion::latest())
                .http_client(http)
                // Set, so that loading never asks the instance metadata service for one.
                .region(Region::new(first.region.clone()))
                .timeout_config(
                    TimeoutConfig::builder()
                        .connect_timeout(Duration::from_secs(1))
                        .operation_timeout(budget)
                        .build(),
                )
                .retry_config(
                    RetryConfig::standard()
                        .with_max_attempts(3)
                        .with_initial_backoff(Duration::from_millis(50)),
                )
                .load()
                .await;
            for (name, a) in aws {
                let mut sts = aws_sdk_sts::config::Builder::from(&base).region(Region::new(a.region.clone()));
                if let Some(endpoint) = &a.sts_endpoint {
                    sts = sts.endpoint_url(endpoint.as_str().trim_end_matches('/'));
                }
                clients.insert(name, aws_sdk_sts::Client::from_conf(sts.build()));
            }
        }
        Self {
            clients,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The caller's session of `upstream`'s role: cached, or assumed now.
    pub async fn session(&self, upstream: &str, aws: &AwsSigv4, caller: &Principal) -> Result<Session, AwsError> {
        let subject = &caller.subject;
        if !is_session_name(subject) {
            return Err(AwsError::Subject(subject.clone()));
        }
        let tags = session_tags(aws, caller)?;
        let entry = self.entry((upstream.to_owned(), subject.clone(), tags.clone()));
        let mut slot = entry.lock().await;
        let now = SystemTime::now();
        let renew_before = RENEW_BEFORE.min(aws.session_duration / 4);
        if let Some(s) = slot.as_ref()
            && left(s, now) > renew_before
        {
            return Ok(s.clone());
        }
        let client = self
            .clients
            .get(upstream)
            .ok_or_else(|| AwsError::Unreachable(format!("no STS client for upstream {upstream:?}")))?;
        match assume(client, aws, subject, &tags).await {
            Ok(session) => {
                let left = left(&session, SystemTime::now());
                if left < MIN_LEFT {
                    let expires = time::OffsetDateTime::from(session.expires)
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default();
                    let left_s = session
                        .expires
                        .duration_since(SystemTime::now())
                        .map_or_else(|e| -(e.duration().as_secs() as i64), |d| d.as_secs() as i64);
                    return Err(AwsError::Expired { expires, left_s });
                }
                tracing::info!(
                    upstream,
                    subject,
                    role = aws.role_arn,
                    access_key_id = session.access_key_id,
                    "Assumed the upstream's role for the caller."
                );
                *slot = Some(session.clone());
                Ok(session)
            }
            // A renewal that fails while the session still has time left keeps it.
            Err(error) => match slot.as_ref() {
                Some(s) if left(s, now) > MIN_LEFT => {
                    tracing::warn!(upstream, subject, %error, "Could not renew an AWS session; using the current one while it lasts.");
                    Ok(s.clone())
                }
                _ => Err(error),
            },
        }
    }

    fn entry(&self, key: Key) -> Entry {
        let mut cache = match self.cache.lock() {
            Ok(c) => c,
            Err(poisoned) => poisoned.into_inner(),
        };
        if cache.len() > PRUNE_ABOVE && !cache.contains_key(&key) {
            let now = SystemTime::now();
            // An entry someone holds is in use; an expired or empty one can go.
            cache.retain(|_, e| {
                e.try_lock()
                    .map_or(true, |s| s.as_ref().is_some_and(|s| left(s, now) > MIN_LEFT))
            });
        }
        cache.entry(key).or_default().clone()
    }
}

fn left(s: &Session, now: SystemTime) -> Duration {
    s.expires.duration_since(now).unwrap_or_default()
}

async fn assume(
    client: &aws_sdk_sts::Client,
    aws: &AwsSigv4,
    subject: &str,
    tags: &[(String, String)],
) -> Result<Session, AwsError> {
    let mut request = client
        .assume_role()
        .role_arn(&aws.role_arn)
        .role_session_name(subject)
        .source_identity(subject)
        .duration_seconds(i32::try_from(aws.session_duration.as_secs()).unwrap_or(i32::MAX))
        .set_external_id(aws.external_id.clone())
        .set_policy(aws.session_policy.clone());
    for (key, value) in tags {
        let tag = Tag::builder()
            .key(key)
            .value(value)
            .build()
            .map_err(|e| AwsError::Group(format!("{key}: {e}")))?;
        request = request.tags(tag);
    }
    let output = request.send().await.map_err(|e| match &e {
        SdkError::ServiceError(service) => AwsError::Refused {
            code: service.err().code().unwrap_or("unknown error").to_owned(),
            message: service.err().message().unwrap_or_default().to_owned(),
        },
        _ => AwsError::Unreachable(DisplayErrorContext(&e).to_string()),
    })?;
    let c = output
        .credentials
        .ok_or_else(|| AwsError::Unreachable("STS answered without credentials".into()))?;
    let expires = SystemTime::try_from(c.expiration)
        .map_err(|_| AwsError::Unreachable("STS answered with an unreadable expiry".into()))?;
    let access_key_id = c.access_key_id;
    let credentials = Credentials::new(
        access_key_id.clone(),
        c.secret_access_key,
        Some(c.session_token),
        Some(expires),
        "gatehouse-sts",
    );
    Ok(Session {
        identity: credentials.into(),
        access_key_id,
        expires,
    })
}

/// STS's rule for a role session name and a source identity: `[\w+=,.@-]{2,64}`.
fn is_session_name(s: &str) -> bool {
    (2..=64).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_+=,.@-".contains(&b))
}

/// One tag `group:<name>` = `true` per group the config lets through, in a stable order.
fn session_tags(aws: &AwsSigv4, caller: &Principal) -> Result<Vec<(String, String)>, AwsError> {
    let tagged = caller.groups.iter().filter(|g| {
        aws.tag_groups
            .as_ref()
            .is_none_or(|globs| globs.iter().any(|glob| glob_match(glob, g)))
    });
    let mut tags = Vec::new();
    for group in tagged {
        let key = format!("group:{group}");
        // STS: up to 128 of letters, digits, spaces and _ . : / = + - @.
        let ok = key.chars().count() <= 128
            && key
                .chars()
                .all(|c| c.is_alphanumeric() || c.is_whitespace() || "_.:/=+-@".contains(c));
        if !ok {
            return Err(AwsError::Group(group.clone()));
        }
        tags.push((key, "true".to_owned()));
    }
    if tags.len() > MAX_TAGS {
        return Err(AwsError::TooManyTags);
    }
    Ok(tags)
}
