//! Repeated object keys: JSON that means different things to different readers.
//!
//! serde_json keeps the last of two equal keys, other parsers the first or both, and some
//! (Go's `encoding/json`) match keys case-insensitively. One walk finds the first key that
//! repeats in an object, keys compared after unescaping and after a normalization the
//! caller picks: exact for answers the masker must not pass unread ([`crate::mask`]),
//! case-folded for requests the policy must read as the upstream will ([`crate::mcp`]).

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// The first key of `json` that repeats within one object, at any depth, once both are
/// passed through `normalize`; `None` when none does or the bytes are not JSON (parsing
/// reports that elsewhere). JSON inside a string is another document and is not looked at.
pub fn repeated_key(json: &[u8], normalize: fn(&str) -> String) -> Option<String> {
    let mut de = serde_json::Deserializer::from_slice(json);
    let error = (Walk { normalize }).deserialize(&mut de).err()?.to_string();
    // serde_json keeps only the message (and appends a position): the key rides between markers.
    let key = error.strip_prefix(MARKER)?;
    key.find(MARKER).map(|end| key[..end].to_owned())
}

#[derive(Clone, Copy)]
struct Walk {
    normalize: fn(&str) -> String,
}

impl<'de> DeserializeSeed<'de> for Walk {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(self)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = BTreeSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !seen.insert((self.normalize)(&key)) {
                return Err(de::Error::custom(RepeatedMarker(key)));
            }
            map.next_value_seed(self)?;
        }
        Ok(())
    }
}

/// Carries the repeated key through serde_json's error, which only keeps a message.
struct RepeatedMarker(String);

impl fmt::Display for RepeatedMarker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{MARKER}{}{MARKER}", self.0)
    }
}

const MARKER: &str = "\u{0}repeated-key\u{0}";

#[cfg(test)]
mod tests {
    use super::repeated_key;

    fn exact(key: &str) -> String {
        key.to_owned()
    }

    fn folded(key: &str) -> String {
        key.to_lowercase()
    }

    #[test]
    fn finds_the_first_repeated_key_at_any_depth_after_unescaping() {
        assert_eq!(repeated_key(br#"{"a":1,"a":2}"#, exact).as_deref(), Some("a"));
        assert_eq!(repeated_key(br#"{"a":1,"\u0061":2}"#, exact).as_deref(), Some("a"));
        assert_eq!(
            repeated_key(br#"[{"x":{"b":[{"c":1,"c":1}]}}]"#, exact).as_deref(),
            Some("c")
        );
        assert_eq!(
            repeated_key(br#"{"a":{"a":{"a":1}},"b":[{"a":1},{"a":2}]}"#, exact),
            None
        );
        assert_eq!(repeated_key(b"not json", exact), None);
        assert_eq!(repeated_key(br#""{\"a\":1,\"a\":2}""#, exact), None);
        // A key that holds the marker's text or a position-like tail is still returned whole.
        assert_eq!(
            repeated_key(br#"{"k at line 1":1,"k at line 1":2}"#, exact).as_deref(),
            Some("k at line 1")
        );
    }

    #[test]
    fn the_normalization_decides_what_counts_as_the_same_key() {
        let body = br#"{"name":"echo","NAME":"run_query"}"#;
        assert_eq!(repeated_key(body, exact), None);
        assert_eq!(repeated_key(body, folded).as_deref(), Some("NAME"));
    }
}
