//! `masking.gitleaks`: a gitleaks configuration file (TOML) read into masking rules.
//!
//! Each `[[rules]]` entry with a `regex` becomes a rule masked under its `id`, with its
//! `secretGroup`, `entropy`, `keywords` and allowlists; the file's global allowlists
//! (`[allowlist]`, `[[allowlists]]`, with `targetRules` when given) apply to every rule they
//! name. What only makes sense for files in a repository is left out, each with a note that
//! `check-config` prints and the service logs: rules on file paths, rules that need another
//! rule's finding nearby (`requiredRules`), allowlists on paths or commits alone (and `AND`
//! allowlists that need one). A regex gitleaks accepts and Rust's `regex` does not (lookaround,
//! backreferences, `\Q…\E`) is a problem named by the rule's id: disable that rule with
//! `masking.disabled: [id]` or fix its pattern.

use std::path::Path;

use gatehouse_core::mask::{AllowTarget, Entropy, GitleaksAllowlist, GitleaksRule};
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    allowlist: Option<RawAllowlist>,
    #[serde(default)]
    allowlists: Vec<RawAllowlist>,
    #[serde(default)]
    extend: Option<toml::Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRule {
    id: String,
    #[serde(default)]
    regex: Option<String>,
    #[serde(default)]
    secret_group: Option<i64>,
    #[serde(default)]
    entropy: Option<f64>,
    #[serde(default)]
    keywords: Vec<String>,
    #[serde(default)]
    path: Option<String>,
    #[serde(default)]
    allowlist: Option<RawAllowlist>,
    #[serde(default)]
    allowlists: Vec<RawAllowlist>,
    #[serde(default)]
    required_rules: Option<toml::Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawAllowlist {
    #[serde(default)]
    condition: Option<String>,
    #[serde(default)]
    commits: Vec<String>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    regex_target: Option<String>,
    #[serde(default)]
    regexes: Vec<String>,
    #[serde(default)]
    stopwords: Vec<String>,
    /// Global allowlists only: the rules they apply to (all when empty).
    #[serde(default)]
    target_rules: Vec<String>,
}

/// The rules read from a gitleaks file, and what was left out and why.
#[derive(Debug, Default)]
pub struct Loaded {
    pub rules: Vec<GitleaksRule>,
    pub notes: Vec<String>,
}

/// Reads `path`; problems go to `problem(field, message)` with fields under `at`.
pub fn load(path: &Path, at: &str, problem: &mut dyn FnMut(String, String)) -> Loaded {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            problem(at.to_owned(), format!("cannot read {}: {e}", path.display()));
            return Loaded::default();
        }
    };
    parse(&text, at, problem)
}

/// Parses the text of a gitleaks file (see [`load`]).
pub fn parse(text: &str, at: &str, problem: &mut dyn FnMut(String, String)) -> Loaded {
    let file: File = match toml::from_str(text) {
        Ok(file) => file,
        Err(e) => {
            let why = e.to_string().split_whitespace().collect::<Vec<_>>().join(" ");
            problem(at.to_owned(), format!("not a gitleaks configuration: {why}"));
            return Loaded::default();
        }
    };
    let mut loaded = Loaded::default();
    if file.extend.is_some() {
        problem(
            format!("{at}.extend"),
            "is not supported: give one file that holds every rule".to_owned(),
        );
    }
    let mut globals = Vec::new();
    for (k, raw) in file.allowlist.into_iter().chain(file.allowlists).enumerate() {
        let field = format!("{at}.allowlists[{k}]");
        let targets = raw.target_rules.clone();
        if let Some(a) = allowlist(raw, &field, problem, &mut loaded.notes) {
            globals.push((targets, a));
        }
    }
    for rule in file.rules {
        let field = format!("{at}[{}]", rule.id);
        let Some(regex) = rule.regex.filter(|r| !r.is_empty()) else {
            loaded
                .notes
                .push(format!("rule {:?} matches file paths only: left out", rule.id));
            continue;
        };
        if rule.path.is_some() {
            loaded
                .notes
                .push(format!("rule {:?} applies to some file paths only: left out", rule.id));
            continue;
        }
        if rule.required_rules.is_some() {
            loaded.notes.push(format!(
                "rule {:?} needs other rules' findings nearby (requiredRules): left out",
                rule.id
            ));
            continue;
        }
        let secret_group = match rule.secret_group.map(usize::try_from) {
            None => 0,
            Some(Ok(n)) => n,
            Some(Err(_)) => {
                problem(format!("{field}.secretGroup"), "must be 0 or more".to_owned());
                continue;
            }
        };
        let entropy = rule.entropy.unwrap_or(0.0);
        if !entropy.is_finite() || entropy < 0.0 {
            problem(
                format!("{field}.entropy"),
                "must be a number of bits, 0 or more".to_owned(),
            );
            continue;
        }
        let mut allowlists = Vec::new();
        for (k, raw) in rule.allowlist.into_iter().chain(rule.allowlists).enumerate() {
            let field = format!("{field}.allowlists[{k}]");
            allowlists.extend(allowlist(raw, &field, problem, &mut loaded.notes));
        }
        for (targets, a) in &globals {
            if targets.is_empty() || targets.contains(&rule.id) {
                allowlists.push(a.clone());
            }
        }
        loaded.rules.push(GitleaksRule {
            id: rule.id,
            regex,
            secret_group,
            entropy: Entropy(entropy),
            keywords: rule.keywords,
            allowlists,
        });
    }
    loaded
}

