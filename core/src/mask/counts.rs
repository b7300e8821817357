//! Counts of masked values per kind, the set of kinds one caller may see, and which of
//! them each message of an answer may show.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// How many values of each kind were masked. Serializes as `{"email": 2}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MaskCounts(pub BTreeMap<String, u64>);

impl MaskCounts {
    pub fn add(&mut self, kind: &str, n: u64) {
        if n > 0 {
            *self.0.entry(kind.to_owned()).or_default() += n;
        }
    }

    pub fn merge(&mut self, other: &MaskCounts) {
        for (kind, n) in &other.0 {
            self.add(kind, *n);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }
}

/// Kinds shown in clear to one caller. Empty (the default) reveals nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Reveal(pub BTreeSet<String>);

impl Reveal {
    /// Reveals nothing: what records and logs always use.
    pub fn none() -> Self {
        Self::default()
    }

    pub fn contains(&self, kind: &str) -> bool {
        self.0.contains(kind)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Parses the `x-gatehouse-reveal` header value: kind names separated by commas
    /// (`-` or empty for none). Unknown names are kept; they simply match no detector.
    pub fn from_header(value: &str) -> Self {
        Self(
            value
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty() && *k != "-")
                .map(str::to_owned)
                .collect(),
        )
    }

    /// The header value for this set (`-` for none).
    pub fn to_header(&self) -> String {
        if self.0.is_empty() {
            "-".to_owned()
        } else {
            self.0.iter().cloned().collect::<Vec<_>>().join(",")
        }
    }
}

/// What one answer may show, message by message.
///
/// The reveal rules are scoped to tools, and a batch calls several tools at once: each
/// message of its answer may only show what the request message it answers (same JSON-RPC
/// id) was allowed. The service sends the per-id sets (`x-gatehouse-reveal-ids`) for a
/// batch; a message whose id it did not list, and anything that is not a JSON-RPC
/// message, shows nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RevealPlan {
    /// The set for the whole answer (a single request's), used when `by_id` is `None`.
    pub all: Reveal,
    /// Per request id (see [`RevealPlan::id_key`]).
    pub by_id: Option<BTreeMap<String, Reveal>>,
}

static NOTHING: Reveal = Reveal(BTreeSet::new());

impl RevealPlan {
    /// The same set for every message.
    pub fn uniform(reveal: Reveal) -> Self {
        Self {
            all: reveal,
            by_id: None,
        }
    }

    /// The key of a JSON-RPC id: its JSON text, so `1` and `"1"` differ as they do in
    /// JSON-RPC.
    pub fn id_key(id: &Value) -> String {
        id.to_string()
    }

    /// The set for one JSON-RPC message of the answer.
    pub fn for_message(&self, message: &Value) -> &Reveal {
        match &self.by_id {
            None => &self.all,
            Some(by_id) => message
                .get("id")
                .and_then(|id| by_id.get(&Self::id_key(id)))
                .unwrap_or(&NOTHING),
        }
    }

    /// The set for what is not a JSON-RPC message (text, other JSON).
    pub fn for_other(&self) -> &Reveal {
        match &self.by_id {
            None => &self.all,
            Some(_) => &NOTHING,
        }
    }

    /// Whether nothing is revealed to any message.
    pub fn is_empty(&self) -> bool {
        match &self.by_id {
            None => self.all.is_empty(),
            Some(by_id) => by_id.values().all(Reveal::is_empty),
        }
    }

    /// Every kind some message may show (what the record calls `revealed`).
    pub fn kinds(&self) -> BTreeSet<String> {
        match &self.by_id {
            None => self.all.0.clone(),
            Some(by_id) => by_id.values().flat_map(|r| r.0.iter().cloned()).collect(),
        }
    }

    /// The `x-gatehouse-reveal-ids` value for these per-id sets.
    pub fn ids_header(by_id: &BTreeMap<String, Reveal>) -> String {
        if by_id.is_empty() {
            return "-".to_owned();
        }
        by_id
            .iter()
            .map(|(id, reveal)| format!("{}={}", hex::encode(id), reveal.to_header().replace(',', "+")))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Reads `x-gatehouse-reveal-ids`. An entry that cannot be read is left out, so its
    /// message shows nothing.
    pub fn by_id_from_header(value: &str) -> BTreeMap<String, Reveal> {
        value
            .split(',')
            .filter_map(|entry| {
                let (id, kinds) = entry.trim().split_once('=')?;
                let id = String::from_utf8(hex::decode(id).ok()?).ok()?;
                Some((id, Reveal::from_header(&kinds.replace('+', ","))))
            })
            .collect()
    }
}
