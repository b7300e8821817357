//! Field rules: which keys (JSON object keys, and `key=value` / `key: value` in text)
//! hold a secret.
//!
//! A key is split into lower-cased words (at separators, case changes and digits) and its
//! last term decides (see [`SensitiveKeys::sensitivity`]): `db_password`, `client_secret`,
//! `apiKey`, `X-Api-Key` and `some_api_token_123` hold one; `max_tokens`, `token_type`,
//! `password_hint`, `public_key` and `io.jsonwebtoken` do not. Configured keys match the
//! old way: the key lower-cased without punctuation equals or ends with them.

use super::kinds::{AWS_SECRET_ACCESS_KEY, Kind, SENSITIVE_FIELD};

/// A word (or words, joined and lower-cased: `API_KEY`, `apiKey` and `apikey` all join to
/// `apikey`) that names a secret in a key. A term must start at one of the key's words and
/// end at the end of one, so `jsonwebtoken` holds no `token` and `secretary` no `secret`.
struct Term {
    word: &'static str,
    /// It may also end a longer word (`dbpassword`, `mysecret`; not `token`: glued to a word
    /// it is too often part of a name like `jsonwebtoken`).
    glued: bool,
    /// It names a secret even with other words after it (`todo_secret_do_not_commit`,
    /// `password_for_prod`); after the others such words leave only generated-looking
    /// values secret (`token_bucket_size: 100` is no token, `apiTokenDoNotCommit = "x9…"`
    /// is).
    anywhere: bool,
    /// Its values are only sometimes secrets (`"auth": "basic"`, `"credentials":
    /// {"AccessKeyId": …}`): they are masked when they look generated.
    loose: bool,
}

const fn term(word: &'static str, glued: bool, anywhere: bool, loose: bool) -> Term {
    Term {
        word,
        glued,
        anywhere,
        loose,
    }
}

/// The terms: word, glued, anywhere, loose.
const TERMS: &[Term] = &[
    term("password", true, true, false),
    term("passwd", true, true, false),
    term("pass", false, false, false),
    term("pwd", false, false, false),
    term("passphrase", true, true, false),
    term("secret", true, true, false),
    term("clientsecret", true, true, false),
    term("token", false, false, false),
    term("accesstoken", true, false, false),
    term("refreshtoken", true, false, false),
    term("idtoken", false, false, false),
    term("sessiontoken", true, false, false),
    term("authtoken", true, false, false),
    term("apitoken", true, false, false),
    term("bearertoken", true, false, false),
    term("apikey", true, true, false),
    term("secretkey", true, true, false),
    term("privatekey", true, true, false),
    term("signingkey", false, true, false),
    term("encryptionkey", false, true, false),
    term("masterkey", false, true, false),
    term("authorization", false, false, false),
    term("cookie", false, false, false),
    term("setcookie", false, false, false),
    term("connectionstring", false, false, false),
    term("secretaccesskey", true, true, false),
    term("auth", false, false, true),
    term("creds", false, false, true),
    term("credential", false, false, true),
    term("credentials", false, false, true),
];

/// Words that, after a term, say the value describes the secret rather than being it:
/// `password_hint`, `token_type`, `secret_name`, `api_key_id`, `access_token_url`.
/// (A term with other words after it that are not descriptors holds a secret only when the
/// value looks generated.)
const DESCRIPTORS: &[&str] = &[
    "id",
    "ids",
    "name",
    "names",
    "type",
    "types",
    "kind",
    "length",
    "len",
    "size",
    "count",
    "hint",
    "url",
    "uri",
    "urls",
    "endpoint",
    "host",
    "file",
    "filename",
    "path",
    "dir",
    "version",
    "format",
    "prefix",
    "suffix",
    "header",
    "field",
    "param",
    "variable",
    "var",
    "env",
    "label",
    "policy",
    "expiry",
    "expires",
    "expiration",
    "expire",
    "ttl",
    "lifetime",
    "timeout",
    "age",
    "at",
    "time",
    "date",
    "min",
    "max",
    "mode",
    "method",
    "scheme",
    "scope",
    "scopes",
    "location",
    "region",
    "ref",
    "source",
    "provider",
    "manager",
    "enabled",
    "required",
    "exists",
    "rotation",
    "reset",
    "strength",
    "pattern",
    "regex",
    "rule",
    "rules",
    "limit",
    "index",
    "idx",
    "usage",
    "algorithm",
    "alg",
    "fingerprint",
    "store",
    "vault",
    "arn",
];

