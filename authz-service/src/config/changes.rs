//! `config_changed` records: what the service's configuration is at start and at each
//! reload (taken or refused), by digest, and what changed since the newest such record.

use gatehouse_core::audit::{canonical_json, data_digest};
use gatehouse_core::events::{ConfigChanged, ConfigDigests};
use gatehouse_core::mask::{MaskCounts, Masker, Reveal};
use serde_json::Value;

/// Sections a reload applies; a change to any other waits for a restart.
const RELOADED: [&str; 2] = ["policy", "recording"];

fn digest(v: &Value) -> String {
    data_digest(&canonical_json(v))
}

/// The digests of a configuration file's parts (a file that is not YAML has none).
pub fn digests(text: &str) -> ConfigDigests {
    let Ok(doc) = serde_yaml::from_str::<Value>(text) else {
        return ConfigDigests::default();
    };
    let named = |list: Option<&Value>, key: &str| {
        list.and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
            .map(|(i, item)| {
                let name = item
                    .get(key)
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("#{i}"), str::to_owned);
                (name, digest(item))
            })
            .collect()
    };
    ConfigDigests {
        policy_rules: named(doc.pointer("/policy/rules"), "id"),
        upstreams: named(doc.get("upstreams"), "name"),
        recording: named(doc.get("recording"), "id"),
        masking: doc.get("masking").map(digest).unwrap_or_default(),
        sections: doc
            .as_object()
            .into_iter()
            .flatten()
            .map(|(name, section)| (name.clone(), digest(section)))
            .collect(),
    }
}

/// The record of a configuration `event` (`loaded`, `reloaded`, `reload_refused`) read from
/// `source`, compared with `previous` (the newest recorded, or the one in force). Problems are
/// masked: a refused file may hold a value it should not.
pub fn event(
    kind: &str,
    source: &std::path::Path,
    bytes: &[u8],
    previous: Option<&ConfigDigests>,
    problems: &[String],
    masker: &Masker,
) -> ConfigChanged {
    let digests = digests(&String::from_utf8_lossy(bytes));
    let changes = previous.map(|before| digests.changes_from(before));
    let pending_restart = match (kind, &changes) {
        ("reloaded", Some(c)) => c
            .sections
            .iter()
            .filter(|s| !RELOADED.contains(&s.as_str()))
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    ConfigChanged {
        event: kind.to_owned(),
        source: source.display().to_string(),
        config_sha256: data_digest(bytes),
        digests,
        changes,
        pending_restart,
        problems: problems
            .iter()
            .map(|p| {
                masker
                    .mask_text(&crate::db::redact(p), &Reveal::none(), &mut MaskCounts::default())
                    .into_owned()
            })
            .collect(),
    }
}

/// The digests of the newest configuration that took effect (a refused reload's file never
/// did), among the newest `config_changed` records.
pub async fn newest(store: &crate::audit::Store) -> Result<Option<ConfigDigests>, sqlx::Error> {
    Ok(store
        .newest_configs(100)
        .await?
        .into_iter()
        .filter_map(|r| serde_json::from_value::<ConfigChanged>(r.data).ok())
        .find(|c| c.event != "reload_refused")
        .map(|c| c.digests))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_says_which_rules_changed_and_what_waits_for_a_restart() {
        let before = digests(
            "service: {a: 1}\npolicy:\n  rules:\n    - {id: a, outcome: allow}\n    - {id: b, outcome: deny}\n",
        );
        let after = "service: {a: 2}\npolicy:\n  rules:\n    - {id: a, outcome: deny}\n    - {id: c, outcome: deny}\nrecording:\n  - {id: r, record: metadata}\n";
        let e = event(
            "reloaded",
            std::path::Path::new("g.yaml"),
            after.as_bytes(),
            Some(&before),
            &[],
            &Masker::default(),
        );
        let c = e.changes.unwrap();
        assert_eq!(
            (c.policy_rules.added, c.policy_rules.removed, c.policy_rules.changed),
            (vec!["c".to_owned()], vec!["b".to_owned()], vec!["a".to_owned()])
        );
        assert_eq!(c.recording.added, ["r"]);
        assert_eq!(e.pending_restart, ["service"]);
        assert_eq!(e.config_sha256, data_digest(after.as_bytes()));
    }

    #[test]
    fn problems_are_masked() {
        let e = event(
            "reload_refused",
            std::path::Path::new("g.yaml"),
            b": not yaml",
            None,
            &["upstreams[0].url: bad value AKIAIOSFODNN7EXAMPLE".into()],
            &Masker::default(),
        );
        assert!(!e.problems[0].contains("AKIAIOSFODNN7EXAMPLE"), "{:?}", e.problems);
        assert_eq!(e.digests, ConfigDigests::default());
    }
}
