//! The compiled rules and the walks over text and JSON.
//!
//! Text goes through [`Detectors::scan`] (one pass for every built-in kind, see
//! `detect.rs`) and then each custom regex; overlaps between the two are resolved
//! earliest-first, longest on a tie. JSON is walked value by value: field rules by key,
//! the text detectors on every string and every object key, JSON inside a string parsed
//! and walked in turn, numbers checked for card numbers whatever their notation, and only
//! strictly base64 blobs skipped.

use std::borrow::Cow;
use std::fmt;

use hmac::{Hmac, Mac};
use regex::{Regex, RegexBuilder};
use serde_json::{Map, Number, Value};
use sha2::Sha256;

use super::detect::{Detectors, Found};
use super::gitleaks;
use super::keys::{SensitiveKeys, normalize_config_key};
use super::kinds::{BUILTIN_COUNT, BUILTIN_KINDS, CREDIT_CARD, Kind, builtin_kind};
use super::strict::has_duplicate_keys;
use super::{MaskConfig, MaskConfigError, MaskCounts, Reveal, RevealPlan, Style};
use super::{shape, validate};

/// What [`Masker::mask_json`] made of a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonMasked {
    /// Valid JSON with nothing to mask and no key twice: the input may be used as is.
    Unchanged,
    /// Valid JSON, re-serialized with the masked values.
    Changed(Vec<u8>),
    /// Not JSON (or not UTF-8): the caller should fall back to [`Masker::mask_bytes_as_text`].
    NotJson,
}

/// The names of the built-in kinds, in a stable order.
pub fn builtin_kinds() -> &'static [&'static str] {
    &BUILTIN_KINDS
}

/// Bounds on a custom rule's compiled size, so that a pattern like `(a{1000}){1000}` is
/// refused at configuration time instead of costing memory in every worker.
const CUSTOM_REGEX_SIZE_LIMIT: usize = 1 << 20;
/// How deep JSON inside a string inside JSON is parsed; deeper text is masked as text.
/// Each level needs its quotes escaped again, so real payloads stop at two or three.
const MAX_NESTED_JSON: u8 = 4;

/// The longest match a custom rule may have. A rule like `BEGIN.*END` would mask whatever
/// lies between its delimiters (an approver would not see a query's real tail), so rules
/// whose matches are unbounded or longer than this are refused.
const CUSTOM_MATCH_MAX_BYTES: usize = 1024;

/// A `blob` or image `data` value up to this long is masked as text even when it is base64:
/// a short value could be a secret in the base64 alphabet (an AWS key id, a card number),
/// and scanning it costs nothing. Longer base64 is binary content and is skipped.
const BLOB_SCAN_MAX_BYTES: usize = 256;

/// Whether `value` is strictly base64 (standard alphabet, padded to a multiple of four,
/// nothing else): only such a value is binary content that masking would corrupt.
pub(super) fn is_strict_base64(value: &str) -> bool {
    let b = value.as_bytes();
    let body = b.strip_suffix(b"==").or_else(|| b.strip_suffix(b"=")).unwrap_or(b);
    !b.is_empty()
        && b.len().is_multiple_of(4)
        && body
            .iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'+' | b'/'))
}

/// The digits of a JSON number's integer part, however it is written (`-4111…`,
/// `4111….0`, `4111…e0`), and whether they are exactly the ones written: a float beyond
/// 2^53 has lost digits, so what the text said cannot be read back.
fn integer_digits(n: &Number) -> Option<(String, bool)> {
    if let Some(v) = n.as_u64() {
        return Some((v.to_string(), true));
    }
    if let Some(v) = n.as_i64() {
        return Some((v.unsigned_abs().to_string(), true));
    }
    // The integer part: `4111….5` still shows the card's digits.
    let f = n.as_f64()?.abs().trunc();
    // 1e19 and above have more digits than any card.
    (f.is_finite() && f < 1e19).then(|| (format!("{f:.0}"), f <= 9_007_199_254_740_992.0))
}

/// `key` when `map` does not hold it yet, else `key#2`, `key#3`, …: a masked key that meets
/// another key must not take that key's value.
fn free_key(map: &Map<String, Value>, key: String) -> String {
    if !map.contains_key(&key) {
        return key;
    }
    (2..)
        .map(|n| format!("{key}#{n}"))
        .find(|k| !map.contains_key(k))
        .unwrap_or(key)
}