/// Words before a term that make it something other than a credential: public keys and
/// tokens, anti-forgery tokens, pagination and progress tokens clients must send back,
/// counts of tokens.
const QUALIFIERS: &[&str] = &[
    "public",
    "pub",
    "csrf",
    "xsrf",
    "next",
    "page",
    "continuation",
    "progress",
    "cursor",
    "max",
    "min",
    "num",
    "total",
];

/// Words after a term that change nothing: `some_api_token_123`, `mySecretString`,
/// `DB_API_TOKEN_OLD`, `$apiTokenV2`.
fn neutral(word: &[u8]) -> bool {
    word.len() == 1
        || word.iter().all(u8::is_ascii_digit)
        || matches!(
            word,
            b"value"
                | b"val"
                | b"string"
                | b"str"
                | b"text"
                | b"data"
                | b"raw"
                | b"b64"
                | b"base64"
                | b"hex"
                | b"old"
                | b"new"
                | b"prev"
                | b"previous"
                | b"current"
                | b"backup"
                | b"primary"
                | b"secondary"
                | b"prod"
                | b"production"
                | b"dev"
                | b"staging"
                | b"tmp"
                | b"temp"
        )
}

/// Normalized keys are compared on at most this many trailing bytes (ends-with needs no
/// more); configured keys longer than this are refused.
pub(crate) const MAX_KEY: usize = 64;

/// The most words of a key looked at: its last ones.
const MAX_WORDS: usize = 16;

/// A key split into lower-cased words (`X-Api-Key` → `x api key`, `mySecretString` → `my
/// secret string`, `HTTPServerToken` → `http server token`, `token123` → `token 123`), its
/// last [`MAX_KEY`] bytes and [`MAX_WORDS`] words, without allocating.
pub(crate) struct Words {
    joined: [u8; MAX_KEY],
    len: usize,
    /// Where each word starts in `joined`, and the end.
    bounds: [u8; MAX_WORDS + 1],
    count: usize,
}

impl Words {
    pub(crate) fn new(key: &[u8]) -> Self {
        let tail = key.get(key.len().saturating_sub(MAX_KEY)..).unwrap_or(key);
        let mut w = Self {
            joined: [0; MAX_KEY],
            len: 0,
            bounds: [0; MAX_WORDS + 1],
            count: 0,
        };
        let mut prev = 0u8;
        for (i, &b) in tail.iter().enumerate() {
            if !b.is_ascii_alphanumeric() {
                prev = 0;
                continue;
            }
            let next = tail.get(i + 1).copied().unwrap_or(0);
            let starts = prev == 0
                || (prev.is_ascii_lowercase() && b.is_ascii_uppercase())
                || (prev.is_ascii_uppercase() && b.is_ascii_uppercase() && next.is_ascii_lowercase())
                || (prev.is_ascii_digit() != b.is_ascii_digit());
            if starts {
                if w.count == MAX_WORDS {
                    // Keep the last words: drop the first.
                    let cut = w.bound(1);
                    w.joined.copy_within(usize::from(cut)..w.len, 0);
                    w.len -= usize::from(cut);
                    w.bounds.copy_within(1.., 0);
                    for b in &mut w.bounds {
                        *b = b.saturating_sub(cut);
                    }
                    w.count -= 1;
                }
                w.set_bound(w.count, w.len);
                w.count += 1;
            }
            if let Some(slot) = w.joined.get_mut(w.len) {
                *slot = b.to_ascii_lowercase();
                w.len += 1;
            }
            prev = b;
        }
        w.set_bound(w.count, w.len);
        w
    }

    /// Where word `k` starts in `joined` (`k == count`: the end).
    fn bound(&self, k: usize) -> u8 {
        self.bounds.get(k).copied().unwrap_or(0)
    }

    fn set_bound(&mut self, k: usize, at: usize) {
        if let Some(slot) = self.bounds.get_mut(k) {
            *slot = u8::try_from(at).unwrap_or(u8::MAX);
        }
    }

    fn joined(&self) -> &[u8] {
        self.joined.get(..self.len).unwrap_or_default()
    }

    fn word(&self, k: usize) -> &[u8] {
        let (start, end) = (self.bound(k), self.bound(k + 1));
        self.joined
            .get(usize::from(start)..usize::from(end))
            .unwrap_or_default()
    }

    /// The index of the word that starts at byte `at`, if one does.
    fn word_starting(&self, at: usize) -> Option<usize> {
        (0..self.count).find(|&k| usize::from(self.bound(k)) == at)
    }

