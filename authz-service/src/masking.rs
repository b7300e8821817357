//! Masking in the service: the policy from `gatehouse.yaml`, the token key, and which
//! kinds one caller may see in clear.
//!
//! The engine itself is `gatehouse_core::mask`, shared with the filter. The service masks
//! every request record (arguments included) before it is stored, re-checks response
//! records from the filter, answers `gatehouse mask`, and tells the filter per request
//! which kinds the caller may see (the `x-gatehouse-reveal` response header of an OK
//! Check). Records always hold values masked with nothing revealed.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use gatehouse_core::mask::{JsonMasked, MaskConfig, MaskCounts, Masker, Reveal, RevealPlan};
use gatehouse_core::mcp::Envelope;
use gatehouse_core::tools::glob_match;
use serde::Deserialize;
use serde_json::{Value, json};

/// `masking:` in `gatehouse.yaml`, validated.
#[derive(Debug, Clone, Default)]
pub struct MaskingPolicy {
    /// The engine's rules, without the token key (read from `token_key_file`).
    pub rules: MaskConfig,
    pub token_key_file: Option<PathBuf>,
    pub reveal: Vec<RevealRule>,
    /// What was left out of an imported gitleaks file, and why (`check-config` prints these,
    /// the service logs them when it starts).
    pub notes: Vec<String>,
}

/// Members of `groups` see `kinds` in clear, on the listed upstreams and tools (all when
/// unset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevealRule {
    pub kinds: BTreeSet<String>,
    pub groups: BTreeSet<String>,
    pub upstreams: Option<BTreeSet<String>>,
    /// Globs (`*` matches any run of characters) over the tool name of a `tools/call`.
    pub tools: Option<Vec<String>>,
}

impl MaskingPolicy {
    /// The rules with the token key, which is read from `token_key_file` (created with 32
    /// random bytes on first use). Without a key file the rules have no key.
    pub fn rules_with_key(&self) -> anyhow::Result<MaskConfig> {
        let mut rules = self.rules.clone();
        if let Some(path) = &self.token_key_file {
            rules.token_key = Some(load_or_create_key(path, "masking token key")?);
        }
        Ok(rules)
    }

    /// The compiled engine for this policy.
    pub fn masker(&self) -> anyhow::Result<Masker> {
        let rules = self.rules_with_key()?;
        Masker::new(&rules).map_err(|e| anyhow::anyhow!("The masking rules do not compile: {e}"))
    }

    /// Kinds the caller may see in clear on this upstream and tool.
    pub fn reveal_for(&self, groups: &BTreeSet<String>, upstream: &str, tool: Option<&str>) -> Reveal {
        let mut kinds = BTreeSet::new();
        for rule in &self.reveal {
            if rule.groups.is_disjoint(groups) {
                continue;
            }
            if rule.upstreams.as_ref().is_some_and(|u| !u.contains(upstream)) {
                continue;
            }
            if let Some(globs) = &rule.tools {
                match tool {
                    Some(tool) if globs.iter().any(|g| glob_match(g, tool)) => {}
                    _ => continue,
                }
            }
            kinds.extend(rule.kinds.iter().cloned());
        }
        Reveal(kinds)
    }
}

impl MaskingPolicy {
    /// What the answer to this request may show. A single message: the kinds of its tool
    /// (`reveal_for`) for the whole answer. A batch: each request message's kinds under its
    /// JSON-RPC id, so that the answer to one tool never shows what only another may; two
    /// messages with one id get what both may; answers with other ids, notifications and
    /// text get nothing.
    pub fn reveal_plan(&self, groups: &BTreeSet<String>, upstream: &str, envelope: Option<&Envelope>) -> RevealPlan {
        let tool_of = |m: &gatehouse_core::mcp::Message| {
            m.target_name()
                .filter(|_| m.method.as_deref() == Some("tools/call"))
                .map(str::to_owned)
        };
        let Some(envelope) = envelope.filter(|e| e.batch) else {
            let tool = envelope.and_then(Envelope::first).and_then(tool_of);
            return RevealPlan::uniform(self.reveal_for(groups, upstream, tool.as_deref()));
        };
        let mut by_id: std::collections::BTreeMap<String, Reveal> = std::collections::BTreeMap::new();
        for message in &envelope.messages {
            let Some(id) = &message.id else {
                continue;
            };
            let reveal = self.reveal_for(groups, upstream, tool_of(message).as_deref());
            by_id
                .entry(RevealPlan::id_key(id))
                .and_modify(|seen| seen.0.retain(|kind| reveal.contains(kind)))
                .or_insert(reveal);
        }
        RevealPlan {
            all: Reveal::none(),
            by_id: Some(by_id),
        }
    }
}

