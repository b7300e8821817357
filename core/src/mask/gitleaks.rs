//! Rules imported from a gitleaks configuration (`masking.gitleaks` in `gatehouse.yaml`):
//! each rule's regex, the capture group that is the secret, its keywords, its entropy
//! threshold and its allowlists, matched as gitleaks matches them and masked under the
//! rule's id.
//!
//! The service reads the TOML file into [`GitleaksRule`]s (they travel to the filter inside
//! the masking configuration); [`Compiled`] holds them ready to match. A text is first run
//! through one Aho-Corasick automaton over every rule's keywords (case-insensitive, as
//! gitleaks does), and only the rules whose keywords occur in it (and the rules without
//! keywords) run their regexes: 200 rules cost little more than the few that apply. In a
//! long text a rule runs on the lines around its keywords only ([`WINDOW_BYTES`]).
//!
//! What gitleaks does that has no meaning here is left out and said so by the service when
//! it loads the file: rules on file paths, allowlists on paths or commits, rules that need
//! other rules' findings nearby.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use regex::{Regex, RegexBuilder};
use serde::{Deserialize, Serialize};

use super::detect::Found;
use super::kinds::Kind;
use super::shape;

/// A gitleaks rule as the masking configuration carries it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitleaksRule {
    /// The rule's `id`: the kind its matches are masked and counted as.
    pub id: String,
    pub regex: String,
    /// The capture group that is the secret; 0: the first group that matched anything,
    /// or the whole match when the regex has no groups.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub secret_group: usize,
    /// A match whose secret has this many bits of entropy per character or fewer is no
    /// secret (0: no threshold).
    #[serde(default, skip_serializing_if = "Entropy::is_zero")]
    pub entropy: Entropy,
    /// The rule runs only on text that holds one of these (case-insensitive); none: always.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keywords: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowlists: Vec<GitleaksAllowlist>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Bits of entropy per character (a finite number, not below 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Entropy(pub f64);

// The service refuses a threshold that is not a finite number, so equality is total.
impl Eq for Entropy {}

impl Entropy {
    fn is_zero(&self) -> bool {
        self.0 == 0.0
    }
}

/// What a finding is allowed by: regexes (on the secret, the whole match or its line) and
/// stop words (in the secret, lower-cased), any of them (`all: false`, gitleaks' `OR`) or
/// every kind given (`AND`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitleaksAllowlist {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regexes: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stopwords: Vec<String>,
    #[serde(default)]
    pub target: AllowTarget,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

/// What an allowlist's regexes are tested against.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllowTarget {
    #[default]
    Secret,
    Match,
    Line,
}

/// A secret longer than this is not masked: a rule whose group can span more would hide
/// the text between two delimiters from the trail and the approver.
const SECRET_MAX_BYTES: usize = 1024;
/// Bounds on each compiled regex, as for custom rules.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

#[derive(Clone)]
struct Allowlist {
    regexes: Option<Regex>,
    stopwords: Vec<String>,
    target: AllowTarget,
    all: bool,
}

impl Allowlist {
    /// Whether this allowlist lets the finding go: `secret` inside `matched` inside `line`.
    fn allows(&self, secret: &str, matched: &str, line: &str) -> bool {
        let on = match self.target {
            AllowTarget::Secret => secret,
            AllowTarget::Match => matched,
            AllowTarget::Line => line,
        };
        let regex = self.regexes.as_ref().map(|r| r.is_match(on));
        let stop = (!self.stopwords.is_empty()).then(|| {
            let lower = secret.to_ascii_lowercase();
            self.stopwords.iter().any(|w| lower.contains(w.as_str()))
        });
        let checks = [regex, stop].into_iter().flatten();
        if self.all {
            let mut any = false;
            for allowed in checks {
                if !allowed {
                    return false;
                }
                any = true;
            }
            any
        } else {
            checks.into_iter().any(|allowed| allowed)
        }
    }
}

#[derive(Clone)]
struct Rule {
    regex: Regex,
    secret_group: usize,
    entropy: f64,
    allowlists: Vec<Allowlist>,
    kind: Kind,
}