    /// The last term of the key, as (term, first word, last word): the term ending last, the
    /// longest of those.
    /// A term glued to the end of a longer word that it may not end (`vaulttoken`,
    /// `jsonwebtoken`) is returned only when nothing better ends there, marked `loose`: its
    /// value must look generated.
    fn last_term(&self) -> Option<(&'static Term, usize, usize, bool)> {
        let joined = self.joined();
        for last in (0..self.count).rev() {
            let end = usize::from(self.bound(last + 1));
            let head = joined.get(..end).unwrap_or_default();
            // The longest term, those that may end here first.
            let mut best: Option<(&'static Term, usize, bool)> = None;
            for term in TERMS {
                if !head.ends_with(term.word.as_bytes()) {
                    continue;
                }
                let start = end - term.word.len();
                let (first, loose) = match self.word_starting(start) {
                    Some(first) => (first, false),
                    None => {
                        // Glued: the term ends a longer word.
                        let word = (0..=last).rev().find(|&k| usize::from(self.bound(k)) <= start)?;
                        (word, !term.glued)
                    }
                };
                let better = match best {
                    None => true,
                    Some((b, _, b_loose)) => {
                        (b_loose && !loose) || (b_loose == loose && term.word.len() > b.word.len())
                    }
                };
                if better {
                    best = Some((term, first, loose));
                }
            }
            if let Some((term, first, loose)) = best {
                return Some((term, first, last, loose));
            }
        }
        None
    }
}

/// How a key holds a secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sensitive {
    pub(crate) kind: Kind,
    /// Every value is a secret (`password`); otherwise only values that look generated
    /// are (`credentials`, `auth`).
    pub(crate) always: bool,
}

