//! Recording scope (`recording:` in gatehouse.yaml): which calls the trail records in full
//! (masked arguments and answers, the default) and which by metadata only (who, what, when,
//! the decision, and the size and SHA-256 of the content, no content).
//!
//! Rules are checked in order like the policy's, with the same conditions (groups, subjects,
//! upstreams, methods, tools); the first that matches decides, and none matching means
//! `full`. Whatever the scope, a request's record is committed before it is forwarded: the
//! scope only decides what the record holds.

use std::collections::{BTreeSet, HashMap};

use gatehouse_core::audit::{canonical_json, data_digest};
use gatehouse_core::events::{ContentDigest, RequestFacts};
use serde::Deserialize;
use serde_json::Value;

use crate::policy::{Facts, Policy, RawOutcome, RawRule};

/// What the trail keeps of a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// Masked arguments and answers.
    Full,
    /// No content: its size and SHA-256.
    Metadata,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Metadata => "metadata",
        }
    }
}

/// One rule as written (`recording[]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecordingRule {
    pub id: String,
    #[serde(default)]
    pub groups: Option<Vec<String>>,
    #[serde(default)]
    pub subjects: Option<Vec<String>>,
    #[serde(default)]
    pub upstreams: Option<Vec<String>>,
    /// MCP methods (globs).
    #[serde(default)]
    pub methods: Option<Vec<String>>,
    /// Tool names (globs); a rule with `tools` only matches `tools/call`.
    #[serde(default)]
    pub tools: Option<Vec<String>>,
    pub record: Scope,
}

/// The compiled rules; empty: everything in full.
#[derive(Debug, Clone, Default)]
pub struct Recording {
    /// The rules' conditions, compiled as the policy's are (each rule allows).
    matcher: Option<Policy>,
    scopes: HashMap<String, Scope>,
}

impl Recording {
    /// Compiles the rules; every problem is listed with its path (`recording[i].field`).
    pub fn compile(raw: &[RawRecordingRule]) -> Result<Self, Vec<(String, String)>> {
        if raw.is_empty() {
            return Ok(Self::default());
        }
        let as_policy: Vec<RawRule> = raw
            .iter()
            .map(|r| RawRule {
                id: r.id.clone(),
                groups: r.groups.clone(),
                subjects: r.subjects.clone(),
                upstreams: r.upstreams.clone(),
                methods: r.methods.clone(),
                tools: r.tools.clone(),
                arguments: Vec::new(),
                outcome: RawOutcome::Allow,
                approval: None,
            })
            .collect();
        let matcher = Policy::compile(&as_policy).map_err(|problems| {
            problems
                .into_iter()
                .map(|(path, message)| (path.replacen("policy.rules", "recording", 1), message))
                .collect::<Vec<_>>()
        })?;
        Ok(Self {
            matcher: Some(matcher),
            scopes: raw.iter().map(|r| (r.id.clone(), r.record)).collect(),
        })
    }

    /// The scope of a request, from what its record says (caller, upstream, method, tool),
    /// and the rule that chose it (`None`: the default, `full`).
    pub fn scope_of(&self, facts: &RequestFacts) -> (Scope, Option<&str>) {
        let Some(matcher) = &self.matcher else {
            return (Scope::Full, None);
        };
        let groups: BTreeSet<String> = facts.groups.iter().cloned().collect();
        let method = facts.message.as_ref().and_then(|m| m.mcp_method.as_deref());
        let tool = facts
            .message
            .as_ref()
            .filter(|_| method == Some("tools/call"))
            .and_then(|m| m.tool.as_deref());
        let verdict = matcher.evaluate(&Facts {
            subject: facts.subject.as_deref().unwrap_or_default(),
            groups: &groups,
            upstream: facts.upstream.as_deref().unwrap_or_default(),
            method,
            tool,
            arguments: None,
        });
        match verdict.rule_id {
            Some(id) => (self.scopes.get(id).copied().unwrap_or(Scope::Full), Some(id)),
            None => (Scope::Full, None),
        }
    }
}