/// One line of `gatehouse mask --jsonl` input.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct MaskLine {
    id: Value,
    format: LineFormat,
    input: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
enum LineFormat {
    Text,
    McpJson,
}

/// What [`mask_jsonl`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct JsonlSummary {
    pub lines: u64,
    pub errors: u64,
}

/// `gatehouse mask --jsonl`: each input line `{"id", "format": "text"|"mcp_json", "input"}`
/// gives one output line `{"id", "output"}`, in order. A line that cannot be read gives
/// `{"id": …|null, "error": "…"}` and the rest go on. Nothing is revealed.
pub fn mask_jsonl(
    masker: &Masker,
    input: impl std::io::BufRead,
    mut output: impl std::io::Write,
) -> std::io::Result<JsonlSummary> {
    let mut summary = JsonlSummary::default();
    let none = Reveal::none();
    for (n, line) in input.split(b'\n').enumerate() {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        summary.lines += 1;
        let answer = match serde_json::from_slice::<MaskLine>(&line) {
            Ok(line) => {
                let mut counts = MaskCounts::default();
                let output = match line.format {
                    LineFormat::Text => masker.mask_text(&line.input, &none, &mut counts).into_owned(),
                    LineFormat::McpJson => match masker.mask_json(line.input.as_bytes(), &none, &mut counts) {
                        JsonMasked::Unchanged => line.input,
                        JsonMasked::Changed(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                        JsonMasked::NotJson => masker.mask_text(&line.input, &none, &mut counts).into_owned(),
                    },
                };
                json!({"id": line.id, "output": output})
            }
            Err(e) => {
                summary.errors += 1;
                // The id, if the line is JSON at all; never the input.
                let id = serde_json::from_slice::<Value>(&line)
                    .ok()
                    .and_then(|v| v.get("id").cloned())
                    .unwrap_or(Value::Null);
                json!({"id": id, "error": format!("line {}: {e}", n + 1)})
            }
        };
        serde_json::to_writer(&mut output, &answer)?;
        output.write_all(b"\n")?;
    }
    output.flush()?;
    Ok(summary)
}

/// A hex key of at least 16 bytes from `path`, or a new random one written there (0600).
/// `what` names the key in messages.
pub(crate) fn load_or_create_key(path: &Path, what: &str) -> anyhow::Result<String> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let key = text.trim().to_owned();
            match hex::decode(&key) {
                Ok(bytes) if bytes.len() >= 16 => Ok(key),
                _ => anyhow::bail!("The {what} in {} must be at least 16 bytes of hex", path.display()),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = hex::encode(rand::random::<[u8; 32]>());
            if let Some(dir) = path.parent() {
                crate::private_file::create_private_dir(dir)
                    .with_context(|| format!("Cannot create {}", dir.display()))?;
            }
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            match options.open(path) {
                Ok(mut file) => {
                    writeln!(file, "{key}").with_context(|| format!("Cannot write {}", path.display()))?;
                    tracing::info!(path = %path.display(), key = what, "Created a key file.");
                    Ok(key)
                }
                // Another process (envoy-config and serve) created it first: use theirs.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => load_or_create_key(path, what),
                Err(e) => Err(e).with_context(|| format!("Cannot create {}", path.display())),
            }
        }
        Err(e) => Err(e).with_context(|| format!("Cannot read the {what} {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn jsonl_answers_every_line_in_order_and_reports_bad_ones() {
        let input = concat!(
            r#"{"id": "a", "format": "text", "input": "plain words"}"#,
            "\n\n",
            r#"{"id": 2, "format": "mcp_json", "input": "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}"}"#,
            "\n",
            r#"{"id": "c", "format": "yaml", "input": "x"}"#,
            "\nnot json\n",
            r#"{"id": "d", "format": "mcp_json", "input": "{not json"}"#,
            "\n",
        );
        let mut out = Vec::new();
        let summary = mask_jsonl(&Masker::default(), input.as_bytes(), &mut out).unwrap();
        assert_eq!(summary, JsonlSummary { lines: 5, errors: 2 });
        let lines: Vec<Value> = out
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        assert_eq!(lines[0], json!({"id": "a", "output": "plain words"}));
        assert_eq!(
            lines[1],
            json!({"id": 2, "output": "{\"jsonrpc\":\"2.0\",\"id\":1,\"result\":{}}"})
        );
        assert_eq!(lines[2]["id"], "c");
        assert!(lines[2]["error"].as_str().unwrap().starts_with("line 4:"));
        assert_eq!(lines[3], json!({"id": null, "error": lines[3]["error"]}));
        assert_eq!(lines[4], json!({"id": "d", "output": "{not json"}));
    }

    #[test]
    fn reveal_follows_group_upstream_and_tool() {
        let policy = MaskingPolicy {
            reveal: vec![
                RevealRule {
                    kinds: set(&["email"]),
                    groups: set(&["support"]),
                    upstreams: None,
                    tools: None,
                },
                RevealRule {
                    kinds: set(&["phone"]),
                    groups: set(&["support"]),
                    upstreams: Some(set(&["crm"])),
                    tools: Some(vec!["find_*".into()]),
                },
            ],
            ..Default::default()
        };
        let support = set(&["support"]);
        assert_eq!(
            policy.reveal_for(&support, "crm", Some("find_x")).0,
            set(&["email", "phone"])
        );
        assert_eq!(policy.reveal_for(&support, "crm", Some("drop_x")).0, set(&["email"]));
        assert_eq!(policy.reveal_for(&support, "other", Some("find_x")).0, set(&["email"]));
        assert_eq!(policy.reveal_for(&support, "crm", None).0, set(&["email"]));
        assert!(policy.reveal_for(&set(&["eng"]), "crm", Some("find_x")).is_empty());
    }

    #[test]
    fn a_batch_reveals_per_message_by_id() {
        let policy = MaskingPolicy {
            reveal: vec![RevealRule {
                kinds: set(&["email"]),
                groups: set(&["support"]),
                upstreams: None,
                tools: Some(vec!["find_*".into()]),
            }],
            ..Default::default()
        };
        let support = set(&["support"]);
        let call = |id: Value, tool: &str| json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": {}}});
        let batch = |items: Vec<Value>| gatehouse_core::mcp::parse_body(&serde_json::to_vec(&items).unwrap()).unwrap();
        // The red team's batch: [find_customer, leak] must not show leak's e-mails.
        let env = batch(vec![call(json!(1), "find_customer"), call(json!(2), "leak")]);
        let plan = policy.reveal_plan(&support, "crm", Some(&env));
        assert_eq!(plan.for_message(&json!({"id": 1})).0, set(&["email"]));
        assert!(plan.for_message(&json!({"id": 2})).is_empty());
        assert!(plan.for_message(&json!({"id": "1"})).is_empty(), "another id");
        assert!(plan.for_message(&json!({"method": "n"})).is_empty() && plan.for_other().is_empty());
        // One id twice: only what both may.
        let env = batch(vec![call(json!(1), "find_customer"), call(json!(1), "leak")]);
        assert!(policy.reveal_plan(&support, "crm", Some(&env)).is_empty());
        // A single message keeps one set for its whole answer.
        let single = gatehouse_core::mcp::parse_body(&serde_json::to_vec(&call(json!(3), "find_x")).unwrap()).unwrap();
        let plan = policy.reveal_plan(&support, "crm", Some(&single));
        assert_eq!(plan, RevealPlan::uniform(Reveal(set(&["email"]))));
    }

    #[test]
    fn the_token_key_is_created_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/mask.key");
        let a = load_or_create_key(&path, "key").unwrap();
        let b = load_or_create_key(&path, "key").unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        std::fs::write(&path, "zz").unwrap();
        assert!(
            load_or_create_key(&path, "key").is_err(),
            "a bad key is refused, not replaced"
        );
    }
}
