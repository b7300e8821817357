//! OTLP/HTTP logs with a protobuf body (`POST` to the configured endpoint, e.g. an
//! OpenTelemetry Collector's `/v1/logs`), one `LogRecord` per record.
//!
//! - Resource: `service.name` `gatehouse` and `service.instance.id` the record's writer (the
//!   instance that wrote it, not the one exporting it); a batch with several writers is sent as
//!   one `ResourceLogs` per run of records of one writer, in order.
//! - Scope: `gatehouse.audit` with this build's version.
//! - Record: `time_unix_nano` from `recorded_at`, `observed_time_unix_nano` now, severity
//!   `INFO` (`WARN` for a denial), `event_name` `gatehouse.<kind>`, and the body the event as
//!   one JSON string (the line the file sink writes): every collector and backend keeps a
//!   string body as is, where a key-value body is flattened, renamed or cut differently by
//!   each.
//! - Attributes: the record's MCP facts under the OpenTelemetry MCP semantic conventions
//!   (`mcp.method.name`, `mcp.session.id`, `mcp.protocol.version`, `mcp.resource.uri`,
//!   `jsonrpc.request.id`, `gen_ai.tool.name`, `gen_ai.prompt.name`, `gen_ai.operation.name`,
//!   `rpc.response.status_code`, `user.id`), each only where the record has the value, and
//!   Gatehouse's own (`gatehouse.record.id` = `writer:seq`, `.kind`, `.hash`,
//!   `gatehouse.request_id`, `gatehouse.upstream`, `gatehouse.decision`).
//!
//! Acknowledgement: an HTTP 2xx whose `ExportLogsServiceResponse` rejected nothing. A partial
//! success that rejected records is a refusal of the events themselves, as is a body too
//! large (413, or the Collector's 400 saying "too large"): the exporter halves the batch and
//! sends a record refused alone as a stub (`export::Outgoing::stub`); the records the
//! collector took arrive again (`gatehouse.record.id` tells them apart). Dropping what one
//! collector refused would leave a hole in the trail. A 2xx body that is not an
//! `ExportLogsServiceResponse` is still an acknowledgement (OTLP's ack is the status). Any
//! other status is an error, retried by the exporter; a 4xx other than 429 says the collector
//! refuses the batch (OTLP calls it not retryable), so the error says so, as it will not
//! heal by itself. Redirects are not followed (the headers are credentials).
//!
//! The protobuf messages are `gatehouse_proto::otlp::v1`, generated from
//! `proto/gatehouse/otlp/v1/logs.proto`: the fields sent and read, with the field numbers of
//! opentelemetry-proto's `logs/v1`, `common/v1`, `resource/v1`, `collector/logs/v1` and
//! `google.rpc.Status`.
//!
//! Also here, shared by the HTTP sinks (`hec.rs`) and `syslog.rs`: the HTTP client with the
//! sinks' TLS rules, error texts without secrets, a record's time and whether it is a denial.

use std::time::{SystemTime, UNIX_EPOCH};

use gatehouse_core::audit::Record;
use gatehouse_core::events::{AuditEvent, Decision};
use prost::Message;
use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};
use url::Url;

use gatehouse_proto::otlp::v1 as proto;

use crate::config::export;

use super::{super::Outgoing, SinkError, clip, denied, describe, http_client, recorded_at, redact};

const SCOPE: &str = "gatehouse.audit";
const PROTOBUF: &str = "application/x-protobuf";

#[derive(Debug)]
pub struct OtlpSink {
    endpoint: Url,
    /// The configured headers, marked sensitive.
    headers: HeaderMap,
    client: reqwest::Client,
    /// Header values, scrubbed from any error text.
    secrets: super::Secrets,
}

