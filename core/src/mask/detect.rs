//! The built-in text detectors, run in one forward pass over the bytes.
//!
//! Nothing here is a regex: every built-in kind starts at a byte that is cheap to spot,
//! so the scanner walks the text once and only looks closer there.
//!
//! - At the start of a word (`[A-Za-z0-9_]` after anything else), the first byte picks
//!   the candidates: `A` an AWS key id or a Google API key, `A`–`Z` an IBAN, `g` a GitHub
//!   token, `x` a Slack token, `s`/`r`/`p` a Stripe key, `e` a JWT, a digit an SSN, a card
//!   number or a North American phone number. A word that starts nothing is skipped whole,
//!   so ordinary prose costs one table lookup per byte.
//! - `@`: an e-mail address, read backwards for the local part.
//! - `=` and `:`: `key=value` / `key: value` with a sensitive key (field rule in text), an
//!   AWS secret key after its key; `://` a URL with a password or a Slack webhook.
//! - `-`: a PEM private key block whose body validates as one (base64 lines of one width,
//!   bounded), through its END line (or to the end of the text when cut).
//! - `+` and `(`: phone numbers.
//!
//! Each candidate is then validated (Luhn, IBAN mod 97, SSN ranges, the JWT header) and
//! checked for word boundaries, so look-alikes (order numbers, hashes, UUIDs, instance
//! ids) and tokens glued inside longer runs stay. Matches come out sorted and never
//! overlapping: nothing starts before the end of the previous match (`floor`), and the
//! scan resumes after each match. Every match is bounded in length and covers only
//! bytes that validate as the secret: no detector spans arbitrary text between two
//! delimiters (an unterminated quote, a BEGIN line with SQL after it), so masking can
//! never hide what a request really does. Every step looks a bounded distance ahead or
//! behind except the scans that end a match, so the pass is linear in the text.

use memchr::memmem;

use super::keys::{self, NormalizedKey, Sensitive, SensitiveKeys};
use super::kinds::{
    AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, BUILTIN_COUNT, COMMAND_LINE_PASSWORD, CREDIT_CARD, EMAIL, GITHUB_TOKEN,
    GOOGLE_API_KEY, IBAN, JWT, Kind, PASSWORD_IN_URL, PHONE, PRIVATE_KEY, SENSITIVE_FIELD, SLACK_TOKEN, STRIPE_KEY,
    US_SSN,
};
use super::{shape, validate};

/// One match: a byte range of the text (on char boundaries: it starts and ends at ASCII
/// bytes or at the ends of the text) and its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Found {
    pub(crate) start: usize,
    pub(crate) end: usize,
    pub(crate) kind: Kind,
}

/// The built-in detectors as configured: which are on, and the sensitive keys.
#[derive(Debug, Clone)]
pub(crate) struct Detectors {
    pub(crate) enabled: [bool; BUILTIN_COUNT],
    pub(crate) keys: SensitiveKeys,
}

const WORD: u8 = 1;
const PUNCT: u8 = 2;

/// Byte classes: word bytes start candidates; the punctuation bytes that trigger a
/// detector; everything else (0) is skipped.
static CLASS: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || c == b'_' {
            table[b] = WORD;
        }
        if matches!(c, b'@' | b'=' | b':' | b'-' | b'+' | b'(' | b'>') {
            table[b] = PUNCT;
        }
        b += 1;
    }
    table
};

/// The byte at `i`, or NUL past the end (NUL is in no class, so it ends every run).
#[inline]
fn at(t: &[u8], i: usize) -> u8 {
    t.get(i).copied().unwrap_or(0)
}

#[inline]
fn is_word(b: u8) -> bool {
    CLASS[usize::from(b)] == WORD
}

#[inline]
fn is_b64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// The index of the first byte at or after `from` that is not `pred`.
#[inline]
fn run(t: &[u8], from: usize, pred: impl Fn(u8) -> bool) -> usize {
    let rest = t.get(from..).unwrap_or_default();
    from + rest.iter().position(|&b| !pred(b)).unwrap_or(rest.len())
}

/// Exactly `n` digits at `i`, as a number.
fn digits_at(t: &[u8], i: usize, n: usize) -> Option<u32> {
    let d = t.get(i..i + n)?;
    d.iter().try_fold(0u32, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u32::from(b - b'0'))
    })
}

/// A number may end at `end`: not glued to a following word, decimal part or further
/// dash/dot group (`4111…1111.5`, `123-45-6789-0`).
fn number_ends(t: &[u8], end: usize) -> bool {
    let next = at(t, end);
    !(is_word(next) || (matches!(next, b'-' | b'.') && at(t, end + 1).is_ascii_alphanumeric()))
}

/// What the scanner does at a position.
enum Step {
    Found(Found),
    /// Nothing here; resume at this index (always past the current one).
    Skip(usize),
}

impl Step {
    /// This step, or when it found nothing, what `other` finds.
    fn or_else(self, other: impl FnOnce() -> Option<Found>) -> Self {
        match self {
            Self::Skip(next) => other().map_or(Self::Skip(next), Self::Found),
            found => found,
        }
    }
}

impl Detectors {
    fn on(&self, kind: Kind) -> bool {
        self.enabled.get(kind).copied().unwrap_or(false)
    }

    /// Appends the matches in `t`, sorted and not overlapping.
    pub(crate) fn scan(&self, t: &[u8], out: &mut Vec<Found>) {
        let mut i = 0;
        let mut floor = 0;
        while let Some(&b) = t.get(i) {
            let step = match CLASS[usize::from(b)] {
                WORD => {
                    let word_end = run(t, i, is_word);
                    let step = match self.word(t, i, word_end) {
                        Step::Skip(next) => {
                            // `\n`, `\t` and `\r` escapes glue a letter to the next word in
                            // text that carries JSON-escaped content: look behind the escape.
                            if matches!(b, b'n' | b't' | b'r') && i > floor && at(t, i - 1) == b'\\' && i + 1 < word_end
                            {
                                match self.word(t, i + 1, word_end) {
                                    Step::Found(f) => Step::Found(f),
                                    Step::Skip(other) => Step::Skip(next.max(other)),
                                }
                            } else {
                                Step::Skip(next)
                            }
                        }
                        found => found,
                    };
                    // A 40-character AWS secret key after its name: a word that long, or one
                    // cut by `/` or `+` (ruled out here on the word's end, for every word).
                    step.or_else(|| {
                        (word_end - i == AWS_SECRET_LEN || matches!(at(t, word_end), b'/' | b'+'))
                            .then(|| self.spaced_aws_secret(t, i, floor))
                            .flatten()
                    })
                }
                PUNCT => self.punct(t, i, b, floor),
                _ => Step::Skip(i + 1),
            };
            match step {
                Step::Found(f) => {
                    out.push(f);
                    floor = f.end;
                    i = f.end.max(i + 1);
                }
                Step::Skip(next) => i = next.max(i + 1),
            }
        }
    }

