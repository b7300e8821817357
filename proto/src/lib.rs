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

/// The part of OTLP/HTTP logs the service's SIEM export sends and reads (`otlp` sink),
/// wire-compatible with opentelemetry-proto.
pub mod otlp {
    /// OTLP logs, as `proto/gatehouse/otlp/v1/logs.proto` has them.
    pub mod v1 {
        #![allow(missing_docs, clippy::all)]
        include!(concat!(env!("OUT_DIR"), "/messages/gatehouse.otlp.v1.rs"));
    }
}
