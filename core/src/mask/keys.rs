//! Field rules: which keys (JSON object keys, and `key=value` / `key: value` in text)
//! hold a secret whatever the value looks like.
//!
//! A key is compared lower-cased with `_`, `-` and `.` removed, and matches when it
//! equals or ends with a listed key: `db_password`, `client_secret`, `apiKey` and
//! `X-Api-Key` match; `max_tokens`, `token_type` and `password_hint` do not.

use super::kinds::{AWS_SECRET_ACCESS_KEY, Kind, SENSITIVE_FIELD};

/// The built-in sensitive keys, normalized.
pub(crate) const BUILTIN_SENSITIVE_KEYS: &[&str] = &[
    "password",
    "passwd",
    "pwd",
    "passphrase",
    "secret",
    "clientsecret",
    "token",
    "accesstoken",
    "refreshtoken",
    "idtoken",
    "sessiontoken",
    "apikey",
    "authorization",
    "cookie",
    "setcookie",
    "privatekey",
    "connectionstring",
];

/// Keys that end like a sensitive key but are protocol fields, not credentials: MCP's
/// `progressToken` (the client needs it to match progress to its call) and pagination
/// tokens (`pageToken`, `nextPageToken`), which clients must send back. Their values are
/// still scanned by the detectors like any other text.
pub(crate) const NOT_SENSITIVE_KEYS: &[&str] = &["progresstoken", "pagetoken", "nextpagetoken", "continuationtoken"];

/// Normalized keys are compared on at most this many trailing bytes (ends-with needs no
/// more); configured keys longer than this are refused.
pub(crate) const MAX_KEY: usize = 64;

/// A key normalized into a fixed buffer (its last [`MAX_KEY`] kept bytes), so that the
/// check on every JSON key does not allocate.
pub(crate) struct NormalizedKey {
    buf: [u8; MAX_KEY],
    /// Where the normalized key starts in `buf` (it is written from the end).
    start: usize,
    /// The key had more kept bytes than fit.
    long: bool,
}

impl NormalizedKey {
    pub(crate) fn new(key: &[u8]) -> Self {
        let mut buf = [0u8; MAX_KEY];
        let mut start = MAX_KEY;
        let mut long = false;
        for &b in key.iter().rev() {
            if matches!(b, b'_' | b'-' | b'.') {
                continue;
            }
            if start == 0 {
                long = true;
                break;
            }
            start -= 1;
            if let Some(slot) = buf.get_mut(start) {
                *slot = b.to_ascii_lowercase();
            }
        }
        Self { buf, start, long }
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        self.buf.get(self.start..).unwrap_or_default()
    }

    /// Equal to `key`, or ends with it (a cut key keeps its tail, so this holds for it too).
    pub(crate) fn matches(&self, key: &[u8]) -> bool {
        self.as_bytes().ends_with(key)
    }
}

/// The sensitive keys of one masker: the built-in ones and the configured ones.
#[derive(Debug, Clone)]
pub(crate) struct SensitiveKeys {
    extra: Vec<Vec<u8>>,
    /// The last bytes (lower-cased) of every key: a key ending otherwise is not sensitive.
    last: [bool; 256],
}

impl Default for SensitiveKeys {
    fn default() -> Self {
        Self::with_extra(Vec::new())
    }
}

impl SensitiveKeys {
    /// Adds configured keys (already checked by [`normalize_config_key`]).
    pub(crate) fn with_extra(extra: Vec<Vec<u8>>) -> Self {
        let mut last = [false; 256];
        let keys = BUILTIN_SENSITIVE_KEYS
            .iter()
            .map(|k| k.as_bytes())
            .chain([&b"secretaccesskey"[..]])
            .chain(extra.iter().map(Vec::as_slice));
        for key in keys {
            if let Some(slot) = key.last().and_then(|&b| last.get_mut(usize::from(b))) {
                *slot = true;
            }
        }
        Self { extra, last }
    }

