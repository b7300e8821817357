//! Who is calling: OIDC access tokens (JWT) verified against the issuer's published keys.
//!
//! Keys come from the issuer's JWKS (found through its discovery document unless
//! `identity.jwks_url` is set), fetched at start-up, cached, refetched when a token names
//! an unknown `kid` or the cache is older than [`MAX_KEY_AGE`] — never more than once per
//! [`REFRESH_COOLDOWN`], failures included, so a flood of made-up `kid`s cannot hammer the
//! IdP. Fetches time out well inside Envoy's ext_authz timeout. The issuer is compared
//! exactly as configured (OIDC Discovery §4.3), trailing slash included. Only RS256 and ES256
//! are accepted, and the key's type must match the token's algorithm, so `alg: none` and
//! HS256-signed-with-the-public-key tokens are refused.

pub mod dev_issuer;

use std::{
    collections::{BTreeSet, HashMap},
    sync::Arc,
    time::{Duration, Instant},
};

use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    jwk::{AlgorithmParameters, JwkSet},
};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::sync::{Mutex, RwLock};

use crate::config;

/// The token of an `Authorization: Bearer …` header value, read as the filter reads it.
pub use gatehouse_core::wire::bearer_token;

/// The shortest interval between two JWKS fetch attempts.
pub const REFRESH_COOLDOWN: Duration = Duration::from_secs(10);
/// Keys older than this are refetched (a key the IdP revoked stops being trusted).
pub const MAX_KEY_AGE: Duration = Duration::from_secs(3600);
/// Each HTTP fetch from the IdP; two in a row must fit inside the ext_authz timeout.
const FETCH_TIMEOUT: Duration = Duration::from_millis(700);

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub groups: BTreeSet<String>,
}

/// Why a token was not accepted. The `Display` text is safe to show the client.
#[derive(Debug, Error)]
pub enum IdentityError {
    #[error("a bearer token is required")]
    Missing,
    #[error("the bearer token is not a well-formed JWT")]
    Malformed,
    #[error("the token's signing algorithm is not accepted")]
    UnsupportedAlgorithm,
    #[error("the token was not signed by a key of the trusted issuer")]
    UnknownKey,
    #[error("the bearer token has expired")]
    Expired,
    #[error("the bearer token is not valid for this gateway")]
    Invalid(String),
    #[error("the identity provider's keys cannot be fetched right now")]
    KeysUnavailable(String),
}

impl IdentityError {
    /// Internal detail for the log (never sent to the client).
    pub fn detail(&self) -> Option<&str> {
        match self {
            Self::Invalid(d) | Self::KeysUnavailable(d) => Some(d),
            _ => None,
        }
    }
}

#[derive(Default)]
struct KeyCache {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
    /// When keys were last fetched successfully.
    fetched_at: Option<Instant>,
    /// When a fetch was last attempted, successful or not.
    attempted_at: Option<Instant>,
    /// The JWKS URL found through discovery.
    jwks_uri: Option<String>,
}

/// Verifies bearer tokens for one issuer and audience.
pub struct Verifier {
    cfg: config::Identity,
    http: reqwest::Client,
    cache: RwLock<KeyCache>,
    refresh: Mutex<()>,
    /// Tokens already verified, by SHA-256, until they expire: an agent sends the same
    /// token on every call, and a signature check costs more than the rest of the decision.
    verified: std::sync::Mutex<VerifiedTokens>,
}

/// A bounded map of verified token digests to their principal and expiry.
#[derive(Default)]
struct VerifiedTokens {
    entries: HashMap<[u8; 32], (Principal, u64)>,
}

impl VerifiedTokens {
    const MAX: usize = 10_000;

    fn get(&mut self, digest: &[u8; 32]) -> Option<Principal> {
        let (principal, exp) = self.entries.get(digest)?;
        // No leeway here: a cached token ends exactly at its `exp`.
        if *exp > unix_now() {
            Some(principal.clone())
        } else {
            self.entries.remove(digest);
            None
        }
    }

    fn put(&mut self, digest: [u8; 32], principal: Principal, exp: u64) {
        if self.entries.len() >= Self::MAX {
            let now = unix_now();
            self.entries.retain(|_, (_, e)| *e > now);
            if self.entries.len() >= Self::MAX {
                self.entries.clear();
            }
        }
        self.entries.insert(digest, (principal, exp));
    }

