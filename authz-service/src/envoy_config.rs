//! Renders the Envoy bootstrap from `gatehouse.yaml`, so Envoy's routes and the service's
//! upstreams come from one file and cannot disagree.
//!
//! Each upstream gets an exact-path route whose ext_authz context extension names it; the
//! wasm filter runs first (fail closed, `allow_on_headers_stop_iteration`), then ext_authz
//! (fail closed, with the request body), then the router. Streams get `timeout: 0s` and an
//! idle timeout instead, so long-lived SSE answers are not cut at 15 s.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use gatehouse_core::jsonrpc_error::{self, INTERNAL_ERROR, METHOD_NOT_FOUND};
use gatehouse_core::mask::MaskConfig;
use gatehouse_core::plugin_config::{DEFAULT_INGEST_CLUSTER, PluginConfig};
use gatehouse_core::wire::REQUEST_ID_HEADER;
use serde_json::{Value, json};

use crate::authz::UPSTREAM_EXTENSION;
use crate::config::{Config, Upstream};

/// The Envoy cluster that carries ext_authz Checks to the service's gRPC listener.
pub const GRPC_CLUSTER: &str = "gatehouse_grpc";
/// The Envoy cluster that carries the filter's records to the same listener. Its own
/// cluster, so that Checks held open for approvals cannot trip the breaker records need.
pub const INGEST_CLUSTER: &str = DEFAULT_INGEST_CLUSTER;
/// The Envoy cluster of the service's REST listener.
pub const REST_CLUSTER: &str = "gatehouse_rest";
const WASM_FILTER: &str = "envoy.filters.http.wasm";
const EXT_AUTHZ_FILTER: &str = "envoy.filters.http.ext_authz";
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Headers in which a client could claim another address than its connection's.
const CLIENT_ADDRESS_HEADERS: [&str; 4] = ["x-real-ip", "forwarded", "x-forwarded-host", "x-client-ip"];

/// The environment variable, in Envoy's environment, that carries the masking token key into
/// the filter's VM. Never in the bootstrap: Envoy's admin `/config_dump` shows the bootstrap.
pub const TOKEN_KEY_ENV: &str = "GATEHOUSE_MASK_TOKEN_KEY";

/// The bootstrap as YAML text. It holds no secret: the masking token key reaches the filter
/// through Envoy's environment ([`TOKEN_KEY_ENV`]). The key file is created here if missing,
/// so that Envoy can be started with it before the service first runs.
pub fn render(config: &Config) -> anyhow::Result<String> {
    config.masking.rules_with_key()?;
    let header = "# Rendered by `gatehouse envoy-config` from gatehouse.yaml: edit that file, not this one.\n";
    Ok(format!(
        "{header}{}",
        serde_yaml::to_string(&bootstrap(config, &config.masking.rules))?
    ))
}

/// Writes the bootstrap to `out` and, when the service's gRPC listener has mTLS, the two SDS
/// files its clusters read their certificates from (next to it: `gatehouse-grpc-client.sds.yaml`
/// and `gatehouse-grpc-ca.sds.yaml`). Envoy watches those and the certificate files they name,
/// and takes new certificates in without a restart ([`use_sds_files`]).
pub fn render_to(config: &Config, out: &Path) -> anyhow::Result<()> {
    config.masking.rules_with_key()?;
    let mut b = bootstrap(config, &config.masking.rules);
    // `--out envoy.yaml`: its folder is the current one.
    let folder = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let dir = std::path::absolute(folder)?;
    for (path, text) in use_sds_files(&mut b, config, &dir) {
        crate::private_file::write_private(&path, text.as_bytes())
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    }
    let header = "# Rendered by `gatehouse envoy-config` from gatehouse.yaml: edit that file, not this one.\n";
    let text = format!("{header}{}", serde_yaml::to_string(&b)?);
    crate::private_file::write_private(out, text.as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))
}

/// The SDS secret names of the service clusters' client certificate and CA.
const SDS_CLIENT: &str = "gatehouse_grpc_client";
const SDS_CA: &str = "gatehouse_grpc_ca";