    /// Candidates at the start of a word `t[i..word_end]`.
    fn word(&self, t: &[u8], i: usize, word_end: usize) -> Step {
        let hit = |kind: Kind, end: Option<usize>| -> Option<Found> {
            if self.on(kind) {
                end.map(|end| Found { start: i, end, kind })
            } else {
                None
            }
        };
        let found = match at(t, i) {
            b'A' => hit(AWS_ACCESS_KEY_ID, aws_key_id(t, i))
                .or_else(|| hit(GOOGLE_API_KEY, google_api_key(t, i)))
                .or_else(|| hit(IBAN, iban(t, i))),
            b'Z' => hit(JWT, jwt_base64(t, i)).or_else(|| hit(IBAN, iban(t, i))),
            b'B'..=b'Y' => hit(IBAN, iban(t, i)),
            b'g' => hit(GITHUB_TOKEN, github_token(t, i)),
            // A webhook written without its scheme; with one, `url` finds it at the `:`.
            b'h' if t.get(i..).is_some_and(|r| r.starts_with(b"hooks.slack.com/"))
                && at(t, i.wrapping_sub(1)) != b'/' =>
            {
                hit(SLACK_TOKEN, slack_webhook_path(t, i + 15))
            }
            b'x' if self.on(SLACK_TOKEN) => match slack_token(t, i) {
                Ok(end) => hit(SLACK_TOKEN, Some(end)),
                Err(skip) => return Step::Skip(word_end.max(skip)),
            },
            b's' | b'r' | b'p' => hit(STRIPE_KEY, stripe_key(t, i)),
            b'e' if self.on(JWT) => match jwt(t, i) {
                Ok(end) => hit(JWT, Some(end)),
                Err(skip) => return Step::Skip(word_end.max(skip)),
            },
            b'0'..=b'9' => return self.numeric(t, i, word_end),
            _ => None,
        };
        found.map_or(Step::Skip(word_end), Step::Found)
    }

    /// SSN, card number or North American phone number at a digit that starts a word.
    fn numeric(&self, t: &[u8], i: usize, word_end: usize) -> Step {
        // Glued to an identifier (`ORDER-1234…`, `i-0abc…`, `v2.2.65`) or the tail of a
        // number with thousands separators: part of something else.
        let prev = i.checked_sub(1).map(|j| at(t, j));
        let before = i.checked_sub(2).map(|j| at(t, j));
        let glued = match (prev, before) {
            (Some(b'-' | b'.'), Some(c)) => c.is_ascii_alphanumeric(),
            (Some(b','), Some(c)) => c.is_ascii_digit(),
            _ => false,
        };
        if glued {
            return Step::Skip(word_end);
        }
        let found = |end: usize, kind: Kind| Step::Found(Found { start: i, end, kind });
        if self.on(US_SSN)
            && let Some(end) = us_ssn(t, i)
        {
            return found(end, US_SSN);
        }
        let mut skip = word_end;
        if self.on(CREDIT_CARD) {
            match credit_card(t, i) {
                Ok(end) => return found(end, CREDIT_CARD),
                Err(examined) => skip = skip.max(examined),
            }
        }
        if self.on(PHONE)
            && let Some(end) = na_phone(t, i)
        {
            return found(end, PHONE);
        }
        Step::Skip(skip)
    }

    /// Candidates at a punctuation byte.
    fn punct(&self, t: &[u8], i: usize, b: u8, floor: usize) -> Step {
        let found = match b {
            b'@' if self.on(EMAIL) => email(t, i, floor),
            b':' if at(t, i + 1) == b'/' && at(t, i + 2) == b'/' => self.url(t, i, floor),
            b'=' | b':' => self.key_value(t, i, floor),
            b'-' => command_line_password(t, i, floor)
                .filter(|_| self.on(COMMAND_LINE_PASSWORD))
                .map(|(start, end)| Found {
                    start,
                    end,
                    kind: COMMAND_LINE_PASSWORD,
                })
                .or_else(|| {
                    (at(t, i + 1) == b'-' && self.on(PRIVATE_KEY))
                        .then(|| private_key(t, i))
                        .flatten()
                        .map(|end| Found {
                            start: i,
                            end,
                            kind: PRIVATE_KEY,
                        })
                }),
            b'+' if self.on(PHONE) => intl_phone(t, i).map(|end| Found {
                start: i,
                end,
                kind: PHONE,
            }),
            b'(' => self.call_argument(t, i).or_else(|| {
                paren_phone(t, i).filter(|_| self.on(PHONE)).map(|end| Found {
                    start: i,
                    end,
                    kind: PHONE,
                })
            }),
            b'>' => self.xml_element(t, i, floor),
            _ => None,
        };
        found.map_or(Step::Skip(i + 1), Step::Found)
    }

    /// `scheme://user:password@host…`: the password; `https://hooks.slack.com/services/…`:
    /// the whole webhook URL. `i` is the `:` of `://`.
    fn url(&self, t: &[u8], i: usize, floor: usize) -> Option<Found> {
        let mut scheme = i;
        while scheme > floor
            && i - scheme < 32
            && matches!(at(t, scheme - 1), b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'+' | b'.' | b'-')
        {
            scheme -= 1;
        }
        if scheme == i || !at(t, scheme).is_ascii_alphabetic() {
            return None;
        }
        let host = i + 3;
        let authority_end = host
            + t.get(host..)?
                .iter()
                .take(512)
                .position(|&b| {
                    matches!(b, b'/' | b'?' | b'#' | b'"' | b'\'' | b'<' | b'>' | b'\\' | b'`')
                        || b.is_ascii_whitespace()
                })
                .unwrap_or_else(|| t.len().saturating_sub(host).min(512));
        let authority = t.get(host..authority_end)?;
        if self.on(SLACK_TOKEN)
            && authority.eq_ignore_ascii_case(b"hooks.slack.com")
            && let Some(end) = slack_webhook_path(t, authority_end)
        {
            return Some(Found {
                start: scheme,
                end,
                kind: SLACK_TOKEN,
            });
        }
        if !self.on(PASSWORD_IN_URL) {
            return None;
        }
        // The last `@` ends the user info: a password may hold an unencoded `@`.
        let at_sign = memchr::memrchr(b'@', authority)?;
        let userinfo = authority.get(..at_sign)?;
        let colon = memchr::memchr(b':', userinfo)?;
        let (start, end) = (host + colon + 1, host + at_sign);
        let password = t.get(start..end)?;
        (start < end && !shape::is_placeholder(password)).then_some(Found {
            start,
            end,
            kind: PASSWORD_IN_URL,
        })
    }

