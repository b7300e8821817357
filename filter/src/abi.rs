//! The byte layouts of the proxy-wasm ABI (0.2.1) that the filter builds and reads itself.
//!
//! Header maps cross the ABI as: `u32` count, then per pair `u32` name length and `u32`
//! value length, then each name and value followed by a NUL. The SDK's own decoder
//! `unwrap`s the UTF-8 of every value and indexes without bounds checks; this one never
//! panics, whatever the bytes.

/// Serializes header pairs for the host.
pub fn serialize_map(pairs: &[(&str, &[u8])]) -> Vec<u8> {
    let size = 4 + pairs.iter().map(|(n, v)| n.len() + v.len() + 10).sum::<usize>();
    let mut bytes = Vec::with_capacity(size);
    bytes.extend_from_slice(&len_u32(pairs.len()).to_le_bytes());
    for (name, value) in pairs {
        bytes.extend_from_slice(&len_u32(name.len()).to_le_bytes());
        bytes.extend_from_slice(&len_u32(value.len()).to_le_bytes());
    }
    for (name, value) in pairs {
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        bytes.extend_from_slice(value);
        bytes.push(0);
    }
    bytes
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Reads header pairs from the host; `None` if the bytes are not a valid map.
pub fn deserialize_map(bytes: &[u8]) -> Option<Vec<(String, Vec<u8>)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let count = read_u32(bytes, 0)?;
    let mut pairs = Vec::with_capacity(count.min(1024));
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    for i in 0..count {
        let name_len = read_u32(bytes, 4 + i * 8)?;
        let value_len = read_u32(bytes, 8 + i * 8)?;
        let name = bytes.get(data..data.checked_add(name_len)?)?;
        data = data.checked_add(name_len)?.checked_add(1)?;
        let value = bytes.get(data..data.checked_add(value_len)?)?;
        data = data.checked_add(value_len)?.checked_add(1)?;
        pairs.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
    }
    Some(pairs)
}

fn read_u32(bytes: &[u8], at: usize) -> Option<usize> {
    let word: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    usize::try_from(u32::from_le_bytes(word)).ok()
}

/// Serializes a property path (`["response", "code_details"]`).
pub fn serialize_path(path: &[&str]) -> Vec<u8> {
    path.join("\0").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_round_trip() {
        let pairs: [(&str, &[u8]); 3] = [(":status", b"200"), ("x-a", b"\xff\x00b"), ("empty", b"")];
        let back = deserialize_map(&serialize_map(&pairs)).unwrap();
        let expected: Vec<(String, Vec<u8>)> = pairs.iter().map(|(n, v)| (n.to_string(), v.to_vec())).collect();
        assert_eq!(back, expected);
        assert_eq!(deserialize_map(&[]), Some(vec![]));
        assert_eq!(deserialize_map(&serialize_map(&[])), Some(vec![]));
    }

    #[test]
    fn garbage_maps_are_refused_not_panicked_on() {
        let good = serialize_map(&[("name", b"value")]);
        // Everything short of the last NUL is cut.
        for cut in 0..good.len() - 1 {
            assert_eq!(
                deserialize_map(&good[..cut]).filter(|p| !p.is_empty()),
                None,
                "cut at {cut}"
            );
        }
        assert_eq!(deserialize_map(&[0xff, 0xff, 0xff, 0xff]), None);
        let mut huge = good.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(deserialize_map(&huge), None);
    }

    #[test]
    fn paths_are_nul_separated() {
        assert_eq!(serialize_path(&["response", "code_details"]), b"response\0code_details");
        assert_eq!(serialize_path(&[]), b"");
    }
}