type HmacSha256 = Hmac<Sha256>;

/// Whether every match of `pattern` is at most [`CUSTOM_MATCH_MAX_BYTES`] long.
fn custom_match_bounded(pattern: &str) -> bool {
    regex_syntax::Parser::new()
        .parse(pattern)
        .ok()
        .and_then(|hir| hir.properties().maximum_len())
        .is_some_and(|max| max <= CUSTOM_MATCH_MAX_BYTES)
}

#[derive(Clone)]
struct CustomRule {
    name: String,
    regex: Regex,
}

/// The compiled masking rules. Cheap to share; every method takes `&self`.
#[derive(Clone)]
pub struct Masker {
    detectors: Detectors,
    custom: Vec<CustomRule>,
    /// Imported gitleaks rules (kinds after the custom ones) and their ids.
    gitleaks: gitleaks::Compiled,
    gitleaks_ids: Vec<String>,
    /// The style of each kind, indexed by kind.
    styles: Vec<Style>,
    /// The keyed hash of the `token` style, `None` without a `token_key`.
    token: Option<HmacSha256>,
}

impl fmt::Debug for Masker {
    // Hand-written so that the token key can never end up in a log.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Masker")
            .field("kinds", &self.kinds())
            .field("styles", &self.styles)
            .field("token_key", &self.token.as_ref().map(|_| "<set>"))
            .finish_non_exhaustive()
    }
}

impl Default for Masker {
    /// The built-in rules (no token key: the `token` style is not available).
    fn default() -> Self {
        Self {
            detectors: Detectors {
                enabled: [true; BUILTIN_COUNT],
                keys: SensitiveKeys::default(),
            },
            custom: Vec::new(),
            gitleaks: gitleaks::Compiled::new(&[], BUILTIN_COUNT, &mut Vec::new()),
            gitleaks_ids: Vec::new(),
            styles: vec![Style::Redact; BUILTIN_COUNT],
            token: None,
        }
    }
}

/// `text[start..end]`. Match offsets are on char boundaries (they sit on ASCII bytes or
/// at the ends of the text, or come from a `str` regex); the lossy fallback only makes
/// that a non-panicking fact.
fn slice(text: &str, start: usize, end: usize) -> Cow<'_, str> {
    match text.get(start..end) {
        Some(s) => Cow::Borrowed(s),
        None => String::from_utf8_lossy(text.as_bytes().get(start..end).unwrap_or_default()),
    }
}

/// Earliest first; on the same start the longest; then drop what overlaps a match kept
/// before it.
fn resolve_overlaps(out: &mut Vec<Found>) {
    out.sort_unstable_by(|a, b| a.start.cmp(&b.start).then(b.end.cmp(&a.end)).then(a.kind.cmp(&b.kind)));
    let mut kept_end = 0;
    out.retain(|f| {
        let keep = f.start >= kept_end;
        if keep {
            kept_end = f.end;
        }
        keep
    });
}