    /// `key=value`, `key: value`, `"key": "value"` (also with JSON-escaped quotes), `key :=
    /// value`, `$key .= value`, and prompts like `AWS Secret Access Key [None]: value`, where
    /// the key is sensitive. `i` is the `=` or `:`.
    fn key_value(&self, t: &[u8], i: usize, floor: usize) -> Option<Found> {
        let sep = at(t, i);
        if sep == b'=' && (matches!(at(t, i.wrapping_sub(1)), b'=' | b'!' | b'<' | b'>') || at(t, i + 1) == b'=') {
            return None; // A comparison, not an assignment.
        }
        if sep == b':' && at(t, i + 1) == b'=' {
            return None; // `:=`: the `=` reads it.
        }
        // The key, backwards: a compound assignment's operator (`:=`, `.=`, `+=`, `?=`,
        // `||=`), spaces, a prompt's bracketed default, an optional (escaped) closing quote.
        let mut key_end = i;
        if sep == b'=' {
            while key_end > floor && i - key_end < 3 && matches!(at(t, key_end - 1), b':' | b'.' | b'+' | b'?' | b'|') {
                key_end -= 1;
            }
        }
        key_end = skip_blanks_back(t, key_end, floor);
        if sep == b':' && key_end > floor && at(t, key_end - 1) == b']' {
            let from = key_end.saturating_sub(48).max(floor);
            if let Some(open) = t.get(from..key_end).and_then(|w| memchr::memrchr(b'[', w)) {
                key_end = skip_blanks_back(t, from + open, floor);
            }
        }
        let mut quoted_key = false;
        if key_end > floor && matches!(at(t, key_end - 1), b'"' | b'\'') {
            key_end -= 1;
            quoted_key = true;
            if key_end > floor && at(t, key_end - 1) == b'\\' {
                key_end -= 1;
            }
        }
        let mut key_start = key_start(t, key_end, floor)?;
        // Most `:` and `=` in text follow no sensitive key: rule them out on the key's last
        // word before reading more.
        if !self.keys.has_extra() && !keys::may_hold_term(t.get(key_start..key_end)?) {
            return None;
        }
        if !quoted_key {
            key_start = more_key_words(t, key_start, key_end, floor);
        }
        // Our own placeholders (`[MASKED:access_token:tok_…]`) look like `key:value`.
        if t.get(..key_start).is_some_and(|before| before.ends_with(b"[MASKED:")) {
            return None;
        }
        let key = t.get(key_start..key_end)?;
        let sensitive = self.keys.sensitivity(key)?;
        let name = NormalizedKey::new(key);

        // The value: spaces, then quoted (up to its closing quote) or bare.
        let mut v = i + 1;
        while v - i <= 8 && matches!(at(t, v), b' ' | b'\t') {
            v += 1;
        }
        let line_valued = name.matches(b"authorization") || name.matches(b"cookie");
        // Rule values out on their first bytes before reading them: a rejected value must
        // not be read whole, or `token={token={…` would be read once per `=`.
        let quote = match (at(t, v), at(t, v + 1)) {
            (b'\\', b'"') => 2,
            (b'"' | b'\'', _) => 1,
            _ => 0,
        };
        let head = t.get(v + quote..).unwrap_or_default();
        if head.starts_with(b"[MASKED:")
            || head.starts_with(b"-----BEGIN")
            || (quote == 0 && matches!(head.first(), Some(b'{' | b'[')))
        {
            return None;
        }
        // An AWS secret key is 40 characters: read no further than that.
        let limit = if sensitive.kind == AWS_SECRET_ACCESS_KEY {
            AWS_SECRET_LEN + 1
        } else {
            VALUE_MAX_BYTES + 1
        };
        let (start, end, quoted) = match (at(t, v), at(t, v + 1)) {
            (b'\\', b'"') => {
                let start = v + 2;
                let close = start + memchr::memchr(b'"', bounded(t, start))?;
                let end = if close > start && at(t, close - 1) == b'\\' {
                    close - 1
                } else {
                    close
                };
                (start, end, true)
            }
            (q @ (b'"' | b'\''), _) => {
                let start = v + 1;
                let mut end = start;
                loop {
                    let window = t.get(end..t.len().min(start + VALUE_MAX_BYTES + 1))?;
                    match memchr::memchr(q, window) {
                        Some(p) if p > 0 && at(t, end + p - 1) == b'\\' => end += p + 1,
                        Some(p) => break (start, end + p, true),
                        // Unterminated: where the value ends is unknown, so nothing is.
                        None => return None,
                    }
                }
            }
            _ if line_valued => (v, header_value_end(t, v), false),
            _ => {
                let end = v + bare_value_len(t, v, limit);
                if at(t, end) == b'(' {
                    return None; // A call (`GetEnvOrDefault(…)`): code, not the secret.
                }
                match env_fallback(t, v, end) {
                    Some((start, end)) => (start, end, true),
                    None => (v, end, false),
                }
            }
        };
        let value = t.get(start..end)?;
        if (quoted && !quoted_value_ok(value)) || switches_context(value) || end - start > VALUE_MAX_BYTES {
            return None;
        }
        // A header value is a scheme and its credentials: `Bearer $TOKEN` (read up to the
        // scheme) and `Basic ...` hold none.
        if line_valued && !quoted && !value.contains(&b' ') && at(t, end) == b' ' {
            return None;
        }
        let credential = if line_valued && !quoted {
            value
                .iter()
                .position(|&b| b == b' ')
                .map_or(value, |p| value.get(p + 1..).unwrap_or_default())
        } else {
            value
        };
        let kind = self.value_kind(sensitive, credential)?;
        let kind = if kind == SENSITIVE_FIELD
            && matches!(name.as_bytes(), b"password" | b"pwd" | b"passwd")
            && (matches!(at(t, key_start.wrapping_sub(1)), b';' | b'?' | b'&') || matches!(at(t, end), b';' | b'&'))
            && self.on(PASSWORD_IN_URL)
        {
            // A connection string (`Server=…;Password=…;`) or a URL query.
            PASSWORD_IN_URL
        } else {
            kind
        };
        self.on(kind).then_some(Found { start, end, kind })
    }

    /// The kind a value under a sensitive key is masked as, or `None` when it is no secret:
    /// a placeholder (`$API_KEY`, `<token>`, `changeme`), for an AWS secret key anything but
    /// 40 characters of its alphabet, and under a key that only sometimes holds a secret
    /// (`credentials`), anything that does not look generated.
    fn value_kind(&self, sensitive: Sensitive, value: &[u8]) -> Option<Kind> {
        if shape::is_placeholder(value) || (!sensitive.always && !shape::looks_generated(value)) {
            return None;
        }
        if sensitive.kind == AWS_SECRET_ACCESS_KEY {
            let shaped = value.len() == AWS_SECRET_LEN && value.iter().all(|&b| is_aws_secret_byte(b));
            return shaped.then_some(AWS_SECRET_ACCESS_KEY);
        }
        Some(sensitive.kind)
    }

    /// `<secret>value</secret>`, `<SecretAccessKey>…</SecretAccessKey>`: an XML element
    /// whose name is a sensitive key, its text up to the matching end tag. `i` is the `>`.
    fn xml_element(&self, t: &[u8], i: usize, floor: usize) -> Option<Found> {
        let from = i.saturating_sub(64).max(floor);
        let open = from + memchr::memrchr(b'<', t.get(from..i)?)?;
        let name = t.get(open + 1..i)?;
        if name.is_empty()
            || !name
                .iter()
                .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
        {
            return None;
        }
        // A namespace prefix (`<aws:secret>`) is not part of the name.
        let local = name
            .iter()
            .rposition(|&b| b == b':')
            .map_or(name, |p| name.get(p + 1..).unwrap_or_default());
        let sensitive = self.keys.sensitivity(local)?;
        let start = i + 1;
        let close = start + memchr::memchr(b'<', bounded(t, start))?;
        let rest = t.get(close..)?;
        if !(rest.starts_with(b"</") && rest.get(2..)?.starts_with(name) && at(t, close + 2 + name.len()) == b'>') {
            return None;
        }
        let value = t.get(start..close)?;
        let lead = value.iter().take_while(|b| b.is_ascii_whitespace()).count();
        let trail = value.iter().rev().take_while(|b| b.is_ascii_whitespace()).count();
        let (start, end) = (start + lead, close.saturating_sub(trail).max(start + lead));
        let value = t.get(start..end)?;
        if value.iter().any(|b| b.is_ascii_whitespace()) || switches_context(value) {
            return None;
        }
        let kind = self.value_kind(sensitive, value)?;
        self.on(kind).then_some(Found { start, end, kind })
    }

