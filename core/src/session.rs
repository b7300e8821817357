//! Binding MCP sessions to their caller, without state.
//!
//! An upstream's `Mcp-Session-Id` is a bearer capability: whoever sends it speaks in that
//! session. The gateway hands the client `<tag>.<upstream id>` instead, where the tag is a
//! truncated HMAC of the upstream id under a *binding key* derived from the service's
//! secret, the caller's subject and the upstream. The service derives the key in the Check
//! and gives it to the filter (a response header the filter removes), which tags the
//! upstream's answer; on each later request the Check recomputes the tag for the caller who
//! sends it and forwards the plain upstream id only if it matches. Nothing is stored, so it
//! holds across Envoy workers and service replicas that share the secret.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// Bytes of HMAC kept in a tag (hex-encoded: twice as many characters).
const TAG_BYTES: usize = 16;
/// Separates the tag from the upstream's id. Never in a tag (hex), so the first one splits.
const SEPARATOR: char = '.';

/// The key that binds sessions to `subject` on `upstream`, from the service's secret.
/// Each part is length-prefixed, so no two (subject, upstream) pairs share an encoding.
/// (`None` only if HMAC refused a key, which it does for no length.)
pub fn binding_key(secret: &[u8], subject: &str, upstream: &str) -> Option<[u8; 32]> {
    let mut mac = HmacSha256::new_from_slice(secret).ok()?;
    mac.update(b"gatehouse-session-binding-v1");
    for part in [subject, upstream] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part.as_bytes());
    }
    Some(mac.finalize().into_bytes().into())
}

/// The value of [`SESSION_KEY_HEADER`](crate::wire::SESSION_KEY_HEADER) for a binding key (the Check writes it).
pub fn key_header_value(binding_key: &[u8; 32]) -> String {
    hex::encode(binding_key)
}

/// The binding key in a [`SESSION_KEY_HEADER`](crate::wire::SESSION_KEY_HEADER) value (the filter reads it); `None` unless
/// it is 32 bytes in hex.
pub fn key_from_header(value: &[u8]) -> Option<[u8; 32]> {
    let mut key = [0; 32];
    hex::decode_to_slice(std::str::from_utf8(value).ok()?.trim(), &mut key).ok()?;
    Some(key)
}

fn tag_mac(binding_key: &[u8], upstream_id: &str) -> Option<HmacSha256> {
    let mut mac = HmacSha256::new_from_slice(binding_key).ok()?;
    mac.update(upstream_id.as_bytes());
    Some(mac)
}

/// The session id the client is given for the upstream's `upstream_id`.
pub fn bind(binding_key: &[u8], upstream_id: &str) -> Option<String> {
    let tag = tag_mac(binding_key, upstream_id)?.finalize().into_bytes();
    let tag = tag.get(..TAG_BYTES)?;
    Some(format!("{}{SEPARATOR}{upstream_id}", hex::encode(tag)))
}

/// The upstream's id inside a session id the client sent, if its tag is this caller's.
pub fn unbind<'a>(binding_key: &[u8], presented: &'a str) -> Option<&'a str> {
    let (tag, upstream_id) = presented.split_once(SEPARATOR)?;
    let tag = hex::decode(tag).ok().filter(|t| t.len() == TAG_BYTES)?;
    // Constant-time comparison of the truncated tag.
    tag_mac(binding_key, upstream_id)?
        .verify_truncated_left(&tag)
        .ok()
        .map(|()| upstream_id)
}

/// The upstream's part of a session id as the client sent it (for records): what follows
/// the tag, or the whole value when it has none.
pub fn upstream_part(presented: &str) -> &str {
    presented
        .split_once(SEPARATOR)
        .filter(|(tag, _)| tag.len() == 2 * TAG_BYTES && tag.bytes().all(|b| b.is_ascii_hexdigit()))
        .map_or(presented, |(_, id)| id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_id_comes_back_only_for_its_caller_and_upstream() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let alice = binding_key(secret, "alice", "everything").unwrap();
        let sid = "4f7c1a2e-9b1d-4c1e-8f00-aa55aa55aa55";
        let bound = bind(&alice, sid).unwrap();
        assert!(bound.ends_with(&format!(".{sid}")));
        assert_eq!(unbind(&alice, &bound), Some(sid));
        assert_eq!(upstream_part(&bound), sid);

        for other in [
            binding_key(secret, "bob", "everything").unwrap(),
            binding_key(secret, "alice", "demo").unwrap(),
            binding_key(b"another secret", "alice", "everything").unwrap(),
            // Length prefixes: ("ab", "c") and ("a", "bc") are different callers.
            binding_key(secret, "alicee", "verything").unwrap(),
        ] {
            assert_eq!(unbind(&other, &bound), None);
        }
        // The plain upstream id, a tag for another id, a cut or a malformed tag: refused.
        let for_other_id = bind(&alice, "other").unwrap();
        let forged = format!("{}.{sid}", for_other_id.split_once('.').unwrap().0);
        for bad in [sid, &forged, &bound[1..], "zz.x", "", ".", &format!(".{sid}")] {
            assert_eq!(unbind(&alice, bad), None, "{bad}");
        }
    }

    #[test]
    fn the_key_header_carries_the_key_and_nothing_else() {
        let key = binding_key(b"k", "s", "u").unwrap();
        let value = key_header_value(&key);
        assert_eq!(value.len(), 64);
        assert_eq!(key_from_header(value.as_bytes()), Some(key));
        assert_eq!(
            key_from_header(format!(" {} ", value.to_uppercase()).as_bytes()),
            Some(key)
        );
        for bad in [&value[..62], &value[1..], "", "zz", &format!("{value}00")] {
            assert_eq!(key_from_header(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(key_from_header(b"\xff"), None);
    }

    #[test]
    fn upstream_ids_with_dots_survive() {
        let key = binding_key(b"k", "s", "u").unwrap();
        let bound = bind(&key, "a.b.c").unwrap();
        assert_eq!(unbind(&key, &bound), Some("a.b.c"));
        assert_eq!(upstream_part(&bound), "a.b.c");
        assert_eq!(upstream_part("a.b.c"), "a.b.c");
    }
}