impl OtlpSink {
    /// Fails on a header value that cannot be sent or a CA file without a certificate.
    pub fn new(config: &export::OtlpSink) -> Result<Self, SinkError> {
        let mut headers = HeaderMap::new();
        for (name, value) in &config.headers {
            let header = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| SinkError::new(format!("{name:?} is not an HTTP header name")))?;
            let mut value = HeaderValue::from_str(&value.0)
                .map_err(|_| SinkError::new(format!("the value of the header {name} cannot be sent in HTTP")))?;
            value.set_sensitive(true);
            headers.append(header, value);
        }
        Ok(Self {
            endpoint: config.endpoint.clone(),
            headers,
            client: http_client(config.ca_file.as_deref(), config.timeout)?,
            // A header value, and what follows its scheme (`Bearer X`: X), which a receiver may echo alone.
            secrets: super::Secrets(
                config
                    .headers
                    .iter()
                    .flat_map(|(_, v)| [Some(v.0.clone()), v.0.split_once(' ').map(|(_, rest)| rest.to_owned())])
                    .flatten()
                    .collect(),
            ),
        })
    }

    pub async fn send(&mut self, batch: &[Outgoing]) -> Result<(), SinkError> {
        let body = export_request(batch, SystemTime::now()).encode_to_vec();
        let result = self.post(body, batch.len()).await;
        result.map_err(|e| SinkError {
            message: redact(&e.message, &self.secrets),
            ..e
        })
    }

    async fn post(&self, body: Vec<u8>, records: usize) -> Result<(), SinkError> {
        let response = self
            .client
            .post(self.endpoint.clone())
            .headers(self.headers.clone())
            .header(CONTENT_TYPE, PROTOBUF)
            .body(body)
            .send()
            .await
            .map_err(|e| SinkError::new(format!("cannot reach the OTLP endpoint: {}", describe(e))))?;
        let status = response.status();
        let content_type = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let protobuf = content_type.as_deref().is_some_and(|v| v.starts_with(PROTOBUF));
        let answer = response.bytes().await.map_err(|e| {
            SinkError::new(format!(
                "the OTLP endpoint's answer ({status}) was cut: {}",
                describe(e)
            ))
        })?;
        let json = content_type
            .as_deref()
            .is_some_and(|v| v.starts_with("application/json"));
        if status.is_success() && !protobuf && !json {
            // A proxy's page or a server on the wrong path answering 200 is no acknowledgement.
            return Err(SinkError::new(format!(
                "the endpoint answered HTTP {status} with {}, not an OTLP answer: is the URL the collector's /v1/logs?",
                content_type.as_deref().map_or("no content type".to_owned(), clip)
            )));
        }
        if status.is_success() {
            let rejected = protobuf
                .then(|| proto::ExportLogsServiceResponse::decode(answer.as_ref()).ok())
                .flatten()
                .and_then(|r| r.partial_success);
            return match rejected {
                Some(p) if p.rejected_log_records > 0 => Err(SinkError::refused(format!(
                    "the collector rejected {} of {records} log records ({})",
                    p.rejected_log_records,
                    clip(&redact(&p.error_message, &self.secrets))
                ))),
                Some(p) if !p.error_message.is_empty() => {
                    let warning = clip(&redact(&p.error_message, &self.secrets));
                    tracing::warn!(%warning, "The OTLP endpoint took the batch with a warning.");
                    Ok(())
                }
                _ => Ok(()),
            };
        }
        let said = if protobuf {
            proto::Status::decode(answer.as_ref())
                .map(|s| s.message)
                .unwrap_or_default()
        } else {
            String::from_utf8_lossy(&answer).into_owned()
        };
        let message = |why: &str| format!("{why}: HTTP {status}: {}", clip(&redact(&said, &self.secrets)));
        // The OpenTelemetry Collector answers a body over its max_request_body_size 400 with
        // Go's "http: request body too large".
        let too_large = status == reqwest::StatusCode::PAYLOAD_TOO_LARGE
            || (status == reqwest::StatusCode::BAD_REQUEST && said.to_ascii_lowercase().contains("too large"));
        if too_large {
            return Err(SinkError::refused(message("the collector refuses a batch this large")));
        }
        let why = if status.is_redirection() {
            "the endpoint redirects elsewhere (not followed: configure the final URL)"
        } else if status.is_client_error() && status != reqwest::StatusCode::TOO_MANY_REQUESTS {
            "the collector refuses the batch (not a transient failure: fix the receiver or its config)"
        } else {
            "the collector is unavailable"
        };
        Err(SinkError::new(message(why)))
    }
}

