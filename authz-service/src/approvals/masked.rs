//! What masking changed in a call's arguments, told to approvers: the kind of each masked
//! value, how long it was (characters of the original) and where it was (the JSON pointer
//! of the argument, the character offset in the string).
//!
//! Worked out by comparing the clear arguments with the masked ones, so it holds whatever
//! the detectors do: every masked value is a `[MASKED:kind…]` placeholder in the masked
//! text, and the text around placeholders is the original's.

use serde::Serialize;
use serde_json::Value;

/// The most spans one approval lists; the rest are only counted.
pub const MAX_SPANS: usize = 50;

const PLACEHOLDER: &str = "[MASKED:";

/// One masked value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MaskedSpan {
    /// The kind the masker named (`email`, `aws_access_key`, ...).
    pub kind: String,
    /// RFC 6901 pointer of the argument that holds it (`""`: the arguments themselves).
    pub pointer: String,
    /// JSON text inside that string argument: the pointer within it.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub inner_pointer: Option<String>,
    /// Where the masked value started in the string, in characters (0 for a whole value).
    pub offset: Option<usize>,
    /// Characters of the original value (`None` where two masked values touch and the
    /// border between them cannot be told).
    pub length: Option<usize>,
}

impl MaskedSpan {
    /// The span as the `requested` record holds it.
    pub fn to_event(&self) -> gatehouse_core::events::MaskedSpan {
        gatehouse_core::events::MaskedSpan {
            kind: self.kind.clone(),
            pointer: self.pointer.clone(),
            inner_pointer: self.inner_pointer.clone(),
            offset: self.offset.map(|n| n as u64),
            length: self.length.map(|n| n as u64),
        }
    }
}

/// What masking changed in one call's arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct MaskReport {
    pub spans: Vec<MaskedSpan>,
    /// Masked values beyond [`MAX_SPANS`], not listed.
    #[serde(default)]
    pub more: usize,
}

impl MaskReport {
    /// Compares the clear arguments with what the masker made of them.
    pub fn of(clear: &Value, masked: &Value) -> Self {
        let mut report = Self::default();
        if clear != masked {
            report.walk(clear, masked, &mut String::new(), None);
            if report.spans.is_empty() && report.more == 0 {
                // Changed, but not into placeholders we recognize: still say so.
                report.push(MaskedSpan {
                    kind: "masked".into(),
                    pointer: String::new(),
                    inner_pointer: None,
                    offset: None,
                    length: None,
                });
            }
        }
        report
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty() && self.more == 0
    }

    pub fn total(&self) -> usize {
        self.spans.len() + self.more
    }

    /// The kinds masked, each once, in order of appearance.
    pub fn kinds(&self) -> Vec<&str> {
        let mut kinds: Vec<&str> = Vec::new();
        for span in &self.spans {
            if !kinds.contains(&span.kind.as_str()) {
                kinds.push(&span.kind);
            }
        }
        kinds
    }

    /// One plain sentence for approvers (webhook text, logs): caller-chosen text never
    /// appears in it, only kinds, pointers and numbers.
    pub fn sentence(&self) -> String {
        let mut parts: Vec<String> = self
            .spans
            .iter()
            .take(5)
            .map(|s| {
                let mut at = if s.pointer.is_empty() {
                    "the arguments".to_owned()
                } else {
                    format!("argument {}", s.pointer)
                };
                if let Some(inner) = &s.inner_pointer {
                    at.push_str(&format!(" (JSON at {inner})"));
                }
                let length = s
                    .length
                    .map_or("unknown length".to_owned(), |n| format!("{n} characters"));
                match s.offset {
                    Some(offset) => format!("{} in {at} at character {offset}, {length}", s.kind),
                    None => format!("{} in {at}, {length}", s.kind),
                }
            })
            .collect();
        let unlisted = self.total() - parts.len();
        if unlisted > 0 {
            parts.push(format!("{unlisted} more"));
        }
        format!("{} value(s) masked: {}", self.total(), parts.join("; "))
    }

    fn push(&mut self, span: MaskedSpan) {
        if self.spans.len() < MAX_SPANS {
            self.spans.push(span);
        } else {
            self.more += 1;
        }
    }

