//! Helpers for in-process tests: a config on free loopback ports and a started service.

use std::net::TcpListener;

use crate::{config::Config, server::Server};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

/// A config whose dev issuer is the service itself, in a fresh temp folder.
pub fn config(dir: &std::path::Path) -> Config {
    config_with(dir, "")
}

/// [`config`] with more top-level YAML appended (e.g. a `policy:` section).
pub fn config_with(dir: &std::path::Path, extra: &str) -> Config {
    Config::parse(&config_text(extra), &dir.join("gatehouse.yaml")).expect("test config is valid")
}

/// The text of [`config_with`], on fresh ports.
pub fn config_text(extra: &str) -> String {
    let (rest, grpc) = (free_port(), free_port());
    format!(
        r#"
service: {{ rest_listen: "127.0.0.1:{rest}", grpc_listen: "127.0.0.1:{grpc}", public_url: "https://gw.example", grpc_plaintext: true }}
identity:
  issuer: http://127.0.0.1:{rest}/dev
  audience: gatehouse
  leeway_seconds: 0
  dev_issuer: {{ enabled: true, key_file: dev.pem }}
audit: {{ database: "sqlite://audit.db", writer_id: gh-test, auditor_group: auditors, checkpoint: {{ key_file: cp.pem, every_records: 5, every_seconds: 1 }} }}
upstreams:
  - {{ name: everything, url: "http://127.0.0.1:1/mcp", path: /mcp, allow_groups: [eng] }}
envoy: {{ admin_listen: "127.0.0.1:1", http_listen: "127.0.0.1:2", wasm: f.wasm }}
{extra}"#
    )
}

pub async fn start(dir: &std::path::Path) -> Server {
    Server::start(config(dir)).await.expect("service starts")
}