/// `text` with its JSON string escapes decoded, and for each byte of the result (and its
/// end) the offset in `text` where it comes from; `None` when there is nothing to decode.
/// Invalid escapes stay as they are; a lone surrogate becomes U+FFFD.
fn unescape(text: &str) -> Option<(String, Vec<usize>)> {
    let bytes = text.as_bytes();
    let first = memchr::memchr(b'\\', bytes)?;
    let mut out = String::with_capacity(text.len());
    let mut map = Vec::with_capacity(text.len() + 1);
    let push = |out: &mut String, map: &mut Vec<usize>, c: char, from: usize| {
        out.push(c);
        map.resize(out.len(), from);
    };
    out.push_str(text.get(..first)?);
    map.extend(0..first);
    let mut i = first;
    let mut decoded_any = false;
    while i < bytes.len() {
        let b = bytes.get(i).copied().unwrap_or(0);
        if b != b'\\' {
            let c = text.get(i..)?.chars().next()?;
            push(&mut out, &mut map, c, i);
            i += c.len_utf8();
            continue;
        }
        let simple = match bytes.get(i + 1) {
            Some(b'"') => Some('"'),
            Some(b'\\') => Some('\\'),
            Some(b'/') => Some('/'),
            Some(b'b') => Some('\u{8}'),
            Some(b'f') => Some('\u{c}'),
            Some(b'n') => Some('\n'),
            Some(b'r') => Some('\r'),
            Some(b't') => Some('\t'),
            _ => None,
        };
        if let Some(c) = simple {
            push(&mut out, &mut map, c, i);
            i += 2;
            decoded_any = true;
            continue;
        }
        let hex4 = |at: usize| -> Option<u32> {
            let h = text.get(at..at + 4)?;
            if !h.bytes().all(|b| b.is_ascii_hexdigit()) {
                return None;
            }
            u32::from_str_radix(h, 16).ok()
        };
        match (bytes.get(i + 1), hex4(i + 2)) {
            (Some(b'u'), Some(hi)) => {
                let pair = (0xD800..0xDC00).contains(&hi)
                    && bytes.get(i + 6) == Some(&b'\\')
                    && bytes.get(i + 7) == Some(&b'u');
                let (c, len) = match (pair, hex4(i + 8)) {
                    (true, Some(lo)) if (0xDC00..0xE000).contains(&lo) => {
                        (char::from_u32(0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00)), 12)
                    }
                    _ => (char::from_u32(hi), 6),
                };
                push(&mut out, &mut map, c.unwrap_or('\u{FFFD}'), i);
                i += len;
                decoded_any = true;
            }
            _ => {
                push(&mut out, &mut map, '\\', i);
                i += 1;
            }
        }
    }
    map.push(text.len());
    decoded_any.then_some((out, map))
}

/// Whether `value` is one of our placeholders, which is never masked again.
fn is_placeholder(value: &str) -> bool {
    value.starts_with("[MASKED:") && value.ends_with(']')
}