/// Normalizes a key the old way (lower-cased, `_`, `-` and `.` removed, its last
/// [`MAX_KEY`] bytes), for configured keys, which match when the key ends with them.
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
            if !b.is_ascii_alphanumeric() {
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

/// The sensitive keys of one masker: the built-in terms and the configured keys.
#[derive(Debug, Clone, Default)]
pub(crate) struct SensitiveKeys {
    extra: Vec<Vec<u8>>,
}

impl SensitiveKeys {
    /// Adds configured keys (already checked by [`normalize_config_key`]).
    pub(crate) fn with_extra(extra: Vec<Vec<u8>>) -> Self {
        Self { extra }
    }

    /// Keys were configured (they may hold none of the built-in terms' letters).
    pub(crate) fn has_extra(&self) -> bool {
        !self.extra.is_empty()
    }

    /// The kind a value under `key` is masked as, if every value under it is a secret:
    /// `aws_secret_access_key` for `…SecretAccessKey` keys, else `sensitive_field`.
    #[cfg(test)]
    pub(crate) fn classify(&self, key: &[u8]) -> Option<Kind> {
        self.sensitivity(key).filter(|s| s.always).map(|s| s.kind)
    }

    /// Whether and how `key` holds a secret. Its last term decides, unless a qualifier
    /// comes before it (`public_key`, `nextPageToken`), a descriptor after it
    /// (`password_hint`, `token_type`, `credentialsId`), or other words after a term that
    /// must end the key (`token_bucket`); a configured key matches when the key ends with it.
    pub(crate) fn sensitivity(&self, key: &[u8]) -> Option<Sensitive> {
        if !self.extra.is_empty() {
            let n = NormalizedKey::new(key);
            if !n.as_bytes().is_empty() && self.extra.iter().any(|k| n.matches(k)) {
                return Some(Sensitive {
                    kind: SENSITIVE_FIELD,
                    always: true,
                });
            }
        }
        // Our own placeholders name kinds (`[MASKED:slack_token]`): only what follows the
        // last one is the key's own.
        let placeholder = memchr::memchr(b'[', key).and_then(|_| memchr::memmem::rfind(key, b"[MASKED:"));
        let key = match placeholder {
            Some(p) => {
                let rest = key.get(p..).unwrap_or_default();
                rest.get(memchr::memchr(b']', rest)? + 1..).unwrap_or_default()
            }
            None => key,
        };
        // A cheap first test: most keys hold none of the terms' letters in a row.
        if key.len() < 3 || !may_hold_term(key) {
            return None;
        }
        let words = Words::new(key);
        let (term, first, last, glued_loosely) = words.last_term()?;
        if first > 0 && QUALIFIERS.iter().any(|q| words.word(first - 1) == q.as_bytes()) {
            return None;
        }
        let after = (last + 1..words.count).find(|&k| !neutral(words.word(k)));
        // Other words after a term that ends a key (`token_bucket`, `apiTokenDoNotCommit`):
        // a secret only if its value looks generated.
        let mut always = !term.loose && !glued_loosely;
        if let Some(next) = after {
            let word = words.word(next);
            if DESCRIPTORS.iter().any(|d| word == d.as_bytes()) {
                return None;
            }
            always &= term.anywhere;
        }
        if term.word == "secretaccesskey" {
            return Some(Sensitive {
                kind: AWS_SECRET_ACCESS_KEY,
                always: true,
            });
        }
        Some(Sensitive {
            kind: SENSITIVE_FIELD,
            always,
        })
    }
}

/// Whether `key` holds, case-insensitively, three bytes one of the terms has: `ass`
/// (pass…), `pwd`, `ecr` (secret), `oke` (token), `key`, `uth` (auth…), `red` (creds,
/// credential…), `ook` (cookie), `ons` (connectionstring). A cheap first test: most keys
/// hold none of them.
pub(crate) fn may_hold_term(key: &[u8]) -> bool {
    const fn tri(s: &[u8; 3]) -> u32 {
        (s[0] as u32) << 16 | (s[1] as u32) << 8 | s[2] as u32
    }
    const ASS: u32 = tri(b"ass");
    const PWD: u32 = tri(b"pwd");
    const ECR: u32 = tri(b"ecr");
    const OKE: u32 = tri(b"oke");
    const KEY: u32 = tri(b"key");
    const UTH: u32 = tri(b"uth");
    const RED: u32 = tri(b"red");
    const OOK: u32 = tri(b"ook");
    const ONS: u32 = tri(b"ons");
    let mut window = 0u32;
    for &b in key {
        window = (window << 8 | u32::from(b.to_ascii_lowercase())) & 0x00FF_FFFF;
        if matches!(window, ASS | PWD | ECR | OKE | KEY | UTH | RED | OOK | ONS) {
            return true;
        }
    }
    false
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
            "todo_secret_do_not_commit",
            "mySecretString",
            "some_api_token_123",
            "dbpassword",
            "API Key",
            "ngrok_authtoken",
            "$token",
            "SECRET_KEY_BASE",
            "USER_PASS",
            "DB_API_TOKEN_OLD",
            "$apiTokenV2",
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
            "progressToken",
            "nextPageToken",
            "page_token",
            "io.jsonwebtoken",
            "publicToken",
            "public_key",
            "credentialsId",
            "secret_length",
            "LLM_SECRET_NAME",
            "access_token_url",
            "TokenFile",
            "author",
            "secretary",
            "csrf-token",
            "keyword",
            "passwordVariable",
            "bypass",
            "pass_through",
        ] {
            assert_eq!(kind(key), None, "{key}");
        }
        assert_eq!(kind("aws_secret_access_key"), Some(AWS_SECRET_ACCESS_KEY));
        assert_eq!(kind("SecretAccessKey"), Some(AWS_SECRET_ACCESS_KEY));
        assert_eq!(kind("AWS Secret Access Key"), Some(AWS_SECRET_ACCESS_KEY));
    }

    #[test]
    fn loose_keys_hold_secrets_only_sometimes() {
        let keys = SensitiveKeys::default();
        for key in ["credentials", "creds", "user_auth", "Credential"] {
            assert_eq!(
                keys.sensitivity(key.as_bytes()),
                Some(Sensitive {
                    kind: SENSITIVE_FIELD,
                    always: false
                }),
                "{key}"
            );
            assert_eq!(keys.classify(key.as_bytes()), None, "{key}");
        }
        assert_eq!(keys.sensitivity(b"auth_type"), None);
        for key in [
            "token_bucket",
            "redisAuthTokenDoNotCommit",
            "vaulttoken",
            "io.jsonwebtoken",
        ] {
            assert_eq!(keys.classify(key.as_bytes()), None, "{key}");
            assert!(keys.sensitivity(key.as_bytes()).is_some(), "{key}");
        }
        assert_eq!(keys.sensitivity(b"x [MASKED:slack_token]"), None);
        assert_eq!(keys.classify(b"[MASKED:email] password"), Some(SENSITIVE_FIELD));
    }

    #[test]
    fn words_split_at_case_digits_and_separators() {
        let w = Words::new(b"HTTPServer_apiKey-2token");
        let words: Vec<&[u8]> = (0..w.count).map(|k| w.word(k)).collect();
        assert_eq!(words, [&b"http"[..], b"server", b"api", b"key", b"2", b"token"]);
        let long = Words::new("a_".repeat(40).as_bytes());
        assert_eq!(long.count, MAX_WORDS);
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
