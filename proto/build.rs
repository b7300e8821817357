//! Compiles `proto/` once, with protox (a pure-Rust protoc), so no protoc binary is needed.
//! Messages and the tonic service are generated separately: the wasm filter only needs the
//! messages, the service also needs the gRPC stubs (`grpc` feature).

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] = &["gatehouse/audit/v1/ingest.proto", "gatehouse/otlp/v1/logs.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let fds = protox::compile(PROTOS, ["."])?;

    let messages = out.join("messages");
    fs::create_dir_all(&messages)?;
    prost_build::Config::new().out_dir(&messages).compile_fds(fds.clone())?;

    let grpc = out.join("grpc");
    fs::create_dir_all(&grpc)?;
    tonic_prost_build::configure()
        .build_transport(false)
        .out_dir(&grpc)
        .extern_path(".gatehouse.audit.v1", "crate::audit::v1")
        .extern_path(".gatehouse.otlp.v1", "crate::otlp::v1")
        .compile_fds(fds)?;
    Ok(())
}