/// One allowlist, or `None` when nothing of it can apply outside a repository.
fn allowlist(
    raw: RawAllowlist,
    field: &str,
    problem: &mut dyn FnMut(String, String),
    notes: &mut Vec<String>,
) -> Option<GitleaksAllowlist> {
    let all = match raw.condition.as_deref().map(str::to_ascii_uppercase).as_deref() {
        None | Some("OR") => false,
        Some("AND") => true,
        Some(other) => {
            problem(format!("{field}.condition"), format!("{other:?} is not OR or AND"));
            return None;
        }
    };
    let target = match raw.regex_target.as_deref() {
        None | Some("" | "secret") => AllowTarget::Secret,
        Some("match") => AllowTarget::Match,
        Some("line") => AllowTarget::Line,
        Some(other) => {
            problem(
                format!("{field}.regexTarget"),
                format!("{other:?} is not secret, match or line"),
            );
            return None;
        }
    };
    let repository_only = !raw.paths.is_empty() || !raw.commits.is_empty();
    if repository_only && all {
        notes.push(format!(
            "{field} needs a file path or a commit to match (AND): left out"
        ));
        return None;
    }
    if raw.regexes.is_empty() && raw.stopwords.is_empty() {
        if repository_only {
            notes.push(format!("{field} lists only paths or commits: left out"));
        }
        return None;
    }
    Some(GitleaksAllowlist {
        regexes: raw.regexes,
        stopwords: raw.stopwords,
        target,
        all,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(text: &str) -> (Loaded, Vec<String>) {
        let mut problems = Vec::new();
        let loaded = parse(text, "masking.gitleaks", &mut |f, m| problems.push(format!("{f}: {m}")));
        (loaded, problems)
    }

    #[test]
    fn rules_keep_their_groups_keywords_entropy_and_allowlists() {
        let (loaded, problems) = parsed(
            r#"
title = "test"
[allowlist]
regexes = ['''^EXAMPLE''']
paths = ['''\.md$''']

[[allowlists]]
targetRules = ["other"]
stopwords = ["dummy"]

[[rules]]
id = "acme-api-key"
regex = '''acme_([a-z0-9]{32})'''
secretGroup = 1
entropy = 3.5
keywords = ["acme_"]
  [[rules.allowlists]]
  condition = "AND"
  regexTarget = "line"
  regexes = ['''#\s*test''']
  stopwords = ["fake"]

[[rules]]
id = "by-path"
path = '''\.pem$'''

[[rules]]
id = "with-path"
regex = "x"
path = "y"
"#,
        );
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(loaded.rules.len(), 1);
        let rule = &loaded.rules[0];
        assert_eq!(rule.id, "acme-api-key");
        assert_eq!(
            (rule.secret_group, rule.entropy, rule.keywords.as_slice()),
            (1, Entropy(3.5), &["acme_".to_owned()][..])
        );
        assert_eq!(rule.allowlists.len(), 2, "its own and the global one for every rule");
        assert!(rule.allowlists[0].all && rule.allowlists[0].target == AllowTarget::Line);
        assert_eq!(rule.allowlists[1].regexes, ["^EXAMPLE"]);
        assert_eq!(loaded.notes.len(), 2, "{:?}", loaded.notes);
    }

    #[test]
    fn bad_files_and_fields_are_problems_named_by_the_rule() {
        let (_, problems) = parsed("[[rules]\nid=");
        assert!(
            problems[0].starts_with("masking.gitleaks: not a gitleaks configuration"),
            "{problems:?}"
        );
        let (_, problems) = parsed(
            r#"
[extend]
useDefault = true
[[rules]]
id = "neg"
regex = "a"
secretGroup = -1
[[rules]]
id = "cond"
regex = "a"
  [[rules.allowlists]]
  condition = "XOR"
  regexes = ["b"]
"#,
        );
        assert_eq!(
            problems,
            [
                "masking.gitleaks.extend: is not supported: give one file that holds every rule",
                "masking.gitleaks[neg].secretGroup: must be 0 or more",
                "masking.gitleaks[cond].allowlists[0].condition: \"XOR\" is not OR or AND",
            ]
        );
    }
}
