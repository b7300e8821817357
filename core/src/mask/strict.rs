//! Duplicate object keys: JSON that means different things to different readers.
//!
//! serde_json keeps the last of two equal keys, other parsers the first or both. A masker
//! that looked at the last one and then passed the original bytes would let the first one
//! out unread. So the masker never passes such JSON as it came: it sends its own masked
//! re-serialization (one value per key, exactly what was read and what the record holds),
//! and a request that carries duplicate keys is refused (`mcp::parse_body`).

/// Whether `json` (valid JSON or not) has an object with the same key twice, at any depth.
/// Keys are compared after unescaping, so `"a"` and `"\u0061"` are the same key.
pub fn has_duplicate_keys(json: &[u8]) -> bool {
    crate::json_keys::repeated_key(json, str::to_owned).is_some()
}

#[cfg(test)]
mod tests {
    use super::has_duplicate_keys;

    #[test]
    fn finds_repeated_keys_at_any_depth_and_after_unescaping() {
        assert!(has_duplicate_keys(br#"{"a":1,"a":2}"#));
        assert!(has_duplicate_keys(br#"{"a":1,"\u0061":2}"#));
        assert!(has_duplicate_keys(br#"[{"x":{"b":[{"c":1,"c":1}]}}]"#));
        assert!(!has_duplicate_keys(br#"{"a":{"a":{"a":1}},"b":[{"a":1},{"a":2}]}"#));
        assert!(!has_duplicate_keys(b"not json"));
        assert!(
            !has_duplicate_keys(br#""{\"a\":1,\"a\":2}""#),
            "JSON inside a string is another document"
        );
    }
}