/// Points the service clusters' TLS at SDS files in `dir` instead of inline certificate
/// files, and returns those files. Envoy watches each SDS file and the files it names (and,
/// when a secret's files share a folder, that folder for renames, as when Kubernetes swaps a
/// mounted Secret), so rotated certificates are taken in without a restart.
pub fn use_sds_files(b: &mut Value, config: &Config, dir: &Path) -> Vec<(PathBuf, String)> {
    let Some(tls) = &config.service.grpc_tls else {
        return Vec::new();
    };
    let sds = |name: &str, file: &Path, watched: Option<&Path>| {
        let mut source = json!({"path": file.display().to_string()});
        if let Some(folder) = watched {
            source["watched_directory"] = json!({"path": folder.display().to_string()});
        }
        json!({"name": name, "sds_config": {"path_config_source": source, "resource_api_version": "V3"}})
    };
    let folder_of = |files: &[&PathBuf]| {
        let first = files.first().and_then(|f| f.parent());
        first
            .filter(|d| files.iter().all(|f| f.parent() == Some(*d)))
            .map(Path::to_path_buf)
    };
    let (client_file, ca_file) = (
        dir.join("gatehouse-grpc-client.sds.yaml"),
        dir.join("gatehouse-grpc-ca.sds.yaml"),
    );
    let client_folder = folder_of(&[&tls.client_cert_file, &tls.client_key_file]);
    let ca_folder = folder_of(&[&tls.ca_file]);
    let clusters = b["static_resources"]["clusters"].as_array_mut().into_iter().flatten();
    for cluster in clusters.filter(|c| [GRPC_CLUSTER, INGEST_CLUSTER].contains(&c["name"].as_str().unwrap_or_default()))
    {
        let context = &mut cluster["transport_socket"]["typed_config"]["common_tls_context"];
        if let Some(obj) = context.as_object_mut() {
            obj.remove("tls_certificates");
            obj.remove("validation_context");
            obj.insert(
                "tls_certificate_sds_secret_configs".into(),
                json!([sds(SDS_CLIENT, &client_file, client_folder.as_deref())]),
            );
            obj.insert(
                "validation_context_sds_secret_config".into(),
                sds(SDS_CA, &ca_file, ca_folder.as_deref()),
            );
        }
    }
    let secret = |body: Value| {
        let doc = json!({"resources": [body]});
        format!(
            "# Rendered by `gatehouse envoy-config`: the service's gRPC mTLS, watched by Envoy.\n{}",
            serde_yaml::to_string(&doc).unwrap_or_default()
        )
    };
    vec![
        (
            client_file,
            secret(json!({
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                "name": SDS_CLIENT,
                "tls_certificate": {
                    "certificate_chain": {"filename": tls.client_cert_file.display().to_string()},
                    "private_key": {"filename": tls.client_key_file.display().to_string()},
                },
            })),
        ),
        (
            ca_file,
            secret(json!({
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret",
                "name": SDS_CA,
                "validation_context": {"trusted_ca": {"filename": tls.ca_file.display().to_string()}},
            })),
        ),
    ]
}

/// The bootstrap; `masking` is the filter's rule set, without its token key.
pub fn bootstrap(config: &Config, masking: &MaskConfig) -> Value {
    let e = &config.envoy;
    let mut listeners = Vec::new();
    if let Some(addr) = e.http_listen {
        listeners.push(listener(config, masking, "mcp_http", addr, None));
    }
    if let Some(addr) = e.https_listen {
        let tls = json!({
            "name": "envoy.transport_sockets.tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
                "common_tls_context": {
                    "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                    "alpn_protocols": ["h2", "http/1.1"],
                    "tls_certificates": [{
                        "certificate_chain": {"filename": path_text(e.tls_cert.as_deref())},
                        "private_key": {"filename": path_text(e.tls_key.as_deref())},
                    }],
                },
            },
        });
        listeners.push(listener(config, masking, "mcp_https", addr, Some(tls)));
    }
    let mut clusters = vec![
        grpc_cluster(config, GRPC_CLUSTER, check_concurrency(config)),
        grpc_cluster(config, INGEST_CLUSTER, INGEST_CONCURRENCY),
        static_cluster(REST_CLUSTER, config.service.rest_listen, false),
    ];
    clusters.extend(config.upstreams.iter().map(upstream_cluster));
    json!({
        "node": {"id": "gatehouse", "cluster": "gatehouse"},
        "admin": {"address": socket(e.admin_listen)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
        // Envoy's default is unlimited downstream connections: bound them.
        "overload_manager": {"resource_monitors": [{
            "name": "envoy.resource_monitors.global_downstream_max_connections",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3.DownstreamConnectionsConfig",
                "max_active_downstream_connections": 50000,
            },
        }]},
    })
}

fn path_text(p: Option<&std::path::Path>) -> String {
    p.map(|p| p.display().to_string()).unwrap_or_default()
}

fn socket(addr: SocketAddr) -> Value {
    json!({"socket_address": {"address": addr.ip().to_string(), "port_value": addr.port()}})
}

fn disabled_filters() -> Value {
    json!({
        WASM_FILTER: {"@type": "type.googleapis.com/envoy.config.route.v3.FilterConfig", "disabled": true},
        EXT_AUTHZ_FILTER: {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
            "disabled": true,
        },
    })
}