    /// Whether a key whose last kept byte is `b` can be sensitive.
    #[inline]
    pub(crate) fn may_end_with(&self, b: u8) -> bool {
        self.last
            .get(usize::from(b.to_ascii_lowercase()))
            .copied()
            .unwrap_or(false)
    }

    /// The kind a value under `key` is masked as, if the key is sensitive:
    /// `aws_secret_access_key` for `…SecretAccessKey` keys, else `sensitive_field`.
    pub(crate) fn classify(&self, key: &[u8]) -> Option<Kind> {
        self.classify_normalized(&NormalizedKey::new(key))
    }

    /// [`classify`](Self::classify) for a key already normalized.
    pub(crate) fn classify_normalized(&self, n: &NormalizedKey) -> Option<Kind> {
        let bytes = n.as_bytes();
        if bytes.is_empty() {
            return None;
        }
        if n.matches(b"secretaccesskey") {
            return Some(AWS_SECRET_ACCESS_KEY);
        }
        if NOT_SENSITIVE_KEYS.iter().any(|k| bytes == k.as_bytes()) {
            return None;
        }
        // A cheap first test, since most keys in real JSON are not sensitive.
        if !self.may_end_with(bytes.last().copied().unwrap_or_default()) {
            return None;
        }
        let sensitive =
            BUILTIN_SENSITIVE_KEYS.iter().any(|k| n.matches(k.as_bytes())) || self.extra.iter().any(|k| n.matches(k));
        sensitive.then_some(SENSITIVE_FIELD)
    }
}

/// Normalizes a configured sensitive key, or says why it cannot be used.
pub(crate) fn normalize_config_key(key: &str) -> Result<Vec<u8>, &'static str> {
    let n = NormalizedKey::new(key.as_bytes());
    if n.long {
        return Err("is longer than 64 characters");
    }
    if n.as_bytes().is_empty() {
        return Err("is empty once `_`, `-` and `.` are removed");
    }
    Ok(n.as_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(key: &str) -> Option<Kind> {
        SensitiveKeys::default().classify(key.as_bytes())
    }

    #[test]
    fn builtin_keys_match_by_suffix() {
        for key in [
            "password",
            "db_password",
            "DB-PASSWORD",
            "client_secret",
            "apiKey",
            "X-Api-Key",
            "access_token",
            "id.token",
            "Authorization",
            "Set-Cookie",
            "private_key",
            "pwd",
            "ConnectionString",
        ] {
            assert_eq!(kind(key), Some(SENSITIVE_FIELD), "{key}");
        }
        for key in [
            "max_tokens",
            "token_type",
            "password_hint",
            "token_count",
            "tokens",
            "name",
            "",
            "_-.",
            "credentials",
            "progressToken",
            "nextPageToken",
            "page_token",
        ] {
            assert_eq!(kind(key), None, "{key}");
        }
        assert_eq!(kind("aws_secret_access_key"), Some(AWS_SECRET_ACCESS_KEY));
        assert_eq!(kind("SecretAccessKey"), Some(AWS_SECRET_ACCESS_KEY));
    }

    #[test]
    fn long_keys_compare_on_their_tail() {
        let long = format!("{}_password", "x".repeat(200));
        assert_eq!(kind(&long), Some(SENSITIVE_FIELD));
        assert_eq!(kind(&"password".repeat(40)), Some(SENSITIVE_FIELD));
        assert_eq!(kind(&"x".repeat(200)), None);
    }

    #[test]
    fn configured_keys() {
        let extra = normalize_config_key("Customer-PIN").unwrap();
        assert_eq!(extra, b"customerpin");
        let keys = SensitiveKeys::with_extra(vec![extra]);
        assert_eq!(keys.classify(b"customer_pin"), Some(SENSITIVE_FIELD));
        assert_eq!(keys.classify(b"old_customer_pin"), Some(SENSITIVE_FIELD));
        assert_eq!(keys.classify(b"pin"), None);
        assert!(normalize_config_key("--").is_err());
        assert!(normalize_config_key(&"k".repeat(65)).is_err());
    }
}
