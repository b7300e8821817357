//! Header names the filter and the service must agree on, defined once for both.
//!
//! Further names of the contract live with the logic that reads them:
//! [`crate::tools::TOOLS_HEADER`], [`crate::upstream::CREDENTIAL_HEADER`],
//! [`crate::session::SESSION_KEY_HEADER`], [`crate::mask::REVEAL_IDS_HEADER`].

/// Every request header with this prefix comes from the gateway, never from a client: the
/// filter removes client-sent ones before anything reads them.
pub const GATEHOUSE_HEADER_PREFIX: &str = "x-gatehouse-";
/// The random id the filter gives every request it lets through (32 lowercase hex
/// characters); the service refuses a Check without one, and the client's answer carries it.
pub const REQUEST_ID_HEADER: &str = "x-gatehouse-request-id";
/// The kinds the service lets this caller see in clear, added by an OK Check to the answer
/// (kind names separated by commas, `-` for none). The filter always removes it.
pub const REVEAL_HEADER: &str = "x-gatehouse-reveal";
