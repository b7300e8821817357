//! Gatehouse core: the pure logic of the gateway, with no I/O and no runtime.
//!
//! It builds for the host and for `wasm32-wasip1`, so the proxy-wasm filter and the
//! service share one implementation of every parsing and hashing rule.
//!
//! - [`mcp`]: the MCP (JSON-RPC 2.0) message model and classification of a request.
//! - [`sse`]: an incremental Server-Sent Events framer that never buffers a whole stream.
//! - [`audit`]: audit records, their canonical encoding and the hash chain over them.
//! - [`events`]: the typed audit events each record is made from (kind and data).
//! - [`mask`]: the masking engine for secrets and personal data, text, JSON and SSE.
//! - [`jsonrpc_error`]: JSON-RPC error bodies the gateway answers with.
//! - [`tools`]: which tools a caller may see in a `tools/list` answer, and the glob that
//!   matches tool names.
//! - [`session`]: MCP session ids bound to the caller who opened them (a keyed tag).
//! - [`upstream`]: how the service tells the filter which credential went upstream, and the
//!   error a client gets when the upstream refuses it.
//! - [`wire`]: the contract between the filter and the service: the `x-gatehouse-*` header
//!   names, the request id's format and the bearer token's parsing.
//! - [`plugin_config`]: the filter's configuration, as the service renders it and the
//!   filter reads it.
//! - [`json_keys`]: repeated object keys, which different JSON readers read differently.

pub mod audit;
pub mod events;
pub mod json_keys;
pub mod jsonrpc_error;
pub mod mask;
pub mod mcp;
pub mod plugin_config;
pub mod session;
pub mod sse;
pub mod tools;
pub mod upstream;
pub mod wire;
