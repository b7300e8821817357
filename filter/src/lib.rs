//! The Gatehouse proxy-wasm HTTP filter for Envoy.
//!
//! It runs first on the MCP route. On the way in it removes every client-sent
//! `x-gatehouse-*` header, gives the request a random `x-gatehouse-request-id`, and
//! refuses what is not MCP (wrong method, not JSON, too large, not JSON-RPC, 2026-07-28
//! routing headers that disagree with the body) with a JSON-RPC error before anything
//! reaches ext_authz or an upstream, and asks the upstream for an uncompressed answer. On
//! the way out it masks secrets and personal data in the answer — a JSON answer whole, an
//! SSE stream event by event — showing the client only the kinds the service revealed to
//! it (`x-gatehouse-reveal`, which it removes), refuses what it cannot mask (a compressed
//! or over-large answer) with a 502, and records the answer masked with nothing revealed.
//! It ships those records, and its own rejections, to the service's audit ingest over gRPC
//! from a bounded queue.
//!
//! Reading order: [`config`], [`request`] (decisions on the way in), [`response`]
//! (masking and records on the way out: the head, the Pass/Stream/Buffer state machine,
//! the SSE pipeline, the records), [`body`] (how a step reaches the host's buffer),
//! [`queue`] (batching and retries), [`stalls`] (answers held until their records fit),
//! [`metrics`]; then the proxy-wasm shell, which only exists on `wasm32`: `shared` (the
//! state a VM's contexts share), `glue` (the callbacks) and `host` (the ABI). Everything
//! except the shell is pure and tested natively with `cargo test -p gatehouse-filter`.
//!
//! The filter never panics: a panic kills the VM for every request on its worker. The
//! crate denies `unwrap`, `expect`, `panic!` and indexing, and `host` replaces the SDK
//! calls that would panic on an unexpected host status.

#![cfg_attr(
    test,
    allow(clippy::panic, clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used)
)]

pub mod abi;
pub mod body;
pub mod config;
pub mod ids;
pub mod metrics;
pub mod queue;
pub mod request;
pub mod response;
pub mod stalls;

#[cfg(target_arch = "wasm32")]
mod glue;
#[cfg(target_arch = "wasm32")]
mod host;
#[cfg(target_arch = "wasm32")]
mod shared;

// The SDK's entry point: `_initialize`, run by the host when it loads the module. The
// macro expands to `#[no_mangle]` and an `unsafe` call to `__wasm_call_ctors`.
#[cfg(target_arch = "wasm32")]
#[allow(unsafe_code)]
mod entry {
    proxy_wasm::main! {{
        crate::glue::start();
    }}
}