/// The size and SHA-256 of `content` (its canonical JSON).
pub fn digest(bytes: u64, content: &Value) -> ContentDigest {
    ContentDigest {
        bytes,
        sha256: data_digest(&canonical_json(content)),
    }
}

/// Leaves a request record's content out under `metadata` recording: the arguments of each
/// message become `null`, and `content` holds the size of the body received and the SHA-256
/// of the masked arguments left out.
pub fn keep_metadata_only(facts: &mut RequestFacts, body_bytes: u64) {
    let mut left_out = Vec::new();
    if let Some(first) = &mut facts.message {
        left_out.push(std::mem::take(&mut first.arguments));
    }
    for m in facts.batch.iter_mut().flatten() {
        left_out.push(std::mem::take(&mut m.arguments));
    }
    facts.recording = Some(Scope::Metadata.as_str().to_owned());
    facts.content = Some(digest(body_bytes, &Value::Array(left_out)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(yaml: &str) -> Recording {
        let raw: Vec<RawRecordingRule> = serde_yaml::from_str(yaml).unwrap();
        Recording::compile(&raw).unwrap()
    }

    fn facts(groups: &[&str], upstream: &str, method: &str, tool: Option<&str>) -> RequestFacts {
        serde_json::from_value(serde_json::json!({
            "subject": "alice", "groups": groups, "upstream": upstream, "http_method": "POST",
            "path": "/mcp", "session_id": null, "protocol_version": null,
            "mcp_method": method, "tool": tool, "arguments": {"q": "x"}, "jsonrpc_id": 1,
            "message_kind": "request",
        }))
        .unwrap()
    }

    #[test]
    fn the_first_matching_rule_decides_and_none_means_full() {
        let r = rules(
            "[{id: health, upstreams: [docs], tools: ['ping*'], record: metadata},
              {id: ops-full, groups: [ops], record: full},
              {id: docs, upstreams: [docs], record: metadata}]",
        );
        assert_eq!(
            r.scope_of(&facts(&[], "docs", "tools/call", Some("ping_db"))),
            (Scope::Metadata, Some("health"))
        );
        assert_eq!(
            r.scope_of(&facts(&["ops"], "docs", "tools/call", Some("search"))),
            (Scope::Full, Some("ops-full"))
        );
        assert_eq!(
            r.scope_of(&facts(&[], "docs", "tools/list", None)),
            (Scope::Metadata, Some("docs"))
        );
        assert_eq!(
            r.scope_of(&facts(&[], "prod", "tools/call", Some("ping_db"))),
            (Scope::Full, None)
        );
        assert_eq!(
            Recording::default().scope_of(&facts(&[], "docs", "x", None)),
            (Scope::Full, None)
        );
    }

    #[test]
    fn problems_name_the_recording_rule() {
        let raw: Vec<RawRecordingRule> =
            serde_yaml::from_str("[{id: a, record: full}, {id: a, record: metadata}]").unwrap();
        let problems = Recording::compile(&raw).unwrap_err();
        assert!(
            problems.iter().any(|(path, _)| path == "recording[1].id"),
            "{problems:?}"
        );
        assert!(serde_yaml::from_str::<Vec<RawRecordingRule>>("[{id: a, record: none}]").is_err());
    }

    #[test]
    fn metadata_keeps_no_argument_and_digests_them() {
        let mut f = facts(&[], "docs", "tools/call", Some("search"));
        keep_metadata_only(&mut f, 120);
        assert_eq!(f.message.as_ref().unwrap().arguments, Value::Null);
        let content = f.content.unwrap();
        assert_eq!(content.bytes, 120);
        assert_eq!(content.sha256, data_digest(br#"[{"q":"x"}]"#));
        assert_eq!(f.recording.as_deref(), Some("metadata"));
    }
}