    fn walk(&mut self, clear: &Value, masked: &Value, pointer: &mut String, inner: Option<&str>) {
        if clear == masked {
            return;
        }
        let at = |p: &str| match inner {
            Some(outer) => (outer.to_owned(), Some(p.to_owned())),
            None => (p.to_owned(), None),
        };
        match (clear, masked) {
            (Value::Object(c), Value::Object(m)) => {
                for (key, mv) in m {
                    let len = pointer.len();
                    pointer.push('/');
                    pointer.push_str(&key.replace('~', "~0").replace('/', "~1"));
                    match c.get(key) {
                        Some(cv) => self.walk(cv, mv, pointer, inner),
                        None => self.whole(mv, None, pointer, inner),
                    }
                    pointer.truncate(len);
                }
            }
            (Value::Array(c), Value::Array(m)) => {
                for (i, mv) in m.iter().enumerate() {
                    let len = pointer.len();
                    pointer.push('/');
                    pointer.push_str(&i.to_string());
                    match c.get(i) {
                        Some(cv) => self.walk(cv, mv, pointer, inner),
                        None => self.whole(mv, None, pointer, inner),
                    }
                    pointer.truncate(len);
                }
            }
            (Value::String(c), Value::String(m)) => {
                // JSON inside a string is masked inside and written again.
                if inner.is_none()
                    && let (Ok(ci), Ok(mi)) = (serde_json::from_str::<Value>(c), serde_json::from_str::<Value>(m))
                    && (ci.is_object() || ci.is_array())
                {
                    let outer = pointer.clone();
                    self.walk(&ci, &mi, &mut String::new(), Some(&outer));
                    return;
                }
                let (pointer, inner_pointer) = at(pointer);
                for (kind, offset, length) in spans_in(c, m) {
                    self.push(MaskedSpan {
                        kind,
                        pointer: pointer.clone(),
                        inner_pointer: inner_pointer.clone(),
                        offset,
                        length,
                    });
                }
            }
            // A number (a card number) or anything under a sensitive key: the whole value.
            (c, m) => self.whole(m, Some(c), pointer, inner),
        }
    }

    /// A value masked whole (`clear` is what it was, when known).
    fn whole(&mut self, masked: &Value, clear: Option<&Value>, pointer: &str, inner: Option<&str>) {
        let Value::String(m) = masked else {
            return;
        };
        let (pointer, inner_pointer) = match inner {
            Some(outer) => (outer.to_owned(), Some(pointer.to_owned())),
            None => (pointer.to_owned(), None),
        };
        let length = clear.map(|c| match c {
            Value::String(s) => s.chars().count(),
            other => other.to_string().chars().count(),
        });
        self.push(MaskedSpan {
            kind: placeholders(m).first().map_or("masked".into(), |p| p.kind.clone()),
            pointer,
            inner_pointer,
            offset: Some(0),
            length,
        });
    }
}

struct Placeholder {
    kind: String,
    start: usize,
    end: usize,
}

/// The placeholders in masked text, by byte range.
fn placeholders(masked: &str) -> Vec<Placeholder> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(found) = masked.get(from..).and_then(|rest| rest.find(PLACEHOLDER)) {
        let start = from + found;
        let Some(close) = masked.get(start..).and_then(|rest| rest.find(']')) else {
            break;
        };
        let end = start + close + 1;
        let body = masked.get(start + PLACEHOLDER.len()..end - 1).unwrap_or_default();
        let kind = body.split(':').next().unwrap_or_default();
        if !kind.is_empty()
            && kind
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        {
            out.push(Placeholder {
                kind: kind.to_owned(),
                start,
                end,
            });
        }
        from = end;
    }
    out
}