/// The request for `batch`: one `ResourceLogs` per run of records of one writer.
fn export_request(batch: &[Outgoing], now: SystemTime) -> proto::ExportLogsServiceRequest {
    let observed = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let mut resource_logs: Vec<proto::ResourceLogs> = Vec::new();
    let mut writer: Option<&str> = None;
    for o in batch {
        if writer != Some(o.record.writer.as_str()) {
            writer = Some(&o.record.writer);
            resource_logs.push(resource_logs_of(&o.record.writer));
        }
        if let Some(scope) = resource_logs.last_mut().and_then(|r| r.scope_logs.first_mut()) {
            scope.log_records.push(log_record(o, observed));
        }
    }
    proto::ExportLogsServiceRequest { resource_logs }
}

fn resource_logs_of(writer: &str) -> proto::ResourceLogs {
    proto::ResourceLogs {
        resource: Some(proto::Resource {
            attributes: vec![
                key_value("service.name", "gatehouse"),
                key_value("service.instance.id", writer),
            ],
        }),
        scope_logs: vec![proto::ScopeLogs {
            scope: Some(proto::InstrumentationScope {
                name: SCOPE.to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
            }),
            log_records: Vec::new(),
            schema_url: String::new(),
        }],
        schema_url: String::new(),
    }
}

fn log_record(o: &Outgoing, observed: u64) -> proto::LogRecord {
    let (severity, text) = if denied(&o.record) {
        (proto::SeverityNumber::Warn, "WARN")
    } else {
        (proto::SeverityNumber::Info, "INFO")
    };
    proto::LogRecord {
        time_unix_nano: recorded_at(&o.record).map_or(0, |t| t.unix_timestamp_nanos().max(0) as u64),
        observed_time_unix_nano: observed,
        severity_number: severity as i32,
        severity_text: text.to_owned(),
        body: Some(string_value(o.line())),
        attributes: attributes(o),
        event_name: format!("gatehouse.{}", o.record.kind),
    }
}

/// What a record says about the MCP call it is part of, from its typed event.
#[derive(Debug, Default, PartialEq)]
struct CallFacts {
    subject: Option<String>,
    upstream: Option<String>,
    decision: Option<&'static str>,
    method: Option<String>,
    /// The tool, prompt or resource URI the call names.
    target: Option<String>,
    session_id: Option<String>,
    protocol_version: Option<String>,
    /// As OpenTelemetry writes it: a string id as is, a number as its digits.
    jsonrpc_id: Option<String>,
    error_code: Option<i64>,
}

