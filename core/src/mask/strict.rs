//! Duplicate object keys: JSON that means different things to different readers.
//!
//! serde_json keeps the last of two equal keys, other parsers the first or both. A masker
//! that looked at the last one and then passed the original bytes would let the first one
//! out unread. So the masker never passes such JSON as it came: it sends its own masked
//! re-serialization (one value per key, exactly what was read and what the record holds),
//! and a request that carries duplicate keys is refused (`mcp::parse_body`).

use std::collections::BTreeSet;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

/// Whether `json` (valid JSON or not) has an object with the same key twice, at any depth.
/// Keys are compared after unescaping, so `"a"` and `"\u0061"` are the same key.
pub fn has_duplicate_keys(json: &[u8]) -> bool {
    let mut de = serde_json::Deserializer::from_slice(json);
    matches!(Unique.deserialize(&mut de), Err(e) if e.to_string().starts_with(DUPLICATE))
}

const DUPLICATE: &str = "duplicate key";

/// Walks a JSON value and fails on the first repeated key.
struct Unique;

impl<'de> DeserializeSeed<'de> for Unique {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Unique {
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
        while seq.next_element_seed(Unique)?.is_some() {}
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut keys = BTreeSet::new();
        while let Some(key) = map.next_key::<String>()? {
            if !keys.insert(key) {
                return Err(de::Error::custom(DUPLICATE));
            }
            map.next_value_seed(Unique)?;
        }
        Ok(())
    }
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