/// The rules compiled, with the keyword automaton.
#[derive(Clone)]
pub(crate) struct Compiled {
    rules: Vec<Rule>,
    /// Keyword automaton; pattern `p` belongs to rule `owners[p]`.
    keywords: Option<AhoCorasick>,
    owners: Vec<usize>,
    /// Rules without keywords: they always run.
    always: Vec<usize>,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("rules", &self.rules.len())
            .finish_non_exhaustive()
    }
}

/// `pattern` with Go's (RE2's) meaning of `\w`, `\d`, `\s` and `\b`: ASCII only, where
/// Rust's `regex` would match every Unicode letter, digit and space. Besides matching what
/// gitleaks matches, it keeps rules small: `(?i)[\w.-]{0,50}` over Unicode classes compiles
/// to megabytes.
pub(crate) fn ascii_classes(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars().peekable();
    // Inside a bracketed class: where it started in `out`, to tell a leading `]` (literal).
    let mut class: Option<usize> = None;
    while let Some(c) = chars.next() {
        match (c, class) {
            ('\\', _) => {
                let Some(e) = chars.next() else {
                    out.push(c);
                    break;
                };
                let inside = class.is_some();
                let replacement = match (e, inside) {
                    ('w', false) => "[0-9A-Za-z_]",
                    ('W', false) => "[^0-9A-Za-z_]",
                    ('d', false) => "[0-9]",
                    ('D', false) => "[^0-9]",
                    ('s', false) => "[\\t\\n\\f\\r ]",
                    ('S', false) => "[^\\t\\n\\f\\r ]",
                    ('b', false) => "(?-u:\\b)",
                    ('B', false) => "(?-u:\\B)",
                    ('w', true) => "0-9A-Za-z_",
                    ('d', true) => "0-9",
                    ('s', true) => "\\t\\n\\f\\r ",
                    _ => "",
                };
                if replacement.is_empty() {
                    out.push(c);
                    out.push(e);
                } else {
                    out.push_str(replacement);
                }
            }
            ('[', None) => {
                out.push(c);
                if chars.peek() == Some(&'^') {
                    out.push('^');
                    chars.next();
                }
                class = Some(out.len());
                // A `]` right at the start is a literal.
                if chars.peek() == Some(&']') {
                    out.push(']');
                    chars.next();
                }
            }
            ('[', Some(_)) if chars.peek() == Some(&':') => {
                // A POSIX class (`[[:alnum:]]`): copy through its `:]`.
                out.push(c);
                while let Some(p) = chars.next() {
                    out.push(p);
                    if p == ':' && chars.peek() == Some(&']') {
                        out.push(']');
                        chars.next();
                        break;
                    }
                }
            }
            (']', Some(_)) => {
                out.push(c);
                class = None;
            }
            _ => out.push(c),
        }
    }
    out
}

fn build(pattern: &str) -> Result<Regex, String> {
    RegexBuilder::new(&ascii_classes(pattern))
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| e.to_string().split_whitespace().collect::<Vec<_>>().join(" "))
}

/// One regex matching any of `patterns` (each in its own group-free alternation), or none.
fn any_of(patterns: &[String]) -> Result<Option<Regex>, String> {
    if patterns.is_empty() {
        return Ok(None);
    }
    for p in patterns {
        build(p)?;
    }
    let joined: Vec<String> = patterns.iter().map(|p| format!("(?:{p})")).collect();
    build(&joined.join("|")).map(Some)
}

