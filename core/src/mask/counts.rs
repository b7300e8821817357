//! Counts of masked values per kind, and the set of kinds one caller may see.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

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