    /// `getenv("API_TOKEN", "value")`, `config.set('password', 'value')`: a call whose first
    /// argument is a quoted sensitive key and whose second is a quoted value. `i` is the `(`.
    fn call_argument(&self, t: &[u8], i: usize) -> Option<Found> {
        let k = run(t, i + 1, |b| b == b' ');
        let q = at(t, k);
        if !matches!(q, b'"' | b'\'') {
            return None;
        }
        let key_end = k + 1 + memchr::memchr(q, t.get(k + 1..t.len().min(k + 66))?)?;
        let key = t.get(k + 1..key_end)?;
        if key.is_empty() || !key.iter().all(|&b| is_word(b) || matches!(b, b'-' | b'.')) {
            return None;
        }
        let sensitive = self.keys.sensitivity(key)?;
        let comma = run(t, key_end + 1, |b| b == b' ');
        let v = run(t, comma + 1, |b| b == b' ');
        let vq = at(t, v);
        if at(t, comma) != b',' || !matches!(vq, b'"' | b'\'') {
            return None;
        }
        let start = v + 1;
        let end = start + memchr::memchr(vq, bounded(t, start))?;
        let after = run(t, end + 1, |b| b == b' ');
        let value = t.get(start..end)?;
        if !matches!(at(t, after), b')' | b',') || !quoted_value_ok(value) || switches_context(value) {
            return None;
        }
        let kind = self.value_kind(sensitive, value)?;
        self.on(kind).then_some(Found { start, end, kind })
    }

    /// An AWS secret key given as the argument after its name, with a blank between:
    /// `aws configure set aws_secret_access_key …`, `--aws-secret-access-key …`. `i` starts a
    /// word after a blank.
    fn spaced_aws_secret(&self, t: &[u8], i: usize, floor: usize) -> Option<Found> {
        if !self.on(AWS_SECRET_ACCESS_KEY) || i < floor + 2 || at(t, i - 1) != b' ' {
            return None;
        }
        // Ruled out on two bytes first.
        let end = i + AWS_SECRET_LEN;
        if !is_aws_secret_byte(at(t, end - 1)) || is_aws_secret_byte(at(t, end)) || is_word(at(t, end)) {
            return None;
        }
        if run(t, i, is_aws_secret_byte) != end {
            return None;
        }
        let key_end = i - 1;
        let key = t.get(key_start(t, key_end, floor)?..key_end)?;
        let sensitive = self.keys.sensitivity(key)?;
        (sensitive.kind == AWS_SECRET_ACCESS_KEY && self.value_kind(sensitive, t.get(i..end)?).is_some()).then_some(
            Found {
                start: i,
                end,
                kind: AWS_SECRET_ACCESS_KEY,
            },
        )
    }
}

/// An AWS secret access key is 40 characters of this alphabet.
const AWS_SECRET_LEN: usize = 40;

fn is_aws_secret_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'/' | b'+' | b'=')
}

/// Past the blanks before `j` (at most 8), not before `floor`.
fn skip_blanks_back(t: &[u8], mut j: usize, floor: usize) -> usize {
    let from = j;
    while j > floor && from - j < 8 && matches!(at(t, j - 1), b' ' | b'\t') {
        j -= 1;
    }
    j
}

fn is_key_byte(b: u8) -> bool {
    is_word(b) || matches!(b, b'-' | b'.')
}

/// Where the key ending at `key_end` starts: a run of word bytes, `-` and `.` (at most 64).
/// `None` when there is no key or it is longer than that.
fn key_start(t: &[u8], key_end: usize, floor: usize) -> Option<usize> {
    let mut start = key_end;
    while start > floor && key_end - start < 64 && is_key_byte(at(t, start - 1)) {
        start -= 1;
    }
    if start == key_end || (start > floor && is_key_byte(at(t, start - 1))) {
        return None;
    }
    Some(start)
}

/// The start of a key of several words (`AWS Secret Access Key`): up to three more runs of
/// letters and digits before the key at `start`, each after a single space, 64 bytes in all.
fn more_key_words(t: &[u8], mut start: usize, key_end: usize, floor: usize) -> usize {
    for _ in 0..3 {
        if !(start > floor + 1 && at(t, start - 1) == b' ' && at(t, start - 2).is_ascii_alphanumeric()) {
            break;
        }
        let mut word = start - 1;
        while word > floor && start - word < 24 && at(t, word - 1).is_ascii_alphanumeric() {
            word -= 1;
        }
        if (word > floor && is_key_byte(at(t, word - 1))) || key_end - word > 64 {
            break;
        }
        start = word;
    }
    start
}

/// `process.env.API_TOKEN || "value"`, `os.environ.get(…) or 'value'`, `$X ?? "value"`:
/// the quoted default after a lookup that starts at `v` and ends at `end` (a dotted name).
/// The default is the value written in the code, so the secret.
fn env_fallback(t: &[u8], v: usize, end: usize) -> Option<(usize, usize)> {
    let lookup = t.get(v..end)?;
    if !lookup.contains(&b'.') && lookup.first() != Some(&b'$') {
        return None;
    }
    let op = run(t, end, |b| b == b' ');
    let rest = t.get(op..)?;
    let len = [&b"||"[..], b"??", b"or"].iter().find(|o| rest.starts_with(o))?.len();
    let q = run(t, op + len, |b| b == b' ');
    let quote = at(t, q);
    if op == end || !matches!(quote, b'"' | b'\'') {
        return None;
    }
    let start = q + 1;
    let close = start + memchr::memchr(quote, bounded(t, start))?;
    Some((start, close))
}

/// The length of a bare value at `v`: up to a blank or a delimiter, at most `limit`.
fn bare_value_len(t: &[u8], v: usize, limit: usize) -> usize {
    let rest = t.get(v..).unwrap_or_default();
    rest.iter()
        .take(limit)
        .position(|&b| {
            b.is_ascii_whitespace()
                || matches!(
                    b,
                    b';' | b'&' | b',' | b'"' | b'\'' | b'<' | b'>' | b'`' | b'(' | b')' | b']' | b'}' | b'\\' | 0
                )
        })
        .unwrap_or(rest.len().min(limit))
}

/// The longest value a `key=value` match masks (a cookie line, a long token).
const VALUE_MAX_BYTES: usize = 8 * 1024;
/// `t[from..]`, at most one byte longer than a value may be.
fn bounded(t: &[u8], from: usize) -> &[u8] {
    let rest = t.get(from..).unwrap_or_default();
    rest.get(..VALUE_MAX_BYTES + 1).unwrap_or(rest)
}

/// Whether a quoted value under a sensitive key can be the secret itself. In free text the
/// quotes are only a guess at where the value ends: `/* "password": " */ UNION … /* " */`
/// would hide the SQL between two quotes from the record and the approver. A value that
/// could end one context and open another (a blank, a line break, a quote of any kind, a
/// comment delimiter, a shell substitution) cannot be validated as a secret, so it is left in
/// clear: `"*/UNION(SELECT(value)FROM(service_config))/*"` needs no blank. A passphrase with
/// spaces is masked only under a JSON key, where the structure says where it ends.
fn quoted_value_ok(value: &[u8]) -> bool {
    value.len() <= VALUE_MAX_BYTES
        && !value
            .iter()
            .any(|&b| b.is_ascii_whitespace() || matches!(b, b'"' | b'\'' | b'`'))
        && ![br"\n", br"\t", br"\r"]
            .iter()
            .any(|s| memmem::find(value, *s).is_some())
}

/// Whether `value` holds a comment delimiter or a shell substitution: text after a key that
/// does, quoted or bare (`password=*/UNION/**/SELECT…/*`), is code, not a secret.
fn switches_context(value: &[u8]) -> bool {
    // No `--`: a line comment ends at a line break, which no value holds.
    [b"/*", b"*/", b"$(", b"${"]
        .iter()
        .any(|s| memmem::find(value, *s).is_some())
}

