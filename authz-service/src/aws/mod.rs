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
use std::sync::{Arc, Mutex, PoisonError};
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
/// How long a Check waits for a renewal when the current session still serves.
const RENEWAL_WAIT: Duration = Duration::from_millis(500);

/// A session is renewed when less than this much of it is left (or a quarter of its
/// duration, if that is shorter), and never used with less than [`MIN_LEFT`].
const RENEW_BEFORE: Duration = Duration::from_secs(300);
const MIN_LEFT: Duration = Duration::from_secs(60);
/// After STS failed for a caller, it is not asked again for them before this: the calls in
/// between get the same answer (or the session that still has time left).
const RETRY_AFTER: Duration = Duration::from_secs(5);
/// One AssumeRole, retries included. A Check waits for it only until its own deadline; the
/// assumption itself carries on in the background, so a slow STS still fills the cache.
const STS_TIMEOUT: Duration = Duration::from_secs(10);
/// Entries kept before unused expired ones are dropped.
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
#[derive(Debug, Clone, thiserror::Error)]
pub enum AwsError {
    /// The detail (for the log and the record) may name endpoints and the base identity.
    #[error("the gateway could not reach STS or has no AWS credentials of its own; try again later")]
    Unreachable(String),
    /// STS answered with an error that is not about the caller (throttling, its own outage,
    /// the gateway's credentials or configuration).
    #[error("STS could not give the role's credentials ({code}); try again later")]
    Failed { code: String, message: String },
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
    /// The HTTP status for the client: the caller's own problems are 403, the rest 503.
    pub fn http_status(&self) -> u16 {
        match self {
            Self::Unreachable(_) | Self::Failed { .. } | Self::Expired { .. } => 503,
            Self::Refused { .. } | Self::Subject(_) | Self::Group(_) | Self::TooManyTags => 403,
        }
    }

    /// More for the log and the record than the client is told.
    pub fn detail(&self) -> Option<&str> {
        match self {
            Self::Refused { message, .. } | Self::Failed { message, .. } | Self::Unreachable(message) => Some(message),
            _ => None,
        }
    }

    /// STS's error codes that are about this caller (their tags, the role's trust in them).
    fn from_sts(code: &str, message: &str) -> Self {
        let (code, message) = (code.to_owned(), message.to_owned());
        match code.as_str() {
            "AccessDenied" | "AccessDeniedException" | "PackedPolicyTooLarge" => Self::Refused { code, message },
            _ => Self::Failed { code, message },
        }
    }
}

type Key = (String, String, Vec<(String, String)>);

/// A caller's session of one role, and the one renewal that may be under way.
#[derive(Default)]
struct Entry {
    /// The session in use: read without waiting for a renewal.
    current: Mutex<Option<Session>>,
    /// Held while renewing; holds STS's last failure for this caller and when it came.
    renewal: tokio::sync::Mutex<Option<(tokio::time::Instant, AwsError)>>,
}

impl Entry {
    fn current(&self) -> Option<Session> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set(&self, session: Option<Session>) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = session;
    }
}

/// STS clients of the `aws_sigv4` upstreams and the sessions they gave.
pub struct AwsSessions {
    clients: HashMap<String, aws_sdk_sts::Client>,
    cache: Mutex<HashMap<Key, Arc<Entry>>>,
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
                        .operation_timeout(STS_TIMEOUT)
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

