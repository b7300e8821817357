//! What the service records of its own configuration (`config_changed`): at start and at
//! every reload, taken or refused, the file's SHA-256, a digest of each part that decides
//! calls, and what changed since the previous such record.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One `config_changed` record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChanged {
    /// `loaded` (the service started with it), `reloaded` (a changed file took effect) or
    /// `reload_refused` (a changed file did not validate; what was in force stays).
    pub event: String,
    /// The file it was read from.
    pub source: String,
    /// SHA-256 (hex) of the file's bytes.
    pub config_sha256: String,
    /// Digests of each part, to compare with the next record.
    pub digests: ConfigDigests,
    /// What differs from the previous `config_changed` record (of any writer); absent for
    /// the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changes: Option<ConfigChanges>,
    /// Sections that changed but take effect only when the service restarts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pending_restart: Vec<String>,
    /// Why a reload was refused (masked).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<String>,
}

/// SHA-256 (hex) of each part of a configuration, over its canonical JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDigests {
    /// `policy.rules` by id.
    pub policy_rules: BTreeMap<String, String>,
    /// `upstreams` by name.
    pub upstreams: BTreeMap<String, String>,
    /// `recording` rules by id.
    pub recording: BTreeMap<String, String>,
    /// The `masking` section (empty: none).
    pub masking: String,
    /// Every top-level section.
    pub sections: BTreeMap<String, String>,
}

/// What differs between two configurations.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigChanges {
    pub policy_rules: Diff,
    pub upstreams: Diff,
    pub recording: Diff,
    pub masking: bool,
    /// Top-level sections added, removed or changed.
    pub sections: Vec<String>,
}

/// Names added, removed and changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diff {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Diff {
    fn of(before: &BTreeMap<String, String>, after: &BTreeMap<String, String>) -> Self {
        let mut diff = Self::default();
        for (name, digest) in after {
            match before.get(name) {
                None => diff.added.push(name.clone()),
                Some(old) if old != digest => diff.changed.push(name.clone()),
                Some(_) => {}
            }
        }
        diff.removed = before.keys().filter(|n| !after.contains_key(*n)).cloned().collect();
        diff
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl ConfigDigests {
    /// What changed from `before` to `self`.
    pub fn changes_from(&self, before: &Self) -> ConfigChanges {
        let mut sections: Vec<String> = self
            .sections
            .iter()
            .filter(|(name, digest)| before.sections.get(*name) != Some(*digest))
            .map(|(name, _)| name.clone())
            .collect();
        sections.extend(
            before
                .sections
                .keys()
                .filter(|n| !self.sections.contains_key(*n))
                .cloned(),
        );
        sections.sort();
        ConfigChanges {
            policy_rules: Diff::of(&before.policy_rules, &self.policy_rules),
            upstreams: Diff::of(&before.upstreams, &self.upstreams),
            recording: Diff::of(&before.recording, &self.recording),
            masking: self.masking != before.masking,
            sections,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn changes_name_what_was_added_removed_and_changed() {
        let before = ConfigDigests {
            policy_rules: map(&[("a", "1"), ("b", "2")]),
            sections: map(&[("policy", "p1"), ("service", "s")]),
            masking: "m".into(),
            ..Default::default()
        };
        let after = ConfigDigests {
            policy_rules: map(&[("b", "3"), ("c", "4")]),
            sections: map(&[("policy", "p2"), ("service", "s"), ("recording", "r")]),
            masking: "m".into(),
            ..Default::default()
        };
        let c = after.changes_from(&before);
        assert_eq!(c.policy_rules.added, ["c"]);
        assert_eq!(c.policy_rules.removed, ["a"]);
        assert_eq!(c.policy_rules.changed, ["b"]);
        assert!(!c.masking && c.upstreams.is_empty());
        assert_eq!(c.sections, ["policy", "recording"]);
    }
}