/// The end of an `Authorization` / `Cookie` value starting at `v`: a scheme and its
/// credentials (token68 or `k=v` parameters after commas), or `name=value` pairs after
/// `;`. Blanks are allowed only after the scheme and after a separator, so the value stops
/// where other text begins instead of taking the rest of the line.
fn header_value_end(t: &[u8], v: usize) -> usize {
    let token =
        |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'+' | b'/' | b'=' | b'-' | b':' | b'%');
    // After a separator comes a parameter or cookie: `name=value`.
    let param = |from: usize| {
        let name = run(t, from, |b| {
            b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.')
        });
        name > from && at(t, name) == b'='
    };
    let mut end = run(t, v, token);
    if end == v {
        return v;
    }
    let mut words = 1;
    loop {
        let sep = at(t, end);
        let after_sep = matches!(sep, b',' | b';');
        let next = if after_sep { end + 1 } else { end };
        let blank = run(t, next, |b| b == b' ');
        // A blank without a separator only after the scheme (the first word).
        if blank > next + 1 || (!after_sep && (blank == next || words > 1)) {
            return end;
        }
        let word_end = run(t, blank, token);
        if word_end == blank || word_end - v > VALUE_MAX_BYTES || (after_sep && !param(blank)) {
            return end;
        }
        end = word_end;
        words += 1;
    }
}

/// `AKIA…` and the other AWS key id prefixes (`ASIA` temporary, `ABIA` STS bearer, `ACCA`
/// context credentials, `A3T…`), then 16 base32 characters that are not a fill
/// (`AKIAXXXXXXXXXXXXXXXX`).
fn aws_key_id(t: &[u8], i: usize) -> Option<usize> {
    let prefix = t.get(i..i + 4)?;
    let known = matches!(
        prefix,
        b"AKIA" | b"ASIA" | b"ABIA" | b"ACCA" | b"AGPA" | b"AIDA" | b"AROA" | b"ANPA" | b"ANVA" | b"AIPA"
    ) || (prefix.starts_with(b"A3T")
        && prefix
            .get(3)
            .is_some_and(|b| b.is_ascii_uppercase() || b.is_ascii_digit()));
    if !known {
        return None;
    }
    let end = i + 20;
    let body = t.get(i + 4..end)?;
    let ok = body.iter().all(|b| matches!(b, b'A'..=b'Z' | b'2'..=b'7')) && !shape::looks_filled(body);
    (ok && !is_word(at(t, end))).then_some(end)
}

/// `AIza` and 35 characters of `[0-9A-Za-z_-]` that are not a fill.
fn google_api_key(t: &[u8], i: usize) -> Option<usize> {
    if !t.get(i..)?.starts_with(b"AIza") {
        return None;
    }
    let end = i + 39;
    let body = t.get(i + 4..end)?;
    let ok = body.iter().all(|&b| is_b64url(b)) && !shape::looks_filled(body);
    (ok && !is_b64url(at(t, end))).then_some(end)
}

/// `ghp_`/`gho_`/`ghu_`/`ghs_`/`ghr_` and 36 (or more) alphanumerics, or a fine-grained
/// `github_pat_…`; not a fill (`ghp_xxxx…`).
fn github_token(t: &[u8], i: usize) -> Option<usize> {
    let rest = t.get(i..)?;
    let (body, min, pred): (usize, usize, fn(u8) -> bool) = if rest.starts_with(b"github_pat_") {
        (i + 11, 22, is_word)
    } else if rest.starts_with(b"gh")
        && matches!(at(t, i + 2), b'p' | b'o' | b'u' | b's' | b'r')
        && at(t, i + 3) == b'_'
    {
        (i + 4, 36, |b: u8| b.is_ascii_alphanumeric())
    } else {
        return None;
    };
    let end = run(t, body, pred);
    let random = t.get(body..end).is_some_and(|b| !shape::looks_filled(b));
    ((min..=255).contains(&(end - body)) && random && !is_word(at(t, end))).then_some(end)
}

/// A Slack token: `xoxb-`, `xoxp-`, `xoxa-`, `xoxr-`, `xoxo-`, `xoxs-`, `xoxe-` (also
/// `xoxe.xoxp-`/`xoxe.xoxb-` configuration tokens) and `xapp-` app tokens, then
/// dash-separated segments that validate (see [`slack_segments_ok`]). `Err` says where to
/// resume: after the last dash read, so that a long dashed run is not read again from each
/// of its words.
fn slack_token(t: &[u8], i: usize) -> Result<usize, usize> {
    let rest = t.get(i..).unwrap_or_default();
    let body = if rest.starts_with(b"xoxe.xox") && matches!(at(t, i + 8), b'b' | b'p') && at(t, i + 9) == b'-' {
        i + 10
    } else if (rest.starts_with(b"xox") && matches!(at(t, i + 3), b'a' | b'b' | b'p' | b'o' | b's' | b'r' | b'e')
        || rest.starts_with(b"xapp"))
        && at(t, i + 4) == b'-'
    {
        i + 5
    } else {
        return Err(i + 1);
    };
    let mut end = run(t, body, |b| b.is_ascii_alphanumeric() || b == b'-');
    let resume = after_last_dash(t, body, end);
    // Cut short by something tokens do not hold (`xoxp-…-####`): not a token.
    if at(t, end.saturating_sub(1)) == b'-' && end > body {
        return Err(resume);
    }
    while end > body && at(t, end - 1) == b'-' {
        end -= 1;
    }
    let segments_ok = t.get(body..end).is_some_and(slack_segments_ok);
    if (10..=512).contains(&(end - body)) && !is_word(at(t, end)) && segments_ok {
        Ok(end)
    } else {
        Err(resume)
    }
}

/// The body of a Slack token: an optional one-digit version, then segments of digits (ids,
/// at least five) and of letters and digits that are not fills, the last at least 8 long;
/// either two segments or more, or one of at least 12 with letters and digits. Placeholders
/// (`xoxb-xxxx-…`) and made-up ones (`xoxb-12345-abcd234`, `xoxp-1234567890`,
/// `xoxp-1234-1234-1234-…`) fail.
fn slack_segments_ok(body: &[u8]) -> bool {
    let mut segments = body.split(|&b| b == b'-').peekable();
    let mut count = 0;
    let mut last: &[u8] = &[];
    let mut first = true;
    while let Some(seg) = segments.next() {
        let numeric = seg.iter().all(u8::is_ascii_digit);
        let version = first && numeric && seg.len() == 1 && segments.peek().is_some();
        first = false;
        if version {
            continue;
        }
        let ok = !seg.is_empty()
            && if numeric {
                seg.len() >= 5
            } else {
                !shape::looks_filled(seg)
            };
        if !ok {
            return false;
        }
        count += 1;
        last = seg;
    }
    let mixed = last.iter().any(u8::is_ascii_alphabetic) && last.iter().any(u8::is_ascii_digit);
    last.len() >= 8 && (count >= 2 || (last.len() >= 12 && mixed))
}

/// Just after the last `-` in `t[from..to]` (or `from`).
fn after_last_dash(t: &[u8], from: usize, to: usize) -> usize {
    t.get(from..to)
        .and_then(|r| memchr::memrchr(b'-', r))
        .map_or(from, |p| from + p + 1)
}

/// The path of a Slack webhook at `j` (just after `hooks.slack.com`): `/services/`,
/// `/workflows/` or `/triggers/`, then at least 20 characters of ids and secret that are not
/// a fill. Returns the URL's end.
fn slack_webhook_path(t: &[u8], j: usize) -> Option<usize> {
    let rest = t.get(j..)?;
    let prefix = [&b"/services/"[..], b"/workflows/", b"/triggers/"]
        .into_iter()
        .find(|p| rest.starts_with(p))?;
    let body = j + prefix.len();
    let end = run(t, body, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'/' | b'+' | b'_' | b'-')
    });
    let path = t.get(body..end)?;
    ((20..=200).contains(&path.len()) && !shape::looks_filled(path)).then_some(end)
}