    /// The caller's session of `upstream`'s role: cached, or assumed now. Waits for STS no
    /// later than `deadline`; an assumption still running then goes on in the background.
    pub async fn session(
        &self,
        upstream: &str,
        aws: &Arc<AwsSigv4>,
        caller: &Principal,
        deadline: tokio::time::Instant,
    ) -> Result<Session, AwsError> {
        let subject = &caller.subject;
        if !is_session_name(subject) {
            return Err(AwsError::Subject(subject.clone()));
        }
        let tags = session_tags(aws, caller)?;
        let entry = self.entry((upstream.to_owned(), subject.clone(), tags.clone()));
        let renew_before = RENEW_BEFORE.min(aws.session_duration / 4);
        let current = entry.current();
        let now = SystemTime::now();
        if let Some(s) = current.as_ref().filter(|s| left(s, now) > renew_before) {
            return Ok(s.clone());
        }
        // Someone is renewing it: meanwhile the current session serves while it may.
        let usable = current.filter(|s| left(s, now) > MIN_LEFT);
        if let (Err(_), Some(s)) = (entry.renewal.try_lock(), &usable) {
            return Ok(s.clone());
        }
        let client = self
            .clients
            .get(upstream)
            .cloned()
            .ok_or_else(|| AwsError::Unreachable(format!("no STS client for upstream {upstream:?}")))?;
        let renewal = tokio::spawn(renew(entry, client, aws.clone(), subject.clone(), tags, renew_before));
        // With a session that still serves, the Check waits only briefly for its renewal (which
        // goes on in the background): a slow STS or a loaded machine never makes it miss
        // Envoy's deadline.
        let wait_until = match &usable {
            Some(_) => deadline.min(tokio::time::Instant::now() + RENEWAL_WAIT),
            None => deadline,
        };
        match tokio::time::timeout_at(wait_until, renewal).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(AwsError::Unreachable(format!("the renewal task failed: {e}"))),
            Err(_) => match usable {
                Some(s) => Ok(s),
                None => Err(AwsError::Unreachable(
                    "STS did not answer within the Check's time; the session is still being asked for".into(),
                )),
            },
        }
    }

    fn entry(&self, key: Key) -> Arc<Entry> {
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() > PRUNE_ABOVE && !cache.contains_key(&key) {
            let now = SystemTime::now();
            // An entry someone holds is in use; an unused one without a live session can go.
            cache.retain(|_, e| Arc::strong_count(e) > 1 || e.current().is_some_and(|s| left(&s, now) > MIN_LEFT));
        }
        cache.entry(key).or_default().clone()
    }
}

/// One caller's renewal, serialized per entry: whoever comes second finds the fresh session
/// (or STS's recent failure) and does not ask again.
async fn renew(
    entry: Arc<Entry>,
    client: aws_sdk_sts::Client,
    aws: Arc<AwsSigv4>,
    subject: String,
    tags: Vec<(String, String)>,
    renew_before: Duration,
) -> Result<Session, AwsError> {
    let mut failed = entry.renewal.lock().await;
    let now = SystemTime::now();
    let current = entry.current();
    if let Some(s) = current.as_ref().filter(|s| left(s, now) > renew_before) {
        return Ok(s.clone());
    }
    let usable = current.filter(|s| left(s, now) > MIN_LEFT);
    let error = match failed.as_ref() {
        Some((at, error)) if at.elapsed() < RETRY_AFTER => error.clone(),
        _ => match assume(&client, &aws, &subject, &tags).await {
            Ok(session) => {
                tracing::info!(
                    subject,
                    role = aws.role_arn,
                    access_key_id = session.access_key_id,
                    "Assumed the upstream's role for the caller."
                );
                *failed = None;
                entry.set(Some(session.clone()));
                return Ok(session);
            }
            Err(error) => {
                tracing::warn!(subject, role = aws.role_arn, %error, detail = error.detail(), "AssumeRole failed.");
                *failed = Some((tokio::time::Instant::now(), error.clone()));
                error
            }
        },
    };
    match (error, usable) {
        // A refusal ends the session at once: the operator may have just revoked the caller.
        (error @ AwsError::Refused { .. }, _) => {
            entry.set(None);
            Err(error)
        }
        (_, Some(s)) => Ok(s),
        (error, None) => Err(error),
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
        SdkError::ServiceError(service) => AwsError::from_sts(
            service.err().code().unwrap_or("unknown error"),
            service.err().message().unwrap_or_default(),
        ),
        _ => AwsError::Unreachable(DisplayErrorContext(&e).to_string()),
    })?;
    let c = output
        .credentials
        .ok_or_else(|| AwsError::Unreachable("STS answered without credentials".into()))?;
    let expires = SystemTime::try_from(c.expiration)
        .map_err(|_| AwsError::Unreachable("STS answered with an unreadable expiry".into()))?;
    // Credentials that are (nearly) expired on arrival mean the clocks disagree.
    let now = SystemTime::now();
    if expires.duration_since(now).unwrap_or_default() < MIN_LEFT {
        let left_s = expires
            .duration_since(now)
            .map_or_else(|e| -(e.duration().as_secs() as i64), |d| d.as_secs() as i64);
        let expires = time::OffsetDateTime::from(expires)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        return Err(AwsError::Expired { expires, left_s });
    }
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
                .all(|c| c == ' ' || c.is_alphanumeric() || "_.:/=+-@".contains(c));
        // Tag keys are unique regardless of case.
        let twin = tags
            .iter()
            .any(|(k, _): &(String, String)| k.to_lowercase() == key.to_lowercase());
        if !ok || twin {
            return Err(AwsError::Group(group.clone()));
        }
        tags.push((key, "true".to_owned()));
    }
    if tags.len() > MAX_TAGS {
        return Err(AwsError::TooManyTags);
    }
    Ok(tags)
}
