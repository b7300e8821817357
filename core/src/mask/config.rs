//! The masking rules as configured. Serde types shared by the plugin configuration (JSON)
//! and the service (which builds them from `gatehouse.yaml`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::gitleaks::GitleaksRule;

/// How a masked value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Style {
    /// `[MASKED:email]`.
    #[default]
    Redact,
    /// `[MASKED:credit_card:…1111]`: the last four characters stay (redact if the value
    /// is shorter than eight).
    Last4,
    /// `[MASKED:email:tok_…]`: a keyed hash of the value, the same for the same value and
    /// key, so an auditor can correlate without seeing it. Needs `token_key`.
    Token,
}

/// A named regex from the configuration. Every match is masked as kind `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomRule {
    pub name: String,
    pub pattern: String,
}

/// The rules. `Default` is the built-in rule set: every detector on, the built-in
/// sensitive keys, every kind redacted.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaskConfig {
    /// Built-in detectors (and imported gitleaks rules) to turn off, by kind name.
    pub disabled: Vec<String>,
    /// JSON keys whose values are masked whatever they look like, added to the built-in
    /// ones (`password`, `secret`, `token`, `api_key`, `authorization`, …).
    pub sensitive_keys: Vec<String>,
    /// Extra detectors.
    pub custom: Vec<CustomRule>,
    /// Rules imported from a gitleaks configuration file (the service reads the file named
    /// by `masking.gitleaks` in `gatehouse.yaml`); each is masked under its id.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gitleaks: Vec<GitleaksRule>,
    /// Style per kind; kinds not listed use `default_style`.
    pub styles: BTreeMap<String, Style>,
    pub default_style: Style,
    /// Key of the `token` style, hex (at least 16 bytes). Without it `token` is refused.
    pub token_key: Option<String>,
}

/// Why a configuration cannot be compiled. Every problem is listed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .problems.join("; "))]
pub struct MaskConfigError {
    pub problems: Vec<String>,
}