/// The password of `curl -u user:password` / `curl --user 'user:password'` (also on a
/// continuation line of the command, or the user alone when no password follows and it
/// looks generated: `-u "$API_KEY:"` style keys). `i` is the option's first `-`. Returns the
/// range to mask; placeholders (`$USER:$PASS`, `<user:password>`, `user:pass`) give none.
fn command_line_password(t: &[u8], i: usize, floor: usize) -> Option<(usize, usize)> {
    if i == 0 || !matches!(at(t, i - 1), b' ' | b'\t' | b'\n') {
        return None;
    }
    let rest = t.get(i..)?;
    let v = if rest.starts_with(b"--user") && matches!(at(t, i + 6), b' ' | b'=') {
        run(t, i + 7, |b| b == b' ')
    } else if rest.starts_with(b"-u") {
        match at(t, i + 2) {
            b' ' | b'=' => run(t, i + 3, |b| b == b' '),
            // `-u"user:password"`, `-uuser:password`.
            b'"' | b'\'' => i + 2,
            b if b.is_ascii_alphanumeric() => i + 2,
            _ => return None,
        }
    } else {
        return None;
    };
    if !in_curl_command(t, i, floor) {
        return None;
    }
    // The user: quoted or bare, up to the `:`.
    let (user_start, user_end, colon) = match at(t, v) {
        q @ (b'"' | b'\'') => {
            let close = v + 1 + memchr::memchr(q, t.get(v + 1..t.len().min(v + 258))?)?;
            match memchr::memchr(b':', t.get(v + 1..close)?) {
                // `"user:password"`: the password ends at the closing quote.
                Some(p) => {
                    let (user_end, pass_start) = (v + 1 + p, v + 2 + p);
                    return curl_secret(t, (v + 1, user_end), (pass_start, close));
                }
                None => (v + 1, close, close + 1),
            }
        }
        _ => {
            let end = run(t, v, |b| {
                !b.is_ascii_whitespace() && !matches!(b, b':' | b'"' | b'\'' | 0)
            });
            (v, end, end)
        }
    };
    if at(t, colon) != b':' {
        return None;
    }
    let p = colon + 1;
    let (pass_start, pass_end) = match at(t, p) {
        q @ (b'"' | b'\'') => (p + 1, p + 1 + memchr::memchr(q, t.get(p + 1..t.len().min(p + 258))?)?),
        _ => (
            p,
            run(t, p, |b| !b.is_ascii_whitespace() && !matches!(b, b'"' | b'\'' | 0)),
        ),
    };
    curl_secret(t, (user_start, user_end), (pass_start, pass_end))
}

/// What of a `user:password` pair is secret: the password unless it is a placeholder, or a
/// generated-looking user when the password is empty.
fn curl_secret(t: &[u8], user: (usize, usize), pass: (usize, usize)) -> Option<(usize, usize)> {
    let user_bytes = t.get(user.0..user.1)?;
    let pass_bytes = t.get(pass.0..pass.1)?;
    if pass.1 - pass.0 > 256 || pass_bytes.iter().any(|b| b.is_ascii_whitespace()) {
        return None;
    }
    if pass_bytes.is_empty() {
        return shape::looks_generated(user_bytes).then_some(user);
    }
    let placeholder =
        shape::is_placeholder(pass_bytes) || switches_context(pass_bytes) || user_bytes.first() == Some(&b'<');
    (!placeholder).then_some(pass)
}

/// Whether the option at `i` belongs to a `curl` command: the word `curl` comes before it
/// in the same command (lines continued with `\\` count; a line break, `;`, `|` or `&`
/// ends a command), at most 2 KiB back.
fn in_curl_command(t: &[u8], i: usize, floor: usize) -> bool {
    let from = i.saturating_sub(2048).max(floor);
    let mut j = i;
    while j > from {
        let b = at(t, j - 1);
        let continued =
            j >= 2 && (at(t, j - 2) == b'\\' || (at(t, j - 2) == b'\r' && at(t, j.wrapping_sub(3)) == b'\\'));
        if (b == b'\n' && !continued) || matches!(b, b';' | b'|' | b'&') {
            break;
        }
        j -= 1;
    }
    let segment = t.get(j..i).unwrap_or_default();
    memmem::find_iter(segment, b"curl").any(|p| {
        let before = p.checked_sub(1).and_then(|k| segment.get(k)).copied().unwrap_or(b' ');
        let after = segment.get(p + 4).copied().unwrap_or(b' ');
        !is_word(before) && !is_word(after) && before != b'-'
    })
}

/// `sk_live_…`, `rk_live_…`, `pk_live_…` and their `_test_` and `_prod_` forms, 16+
/// alphanumerics that are not a fill.
fn stripe_key(t: &[u8], i: usize) -> Option<usize> {
    let rest = t.get(i..)?;
    let head = rest.get(..8)?;
    let known =
        matches!(head.get(..3)?, b"sk_" | b"rk_" | b"pk_") && matches!(head.get(3..)?, b"live_" | b"test_" | b"prod_");
    if !known {
        return None;
    }
    let body = i + 8;
    let end = run(t, body, |b| b.is_ascii_alphanumeric());
    let random = t.get(body..end).is_some_and(|b| !shape::looks_filled(b));
    ((16..=255).contains(&(end - body)) && random && !is_word(at(t, end))).then_some(end)
}

/// Longer than any token an identity provider issues.
const JWT_MAX_BYTES: usize = 16 * 1024;
/// The shortest header and claims segments of a JWT-shaped token whose header does not
/// decode (`{"alg":"none"}` alone is 20 characters).
const JWT_SHAPED_MIN_SEGMENT: usize = 18;

/// Three (up to five) base64url segments, the first starting `eyJ` and decoding to a JSON
/// header with `alg`, or both the first two starting `ey` and long enough to be a header
/// and claims (a JWT whose header was mangled or is not JSON is still a bearer credential
/// to whoever holds it). `Err` says where to resume (see [`slack_token`]).
fn jwt(t: &[u8], i: usize) -> Result<usize, usize> {
    if !t.get(i..).is_some_and(|r| r.starts_with(b"ey")) {
        return Err(i + 1);
    }
    let header_end = run(t, i, is_b64url);
    let resume = after_last_dash(t, i, header_end);
    if at(t, header_end) != b'.' {
        return Err(resume);
    }
    let payload_end = run(t, header_end + 1, is_b64url);
    if payload_end == header_end + 1 || at(t, payload_end) != b'.' {
        return Err(resume);
    }
    // The signature may be empty (`alg: none`).
    let mut end = run(t, payload_end + 1, is_b64url);
    let mut segments = 3;
    while segments < 5 && at(t, end) == b'.' && is_b64url(at(t, end + 1)) {
        end = run(t, end + 1, is_b64url);
        segments += 1;
    }
    let header = t.get(i..header_end).unwrap_or_default();
    let header_ok = header.starts_with(b"eyJ") && validate::jwt_header_ok(header);
    let shaped = header.len() >= JWT_SHAPED_MIN_SEGMENT
        && payload_end - header_end > JWT_SHAPED_MIN_SEGMENT
        && t.get(header_end + 1..).is_some_and(|p| p.starts_with(b"ey"))
        && !shape::looks_filled(header);
    if (header_ok || shaped) && end - i <= JWT_MAX_BYTES && !is_b64url(at(t, end)) {
        Ok(end)
    } else {
        Err(resume)
    }
}