    fn clear(&mut self) {
        self.entries.clear();
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(u64::MAX)
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

impl Verifier {
    pub fn new(cfg: config::Identity) -> Arc<Self> {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .build()
            .unwrap_or_else(|_| reqwest::Client::new());
        Arc::new(Self {
            cfg,
            http,
            cache: RwLock::default(),
            refresh: Mutex::new(()),
            verified: std::sync::Mutex::default(),
        })
    }

    /// Verifies the value of an `Authorization` header for MCP (`identity.audience`).
    pub async fn verify_header(&self, authorization: Option<&str>) -> Result<Principal, IdentityError> {
        let token = bearer_token(authorization).ok_or(IdentityError::Missing)?;
        self.verify(token).await
    }

    /// Verifies the value of an `Authorization` header for another of the service's
    /// audiences (the approvers' API): the same issuer, keys and groups, another `aud`.
    pub async fn verify_header_for(
        &self,
        authorization: Option<&str>,
        audience: &str,
    ) -> Result<Principal, IdentityError> {
        let token = bearer_token(authorization).ok_or(IdentityError::Missing)?;
        self.verify_for(token, audience).await
    }

    /// Verifies a compact JWT for MCP (`identity.audience`).
    pub async fn verify(&self, token: &str) -> Result<Principal, IdentityError> {
        let audience = self.cfg.audience.clone();
        self.verify_for(token, &audience).await
    }

    async fn verify_for(&self, token: &str, audience: &str) -> Result<Principal, IdentityError> {
        // The audience is part of the cache key: a token verified for one audience is
        // not thereby verified for another.
        let digest: [u8; 32] = Sha256::new()
            .chain_update(audience.as_bytes())
            .chain_update([0])
            .chain_update(token.as_bytes())
            .finalize()
            .into();
        if let Some(p) = self.verified.lock().ok().and_then(|mut c| c.get(&digest)) {
            return Ok(p);
        }
        let (principal, exp) = self.verify_signature(token, audience).await?;
        if let Ok(mut c) = self.verified.lock() {
            c.put(digest, principal.clone(), exp);
        }
        Ok(principal)
    }

    async fn verify_signature(&self, token: &str, audience: &str) -> Result<(Principal, u64), IdentityError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| IdentityError::Malformed)?;
        if !matches!(header.alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(IdentityError::UnsupportedAlgorithm);
        }
        let kid = header.kid.unwrap_or_default();
        let key = match self.cached_key(&kid).await {
            Some((key, true)) => key,
            Some((stale, false)) => {
                // Past MAX_KEY_AGE: try to refresh, but keep the old keys if the IdP is down.
                match self.refresh_keys().await {
                    // Fresh keys: a kid the IdP no longer publishes is no longer trusted.
                    Ok(()) => self
                        .cached_key(&kid)
                        .await
                        .map(|(k, _)| k)
                        .ok_or(IdentityError::UnknownKey)?,
                    Err(_) => stale,
                }
            }
            None => {
                self.refresh_keys().await?;
                self.cached_key(&kid)
                    .await
                    .map(|(k, _)| k)
                    .ok_or(IdentityError::UnknownKey)?
            }
        };
        let (key_alg, key) = key;
        if key_alg != header.alg {
            return Err(IdentityError::UnsupportedAlgorithm);
        }
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&self.cfg.issuer]);
        validation.set_audience(&[audience]);
        validation.leeway = self.cfg.leeway_seconds;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => IdentityError::Expired,
                _ => IdentityError::Invalid(e.to_string()),
            }
        })?;
        let claims = data.claims;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| IdentityError::Invalid("empty sub".into()))?
            .to_owned();
        let groups = groups_from_claim(claim_at(&claims, &self.cfg.groups_claim));
        let exp = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        Ok((Principal { subject, groups }, exp))
    }

    /// The key for `kid` and whether the cache is still fresh.
    async fn cached_key(&self, kid: &str) -> Option<((Algorithm, DecodingKey), bool)> {
        let cache = self.cache.read().await;
        let fresh = cache.fetched_at.is_some_and(|at| at.elapsed() < MAX_KEY_AGE);
        cache.keys.get(kid).cloned().map(|k| (k, fresh))
    }

    /// Fetches the keys once at start-up so the first request does not pay for it.
    pub async fn prefetch(&self) {
        if let Err(error) = self.refresh_keys().await {
            tracing::warn!(%error, "The issuer's keys are not available yet; requests are refused until they are.");
        }
    }

    async fn refresh_keys(&self) -> Result<(), IdentityError> {
        let _one_at_a_time = self.refresh.lock().await;
        let (attempted_at, jwks_uri) = {
            let cache = self.cache.read().await;
            (cache.attempted_at, cache.jwks_uri.clone())
        };
        if let Some(at) = attempted_at
            && at.elapsed() < REFRESH_COOLDOWN
        {
            // Another task just tried, or a burst of unknown kids: don't hammer the IdP.
            return if self.cache.read().await.fetched_at.is_some() {
                Ok(())
            } else {
                Err(IdentityError::KeysUnavailable(
                    "the last fetch failed; waiting before the next".into(),
                ))
            };
        }
        self.cache.write().await.attempted_at = Some(Instant::now());
        let result = self.fetch_keys(jwks_uri).await;
        let mut cache = self.cache.write().await;
        match result {
            Ok((jwks_uri, keys)) => {
                tracing::info!(issuer = %self.cfg.issuer, keys = keys.len(), "Fetched the issuer's signing keys.");
                cache.keys = keys;
                // Tokens verified with keys the IdP may no longer publish are checked again.
                if let Ok(mut v) = self.verified.lock() {
                    v.clear();
                }
                cache.jwks_uri = Some(jwks_uri);
                cache.fetched_at = Some(Instant::now());
                Ok(())
            }
            Err(error) => {
                tracing::warn!(issuer = %self.cfg.issuer, %error, "Could not fetch the issuer's signing keys.");
                Err(IdentityError::KeysUnavailable(error))
            }
        }
    }

    async fn fetch_keys(
        &self,
        known_jwks_uri: Option<String>,
    ) -> Result<(String, HashMap<String, (Algorithm, DecodingKey)>), String> {
        let jwks_url = match (&self.cfg.jwks_url, known_jwks_uri) {
            (Some(url), _) => url.to_string(),
            (None, Some(known)) => known,
            (None, None) => {
                let url = format!(
                    "{}/.well-known/openid-configuration",
                    self.cfg.issuer.trim_end_matches('/')
                );
                let d: Discovery = self.get_json(&url).await?;
                if d.issuer != self.cfg.issuer {
                    return Err(format!(
                        "discovery names issuer {:?}, expected exactly {:?}",
                        d.issuer, self.cfg.issuer
                    ));
                }
                d.jwks_uri
            }
        };
        let set: JwkSet = self.get_json(&jwks_url).await?;
        Ok((jwks_url, keys_from_jwks(&set)))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let resp = self.http.get(url).send().await.map_err(|e| format!("GET {url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", resp.status()));
        }
        resp.json().await.map_err(|e| format!("GET {url}: {e}"))
    }
}