/// The masked spans of one string: (kind, offset in characters, length in characters).
/// The masked text is the clear text with some spans replaced by placeholders; the text
/// between placeholders is found in the clear text in order.
fn spans_in(clear: &str, masked: &str) -> Vec<(String, Option<usize>, Option<usize>)> {
    let found = placeholders(masked);
    let chars = |bytes: usize| clear.get(..bytes).map_or(bytes, |s| s.chars().count());
    let mut out = Vec::new();
    // Byte position in `clear` where the current masked value starts, and whether it is
    // known (not after two masked values that touch).
    let mut pos = found.first().map_or(0, |p| p.start);
    let mut known = true;
    if clear.get(..pos) != masked.get(..pos) {
        // Not the shape masking leaves: say the whole string was changed.
        return vec![("masked".into(), Some(0), Some(clear.chars().count()))];
    }
    for (i, p) in found.iter().enumerate() {
        let literal_end = found.get(i + 1).map_or(masked.len(), |next| next.start);
        let literal = masked.get(p.end..literal_end).unwrap_or_default();
        let is_last = i + 1 == found.len();
        let end = if is_last {
            clear
                .len()
                .checked_sub(literal.len())
                .filter(|e| *e >= pos && clear.get(*e..) == Some(literal))
        } else if literal.is_empty() {
            None
        } else {
            // The next piece of kept text, after at least one character of masked value.
            let from = clear
                .get(pos..)
                .and_then(|r| r.chars().next())
                .map_or(pos, |c| pos + c.len_utf8());
            clear.get(from..).and_then(|r| r.find(literal)).map(|at| from + at)
        };
        let offset = known.then(|| chars(pos));
        match end {
            Some(end) => {
                let value = clear.get(pos..end).unwrap_or_default();
                let placeholder = masked.get(p.start..p.end).unwrap_or_default();
                // A placeholder already in the clear text is left as it is, not masked.
                if !known || value != placeholder {
                    let length = known.then(|| chars(end) - chars(pos));
                    out.push((p.kind.clone(), offset, length));
                }
                pos = end + literal.len();
                known = true;
            }
            None => {
                // Two masked values touch (or the text does not line up): where this one
                // ends is unknown, and so is where the next one starts.
                out.push((p.kind.clone(), offset, None));
                known = false;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn span(kind: &str, pointer: &str, offset: usize, length: usize) -> MaskedSpan {
        MaskedSpan {
            kind: kind.into(),
            pointer: pointer.into(),
            inner_pointer: None,
            offset: Some(offset),
            length: Some(length),
        }
    }

    #[test]
    fn unchanged_arguments_report_nothing() {
        let args = json!({"sql": "select 1", "n": [1, 2]});
        assert!(MaskReport::of(&args, &args).is_empty());
    }

    #[test]
    fn each_masked_span_has_its_kind_place_and_length() {
        let clear = json!({"q": {"sql": "select 1 -- a@b.io UNION select secret -- c@d.org x"}});
        let masked = json!({"q": {"sql": "select 1 -- [MASKED:email] UNION select secret -- [MASKED:email:…d.org] x"}});
        let report = MaskReport::of(&clear, &masked);
        assert_eq!(
            report.spans,
            vec![span("email", "/q/sql", 12, 6), span("email", "/q/sql", 42, 7)]
        );
        assert!(
            report
                .sentence()
                .starts_with("2 value(s) masked: email in argument /q/sql at character 12, 6 characters")
        );
    }

    #[test]
    fn offsets_and_lengths_count_characters_not_bytes() {
        let clear = json!(["é🙂 tok ghp_x ü"]);
        let masked = json!(["é🙂 tok [MASKED:github_token] ü"]);
        assert_eq!(
            MaskReport::of(&clear, &masked).spans,
            vec![span("github_token", "/0", 7, 5)]
        );
    }

    #[test]
    fn whole_values_json_in_strings_and_odd_keys_are_located() {
        let clear = json!({"a/b~": {"password": 1234, "card": 4111111111111111u64}, "doc": "{\"k\": \"x a@b.io\"}"});
        let masked = json!({"a/b~": {"password": "[MASKED:password]", "card": "[MASKED:credit_card]"},
                            "doc": "{\"k\":\"x [MASKED:email]\"}"});
        let report = MaskReport::of(&clear, &masked);
        assert_eq!(report.total(), 3);
        assert!(report.spans.contains(&span("password", "/a~1b~0/password", 0, 4)));
        assert!(report.spans.contains(&span("credit_card", "/a~1b~0/card", 0, 16)));
        let inner = report.spans.iter().find(|s| s.pointer == "/doc").unwrap();
        assert_eq!(
            (inner.inner_pointer.as_deref(), inner.offset, inner.length),
            (Some("/k"), Some(2), Some(6))
        );
    }

    #[test]
    fn touching_spans_and_foreign_changes_are_still_reported() {
        let touching = MaskReport::of(&json!("a@b.iob@c.io"), &json!("[MASKED:email][MASKED:email]"));
        assert_eq!(touching.total(), 2);
        assert_eq!(touching.spans[0].length, None);
        // A placeholder the caller wrote is not a masked value.
        let kept = MaskReport::of(&json!("[MASKED:email] x@y.io"), &json!("[MASKED:email] [MASKED:email]"));
        assert_eq!(kept.spans, vec![span("email", "", 15, 6)]);
        // Changed in a way masking does not: reported as a change, never as nothing.
        assert!(!MaskReport::of(&json!("abc"), &json!("xyz")).is_empty());
        assert!(!MaskReport::of(&json!({"a": 1}), &json!({"a": 2})).is_empty());
    }

    #[test]
    fn the_list_is_bounded_and_counts_the_rest() {
        let clear = json!((0..MAX_SPANS + 7).map(|i| format!("u{i}@x.io")).collect::<Vec<_>>());
        let masked = json!((0..MAX_SPANS + 7).map(|_| "[MASKED:email]").collect::<Vec<_>>());
        let report = MaskReport::of(&clear, &masked);
        assert_eq!(
            (report.spans.len(), report.more, report.total()),
            (MAX_SPANS, 7, MAX_SPANS + 7)
        );
    }
}