fn routes(config: &Config) -> Vec<Value> {
    let idle = format!("{}s", config.envoy.stream_idle_timeout_s);
    let mut routes = vec![json!({
        "name": "oauth_protected_resource",
        "match": {"prefix": "/.well-known/oauth-protected-resource"},
        "route": {"cluster": REST_CLUSTER, "timeout": "5s"},
        "typed_per_filter_config": disabled_filters(),
    })];
    for u in &config.upstreams {
        routes.push(json!({
            "name": format!("upstream_{}", u.name),
            "match": {"path": u.path},
            "route": {
                "cluster": cluster_name(u),
                // An exact path match: this rewrites the whole path to the upstream's.
                "prefix_rewrite": u.upstream_path(),
                // MCP servers check Host against DNS rebinding: send the one they serve.
                "host_rewrite_literal": u.authority(),
                "timeout": "0s",
                "idle_timeout": idle,
            },
            "typed_per_filter_config": {
                EXT_AUTHZ_FILTER: {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute",
                    "check_settings": {"context_extensions": {UPSTREAM_EXTENSION: u.name}},
                },
            },
        }));
    }
    let not_found = jsonrpc_error::error_body(None, METHOD_NOT_FOUND, "No MCP server is served at this path.", None);
    routes.push(json!({
        "name": "not_found",
        "match": {"prefix": "/"},
        "direct_response": {"status": 404, "body": {"inline_string": String::from_utf8_lossy(&not_found)}},
        "typed_per_filter_config": disabled_filters(),
    }));
    routes
}

/// The filter's configuration: never the token key itself, only where the VM finds it.
pub fn plugin_config(config: &Config, masking: &MaskConfig) -> PluginConfig {
    let (hosts, origins) = served_hosts_and_origins(config);
    PluginConfig {
        max_body_bytes: Some(config.envoy.max_request_bytes),
        max_response_bytes: Some(config.envoy.max_response_bytes),
        ingest_cluster: Some(INGEST_CLUSTER.to_owned()),
        allowed_hosts: Some(hosts),
        allowed_origins: Some(origins),
        masking: Some(MaskConfig {
            token_key: None,
            ..masking.clone()
        }),
        token_key_env: uses_token_key(config).then(|| TOKEN_KEY_ENV.to_owned()),
        ..PluginConfig::default()
    }
}

fn filter_configuration(config: &Config, masking: &MaskConfig) -> String {
    // Through a `Value`, whose object keys are sorted, so the text does not depend on the
    // struct's field order. It cannot fail (every map has string keys); if it did, `null`
    // is a configuration the filter refuses, and Envoy with it: closed, not the defaults.
    serde_json::to_value(plugin_config(config, masking))
        .unwrap_or(Value::Null)
        .to_string()
}

fn uses_token_key(config: &Config) -> bool {
    config.masking.token_key_file.is_some()
}

fn vm_config(config: &Config) -> Value {
    let mut vm = json!({
        "vm_id": "gatehouse",
        "runtime": "envoy.wasm.runtime.v8",
        "code": {"local": {"filename": config.envoy.wasm.display().to_string()}},
    });
    if uses_token_key(config)
        && let Some(obj) = vm.as_object_mut()
    {
        obj.insert(
            "environment_variables".into(),
            json!({"host_env_keys": [TOKEN_KEY_ENV]}),
        );
    }
    vm
}

/// The `Host` values the gateway answers to and the `Origin` values it accepts: the public
/// URL's, each listener's (as clients on the machine reach it: an unspecified address by
/// loopback, a loopback address as `localhost` too), and the configured extras.
pub fn served_hosts_and_origins(config: &Config) -> (Vec<String>, Vec<String>) {
    let mut hosts = Vec::new();
    let mut origins = Vec::new();
    let public = &config.service.public_url;
    if let Some(host) = public.host_str() {
        let host = host.to_ascii_lowercase();
        match public.port() {
            Some(port) => hosts.push(format!("{host}:{port}")),
            None => {
                // Clients may name the scheme's default port or leave it out.
                hosts.push(host.clone());
                if let Some(port) = public.port_or_known_default() {
                    hosts.push(format!("{host}:{port}"));
                }
            }
        }
        origins.push(public.origin().ascii_serialization());
    }
    let e = &config.envoy;
    for (scheme, addr) in [("http", e.http_listen), ("https", e.https_listen)] {
        let Some(addr) = addr else { continue };
        let ip = addr.ip();
        let mut names = Vec::new();
        if ip.is_unspecified() {
            names.extend(["127.0.0.1".to_owned(), "[::1]".to_owned()]);
        } else {
            names.push(SocketAddr::new(ip, 0).to_string().trim_end_matches(":0").to_owned());
        }
        if ip.is_unspecified() || ip.is_loopback() {
            names.push("localhost".to_owned());
        }
        for name in names {
            let authority = format!("{name}:{}", addr.port());
            origins.push(format!("{scheme}://{authority}"));
            hosts.push(authority);
        }
    }
    hosts.extend(e.allowed_hosts.iter().cloned());
    origins.extend(e.allowed_origins.iter().cloned());
    for list in [&mut hosts, &mut origins] {
        let mut seen = std::collections::BTreeSet::new();
        list.retain(|v| seen.insert(v.clone()));
    }
    (hosts, origins)
}