impl CallFacts {
    /// Empty for a record whose data does not read as its kind's event (a record of a newer
    /// build): the record is still sent, with Gatehouse's attributes only.
    fn of(record: &Record) -> Self {
        let Ok(event) = AuditEvent::from_record(&record.kind, &record.data) else {
            return Self::default();
        };
        match event {
            AuditEvent::Request(decided) => {
                let f = decided.facts();
                let message = f.message.as_ref();
                Self {
                    subject: f.subject.clone(),
                    upstream: f.upstream.clone(),
                    decision: Some(decision_name(decided.decision())),
                    method: message.and_then(|m| m.mcp_method.clone()),
                    target: message.and_then(|m| m.tool.clone()),
                    session_id: f.session_id.clone(),
                    protocol_version: f.protocol_version.clone(),
                    jsonrpc_id: message.and_then(|m| id_text(&m.jsonrpc_id)),
                    error_code: None,
                }
            }
            AuditEvent::Response(part) => Self {
                session_id: part.session_id,
                jsonrpc_id: part
                    .jsonrpc_id
                    .and_then(|text| serde_json::from_str(&text).ok())
                    .and_then(|id| id_text(&id)),
                error_code: part.error_code,
                ..Self::default()
            },
            AuditEvent::RequestRejected(r) => Self {
                subject: r.subject,
                decision: Some(decision_name(r.decision)),
                method: r.mcp_method,
                session_id: r.session_id,
                protocol_version: r.protocol_version,
                ..Self::default()
            },
            AuditEvent::Approval(step) => {
                let a = step.approval().clone();
                Self {
                    subject: Some(a.subject),
                    upstream: Some(a.upstream),
                    method: Some(a.mcp_method),
                    target: a.tool,
                    ..Self::default()
                }
            }
            AuditEvent::ConfigChanged(_) => Self::default(),
        }
    }
}

fn decision_name(d: Decision) -> &'static str {
    match d {
        Decision::Allow => "allow",
        Decision::Deny => "deny",
    }
}