/// A JWT encoded once more in base64 (`ZXlK…`, which decodes to `eyJ…`): the whole run of
/// base64, when it decodes to a JWT.
fn jwt_base64(t: &[u8], i: usize) -> Option<usize> {
    if !t.get(i..)?.starts_with(b"ZXlK") {
        return None;
    }
    let end = run(t, i, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'_' | b'-')
    });
    let end = run(t, end, |b| b == b'=');
    if end - i > JWT_MAX_BYTES * 4 / 3 + 4 || end - i < 40 || is_word(at(t, end)) {
        return None;
    }
    let unpadded = t.get(i..end)?;
    let unpadded = unpadded.get(..unpadded.iter().rposition(|&b| b != b'=')? + 1)?;
    let decoded = validate::base64url_decode(unpadded)?;
    (jwt(&decoded, 0) == Ok(decoded.len())).then_some(end)
}

/// A country code, two check digits and the country's number of `[A-Z0-9]`, compact or
/// in groups of four separated by single spaces; mod 97 must be 1.
fn iban(t: &[u8], i: usize) -> Option<usize> {
    let country = [at(t, i), at(t, i + 1)];
    if !country[1].is_ascii_uppercase() || !at(t, i + 2).is_ascii_digit() || !at(t, i + 3).is_ascii_digit() {
        return None;
    }
    let len = validate::iban_length(country)?;
    let mut chars = [0u8; 34];
    let is_char = |b: u8| b.is_ascii_uppercase() || b.is_ascii_digit();
    let mut n = 0;
    let mut j = i;
    let grouped = at(t, i + 4) == b' ';
    while n < len {
        if grouped && n > 0 && n % 4 == 0 {
            if at(t, j) != b' ' {
                return None;
            }
            j += 1;
        }
        let b = at(t, j);
        if !is_char(b) {
            return None;
        }
        *chars.get_mut(n)? = b;
        n += 1;
        j += 1;
    }
    (!is_word(at(t, j)) && validate::iban_checksum_ok(chars.get(..len)?)).then_some(j)
}

/// `AAA-GG-SSSS` with valid area, group and serial.
fn us_ssn(t: &[u8], i: usize) -> Option<usize> {
    let area = digits_at(t, i, 3)?;
    let group = digits_at(t, i + 4, 2)?;
    let serial = digits_at(t, i + 7, 4)?;
    let end = i + 11;
    (at(t, i + 3) == b'-' && at(t, i + 6) == b'-' && number_ends(t, end) && validate::ssn_ok(area, group, serial))
        .then_some(end)
}

/// 13–19 digits, bare or in groups (the first of four digits, the others of three to six)
/// separated by one space or one dash each, that pass [`validate::is_card`]. `Err` holds
/// how far the digits were read, so that a rejected number is not re-read from its
/// middle groups.
fn credit_card(t: &[u8], i: usize) -> Result<usize, usize> {
    let first = run(t, i, |b| b.is_ascii_digit());
    let n = first - i;
    if n >= 13 {
        let digits = t.get(i..first).unwrap_or_default();
        return if number_ends(t, first) && validate::is_card(digits) {
            Ok(first)
        } else {
            Err(first)
        };
    }
    let sep = at(t, first);
    if n != 4 || !matches!(sep, b' ' | b'-') {
        return Err(first);
    }
    let mut digits = [0u8; 19];
    digits
        .get_mut(..4)
        .zip(t.get(i..first))
        .map(|(d, s)| d.copy_from_slice(s))
        .ok_or(first)?;
    let mut total = 4;
    // The end and digit count after each group, to try the longest valid prefix first.
    let mut ends = [(0usize, 0usize); 6];
    let mut groups = 0;
    let mut j = first;
    while groups < ends.len() && at(t, j) == sep && at(t, j + 1).is_ascii_digit() {
        let g_end = run(t, j + 1, |b| b.is_ascii_digit());
        let g = g_end - (j + 1);
        if !(3..=6).contains(&g) || total + g > 19 {
            break;
        }
        let (Some(dst), Some(src)) = (digits.get_mut(total..total + g), t.get(j + 1..g_end)) else {
            break;
        };
        dst.copy_from_slice(src);
        total += g;
        j = g_end;
        if let Some(slot) = ends.get_mut(groups) {
            *slot = (j, total);
        }
        groups += 1;
    }
    for &(end, count) in ends.iter().take(groups).rev() {
        if count >= 13 && number_ends(t, end) && digits.get(..count).is_some_and(validate::is_card) {
            return Ok(end);
        }
    }
    Err(j)
}

/// `555-123-4567` or `555.123.4567`, optionally after `1-`/`1.`/`1 `.
fn na_phone(t: &[u8], i: usize) -> Option<usize> {
    let start = if at(t, i) == b'1' && matches!(at(t, i + 1), b'-' | b'.' | b' ') {
        i + 2
    } else {
        i
    };
    let sep = at(t, start + 3);
    if !matches!(sep, b'-' | b'.') || at(t, start + 7) != sep || !matches!(at(t, start), b'2'..=b'9') {
        return None;
    }
    digits_at(t, start, 3)?;
    digits_at(t, start + 4, 3)?;
    digits_at(t, start + 8, 4)?;
    let end = start + 12;
    number_ends(t, end).then_some(end)
}

/// `(555) 123-4567`, `(555)123-4567`, `(555) 123.4567`, `(555) 123 4567`.
fn paren_phone(t: &[u8], i: usize) -> Option<usize> {
    if i > 0 && is_word(at(t, i - 1)) {
        return None;
    }
    if !matches!(at(t, i + 1), b'2'..=b'9') || at(t, i + 4) != b')' {
        return None;
    }
    digits_at(t, i + 1, 3)?;
    let mut j = i + 5;
    if at(t, j) == b' ' {
        j += 1;
    }
    digits_at(t, j, 3)?;
    if !matches!(at(t, j + 3), b'-' | b'.' | b' ') {
        return None;
    }
    digits_at(t, j + 4, 4)?;
    let end = j + 8;
    number_ends(t, end).then_some(end)
}

/// `+` and 8–15 digits with single spaces, dashes, dots or parentheses between groups.
fn intl_phone(t: &[u8], i: usize) -> Option<usize> {
    if i > 0 && (is_word(at(t, i - 1)) || at(t, i - 1) == b'+') {
        return None;
    }
    if !at(t, i + 1).is_ascii_digit() {
        return None;
    }
    let mut digits = 0;
    let mut seps = 0;
    let mut j = i + 1;
    let mut end = j;
    while j - i < 40 {
        let b = at(t, j);
        if b.is_ascii_digit() {
            digits += 1;
            seps = 0;
            j += 1;
            end = j;
        } else if matches!(b, b' ' | b'-' | b'.' | b'(' | b')') && seps < 2 {
            seps += 1;
            j += 1;
        } else {
            break;
        }
    }
    ((8..=15).contains(&digits) && number_ends(t, end)).then_some(end)
}