fn listener(config: &Config, masking: &MaskConfig, name: &str, addr: SocketAddr, tls: Option<Value>) -> Value {
    let e = &config.envoy;
    let unavailable = jsonrpc_error::error_body(
        None,
        INTERNAL_ERROR,
        "The gateway's authorization service is unavailable; the request was not forwarded.",
        None,
    );
    let hcm = json!({
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": name,
        "codec_type": "AUTO",
        "stream_idle_timeout": format!("{}s", e.stream_idle_timeout_s),
        "request_headers_timeout": "10s",
        "common_http_protocol_options": {"headers_with_underscores_action": "REJECT_REQUEST"},
        // The gateway is the edge: the client's address comes from the connection, never
        // from what it claims. No hop is trusted and no address is internal, so Envoy
        // also drops a client's x-envoy-* headers; the route replaces X-Forwarded-For.
        "use_remote_address": true,
        "xff_num_trusted_hops": 0,
        "skip_xff_append": true,
        "internal_address_config": {"unix_sockets": false, "cidr_ranges": []},
        "access_log": [{
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog",
                "log_format": {"json_format": {
                    "time": "%START_TIME%",
                    "request_id": format!("%REQ({})%", REQUEST_ID_HEADER.to_ascii_uppercase()),
                    "method": "%REQ(:METHOD)%",
                    // Without the query string, as the records: it may carry secrets.
                    "path": "%REQ_WITHOUT_QUERY(:PATH)%",
                    "status": "%RESPONSE_CODE%",
                    "details": "%RESPONSE_CODE_DETAILS%",
                    "flags": "%RESPONSE_FLAGS%",
                    "duration_ms": "%DURATION%",
                    "upstream": "%UPSTREAM_CLUSTER%",
                },
                "formatters": [{
                    "name": "envoy.formatter.req_without_query",
                    "typed_config": {
                        "@type": "type.googleapis.com/envoy.extensions.formatter.req_without_query.v3.ReqWithoutQuery",
                    },
                }]},
            },
        }],
        // Only when ext_authz itself fails (service down or too slow): answer with a
        // JSON-RPC error instead of an empty body. The service's own denials keep theirs.
        "local_reply_config": {"mappers": [{
            "filter": {"extension_filter": {
                "name": "envoy.access_loggers.extension_filters.cel",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.access_loggers.filters.cel.v3.ExpressionFilter",
                    "expression": "response.code_details == 'ext_authz_error'",
                },
            }},
            "body": {"inline_string": String::from_utf8_lossy(&unavailable)},
            "body_format_override": {
                "text_format_source": {"inline_string": "%LOCAL_REPLY_BODY%"},
                "content_type": "application/json",
            },
        }]},
        "route_config": {
            "name": "gatehouse",
            "virtual_hosts": [{"name": "gatehouse", "domains": ["*"], "routes": routes(config)}],
            // What a client says about where it connects from is not passed on as truth.
            "request_headers_to_remove": CLIENT_ADDRESS_HEADERS,
            "request_headers_to_add": [{
                "header": {"key": "x-forwarded-for", "value": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"},
                "append_action": "OVERWRITE_IF_EXISTS_OR_ADD",
            }],
        },
        "http_filters": [
            {
                "name": WASM_FILTER,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": "gatehouse",
                        "root_id": "gatehouse",
                        "vm_config": vm_config(config),
                        "configuration": {
                            "@type": "type.googleapis.com/google.protobuf.StringValue",
                            "value": filter_configuration(config, masking),
                        },
                        "failure_policy": "FAIL_CLOSED",
                        // Without it, pausing in the header callback stops all iteration and
                        // body callbacks never arrive.
                        "allow_on_headers_stop_iteration": true,
                    },
                },
            },
            {
                "name": EXT_AUTHZ_FILTER,
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz",
                    "transport_api_version": "V3",
                    "grpc_service": {
                        "envoy_grpc": {"cluster_name": GRPC_CLUSTER},
                        "timeout": format!("{}s", e.ext_authz_timeout_ms as f64 / 1000.0),
                    },
                    "failure_mode_allow": false,
                    "status_on_error": {"code": 503},
                    "with_request_body": {
                        // ext_authz sets the stream's buffer limit to this, and Envoy uses
                        // that one limit for the answer too: it must hold a whole JSON answer
                        // for the filter to mask. Requests stay bounded by max_request_bytes,
                        // which the filter (first in the chain) enforces with a 413.
                        "max_request_bytes": e.max_request_bytes.max(e.max_response_bytes),
                        "allow_partial_message": false,
                        "pack_as_bytes": true,
                    },
                    "include_peer_certificate": false,
                },
            },
            {
                "name": "envoy.filters.http.router",
                "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
            },
        ],
    });
    let mut chain =
        json!({"filters": [{"name": "envoy.filters.network.http_connection_manager", "typed_config": hcm}]});
    if let (Some(tls), Some(obj)) = (tls, chain.as_object_mut()) {
        obj.insert("transport_socket".into(), tls);
    }
    json!({
        "name": name,
        "address": socket(addr),
        // Above the filter's body limits, so an oversize body gets the filter's JSON-RPC 413
        // (and its audit record) rather than Envoy's plain-text one, and a JSON answer up to
        // max_response_bytes can be held whole to be masked.
        "per_connection_buffer_limit_bytes": buffer_limit(e),
        "filter_chains": [chain],
    })
}