impl Compiled {
    /// Compiles `rules` (their kinds numbered from `first_kind`); every problem is named by
    /// the rule's id.
    pub(crate) fn new<'a>(
        rules: impl IntoIterator<Item = &'a GitleaksRule>,
        first_kind: Kind,
        problems: &mut Vec<String>,
    ) -> Self {
        let mut compiled = Vec::new();
        let mut keywords: Vec<String> = Vec::new();
        let mut owners = Vec::new();
        let mut always = Vec::new();
        for (n, rule) in rules.into_iter().enumerate() {
            let at = format!("gitleaks[{}]", rule.id);
            let regex = match build(&rule.regex) {
                Ok(regex) => regex,
                Err(why) => {
                    problems.push(format!("{at}.regex: {why}"));
                    continue;
                }
            };
            if rule.secret_group >= regex.captures_len() {
                problems.push(format!(
                    "{at}.secretGroup: {} but the regex has {} group(s)",
                    rule.secret_group,
                    regex.captures_len() - 1
                ));
                continue;
            }
            if !rule.entropy.0.is_finite() || rule.entropy.0 < 0.0 {
                problems.push(format!("{at}.entropy: must be a number of bits, 0 or more"));
                continue;
            }
            let mut allowlists = Vec::new();
            for (k, a) in rule.allowlists.iter().enumerate() {
                match any_of(&a.regexes) {
                    Ok(regexes) => allowlists.push(Allowlist {
                        regexes,
                        stopwords: a.stopwords.iter().map(|w| w.to_ascii_lowercase()).collect(),
                        target: a.target,
                        all: a.all,
                    }),
                    Err(why) => problems.push(format!("{at}.allowlists[{k}].regexes: {why}")),
                }
            }
            let index = compiled.len();
            let words: Vec<&String> = rule.keywords.iter().filter(|k| !k.is_empty()).collect();
            if words.is_empty() {
                always.push(index);
            }
            for word in words {
                keywords.push(word.to_ascii_lowercase());
                owners.push(index);
            }
            compiled.push(Rule {
                regex,
                secret_group: rule.secret_group,
                entropy: rule.entropy.0,
                allowlists,
                kind: first_kind + n,
            });
        }
        let automaton = if keywords.is_empty() {
            None
        } else {
            match AhoCorasickBuilder::new()
                .ascii_case_insensitive(true)
                .match_kind(MatchKind::Standard)
                .build(&keywords)
            {
                Ok(ac) => Some(ac),
                Err(e) => {
                    problems.push(format!("gitleaks: the keywords cannot be compiled: {e}"));
                    None
                }
            }
        };
        Self {
            rules: compiled,
            keywords: automaton,
            owners,
            always,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Appends every finding in `text` (unsorted; they may overlap).
    pub(crate) fn find(&self, text: &str, out: &mut Vec<Found>) {
        // For each rule to run, the windows of `text` to run it on: all of a short text; in
        // a long one, the lines around its keywords (see [`WINDOW_BYTES`]).
        let mut windows: Vec<Vec<(usize, usize)>> = vec![Vec::new(); self.rules.len()];
        let whole = (0, text.len());
        for &r in &self.always {
            if let Some(w) = windows.get_mut(r) {
                w.push(whole);
            }
        }
        if let Some(ac) = &self.keywords {
            // Overlapping: a keyword inside another must still wake its own rule.
            for m in ac.find_overlapping_iter(text) {
                let Some(w) = self
                    .owners
                    .get(m.pattern().as_usize())
                    .and_then(|&r| windows.get_mut(r))
                else {
                    continue;
                };
                let window = if text.len() <= 4 * WINDOW_BYTES {
                    whole
                } else {
                    window_around(text, m.start(), m.end())
                };
                match w.last_mut() {
                    // Hits come in order: a window that reaches the last one extends it.
                    Some(last) if window.0 <= last.1 => last.1 = last.1.max(window.1),
                    _ => w.push(window),
                }
            }
        }
        for (rule, spans) in self.rules.iter().zip(&windows) {
            for &(from, to) in spans {
                let Some(part) = text.get(from..to) else { continue };
                rule.find_in(text, part, from, out);
            }
        }
    }
}

impl Rule {
    /// This rule's findings in `part`, which starts at byte `offset` of `text`.
    fn find_in(&self, text: &str, part: &str, offset: usize, out: &mut Vec<Found>) {
        for caps in self.regex.captures_iter(part) {
            let Some(whole) = caps.get(0) else { continue };
            let secret = if self.secret_group > 0 {
                caps.get(self.secret_group)
            } else {
                caps.iter().skip(1).flatten().find(|g| !g.is_empty()).or(Some(whole))
            };
            let Some(secret) = secret.filter(|s| !s.is_empty() && s.len() <= SECRET_MAX_BYTES) else {
                continue;
            };
            if self.entropy > 0.0 && shape::entropy(secret.as_str().as_bytes()) <= self.entropy {
                continue;
            }
            let line = line_around(text, offset + whole.start(), offset + whole.end());
            if self
                .allowlists
                .iter()
                .any(|a| a.allows(secret.as_str(), whole.as_str(), line))
            {
                continue;
            }
            out.push(Found {
                start: offset + secret.start(),
                end: offset + secret.end(),
                kind: self.kind,
            });
        }
    }
}

/// In a long text a rule runs on the lines within this many bytes either side of each of
/// its keywords, not on all of it: a rule's match holds or sits next to its keyword (a
/// secret is at most [`SECRET_MAX_BYTES`]), and a 1 MB answer that says `token` once must
/// not cost every `token` rule a pass over the whole megabyte. Windows start and end at
/// line breaks, so `^`, `$` and `\b` see what they would in the whole text.
const WINDOW_BYTES: usize = 4096;

/// From the start of the line `WINDOW_BYTES` before `start` to the end of the line
/// `WINDOW_BYTES` after `end`. (Line breaks are ASCII, so the ends are char boundaries.)
fn window_around(text: &str, start: usize, end: usize) -> (usize, usize) {
    let lo = start.saturating_sub(WINDOW_BYTES);
    let hi = end.saturating_add(WINDOW_BYTES).min(text.len());
    line_bounds(text, lo, hi)
}

/// The line(s) of `text` holding `start..end`.
fn line_around(text: &str, start: usize, end: usize) -> &str {
    let (from, to) = line_bounds(text, start, end);
    text.get(from..to).unwrap_or(text)
}

/// Where the line holding byte `start` begins and where the line holding `end` ends.
fn line_bounds(text: &str, start: usize, end: usize) -> (usize, usize) {
    let bytes = text.as_bytes();
    let from = bytes
        .get(..start)
        .and_then(|b| memchr::memrchr(b'\n', b))
        .map_or(0, |p| p + 1);
    let to = bytes
        .get(end..)
        .and_then(|b| memchr::memchr(b'\n', b))
        .map_or(text.len(), |p| end + p);
    (from, to)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(id: &str, regex: &str, keywords: &[&str]) -> GitleaksRule {
        GitleaksRule {
            id: id.to_owned(),
            regex: regex.to_owned(),
            secret_group: 0,
            entropy: Entropy(0.0),
            keywords: keywords.iter().map(|k| (*k).to_owned()).collect(),
            allowlists: Vec::new(),
        }
    }

    fn found(c: &Compiled, text: &str) -> Vec<(usize, usize, Kind)> {
        let mut out = Vec::new();
        c.find(text, &mut out);
        out.iter().map(|f| (f.start, f.end, f.kind)).collect()
    }

    #[test]
    fn the_first_group_that_matched_is_the_secret() {
        let mut problems = Vec::new();
        let rules = [
            rule("acme-key", r"(?i)acme[_-]?key\s*=\s*([a-z0-9]{16})", &["acme"]),
            rule("bare", r"zz_[a-z]{4}", &[]),
        ];
        let c = Compiled::new(&rules, 100, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        let text = "ACME_KEY = abcd1234efgh5678 and zz_wxyz";
        assert_eq!(found(&c, text), [(11, 27, 100), (32, 39, 101)]);
    }

    #[test]
    fn keywords_gate_the_rules() {
        let mut problems = Vec::new();
        let rules = [rule("needs-kw", r"[a-f0-9]{8}", &["hexkey"])];
        let c = Compiled::new(&rules, 7, &mut problems);
        assert!(found(&c, "deadbeef").is_empty(), "no keyword, no match");
        assert_eq!(found(&c, "HEXKEY deadbeef"), [(7, 15, 7)]);
    }

    #[test]
    fn a_long_text_runs_a_rule_only_around_its_keywords() {
        let mut problems = Vec::new();
        let rules = [rule("kw", r"(?m)^secret=([a-z0-9]{12})$", &["secret="])];
        let c = Compiled::new(&rules, 3, &mut problems);
        let filler = "lorem ipsum dolor sit amet\n".repeat(2000);
        let text = format!("{filler}secret=q7zm2lrx4t6p\n{filler}é\nsecret=a1b2c3d4e5f6\n{filler}");
        let found = found(&c, &text);
        assert_eq!(found.len(), 2, "{found:?}");
        for (start, end, _) in found {
            assert!(text[start..end].len() == 12 && text[..start].ends_with("secret="));
        }
        let (from, to) = window_around(&text, filler.len(), filler.len() + 7);
        assert!(from > 0 && to < text.len() && text[from..to].contains("secret=q7zm"));
        assert!(text[..from].ends_with('\n') && text[to..].starts_with('\n'));
    }

    #[test]
    fn entropy_and_allowlists_drop_findings() {
        let mut problems = Vec::new();
        let mut r = rule("tok", r"tok_([A-Za-z0-9]{12})", &["tok_"]);
        r.entropy = Entropy(3.0);
        r.allowlists = vec![
            GitleaksAllowlist {
                stopwords: vec!["example".into()],
                ..Default::default()
            },
            GitleaksAllowlist {
                regexes: vec!["^#".into()],
                target: AllowTarget::Line,
                ..Default::default()
            },
        ];
        let c = Compiled::new(&[r], 0, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        assert!(found(&c, "tok_aaaaaaaaaaaa").is_empty(), "low entropy");
        assert!(found(&c, "tok_EXAMPLEa1b2c").is_empty(), "stop word");
        assert!(found(&c, "# tok_Q7zM2lRx4T6p").is_empty(), "allowed line");
        assert_eq!(found(&c, "x\ntok_Q7zM2lRx4T6p").len(), 1);
    }

    #[test]
    fn an_and_allowlist_needs_every_check() {
        let a = Allowlist {
            regexes: Some(build("^abc").unwrap()),
            stopwords: vec!["zz".into()],
            target: AllowTarget::Secret,
            all: true,
        };
        assert!(!a.allows("abc", "abc", "abc"));
        assert!(a.allows("abczz", "abczz", "abczz"));
    }

    #[test]
    fn go_classes_are_ascii() {
        assert_eq!(
            ascii_classes(r"(?i)[\w.-]{0,50}?\bkey\s*=\s*(\d+)"),
            r"(?i)[0-9A-Za-z_.-]{0,50}?(?-u:\b)key[\t\n\f\r ]*=[\t\n\f\r ]*([0-9]+)"
        );
        assert_eq!(
            ascii_classes(r"a\\w[]\w][^\d][[:alnum:]\w]"),
            r"a\\w[]0-9A-Za-z_][^0-9][[:alnum:]0-9A-Za-z_]"
        );
        assert_eq!(ascii_classes(r"\W\S\.\x60"), r"[^0-9A-Za-z_][^\t\n\f\r ]\.\x60");
        let unicode = build(r"\w+").unwrap();
        assert_eq!(unicode.find("été").map(|m| m.as_str()), Some("t"), "Go's \\w is ASCII");
        // A generic-assignment rule in gitleaks' shape compiles within the bound.
        build(r#"(?i)[\w.-]{0,50}?(?:widget)(?:[ \t\w.-]{0,20})[\s'"]{0,3}(?:=|>|:{1,3}=|\|\||:|=>|\?=|,)[\x60'"\s=]{0,5}([a-z0-9]{24})(?:[\x60'"\s;]|\\[nr]|$)"#).unwrap();
    }

    #[test]
    fn problems_name_the_rule() {
        let mut problems = Vec::new();
        let mut bad_group = rule("two", r"(a)", &[]);
        bad_group.secret_group = 2;
        let rules = [rule("lookahead", r"a(?=b)", &[]), bad_group];
        let c = Compiled::new(&rules, 0, &mut problems);
        assert!(c.is_empty());
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("gitleaks[lookahead].regex: "), "{problems:?}");
        assert_eq!(problems[1], "gitleaks[two].secretGroup: 2 but the regex has 1 group(s)");
    }
}
