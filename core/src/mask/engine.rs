//! The compiled rules and the walks over text and JSON.
//!
//! STUB: the signatures are the contract; the detectors are being written.

use std::borrow::Cow;

use serde_json::Value;

use super::{MaskConfig, MaskConfigError, MaskCounts, Reveal};

/// What [`Masker::mask_json`] made of a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JsonMasked {
    /// Valid JSON with nothing to mask: the input may be used as is.
    Unchanged,
    /// Valid JSON, re-serialized with the masked values.
    Changed(Vec<u8>),
    /// Not JSON (or not UTF-8): the caller should fall back to [`Masker::mask_bytes_as_text`].
    NotJson,
}

/// The compiled masking rules. Cheap to share; every method takes `&self`.
#[derive(Debug, Clone)]
pub struct Masker {
    _config: MaskConfig,
}

impl Default for Masker {
    /// The built-in rules (no token key: the `token` style is not available).
    fn default() -> Self {
        Self {
            _config: MaskConfig::default(),
        }
    }
}

impl Masker {
    /// Compiles the rules; every problem (bad regex, unknown kind, missing token key) is
    /// listed at once.
    pub fn new(config: &MaskConfig) -> Result<Self, MaskConfigError> {
        Ok(Self {
            _config: config.clone(),
        })
    }

    /// Every kind this masker can report: the built-in ones plus the custom rules'.
    pub fn kinds(&self) -> Vec<String> {
        Vec::new()
    }

    /// Masks free text. Returns the input borrowed when nothing was found.
    pub fn mask_text<'a>(&self, text: &'a str, _reveal: &Reveal, _counts: &mut MaskCounts) -> Cow<'a, str> {
        Cow::Borrowed(text)
    }

    /// Masks any JSON value in place: every string (text that is itself JSON is masked
    /// inside and re-serialized), values under sensitive keys whatever they are, and not
    /// base64 blobs. Returns whether anything changed.
    pub fn mask_value(&self, _value: &mut Value, _reveal: &Reveal, _counts: &mut MaskCounts) -> bool {
        false
    }

    /// Masks one JSON-RPC message (or a batch) in place: `params`, `result` and `error`;
    /// `jsonrpc`, `id` and `method` are left alone. Returns whether anything changed.
    pub fn mask_message(&self, _message: &mut Value, _reveal: &Reveal, _counts: &mut MaskCounts) -> bool {
        false
    }

    /// Masks a body that should be a JSON-RPC message (or batch).
    pub fn mask_json(&self, _body: &[u8], _reveal: &Reveal, _counts: &mut MaskCounts) -> JsonMasked {
        JsonMasked::Unchanged
    }

    /// Masks bytes as text; invalid UTF-8 is replaced with U+FFFD (never passed through).
    /// `None` when the bytes are valid UTF-8 and nothing was found.
    pub fn mask_bytes_as_text(&self, _body: &[u8], _reveal: &Reveal, _counts: &mut MaskCounts) -> Option<Vec<u8>> {
        None
    }
}