fn buffer_limit(e: &crate::config::Envoy) -> u64 {
    (e.max_request_bytes.max(e.max_response_bytes) + 64 * 1024).max(1024 * 1024)
}

fn http2_options() -> Value {
    json!({"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
        "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
        "explicit_http_config": {"http2_protocol_options": {}},
    }})
}

/// Checks in flight beyond the held ones: a Check that is not held lasts milliseconds.
const CHECK_HEADROOM: u64 = 1024;
/// Record batches in flight: each Envoy worker's filter keeps at most one in flight.
const INGEST_CONCURRENCY: u64 = 1024;

/// Envoy's default breaker (1,024 requests) let held approvals starve every other Check;
/// the service caps held calls, so the breaker is sized to hold them all and the headroom.
fn check_concurrency(config: &Config) -> u64 {
    u64::from(config.approvals.max_held) + CHECK_HEADROOM
}

/// A cluster of the service's gRPC listeners (`service.grpc_endpoints`, or `grpc_listen`):
/// HTTP/2, mTLS when configured, a circuit breaker of `max_requests` (Envoy's default of
/// 1,024 applies to each limit otherwise), and a gRPC health check of each replica, so a
/// replica that is gone or draining (NOT_SERVING) gets no new Checks or records. A DNS name
/// (a headless Kubernetes Service) is resolved to every replica's address (`STRICT_DNS`).
fn grpc_cluster(config: &Config, name: &str, max_requests: u64) -> Value {
    let endpoints = &config.service.grpc_endpoints;
    let lb_endpoints: Vec<Value> = endpoints
        .iter()
        .map(|e| json!({"endpoint": {"address": {"socket_address": {"address": e.host, "port_value": e.port}}}}))
        .collect();
    let mut c = json!({
        "name": name,
        "type": if endpoints.iter().all(crate::config::Endpoint::is_ip) { "STATIC" } else { "STRICT_DNS" },
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": lb_endpoints}]},
        "typed_extension_protocol_options": http2_options(),
        "health_checks": [{
            "timeout": "1s",
            "interval": "1s",
            "unhealthy_threshold": 2,
            "healthy_threshold": 1,
            "no_traffic_interval": "5s",
            "grpc_health_check": {},
        }],
        // A replica that stops answering is set aside at once, not after Envoy's default 5.
        "outlier_detection": {"consecutive_gateway_failure": 2, "consecutive_5xx": 5, "interval": "1s",
            "base_ejection_time": "5s", "max_ejection_percent": 100},
    });
    if !endpoints.iter().all(crate::config::Endpoint::is_ip)
        && let Some(obj) = c.as_object_mut()
    {
        obj.insert("dns_lookup_family".into(), json!("V4_PREFERRED"));
        obj.insert("dns_refresh_rate".into(), json!("2s"));
    }
    let Some(obj) = c.as_object_mut() else { return c };
    obj.insert(
        "circuit_breakers".into(),
        json!({"thresholds": [{
            "priority": "DEFAULT",
            "max_connections": max_requests,
            "max_pending_requests": max_requests,
            "max_requests": max_requests,
            "max_retries": 3,
        }]}),
    );
    if let Some(tls) = &config.service.grpc_tls {
        obj.insert(
            "transport_socket".into(),
            json!({"name": "envoy.transport_sockets.tls", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {
                    "alpn_protocols": ["h2"],
                    "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
                    "tls_certificates": [{
                        "certificate_chain": {"filename": tls.client_cert_file.display().to_string()},
                        "private_key": {"filename": tls.client_key_file.display().to_string()},
                    }],
                    "validation_context": {"trusted_ca": {"filename": tls.ca_file.display().to_string()}},
                },
            }}),
        );
    }
    c
}