/// A JSON-RPC id as `jsonrpc.request.id` wants it; none for a notification (`null`).
fn id_text(id: &serde_json::Value) -> Option<String> {
    match id {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

/// The first `max` bytes of `value` at most, cut at a character boundary.
fn at_most(value: &str, max: usize) -> &str {
    let mut end = value.len().min(max);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

fn key_value(key: &str, value: impl Into<String>) -> proto::KeyValue {
    proto::KeyValue {
        key: key.to_owned(),
        value: Some(string_value(value)),
    }
}

fn string_value(value: impl Into<String>) -> proto::AnyValue {
    proto::AnyValue {
        value: Some(proto::any_value::Value::StringValue(value.into())),
    }
}

fn attributes(o: &Outgoing) -> Vec<proto::KeyValue> {
    let r = &o.record;
    let facts = CallFacts::of(r);
    let mut out = vec![
        key_value("gatehouse.record.id", &o.id),
        key_value("gatehouse.record.kind", &r.kind),
        key_value("gatehouse.record.hash", &r.hash),
    ];
    // A stub's attributes are as bounded as its body: a caller chooses tool names and ids.
    let most = if o.stub { 1024 } else { usize::MAX };
    let mut add = |key: &str, value: Option<&str>| {
        if let Some(value) = value.filter(|v| !v.is_empty()) {
            out.push(key_value(key, at_most(value, most)));
        }
    };
    add("gatehouse.request_id", Some(&r.request_id));
    add("gatehouse.upstream", facts.upstream.as_deref());
    add("gatehouse.decision", facts.decision);
    add("user.id", facts.subject.as_deref());
    add("mcp.method.name", facts.method.as_deref());
    add("mcp.session.id", facts.session_id.as_deref());
    add("mcp.protocol.version", facts.protocol_version.as_deref());
    add("jsonrpc.request.id", facts.jsonrpc_id.as_deref());
    let target = facts.target.as_deref();
    match facts.method.as_deref() {
        Some("tools/call") => {
            add("gen_ai.tool.name", target);
            add("gen_ai.operation.name", Some("execute_tool"));
        }
        Some("prompts/get") => add("gen_ai.prompt.name", target),
        Some(m) if m.starts_with("resources/") => add("mcp.resource.uri", target),
        _ => {}
    }
    add(
        "rpc.response.status_code",
        facts.error_code.map(|c| c.to_string()).as_deref(),
    );
    out
}

#[cfg(test)]
pub(in crate::export) mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use serde_json::{Value, json};

    use super::*;
    use crate::config::Secret;
    use crate::config::export::Format;

    /// A record of `kind` with `data`, as the exporter hands it to a sink.
    pub(in crate::export) fn outgoing(writer: &str, seq: u64, kind: &str, data: Value) -> Outgoing {
        let record = Record {
            seq,
            writer: writer.to_owned(),
            kind: kind.to_owned(),
            request_id: format!("req-{seq}"),
            recorded_at: "2026-03-04T05:06:07.089Z".to_owned(),
            prev_hash: "0".repeat(64),
            hash: format!("{seq:064x}"),
            data,
        };
        Outgoing::new(record, Format::Gatehouse)
    }

    pub(in crate::export) fn tool_call(decision: &str) -> Value {
        let mut data = json!({
            "decision": decision, "reason": "rule r1", "subject": "alice", "groups": ["eng"],
            "upstream": "github", "http_method": "POST", "path": "/mcp", "session_id": "s-1",
            "protocol_version": "2025-06-18", "mcp_method": "tools/call", "tool": "search",
            "arguments": {"q": "x"}, "jsonrpc_id": 7, "message_kind": "request",
        });
        if decision == "deny" {
            data["status"] = json!(403);
        }
        data
    }

    fn flat(attributes: &[proto::KeyValue]) -> BTreeMap<String, String> {
        attributes
            .iter()
            .map(|kv| {
                let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(proto::any_value::Value::StringValue(s)) => s.clone(),
                    other => format!("{other:?}"),
                };
                (kv.key.clone(), value)
            })
            .collect()
    }

    #[test]
    fn a_batch_round_trips_through_protobuf_with_the_mcp_conventions() {
        let batch = [
            outgoing("w1", 1, "request", tool_call("allow")),
            outgoing("w1", 2, "request", tool_call("deny")),
            outgoing("w2", 1, "config_changed", json!({"anything": true})),
        ];
        let bytes = export_request(&batch, UNIX_EPOCH + Duration::from_secs(1_800_000_000)).encode_to_vec();
        let decoded = proto::ExportLogsServiceRequest::decode(bytes.as_slice()).unwrap();

        assert_eq!(decoded.resource_logs.len(), 2, "one ResourceLogs per writer run");
        let resource = flat(&decoded.resource_logs[0].resource.as_ref().unwrap().attributes);
        assert_eq!(resource["service.name"], "gatehouse");
        assert_eq!(resource["service.instance.id"], "w1");
        let scope = &decoded.resource_logs[0].scope_logs[0];
        assert_eq!(scope.scope.as_ref().unwrap().name, "gatehouse.audit");
        assert_eq!(scope.log_records.len(), 2);

        let allowed = &scope.log_records[0];
        assert_eq!(allowed.time_unix_nano, 1_772_600_767_089_000_000);
        assert_eq!(allowed.observed_time_unix_nano, 1_800_000_000_000_000_000);
        assert_eq!(allowed.severity_number, proto::SeverityNumber::Info as i32);
        assert_eq!(allowed.event_name, "gatehouse.request");
        let Some(proto::any_value::Value::StringValue(body)) = allowed.body.as_ref().and_then(|b| b.value.clone())
        else {
            panic!("the body is a string");
        };
        assert_eq!(serde_json::from_str::<Value>(&body).unwrap(), batch[0].event);
        let attributes = flat(&allowed.attributes);
        let expected = [
            ("gatehouse.record.id", "w1:1"),
            ("gatehouse.record.kind", "request"),
            ("gatehouse.record.hash", batch[0].record.hash.as_str()),
            ("gatehouse.request_id", "req-1"),
            ("gatehouse.upstream", "github"),
            ("gatehouse.decision", "allow"),
            ("user.id", "alice"),
            ("mcp.method.name", "tools/call"),
            ("mcp.session.id", "s-1"),
            ("mcp.protocol.version", "2025-06-18"),
            ("jsonrpc.request.id", "7"),
            ("gen_ai.tool.name", "search"),
            ("gen_ai.operation.name", "execute_tool"),
        ];
        let expected: BTreeMap<String, String> = expected.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        assert_eq!(attributes, expected);

        let denied = &scope.log_records[1];
        assert_eq!(denied.severity_number, proto::SeverityNumber::Warn as i32);
        assert_eq!(denied.severity_text, "WARN");
        assert_eq!(flat(&denied.attributes)["gatehouse.decision"], "deny");

        let config = &decoded.resource_logs[1].scope_logs[0].log_records[0];
        assert_eq!(
            flat(&config.attributes).keys().collect::<Vec<_>>(),
            [
                "gatehouse.record.hash",
                "gatehouse.record.id",
                "gatehouse.record.kind",
                "gatehouse.request_id"
            ]
        );
    }

    #[test]
    fn a_response_names_its_string_id_unquoted_and_its_error_code() {
        let data = json!({
            "part": 0, "final": true, "http_status": 200, "content_type": "application/json",
            "message": {"jsonrpc": "2.0", "id": "abc", "error": {"code": -32602, "message": "no"}},
            "masked": {}, "revealed": [], "withheld": null, "truncated": false, "body_bytes": 10,
            "observed_at_unix_ms": 1, "sse_event_id": null, "jsonrpc_id": "\"abc\"", "is_error": true,
            "error_code": -32602, "end_reason": null, "source": "f", "session_id": "s-9",
        });
        let attributes = flat(&attributes(&outgoing("w", 3, "response", data)));
        assert_eq!(attributes["jsonrpc.request.id"], "abc");
        assert_eq!(attributes["rpc.response.status_code"], "-32602");
        assert_eq!(attributes["mcp.session.id"], "s-9");
        assert!(!attributes.contains_key("mcp.method.name"));
    }

    #[test]
    fn a_prompt_or_a_resource_gets_its_own_attribute_and_no_tool_operation() {
        let mut data = tool_call("allow");
        data["mcp_method"] = json!("resources/read");
        data["tool"] = json!("file:///etc/motd");
        let attributes = flat(&attributes(&outgoing("w", 1, "request", data)));
        assert_eq!(attributes["mcp.resource.uri"], "file:///etc/motd");
        assert!(!attributes.contains_key("gen_ai.tool.name"));
        assert!(!attributes.contains_key("gen_ai.operation.name"));
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_at_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let config = export::OtlpSink {
            endpoint: "https://collector:4318/v1/logs".parse().unwrap(),
            headers: vec![("api-key".into(), Secret("s3cr3t-value".into()))],
            ca_file: Some(path),
            timeout: Duration::from_secs(1),
        };
        let error = OtlpSink::new(&config).unwrap_err();
        assert!(error.message.contains("holds no PEM certificate"), "{error}");
    }

    #[tokio::test]
    async fn a_refusal_names_the_status_and_never_a_header_value() {
        let secret = "s3cr3t-value";
        let (url, server) = answer_once(
            "HTTP/1.1 401 Unauthorized",
            "text/plain",
            format!("bad api-key {secret}").into_bytes(),
        )
        .await;
        let config = export::OtlpSink {
            endpoint: url,
            headers: vec![("api-key".into(), Secret(secret.into()))],
            ca_file: None,
            timeout: Duration::from_secs(5),
        };
        let mut sink = OtlpSink::new(&config).unwrap();
        let error = sink
            .send(&[outgoing("w", 1, "request", tool_call("allow"))])
            .await
            .unwrap_err();
        let request = server.await.unwrap();
        assert!(request.contains(secret), "the header is sent");
        assert!(
            request
                .to_ascii_lowercase()
                .contains("content-type: application/x-protobuf")
        );
        assert!(
            error.message.contains("401") && error.message.contains("refuses"),
            "{error}"
        );
        assert!(!error.message.contains(secret), "{error}");
        assert!(
            !error.refused,
            "a refused credential is retried, never split or stubbed"
        );
    }

    /// The error of sending one record to an endpoint that answers once, so.
    async fn refusal(status_line: &'static str, content_type: &'static str, body: Vec<u8>) -> SinkError {
        let (url, _server) = answer_once(status_line, content_type, body).await;
        let config = export::OtlpSink {
            endpoint: url,
            headers: Vec::new(),
            ca_file: None,
            timeout: Duration::from_secs(5),
        };
        let mut sink = OtlpSink::new(&config).unwrap();
        sink.send(&[outgoing("w", 1, "request", tool_call("allow"))])
            .await
            .unwrap_err()
    }

    #[tokio::test]
    async fn a_413_refuses_the_events_themselves() {
        let error = refusal("HTTP/1.1 413 Payload Too Large", "text/plain", b"too big".to_vec()).await;
        assert!(error.refused && error.message.contains("413"), "{error:?}");
    }

    #[tokio::test]
    async fn the_collectors_400_for_a_body_too_large_refuses_them_and_another_400_does_not() {
        let error = refusal(
            "HTTP/1.1 400 Bad Request",
            "text/plain",
            b"http: request body too large".to_vec(),
        )
        .await;
        assert!(error.refused, "{error:?}");
        let error = refusal(
            "HTTP/1.1 400 Bad Request",
            "text/plain",
            b"proto: cannot parse".to_vec(),
        )
        .await;
        assert!(!error.refused, "{error:?}");
    }

    #[tokio::test]
    async fn a_partial_success_that_rejected_records_is_not_an_ack() {
        let answer = proto::ExportLogsServiceResponse {
            partial_success: Some(proto::ExportLogsPartialSuccess {
                rejected_log_records: 1,
                error_message: "too old".into(),
            }),
        };
        let error = refusal("HTTP/1.1 200 OK", PROTOBUF, answer.encode_to_vec()).await;
        assert!(
            error.message.contains("rejected 1 of 1") && error.message.contains("too old"),
            "{error}"
        );
        assert!(
            error.refused,
            "records a collector rejects are split out, not resent whole forever"
        );
    }

    #[tokio::test]
    async fn a_200_that_is_no_otlp_answer_is_not_an_ack_and_an_echoed_token_is_scrubbed() {
        let secret = "Bearer tok-3c9e";
        // A proxy's login page, quoting the token alone.
        let (url, _server) = answer_once(
            "HTTP/1.1 200 OK",
            "text/html",
            b"<html>sign in (tok-3c9e)</html>".to_vec(),
        )
        .await;
        let config = export::OtlpSink {
            endpoint: url,
            headers: vec![("authorization".into(), Secret(secret.into()))],
            ca_file: None,
            timeout: Duration::from_secs(5),
        };
        let mut sink = OtlpSink::new(&config).unwrap();
        let error = sink
            .send(&[outgoing("w", 1, "request", tool_call("allow"))])
            .await
            .unwrap_err();
        assert!(error.message.contains("not an OTLP answer"), "{error}");
        assert!(!format!("{sink:?}").contains("tok-3c9e"));
    }

    /// A one-shot HTTP server on 127.0.0.1: answers `status` with `body`; yields the request
    /// head and body as text.
    pub(in crate::export::sinks) async fn answer_once(
        status: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> (Url, tokio::task::JoinHandle<String>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1/logs", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let head = format!(
            "{status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        let server = tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // Until the whole body is in (its length from content-length).
            loop {
                let n = socket.read(&mut buf).await.unwrap();
                request.extend_from_slice(&buf[..n]);
                let text = String::from_utf8_lossy(&request).to_ascii_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let length = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    if request.len() >= end + 4 + length {
                        break;
                    }
                }
                if n == 0 {
                    break;
                }
            }
            socket.write_all(head.as_bytes()).await.unwrap();
            socket.write_all(&body).await.unwrap();
            socket.shutdown().await.unwrap();
            String::from_utf8_lossy(&request).into_owned()
        });
        (url, server)
    }
}