/// Usable keys of a JWKS, by `kid`: RSA keys for RS256, P-256 keys for ES256. Keys meant
/// for encryption or for another algorithm are skipped.
fn keys_from_jwks(set: &JwkSet) -> HashMap<String, (Algorithm, DecodingKey)> {
    use jsonwebtoken::jwk::{EllipticCurve, KeyAlgorithm, PublicKeyUse};
    let mut out = HashMap::new();
    for jwk in &set.keys {
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let alg = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => Algorithm::ES256,
            _ => continue,
        };
        let declared_ok = match jwk.common.key_algorithm {
            None => true,
            Some(KeyAlgorithm::RS256) => alg == Algorithm::RS256,
            Some(KeyAlgorithm::ES256) => alg == Algorithm::ES256,
            Some(_) => false,
        };
        if !declared_ok {
            continue;
        }
        if let Ok(key) = DecodingKey::from_jwk(jwk) {
            out.insert(jwk.common.key_id.clone().unwrap_or_default(), (alg, key));
        }
    }
    out
}

/// The claim named `name`, or when no claim has that name and it has dots, the value at that
/// path of nested claims (Keycloak's `realm_access.roles`, Entra ID's `roles` stays plain).
fn claim_at<'c>(claims: &'c serde_json::Map<String, Value>, name: &str) -> Option<&'c Value> {
    claims.get(name).or_else(|| {
        let mut parts = name.split('.');
        let first = claims.get(parts.next()?)?;
        parts.try_fold(first, |v, part| v.get(part))
    })
}

/// Groups from a claim that is a list of strings or one space-separated string.
fn groups_from_claim(claim: Option<&Value>) -> BTreeSet<String> {
    match claim {
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        Some(Value::String(s)) => s.split_whitespace().map(str::to_owned).collect(),
        _ => BTreeSet::new(),
    }
}

#[cfg(test)]
mod tests;