/// Custom kind names appear in placeholders, counts and headers: keep them plain.
fn valid_custom_name(name: &str) -> bool {
    name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// JSON texts inside strings that one walk already found clean, at their nesting depth.
/// MCP answers often carry the same JSON twice (a tool result's `content` text and its
/// `structuredContent`): the second copy is not parsed and walked again. The answer for a
/// text depends only on the text, the depth and the caller's reveal, which one walk keeps.
#[derive(Default)]
struct CleanJson(Vec<(u8, String)>);

impl CleanJson {
    /// Texts shorter than this cost less to walk again than to keep.
    const MIN_LEN: usize = 64;
    /// Bounds the copies one walk keeps (and the comparisons per nested text).
    const MAX: usize = 16;

    fn contains(&self, nest: u8, text: &str) -> bool {
        text.len() >= Self::MIN_LEN && self.0.iter().any(|(n, t)| *n == nest && t == text)
    }

    fn insert(&mut self, nest: u8, text: &str) {
        if text.len() >= Self::MIN_LEN && self.0.len() < Self::MAX {
            self.0.push((nest, text.to_owned()));
        }
    }
}

impl Masker {
    /// Compiles the rules; every problem (bad regex, unknown kind, missing token key) is
    /// listed at once.
    pub fn new(config: &MaskConfig) -> Result<Self, MaskConfigError> {
        let mut problems = Vec::new();

        let mut enabled = [true; BUILTIN_COUNT];
        for (n, name) in config.disabled.iter().enumerate() {
            match builtin_kind(name).and_then(|k| enabled.get_mut(k)) {
                Some(on) => *on = false,
                None if config.gitleaks.iter().any(|r| r.id == *name) => {}
                None => problems.push(format!(
                    "disabled[{n}]: {name:?} is not a built-in kind or an imported gitleaks rule"
                )),
            }
        }

        let mut extra_keys = Vec::new();
        for (n, key) in config.sensitive_keys.iter().enumerate() {
            match normalize_config_key(key) {
                Ok(k) => extra_keys.push(k),
                Err(why) => problems.push(format!("sensitive_keys[{n}]: {key:?} {why}")),
            }
        }

        let mut custom: Vec<CustomRule> = Vec::new();
        for (n, rule) in config.custom.iter().enumerate() {
            let name = rule.name.as_str();
            let name_ok = if name.is_empty() {
                problems.push(format!("custom[{n}].name: is empty"));
                false
            } else if !valid_custom_name(name) {
                problems.push(format!(
                    "custom[{n}].name: {name:?} must be at most 64 of A-Z, a-z, 0-9, `_`, `-`, `.`"
                ));
                false
            } else if builtin_kind(name).is_some() {
                problems.push(format!("custom[{n}].name: {name:?} is a built-in kind"));
                false
            } else if config.custom.iter().take(n).any(|r| r.name == name) {
                problems.push(format!("custom[{n}].name: {name:?} is used by an earlier rule"));
                false
            } else {
                true
            };
            let regex = if rule.pattern.is_empty() {
                problems.push(format!("custom[{n}].pattern: is empty"));
                None
            } else {
                match RegexBuilder::new(&rule.pattern)
                    .size_limit(CUSTOM_REGEX_SIZE_LIMIT)
                    .dfa_size_limit(CUSTOM_REGEX_SIZE_LIMIT)
                    .build()
                {
                    Ok(_) if !custom_match_bounded(&rule.pattern) => {
                        problems.push(format!(
                            "custom[{n}].pattern: can match more than {CUSTOM_MATCH_MAX_BYTES} bytes; bound every \
                             repetition (`{{1,64}}` instead of `+` or `*`) so that a match cannot hide the text \
                             between two delimiters"
                        ));
                        None
                    }
                    Ok(regex) => Some(regex),
                    Err(e) => {
                        let why = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
                        problems.push(format!("custom[{n}].pattern: {why}"));
                        None
                    }
                }
            };
            if let (true, Some(regex)) = (name_ok, regex) {
                custom.push(CustomRule {
                    name: name.to_owned(),
                    regex,
                });
            }
        }

        // Imported rules, minus the disabled ones; their ids are kinds like custom names.
        let imported: Vec<&gitleaks::GitleaksRule> = config
            .gitleaks
            .iter()
            .filter(|r| !config.disabled.contains(&r.id))
            .collect();
        for (n, rule) in config.gitleaks.iter().enumerate() {
            let id = rule.id.as_str();
            if !valid_custom_name(id) || id.is_empty() {
                problems.push(format!(
                    "gitleaks[{n}].id: {id:?} must be 1 to 64 of A-Z, a-z, 0-9, `_`, `-`, `.`"
                ));
            } else if builtin_kind(id).is_some() || config.custom.iter().any(|r| r.name == id) {
                problems.push(format!(
                    "gitleaks[{id}].id: is also a built-in kind or a custom rule's name"
                ));
            } else if config.gitleaks.iter().take(n).any(|r| r.id == id) {
                problems.push(format!("gitleaks[{id}].id: is used by an earlier rule"));
            }
        }
        let gitleaks = gitleaks::Compiled::new(imported.iter().copied(), BUILTIN_COUNT + custom.len(), &mut problems);
        let gitleaks_ids: Vec<String> = imported.iter().map(|r| r.id.clone()).collect();

        let known = |kind: &str| {
            builtin_kind(kind).is_some()
                || config.custom.iter().any(|r| r.name == kind)
                || config.gitleaks.iter().any(|r| r.id == kind)
        };
        for kind in config.styles.keys() {
            if !known(kind) {
                problems.push(format!("styles.{kind}: unknown kind"));
            }
        }

        let wants_token = config.default_style == Style::Token || config.styles.values().any(|s| *s == Style::Token);
        let token = match config.token_key.as_deref().map(|k| hex::decode(k.trim())) {
            None if wants_token => {
                problems.push("token_key: the `token` style needs a token_key (hex, at least 16 bytes)".to_owned());
                None
            }
            None => None,
            Some(Err(_)) => {
                problems.push("token_key: is not hex".to_owned());
                None
            }
            Some(Ok(key)) if key.len() < 16 => {
                problems.push(format!("token_key: is {} bytes, at least 16 are needed", key.len()));
                None
            }
            Some(Ok(key)) => match HmacSha256::new_from_slice(&key) {
                Ok(mac) => Some(mac),
                Err(_) => {
                    problems.push("token_key: cannot be used as an HMAC key".to_owned());
                    None
                }
            },
        };

        if !problems.is_empty() {
            return Err(MaskConfigError { problems });
        }
        let style_of = |name: &str| config.styles.get(name).copied().unwrap_or(config.default_style);
        let styles = BUILTIN_KINDS
            .iter()
            .copied()
            .chain(custom.iter().map(|r| r.name.as_str()))
            .chain(gitleaks_ids.iter().map(String::as_str))
            .map(style_of)
            .collect();
        Ok(Self {
            detectors: Detectors {
                enabled,
                keys: SensitiveKeys::with_extra(extra_keys),
            },
            custom,
            gitleaks,
            gitleaks_ids,
            styles,
            token,
        })
    }

    /// Every kind this masker can report: the built-in ones plus the custom rules'.
    /// Disabled built-in kinds are left out.
    pub fn kinds(&self) -> Vec<String> {
        BUILTIN_KINDS
            .iter()
            .zip(self.detectors.enabled)
            .filter(|(_, on)| *on)
            .map(|(k, _)| (*k).to_owned())
            .chain(self.custom.iter().map(|r| r.name.clone()))
            .chain(self.gitleaks_ids.iter().cloned())
            .collect()
    }

    fn kind_name(&self, kind: Kind) -> &str {
        if let Some(name) = BUILTIN_KINDS.get(kind) {
            return name;
        }
        let extra = kind - BUILTIN_COUNT;
        match self.custom.get(extra) {
            Some(rule) => rule.name.as_str(),
            None => self
                .gitleaks_ids
                .get(extra - self.custom.len())
                .map_or("masked", String::as_str),
        }
    }

    fn enabled(&self, kind: Kind) -> bool {
        self.detectors.enabled.get(kind).copied().unwrap_or(true)
    }

    /// Every match in `text`, sorted and not overlapping: in the text as it is, and in the
    /// text with its JSON escapes decoded (`\u0041KIA…` is an AWS key to whoever decodes it),
    /// up to [`MAX_NESTED_JSON`] times for text escaped again and again.
    fn find(&self, text: &str, out: &mut Vec<Found>) {
        self.find_plain(text, out);
        let mut view = Cow::Borrowed(text);
        // Where each byte of `view` (and its end) comes from in `text`.
        let mut origin: Option<Vec<usize>> = None;
        for _ in 0..MAX_NESTED_JSON {
            let Some((decoded, map)) = unescape(&view) else {
                break;
            };
            let map: Vec<usize> = match &origin {
                None => map,
                Some(outer) => map
                    .iter()
                    .map(|&k| outer.get(k).copied().unwrap_or(text.len()))
                    .collect(),
            };
            let mut found = Vec::new();
            self.find_plain(&decoded, &mut found);
            let before = out.len();
            out.extend(found.into_iter().filter_map(|f| {
                let (start, end) = (*map.get(f.start)?, *map.get(f.end)?);
                (start < end).then_some(Found {
                    start,
                    end,
                    kind: f.kind,
                })
            }));
            if out.len() > before {
                resolve_overlaps(out);
            }
            view = Cow::Owned(decoded);
            origin = Some(map);
        }
    }

    /// Every match in `text` as it is, sorted and not overlapping.
    fn find_plain(&self, text: &str, out: &mut Vec<Found>) {
        self.detectors.scan(text.as_bytes(), out);
        let before = out.len();
        for (n, rule) in self.custom.iter().enumerate() {
            out.extend(
                rule.regex
                    .find_iter(text)
                    .filter(|m| m.start() < m.end())
                    .map(|m| Found {
                        start: m.start(),
                        end: m.end(),
                        kind: BUILTIN_COUNT + n,
                    }),
            );
        }
        if !self.gitleaks.is_empty() {
            self.gitleaks.find(text, out);
        }
        if out.len() > before {
            resolve_overlaps(out);
        }
    }

    /// The kind of the one match that spans all of `value` (surrounding white space aside).
    fn whole_value_kind(&self, value: &str) -> Option<Kind> {
        let trimmed = value.trim();
        let mut found = Vec::new();
        self.find(trimmed, &mut found);
        match found.as_slice() {
            [only] if only.start == 0 && only.end == trimmed.len() => Some(only.kind),
            _ => None,
        }
    }

    /// Writes the placeholder for `value` of `kind`. It never contains `"`, `\` or a
    /// control character, so it can go into JSON strings and SSE lines as is.
    fn write_replacement(&self, kind: Kind, value: &str, out: &mut String) {
        let name = self.kind_name(kind);
        out.push_str("[MASKED:");
        out.push_str(name);
        match self.styles.get(kind).copied().unwrap_or_default() {
            Style::Redact => {}
            Style::Last4 => {
                let mut tail: Vec<char> = value.chars().rev().take(4).collect();
                tail.reverse();
                let long_enough = value.chars().nth(7).is_some();
                let safe = tail.iter().all(|c| !matches!(c, '"' | '\\' | ']') && !c.is_control());
                if long_enough && safe {
                    out.push_str(":\u{2026}");
                    out.extend(tail);
                }
            }
            Style::Token => {
                if let Some(mac) = &self.token {
                    let mut mac = mac.clone();
                    mac.update(name.as_bytes());
                    mac.update(b":");
                    mac.update(value.as_bytes());
                    let tag = mac.finalize().into_bytes();
                    out.push_str(":tok_");
                    out.push_str(&hex::encode(tag.get(..10).unwrap_or_default()));
                }
            }
        }
        out.push(']');
    }

    fn replacement(&self, kind: Kind, value: &str) -> String {
        let mut out = String::with_capacity(32);
        self.write_replacement(kind, value, &mut out);
        out
    }

    /// Masks free text. Returns the input borrowed when nothing was found.
    pub fn mask_text<'a>(&self, text: &'a str, reveal: &Reveal, counts: &mut MaskCounts) -> Cow<'a, str> {
        let mut found = Vec::new();
        self.find(text, &mut found);
        if found.is_empty() {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        let mut pos = 0;
        let mut changed = false;
        for f in found {
            let name = self.kind_name(f.kind);
            if reveal.contains(name) {
                continue;
            }
            let value = slice(text, f.start, f.end);
            if is_placeholder(&value) {
                continue; // Masked before (a record masked again, a URL's password).
            }
            out.push_str(&slice(text, pos, f.start));
            self.write_replacement(f.kind, &value, &mut out);
            counts.add(name, 1);
            pos = f.end;
            changed = true;
        }
        if !changed {
            return Cow::Borrowed(text);
        }
        out.push_str(&slice(text, pos, text.len()));
        Cow::Owned(out)
    }

    /// Masks any JSON value in place: every string (text that is itself JSON is masked
    /// inside and re-serialized), values under sensitive keys whatever they are, and not
    /// base64 blobs. Returns whether anything changed.
    pub fn mask_value(&self, value: &mut Value, reveal: &Reveal, counts: &mut MaskCounts) -> bool {
        self.walk(value, reveal, counts, 0, &mut CleanJson::default())
    }

    fn walk(
        &self,
        value: &mut Value,
        reveal: &Reveal,
        counts: &mut MaskCounts,
        nest: u8,
        clean: &mut CleanJson,
    ) -> bool {
        match value {
            Value::String(s) => self.mask_string(s, reveal, counts, nest, clean),
            Value::Number(n) => match self.mask_card_number(n, reveal, counts) {
                Some(masked) => {
                    *value = Value::String(masked);
                    true
                }
                None => false,
            },
            Value::Array(items) => {
                let mut changed = false;
                for item in items {
                    changed |= self.walk(item, reveal, counts, nest, clean);
                }
                changed
            }
            Value::Object(map) => self.walk_object(map, reveal, counts, nest, clean),
            Value::Bool(_) | Value::Null => false,
        }
    }

    fn walk_object(
        &self,
        map: &mut Map<String, Value>,
        reveal: &Reveal,
        counts: &mut MaskCounts,
        nest: u8,
        clean: &mut CleanJson,
    ) -> bool {
        // Base64 payloads: image and audio content, resource blobs. Masking would corrupt
        // them, so they are skipped, but only when they are long strict base64: anything
        // else in those fields is text like any other.
        let media = matches!(map.get("type").and_then(Value::as_str), Some("image" | "audio"));
        let resource = map.contains_key("uri");
        let mut changed = false;
        for (key, value) in map.iter_mut() {
            let blob = (media && key == "data") || (resource && key == "blob");
            if blob
                && value
                    .as_str()
                    .is_some_and(|v| v.len() > BLOB_SCAN_MAX_BYTES && is_strict_base64(v))
            {
                continue;
            }
            changed |= self.walk_entry(key, value, reveal, counts, nest, clean);
        }
        // Keys after the values: the field rule reads the key as it came.
        self.mask_keys(map, reveal, counts) | changed
    }

    /// Masks the keys of `map` as text. A masked key that meets another key is suffixed
    /// (`#2`, …) rather than dropping either value.
    fn mask_keys(&self, map: &mut Map<String, Value>, reveal: &Reveal, counts: &mut MaskCounts) -> bool {
        let mut found = Vec::new();
        if !map.keys().any(|k| {
            found.clear();
            self.find(k, &mut found);
            !found.is_empty()
        }) {
            return false;
        }
        let mut changed = false;
        for (key, value) in std::mem::take(map) {
            let key = match self.mask_text(&key, reveal, counts) {
                Cow::Owned(masked) => {
                    changed = true;
                    free_key(map, masked)
                }
                Cow::Borrowed(_) => free_key(map, key),
            };
            map.insert(key, value);
        }
        changed
    }

    /// One object member: the field rule if the key is sensitive, else the walk.
    fn walk_entry(
        &self,
        key: &str,
        value: &mut Value,
        reveal: &Reveal,
        counts: &mut MaskCounts,
        nest: u8,
        clean: &mut CleanJson,
    ) -> bool {
        let Some(sensitive) = self.detectors.keys.sensitivity(key.as_bytes()) else {
            return self.walk(value, reveal, counts, nest, clean);
        };
        let kind = sensitive.kind;
        if !self.enabled(kind) || reveal.contains(self.kind_name(kind)) {
            return self.walk(value, reveal, counts, nest, clean);
        }
        if sensitive.always {
            return self.mask_all(value, kind, reveal, counts);
        }
        // A key that only sometimes holds a secret (`credentials`, `auth`): a string that
        // looks generated is one; anything else is walked like any value.
        match value {
            Value::String(s) if shape::looks_generated(s.as_bytes()) => self.mask_all(value, kind, reveal, counts),
            _ => self.walk(value, reveal, counts, nest, clean),
        }
    }

    /// The field rule: every string and number under a sensitive key, however deep.
    fn mask_all(&self, value: &mut Value, kind: Kind, reveal: &Reveal, counts: &mut MaskCounts) -> bool {
        let masked = match value {
            Value::String(s) if s.is_empty() || is_placeholder(s) => return false,
            Value::String(s) => {
                // Named by what it is when a detector recognizes the whole value (a GitHub
                // token under `github_token`), so the record says more than "a secret".
                let kind = self.whole_value_kind(s).unwrap_or(kind);
                counts.add(self.kind_name(kind), 1);
                *value = Value::String(self.replacement(kind, s));
                return true;
            }
            Value::Number(n) => self.replacement(kind, &n.to_string()),
            Value::Array(items) => {
                let mut changed = false;
                for item in items {
                    changed |= self.mask_all(item, kind, reveal, counts);
                }
                return changed;
            }
            Value::Object(map) => {
                let mut changed = false;
                for item in map.values_mut() {
                    changed |= self.mask_all(item, kind, reveal, counts);
                }
                return self.mask_keys(map, reveal, counts) | changed;
            }
            Value::Bool(_) | Value::Null => return false,
        };
        counts.add(self.kind_name(kind), 1);
        *value = Value::String(masked);
        true
    }

    /// A card number written as a JSON number (database rows do that), in any notation.
    fn mask_card_number(&self, n: &Number, reveal: &Reveal, counts: &mut MaskCounts) -> Option<String> {
        let name = self.kind_name(CREDIT_CARD);
        if !self.enabled(CREDIT_CARD) || reveal.contains(name) {
            return None;
        }
        let (digits, exact) = integer_digits(n)?;
        // A float that lost digits may have been a card when written: fail closed.
        let card = (13..=19).contains(&digits.len()) && (!exact || validate::is_card(digits.as_bytes()));
        if !card {
            return None;
        }
        counts.add(name, 1);
        Some(self.replacement(CREDIT_CARD, &digits))
    }

    fn mask_string(
        &self,
        s: &mut String,
        reveal: &Reveal,
        counts: &mut MaskCounts,
        nest: u8,
        clean: &mut CleanJson,
    ) -> bool {
        let trimmed = s.trim_start();
        let nested = nest < MAX_NESTED_JSON && (trimmed.starts_with('{') || trimmed.starts_with('['));
        if nested && clean.contains(nest, s) {
            return false;
        }
        if nested && let Ok(mut inner) = serde_json::from_str::<Value>(s) {
            let mut inner_counts = MaskCounts::default();
            // With a key twice, the text goes out as read (see `strict`), not as it came.
            if !self.walk(&mut inner, reveal, &mut inner_counts, nest + 1, clean) && !has_duplicate_keys(s.as_bytes()) {
                clean.insert(nest, s);
                return false;
            }
            if let Ok(text) = serde_json::to_string(&inner) {
                counts.merge(&inner_counts);
                *s = text;
                return true;
            }
        }
        match self.mask_text(s, reveal, counts) {
            Cow::Owned(masked) => {
                *s = masked;
                true
            }
            Cow::Borrowed(_) => false,
        }
    }

    /// Masks one JSON-RPC message (or a batch) in place: every member, `jsonrpc`, `id` and
    /// `method` included (an upstream chooses the id of its answers and can put anything in
    /// it). Returns whether anything changed.
    pub fn mask_message(&self, message: &mut Value, reveal: &Reveal, counts: &mut MaskCounts) -> bool {
        match message {
            Value::Array(items) => {
                let mut changed = false;
                for item in items {
                    changed |= self.mask_message(item, reveal, counts);
                }
                changed
            }
            other => self.walk(other, reveal, counts, 0, &mut CleanJson::default()),
        }
    }

    /// Masks a body that should be a JSON-RPC message (or batch).
    pub fn mask_json(&self, body: &[u8], reveal: &Reveal, counts: &mut MaskCounts) -> JsonMasked {
        self.mask_json_for(body, &RevealPlan::uniform(reveal.clone()), counts)
    }

    /// Masks a body that should be a JSON-RPC message (or batch), each message with the
    /// kinds `plan` reveals to it. JSON with a key twice is never [`JsonMasked::Unchanged`]:
    /// what goes out is the masked re-serialization of what was read.
    pub fn mask_json_for(&self, body: &[u8], plan: &RevealPlan, counts: &mut MaskCounts) -> JsonMasked {
        let Ok(mut value) = serde_json::from_slice::<Value>(body) else {
            return JsonMasked::NotJson;
        };
        let is_message = |v: &Value| v.as_object().is_some_and(|m| m.contains_key("jsonrpc"));
        let message = match &value {
            Value::Array(items) => !items.is_empty() && items.iter().all(is_message),
            other => is_message(other),
        };
        let changed = match &mut value {
            Value::Array(items) if message => {
                let mut changed = false;
                for item in items {
                    let reveal = plan.for_message(item);
                    changed |= self.mask_message(item, reveal, counts);
                }
                changed
            }
            one if message => {
                let reveal = plan.for_message(one);
                self.mask_message(one, reveal, counts)
            }
            other => self.mask_value(other, plan.for_other(), counts),
        };
        if !changed && !has_duplicate_keys(body) {
            return JsonMasked::Unchanged;
        }
        let mut bytes = Vec::with_capacity(body.len() + body.len() / 8);
        match serde_json::to_writer(&mut bytes, &value) {
            Ok(()) => JsonMasked::Changed(bytes),
            Err(_) => JsonMasked::NotJson,
        }
    }

    /// Masks bytes as text; invalid UTF-8 is replaced with U+FFFD (never passed through).
    /// `None` when the bytes are valid UTF-8 and nothing was found.
    pub fn mask_bytes_as_text(&self, body: &[u8], reveal: &Reveal, counts: &mut MaskCounts) -> Option<Vec<u8>> {
        match String::from_utf8_lossy(body) {
            Cow::Borrowed(text) => match self.mask_text(text, reveal, counts) {
                Cow::Owned(masked) => Some(masked.into_bytes()),
                Cow::Borrowed(_) => None,
            },
            Cow::Owned(text) => Some(self.mask_text(&text, reveal, counts).into_owned().into_bytes()),
        }
    }
}