/// An e-mail address around the `@` at `i`; the local part may not reach back before
/// `floor`.
fn email(t: &[u8], i: usize, floor: usize) -> Option<Found> {
    let is_local = |b: u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'%' | b'+' | b'-');
    let mut start = i;
    while start > floor && is_local(at(t, start - 1)) {
        if i - start >= 64 {
            return None; // Longer than a local part may be.
        }
        start -= 1;
    }
    while at(t, start) == b'.' && start < i {
        start += 1;
    }
    if start == i || at(t, i - 1) == b'.' {
        return None;
    }
    // The user info of a URL (`scheme://user:pass@host`), not an address: the URL's
    // password is the URL detector's to mask or to leave.
    if start > 0 && matches!(at(t, start - 1), b':' | b'/') {
        let from = start.saturating_sub(256).max(floor);
        let before = t.get(from..start).unwrap_or_default();
        let in_authority = memmem::rfind(before, b"://").is_some_and(|p| {
            !before
                .get(p + 3..)
                .unwrap_or_default()
                .iter()
                .any(|&b| b.is_ascii_whitespace() || matches!(b, b'/' | b'"' | b'\''))
        });
        if in_authority {
            return None;
        }
    }
    // The domain: labels of `[A-Za-z0-9-]` joined by dots, the last one letters only.
    let mut end = i + 1;
    let mut labels = 0;
    let mut last_label = (0, 0);
    loop {
        let label_end = run(t, end, |b| b.is_ascii_alphanumeric() || b == b'-');
        if label_end == end || label_end - end > 63 || end - i > 253 {
            break;
        }
        labels += 1;
        last_label = (end, label_end);
        if at(t, label_end) == b'.' && at(t, label_end + 1).is_ascii_alphanumeric() {
            end = label_end + 1;
        } else {
            end = label_end;
            break;
        }
    }
    let tld = t.get(last_label.0..last_label.1)?;
    let ok = labels >= 2 && tld.len() >= 2 && tld.iter().all(u8::is_ascii_alphabetic) && !is_word(at(t, end));
    ok.then_some(Found {
        start,
        end,
        kind: EMAIL,
    })
}

/// A PEM block is at most this long: an 8192-bit RSA key is about 6.5 KB.
const PEM_MAX_BYTES: usize = 16 * 1024;
/// Lines of a PEM body are 64 (RFC 7468) or 70 (OpenSSH) characters; this allows some slack.
const PEM_MAX_LINE: usize = 128;
/// Fewer base64 characters than this are no key (the shortest, Ed25519, has about 120).
const PEM_MIN_BODY: usize = 16;

/// `-----BEGIN … PRIVATE KEY-----`, then a body that validates as a key (optional RFC 1421
/// headers, then lines of base64 of one width, the last maybe shorter, padding only at the
/// end), then the matching END line. A key cut at the end of the text is masked through
/// the end; a body of at least two full lines followed by anything else, through its last
/// line. Anything else between the markers (SQL, prose) means this is not a key, and
/// nothing is masked: a detector must never hide text that is not the secret.
fn private_key(t: &[u8], i: usize) -> Option<usize> {
    let rest = t.get(i..)?;
    if !rest.starts_with(b"-----BEGIN ") {
        return None;
    }
    let label_start = i + 11;
    let label_end = run(t, label_start, |b| {
        b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' '
    });
    let label = t.get(label_start..label_end)?;
    if label.len() > 64 || memmem::find(label, b"PRIVATE KEY").is_none() || !t.get(label_end..)?.starts_with(b"-----") {
        return None;
    }
    let mut marker = Vec::with_capacity(label.len() + 14);
    marker.extend_from_slice(b"-----END ");
    marker.extend_from_slice(label);
    marker.extend_from_slice(b"-----");
    let limit = i.saturating_add(PEM_MAX_BYTES);
    // The BEGIN line ends there (a flattened key has a blank in place of each line break).
    let body = label_end + 5;
    let mut j = pem_headers(
        t,
        pem_break(t, body).or_else(|| (at(t, body) == b' ').then_some(body + 1))?,
    );
    let mut shape = PemShape::default();
    let (mut body_end, mut full_end) = (j, j);
    loop {
        if t.get(j..).is_some_and(|r| r.starts_with(&marker)) {
            let end = j + marker.len();
            return (shape.is_key() && end <= limit).then_some(end);
        }
        if j >= t.len() {
            return shape.is_key().then_some(body_end);
        }
        let chunk_end = run(t, j, |b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
        if chunk_end > limit {
            return None; // Longer than any key.
        }
        // An OpenPGP armor checksum (`=8xQN`) may close the body, right before the END line.
        let checksum = at(t, j) == b'=' && chunk_end - j == 5 && shape.is_key();
        if let Some(next) = pem_break(t, chunk_end).filter(|_| checksum)
            && t.get(next..).is_some_and(|r| r.starts_with(&marker))
        {
            j = next;
            continue;
        }
        if chunk_end == j || !shape.push(t.get(j..chunk_end).unwrap_or_default()) {
            break;
        }
        body_end = chunk_end;
        if shape.last == shape.width {
            full_end = chunk_end;
        }
        j = pem_break(t, chunk_end).unwrap_or(if at(t, chunk_end) == b' ' {
            chunk_end + 1
        } else {
            chunk_end
        });
    }
    // A key cut short and followed by other text: its full lines are still secret (a
    // shorter line before the text could be a word of it).
    (shape.is_key() && shape.full_lines() >= 2 && shape.width >= 40).then_some(full_end)
}

/// The widths seen in a PEM body so far.
#[derive(Default)]
struct PemShape {
    lines: usize,
    /// The first line's width, which every line but the last must have.
    width: usize,
    last: usize,
    total: usize,
    padded: bool,
}

impl PemShape {
    /// Adds a line of base64; `false` if it does not fit the body's shape.
    fn push(&mut self, line: &[u8]) -> bool {
        let pad = line.iter().rev().take_while(|&&b| b == b'=').count();
        if self.padded || pad > 2 || line.iter().rev().skip(pad).any(|&b| b == b'=') {
            return false;
        }
        if self.lines == 0 {
            self.width = line.len();
        } else if self.width > PEM_MAX_LINE || self.last != self.width || line.len() > self.width {
            return false;
        }
        self.lines += 1;
        self.last = line.len();
        self.total += line.len();
        self.padded = pad > 0;
        true
    }

    fn is_key(&self) -> bool {
        self.lines > 0 && self.total >= PEM_MIN_BODY
    }

    fn full_lines(&self) -> usize {
        self.lines - usize::from(self.last != self.width)
    }
}

/// Past a line break at `j` (after trailing blanks; a JSON-escaped `\n` or `\r\n` counts)
/// and the next line's indentation; `None` when no line ends at `j`.
fn pem_break(t: &[u8], j: usize) -> Option<usize> {
    let j = run(t, j, |b| matches!(b, b' ' | b'\t'));
    let rest = t.get(j..)?;
    let len = [&b"\r\n"[..], b"\n", b"\r", br"\r\n", br"\n"]
        .iter()
        .find(|nl| rest.starts_with(nl))?
        .len();
    Some(run(t, j + len, |b| matches!(b, b' ' | b'\t')))
}

/// Past the RFC 1421 headers of an encrypted key (`Proc-Type: 4,ENCRYPTED`, `DEK-Info: …`)
/// and the blank line after them; `j` itself when there are none.
fn pem_headers(t: &[u8], j: usize) -> usize {
    let mut k = j;
    for _ in 0..4 {
        let name_end = run(t, k, |b| b.is_ascii_alphanumeric() || b == b'-');
        if name_end == k || at(t, name_end) != b':' {
            break;
        }
        let value = run(t, name_end + 1, |b| b == b' ');
        let value_end = run(t, value, |b| b.is_ascii_alphanumeric() || matches!(b, b',' | b'-'));
        match pem_break(t, value_end) {
            Some(next) if value_end > value && value_end - value <= PEM_MAX_LINE => k = next,
            _ => return j,
        }
    }
    if k == j {
        return j;
    }
    pem_break(t, k).unwrap_or(j)
}
