//! The wire contract between the filter and the service: every header name, format and
//! parser both sides must read the same way, defined once for both.
//!
//! - Headers of the gateway: [`GATEHOUSE_HEADER_PREFIX`] (what a client may never send),
//!   [`REQUEST_ID_HEADER`] (filter → service, and on the client's answer), and the OK
//!   Check's answer headers the filter reads and removes: [`REVEAL_HEADER`],
//!   [`REVEAL_IDS_HEADER`], [`TOOLS_HEADER`], [`CREDENTIAL_HEADER`], [`SESSION_KEY_HEADER`].
//!   The values of the last four are read and written by the modules that own their logic
//!   (`mask`, `tools`, `upstream`, `session`), which re-export the names.
//! - Request ids: [`format_request_id`] and [`is_request_id`].
//! - The caller's token: [`bearer_token`].
//! - The filter's plugin configuration: [`crate::plugin_config::PluginConfig`].
//! - The refusal body: [`crate::jsonrpc_error::error_body`].
//!
//! MCP's own header names (`Mcp-Session-Id`, …) are the protocol's, in [`crate::mcp`].

/// Every request header with this prefix comes from the gateway, never from a client: the
/// filter removes client-sent ones before anything reads them.
pub const GATEHOUSE_HEADER_PREFIX: &str = "x-gatehouse-";
/// The random id the filter gives every request it lets through ([`is_request_id`]); the
/// service refuses a Check without one, and the client's answer carries it.
pub const REQUEST_ID_HEADER: &str = "x-gatehouse-request-id";
/// The kinds the service lets this caller see in clear, added by an OK Check to the answer
/// (kind names separated by commas, `-` for none). The filter always removes it.
pub const REVEAL_HEADER: &str = "x-gatehouse-reveal";
/// The reveal of each message of a batch, added by an OK Check to the answer:
/// `hex(id)=kind+kind` entries separated by commas (`-` for none), or `*` for a single
/// message ([`crate::mask::RevealPlan`]). The filter always removes it.
pub const REVEAL_IDS_HEADER: &str = "x-gatehouse-reveal-ids";
/// The tools the caller may see in a `tools/list` answer, added by an OK Check
/// ([`crate::tools::ToolVisibility::to_header`]). The filter always removes it.
pub const TOOLS_HEADER: &str = "x-gatehouse-tools";
/// The kind of credential the gateway presented upstream (`aws_sigv4`, `static_header`),
/// added by an OK Check ([`crate::upstream`]). The filter always removes it.
pub const CREDENTIAL_HEADER: &str = "x-gatehouse-credential";
/// The key that binds the upstream's session id to its caller (64 hex characters), added
/// by an OK Check ([`crate::session::binding_key`]). The filter always removes it.
pub const SESSION_KEY_HEADER: &str = "x-gatehouse-session-key";

/// Bytes in a request id.
pub const REQUEST_ID_BYTES: usize = 16;
/// Of which the first hold the time in milliseconds since the Unix epoch (big-endian, 48 bits:
/// until the year 10889), the rest are random.
const TIME_BYTES: usize = 6;
/// Random bytes in a request id (80 bits: ids made in the same millisecond do not collide).
pub const REQUEST_ID_RANDOM_BYTES: usize = REQUEST_ID_BYTES - TIME_BYTES;

/// The request id made at `now_ms` (milliseconds since the Unix epoch) with `random` bytes
/// (the caller's source of randomness, as the filter and the service have different ones):
/// 32 lowercase hex characters. Ids sort by the time they were made, so the audit store's
/// index by request id grows at its right edge instead of touching a random page per record
/// (which slowed every insert as the trail grew).
pub fn format_request_id(now_ms: u64, random: &[u8; REQUEST_ID_RANDOM_BYTES]) -> String {
    let mut bytes = [0; REQUEST_ID_BYTES];
    let (time, rest) = bytes.split_at_mut(TIME_BYTES);
    time.copy_from_slice(&now_ms.to_be_bytes()[8 - TIME_BYTES..]);
    rest.copy_from_slice(random);
    hex::encode(bytes)
}

/// Whether `s` is a request id as [`format_request_id`] makes them. The service refuses a
/// Check whose id is not: the request did not come through the filter.
pub fn is_request_id(s: &str) -> bool {
    s.len() == 2 * REQUEST_ID_BYTES && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The token of an `Authorization: Bearer …` header value (the scheme is case-insensitive,
/// blanks around the value and the token are ignored); `None` for another scheme, an empty
/// token or no header. The service verifies it; the filter only attributes a rejection.
pub fn bearer_token(authorization: Option<&str>) -> Option<&str> {
    let (scheme, token) = authorization?.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_sort_by_the_time_they_were_made() {
        let ids: Vec<String> = [1_700_000_000_000_u64, 1_700_000_000_001, 1_800_000_000_000]
            .iter()
            .zip([[0xff; 10], [0; 10], [0x80; 10]])
            .map(|(ms, random)| format_request_id(*ms, &random))
            .collect();
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(ids, sorted);
    }

    #[test]
    fn request_ids_are_32_lowercase_hex() {
        let id = format_request_id(0x0123_4567_89ab, &[0xab; 10]);
        assert_eq!(id, "0123456789ababababababababababab");
        assert!(is_request_id(&id));
        assert!(is_request_id(&format_request_id(0, &[0; 10])));
        assert!(is_request_id(&format_request_id(u64::MAX, &[0xff; 10])));
        for bad in [
            "ABABABABABABABABABABABABABABABAB",
            "abc",
            "",
            "abababababababababababababababa",
            "ababababababababababababababababa",
            "gbababababababababababababababab",
            "abababababababab-bababababababab",
        ] {
            assert!(!is_request_id(bad), "{bad}");
        }
    }

    #[test]
    fn the_bearer_token_is_read_whatever_the_case_and_blanks() {
        assert_eq!(bearer_token(Some("Bearer abc")), Some("abc"));
        assert_eq!(bearer_token(Some("bearer  eyJ.x.y ")), Some("eyJ.x.y"));
        assert_eq!(bearer_token(Some(" BEARER abc")), Some("abc"));
        for none in [
            Some("Bearer "),
            Some("Bearer"),
            Some("Basic abc"),
            Some("Token abc"),
            Some(""),
            None,
        ] {
            assert_eq!(bearer_token(none), None, "{none:?}");
        }
    }

    #[test]
    fn every_gateway_header_has_the_prefix_the_filter_strips() {
        for name in [
            REQUEST_ID_HEADER,
            REVEAL_HEADER,
            REVEAL_IDS_HEADER,
            TOOLS_HEADER,
            CREDENTIAL_HEADER,
            SESSION_KEY_HEADER,
        ] {
            assert!(name.starts_with(GATEHOUSE_HEADER_PREFIX), "{name}");
            assert_eq!(
                name,
                name.to_ascii_lowercase(),
                "Envoy gives header names in lower case"
            );
        }
    }
}