fn static_cluster(name: &str, addr: SocketAddr, http2: bool) -> Value {
    let mut c = json!({
        "name": name,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(addr)}}]}]},
    });
    if http2 && let Some(obj) = c.as_object_mut() {
        obj.insert("typed_extension_protocol_options".into(), http2_options());
    }
    c
}

pub fn cluster_name(u: &Upstream) -> String {
    format!("upstream_{}", u.name)
}

fn upstream_cluster(u: &Upstream) -> Value {
    let host = u
        .url
        .host_str()
        .unwrap_or_default()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let port = u.url.port_or_known_default().unwrap_or(80);
    let is_ip = host.parse::<IpAddr>().is_ok();
    let name = cluster_name(u);
    let mut c = json!({
        "name": name,
        "type": if is_ip { "STATIC" } else { "LOGICAL_DNS" },
        "dns_lookup_family": "V4_PREFERRED",
        "connect_timeout": "5s",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address":
            {"socket_address": {"address": host, "port_value": port}}}}]}]},
    });
    if u.is_tls()
        && let Some(obj) = c.as_object_mut()
    {
        // The certificate must name the upstream, as a DNS name or as the IP it was given as.
        let san_type = if is_ip { "IP_ADDRESS" } else { "DNS" };
        let validation = json!({
            "trusted_ca": {"filename": u.ca_file.as_ref().map_or(SYSTEM_CA_BUNDLE.into(), |f| f.display().to_string())},
            "match_typed_subject_alt_names": [{"san_type": san_type, "matcher": {"exact": host}}],
        });
        let mut tls = json!({
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
            "common_tls_context": {"validation_context": validation},
        });
        if !is_ip && let Some(t) = tls.as_object_mut() {
            t.insert("sni".into(), json!(host));
        }
        obj.insert(
            "transport_socket".into(),
            json!({"name": "envoy.transport_sockets.tls", "typed_config": tls}),
        );
    }
    c
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use serde_json::Value;

    use super::*;

    fn rendered() -> Value {
        let text = crate::config::tests::GOOD.replace(
            "  http_listen: 127.0.0.1:8080",
            "  http_listen: 127.0.0.1:8080\n  https_listen: 127.0.0.1:8443\n  tls_cert: c.pem\n  tls_key: k.pem",
        );
        let config = Config::parse(&text, Path::new("/etc/gh/gatehouse.yaml")).unwrap();
        bootstrap(&config, &config.masking.rules)
    }

    fn hcm(b: &Value) -> &Value {
        &b["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    }

    #[test]
    fn filters_run_in_order_and_fail_closed() {
        let b = rendered();
        let filters = hcm(&b)["http_filters"].as_array().unwrap();
        let names: Vec<_> = filters.iter().map(|f| f["name"].as_str().unwrap()).collect();
        assert_eq!(names, [WASM_FILTER, EXT_AUTHZ_FILTER, "envoy.filters.http.router"]);
        let wasm = &filters[0]["typed_config"]["config"];
        assert_eq!(wasm["failure_policy"], "FAIL_CLOSED");
        assert_eq!(wasm["allow_on_headers_stop_iteration"], true);
        let authz = &filters[1]["typed_config"];
        assert_eq!(authz["failure_mode_allow"], false);
        assert_eq!(authz["with_request_body"]["allow_partial_message"], false);
        assert_eq!(authz["with_request_body"]["pack_as_bytes"], true);
    }

    #[test]
    fn each_upstream_route_names_its_upstream_and_keeps_streams_open() {
        let b = rendered();
        let routes = hcm(&b)["route_config"]["virtual_hosts"][0]["routes"]
            .as_array()
            .unwrap();
        let mcp = routes.iter().find(|r| r["match"]["path"] == "/mcp").unwrap();
        assert_eq!(
            mcp["typed_per_filter_config"][EXT_AUTHZ_FILTER]["check_settings"]["context_extensions"]["upstream"],
            "everything"
        );
        assert_eq!(mcp["route"]["timeout"], "0s");
        assert_eq!(mcp["route"]["host_rewrite_literal"], "127.0.0.1:3001");
        let other = routes.iter().find(|r| r["match"]["path"] == "/mcp/other").unwrap();
        assert_eq!(other["route"]["prefix_rewrite"], "/v1/mcp");
        // Everything else is a 404 that neither filter sees.
        let last = routes.last().unwrap();
        assert_eq!(last["direct_response"]["status"], 404);
    }

    #[test]
    fn the_filter_knows_the_hosts_and_origins_the_gateway_serves() {
        let b = rendered();
        let wasm = &hcm(&b)["http_filters"][0]["typed_config"]["config"]["configuration"]["value"];
        let conf: Value = serde_json::from_str(wasm.as_str().unwrap()).unwrap();
        assert_eq!(
            conf["allowed_hosts"],
            json!(["127.0.0.1:8080", "localhost:8080", "127.0.0.1:8443", "localhost:8443"])
        );
        assert_eq!(
            conf["allowed_origins"],
            json!([
                "http://127.0.0.1:8080",
                "http://localhost:8080",
                "https://127.0.0.1:8443",
                "https://localhost:8443"
            ])
        );
        // A public URL on a default port is named with and without it; an unspecified
        // listener address by loopback; configured extras follow.
        let text = crate::config::tests::GOOD
            .replace("public_url: http://127.0.0.1:8080", "public_url: https://GW.example.com")
            .replace("http_listen: 127.0.0.1:8080", "http_listen: 0.0.0.0:8080")
            .replace(
                "  wasm: target/gatehouse_filter.wasm",
                "  wasm: target/gatehouse_filter.wasm\n  allowed_hosts: [mcp.internal]\n  allowed_origins: [\"https://app.example.com\"]",
            );
        let config = Config::parse(&text, Path::new("/etc/gh/gatehouse.yaml")).unwrap();
        let (hosts, origins) = served_hosts_and_origins(&config);
        assert_eq!(
            hosts,
            [
                "gw.example.com",
                "gw.example.com:443",
                "127.0.0.1:8080",
                "[::1]:8080",
                "localhost:8080",
                "mcp.internal"
            ]
        );
        assert_eq!(
            origins,
            [
                "https://gw.example.com",
                "http://127.0.0.1:8080",
                "http://[::1]:8080",
                "http://localhost:8080",
                "https://app.example.com"
            ]
        );
    }

    #[test]
    fn the_edge_sets_the_client_address_and_logs_no_query() {
        let b = rendered();
        let h = hcm(&b);
        assert_eq!(h["use_remote_address"], true);
        assert_eq!(h["xff_num_trusted_hops"], 0);
        assert_eq!(h["internal_address_config"]["cidr_ranges"], json!([]));
        let added = &h["route_config"]["request_headers_to_add"][0];
        assert_eq!(added["header"]["key"], "x-forwarded-for");
        assert_eq!(added["append_action"], "OVERWRITE_IF_EXISTS_OR_ADD");
        let log = &h["access_log"][0]["typed_config"]["log_format"];
        assert_eq!(log["json_format"]["path"], "%REQ_WITHOUT_QUERY(:PATH)%");
        assert!(!log.to_string().contains("%REQ(:PATH)%"));
    }

    /// The clusters that carry Checks and records to the service.
    fn service_clusters(b: &Value) -> Vec<&Value> {
        b["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| [GRPC_CLUSTER, INGEST_CLUSTER].contains(&c["name"].as_str().unwrap()))
            .collect()
    }

    #[test]
    fn every_replica_is_an_endpoint_of_both_service_clusters_and_is_health_checked() {
        let one = rendered();
        for c in service_clusters(&one) {
            assert_eq!(c["type"], "STATIC");
            assert_eq!(
                c["load_assignment"]["endpoints"][0]["lb_endpoints"]
                    .as_array()
                    .unwrap()
                    .len(),
                1
            );
            assert!(c["health_checks"][0]["grpc_health_check"].is_object(), "{c}");
        }
        let text = crate::config::tests::GOOD.replace(
            "  public_url:",
            "  grpc_endpoints: [\"gatehouse.gatehouse.svc.cluster.local:9091\", \"10.0.0.7:9091\"]\n  public_url:",
        );
        let config = Config::parse(&text, Path::new("/etc/gh/gatehouse.yaml")).unwrap();
        let many = bootstrap(&config, &config.masking.rules);
        let clusters = service_clusters(&many);
        assert_eq!(clusters.len(), 2);
        for c in clusters {
            assert_eq!(c["type"], "STRICT_DNS", "a DNS name resolves to every replica");
            let hosts: Vec<_> = c["load_assignment"]["endpoints"][0]["lb_endpoints"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["endpoint"]["address"]["socket_address"]["address"].as_str().unwrap())
                .collect();
            assert_eq!(hosts, ["gatehouse.gatehouse.svc.cluster.local", "10.0.0.7"]);
            assert!(c["health_checks"][0]["grpc_health_check"].is_object(), "{c}");
        }
    }

    #[test]
    fn tls_upstreams_are_verified_by_name() {
        let b = rendered();
        let cluster = b["static_resources"]["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "upstream_other")
            .unwrap();
        let tls = &cluster["transport_socket"]["typed_config"];
        assert_eq!(tls["sni"], "mcp.example.com");
        let san = &tls["common_tls_context"]["validation_context"]["match_typed_subject_alt_names"][0];
        assert_eq!(
            (san["san_type"].as_str(), san["matcher"]["exact"].as_str()),
            (Some("DNS"), Some("mcp.example.com"))
        );
    }

    #[test]
    fn the_bootstrap_holds_no_token_key_and_passes_its_variable() {
        let text = crate::config::tests::GOOD.replace(
            "envoy:",
            "masking:\n  token_key_file: key\n  styles: {email: token}\nenvoy:",
        );
        let mut config = Config::parse(&text, Path::new("/etc/gh/gatehouse.yaml")).unwrap();
        let key = "0123456789abcdef0123456789abcdef";
        config.masking.rules.token_key = Some(key.into());
        let b = bootstrap(&config, &config.masking.rules);
        assert!(!b.to_string().contains(key));
        let wasm = &hcm(&b)["http_filters"][0]["typed_config"]["config"];
        let filter: Value = serde_json::from_str(wasm["configuration"]["value"].as_str().unwrap()).unwrap();
        assert_eq!(filter["token_key_env"], TOKEN_KEY_ENV);
        assert_eq!(filter["masking"]["token_key"], Value::Null);
        assert_eq!(
            wasm["vm_config"]["environment_variables"]["host_env_keys"],
            json!([TOKEN_KEY_ENV])
        );
    }

    #[test]
    fn checks_and_records_have_their_own_clusters_and_breakers() {
        let text = crate::config::tests::GOOD.replace(
            "  grpc_plaintext: true",
            "  grpc_tls: {ca_file: ca.crt, cert_file: s.crt, key_file: s.key, client_cert_file: c.crt, client_key_file: c.key}",
        );
        let config = Config::parse(&text, Path::new("/etc/gh/gatehouse.yaml")).unwrap();
        let b = bootstrap(&config, &config.masking.rules);
        let clusters = b["static_resources"]["clusters"].as_array().unwrap();
        let cluster = |name: &str| clusters.iter().find(|c| c["name"] == name).unwrap();
        for name in [GRPC_CLUSTER, INGEST_CLUSTER] {
            let c = cluster(name);
            let tls = &c["transport_socket"]["typed_config"]["common_tls_context"];
            assert_eq!(
                tls["tls_certificates"][0]["certificate_chain"]["filename"],
                "/etc/gh/c.crt"
            );
            assert_eq!(tls["validation_context"]["trusted_ca"]["filename"], "/etc/gh/ca.crt");
            // Above Envoy's default of 1,024, which held Checks exhausted.
            assert!(c["circuit_breakers"]["thresholds"][0]["max_requests"].as_u64().unwrap() >= 1024);
        }
        let wasm = &hcm(&b)["http_filters"][0]["typed_config"]["config"];
        let filter: Value = serde_json::from_str(wasm["configuration"]["value"].as_str().unwrap()).unwrap();
        assert_eq!(filter["ingest_cluster"], INGEST_CLUSTER);
        assert_eq!(
            hcm(&b)["http_filters"][1]["typed_config"]["grpc_service"]["envoy_grpc"]["cluster_name"],
            GRPC_CLUSTER
        );
    }

    #[test]
    fn the_filter_configuration_is_the_shared_type_within_its_bounds() {
        let config = Config::parse(crate::config::tests::GOOD, Path::new("/etc/gh/gatehouse.yaml")).unwrap();
        let b = bootstrap(&config, &config.masking.rules);
        let text = hcm(&b)["http_filters"][0]["typed_config"]["config"]["configuration"]["value"]
            .as_str()
            .unwrap()
            .to_owned();
        // The filter refuses unknown fields: whatever is rendered must read back as the type.
        let parsed: PluginConfig = serde_json::from_str(&text).unwrap();
        assert_eq!(parsed, plugin_config(&config, &config.masking.rules));
        use gatehouse_core::plugin_config::bounds;
        assert!(bounds::MAX_BODY_BYTES.check(parsed.max_body_bytes).is_ok());
        assert!(bounds::MAX_RESPONSE_BYTES.check(parsed.max_response_bytes).is_ok());
        // Keys in sorted order, as the text was rendered before the type was shared.
        let keys: Vec<String> = serde_json::from_str::<serde_json::Map<String, Value>>(&text)
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(
            keys,
            [
                "allowed_hosts",
                "allowed_origins",
                "ingest_cluster",
                "masking",
                "max_body_bytes",
                "max_response_bytes"
            ]
        );
        assert!(text.starts_with(r#"{"allowed_hosts":["#), "{text}");
    }

    #[test]
    fn https_listener_has_the_configured_certificate() {
        let b = rendered();
        let https = &b["static_resources"]["listeners"][1];
        let cert =
            &https["filter_chains"][0]["transport_socket"]["typed_config"]["common_tls_context"]["tls_certificates"][0];
        assert_eq!(cert["certificate_chain"]["filename"], "/etc/gh/c.pem");
    }
}
