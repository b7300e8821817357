//! Gatehouse's own protobuf messages, generated from `proto/` by `build.rs`.
//!
//! Without features this is only prost messages (it builds for `wasm32-wasip1`, for the
//! filter). The `grpc` feature adds the tonic server and client for the service.

/// Audit ingest: what the filter observed on the data path, sent to the service.
pub mod audit {
    /// Version 1 of the audit ingest API.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        include!(concat!(env!("OUT_DIR"), "/messages/gatehouse.audit.v1.rs"));

        #[cfg(feature = "grpc")]
        include!(concat!(env!("OUT_DIR"), "/grpc/gatehouse.audit.v1.rs"));
    }
}
