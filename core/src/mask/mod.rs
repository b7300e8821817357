//! The masking engine: finds secrets and personal data in text and in MCP (JSON-RPC)
//! messages and replaces them before they leave the gateway.
//!
//! One engine serves the wasm filter (answers to the client, response records) and the
//! service (request records, the `gatehouse mask` CLI), so both mask alike.
//!
//! - [`MaskConfig`]: the rules (serde; the service builds it from `gatehouse.yaml` and
//!   hands it to the filter inside the plugin configuration).
//! - [`Masker`]: the compiled rules. Text, JSON values, JSON bodies.
//! - [`SseMasker`]: masks a Server-Sent Events stream event by event, fed chunks split at
//!   any byte, never holding more than one unfinished event.
//! - [`Reveal`]: the kinds one caller may see in clear (decided by the service per
//!   upstream, tool and group); everything else is masked.
//! - [`RevealPlan`]: the kinds each message of one answer may show (a batch's messages
//!   answer calls of different tools).
//! - [`MaskCounts`]: how many values of each kind were masked — never the values.
//!
//! Inside: `detect` is the one-pass scanner behind every built-in kind, `validate` the
//! checksums that tell real numbers from look-alikes, `keys` the field rules.

mod config;
mod counts;
mod detect;
mod engine;
mod gitleaks;
mod keys;
mod kinds;
mod shape;
mod sse;
mod strict;
#[cfg(test)]
mod tests;
mod validate;

pub use config::{CustomRule, MaskConfig, MaskConfigError, Style};
pub use counts::{MaskCounts, Reveal, RevealPlan};
pub use engine::{JsonMasked, Masker, builtin_kinds};
pub use gitleaks::{AllowTarget, Entropy, GitleaksAllowlist, GitleaksRule};
pub use sse::{MaskedEvent, SseMasker};
pub use strict::has_duplicate_keys;
