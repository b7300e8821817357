//! The typed audit events write exactly the records earlier builds wrote.
//!
//! - Golden: each event, built in code, writes the data in `fixtures/events.golden.jsonl`
//!   (null-vs-absent, number types and nesting included), reads back from it into the same
//!   value, and hashes as that data does.
//! - Round trip: every record of the fixture databases (`fixtures/audit-*.jsonl`, exported
//!   from `tests/fixtures/audit-*/audit.db` by `scripts/export-audit-records.py`) reads into
//!   its typed event and writes back to the stored bytes, with the stored hash. A field an
//!   event type does not know would be dropped on the way and fail this test.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gatehouse_core::audit::{Record, record_hash};
use gatehouse_core::events::*;
use gatehouse_core::mask::MaskCounts;
use serde::Deserialize;
use serde_json::{Value, json};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

#[derive(Deserialize)]
struct Golden {
    name: String,
    kind: String,
    data: Value,
}

fn goldens() -> Vec<Golden> {
    let text = std::fs::read_to_string(fixtures().join("events.golden.jsonl")).expect("golden fixture");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("a golden line"))
        .collect()
}

fn facts(tool: Option<&str>) -> ApprovalFacts {
    ApprovalFacts {
        approval_id: "apr_9".into(),
        subject: "alice".into(),
        upstream: "demo".into(),
        mcp_method: "tools/call".into(),
        tool: tool.map(Into::into),
        rule: "sql".into(),
        approver_group: "approvers".into(),
    }
}

fn request(subject: Option<&str>, groups: &[&str], upstream: Option<&str>) -> RequestFacts {
    RequestFacts {
        subject: subject.map(Into::into),
        groups: groups.iter().map(|g| (*g).to_owned()).collect(),
        upstream: upstream.map(Into::into),
        http_method: "POST".into(),
        path: "/demo".into(),
        session_id: None,
        protocol_version: Some("2025-11-25".into()),
        message: None,
        batch: None,
        masked: None,
        policy_rule: None,
        approval: None,
        upstream_credential: None,
        client: None,
        user_agent: None,
        recording: None,
        content: None,
    }
}

fn call(method: &str, tool: Option<&str>, arguments: Value, id: Value) -> Option<FirstMessage> {
    Some(FirstMessage {
        mcp_method: Some(method.into()),
        tool: tool.map(Into::into),
        arguments,
        jsonrpc_id: id,
        message_kind: "request".into(),
    })
}

fn response(part: u32, is_final: bool, message: Value) -> ResponsePartObserved {
    ResponsePartObserved {
        part,
        is_final,
        http_status: 200,
        content_type: Some("text/event-stream".into()),
        message,
        masked: BTreeMap::new(),
        revealed: Vec::new(),
        withheld: None,
        truncated: false,
        body_bytes: 1612,
        observed_at_unix_ms: 1_796_233_104_498,
        sse_event_id: None,
        jsonrpc_id: None,
        is_error: false,
        error_code: None,
        end_reason: None,
        source: "gatehouse/1/e9296d74".into(),
        session_id: None,
        content: None,
        conflict: false,
    }
}

fn aws(access_key_id: Option<&str>, error: Option<&str>) -> UpstreamCredentialPresented {
    UpstreamCredentialPresented::AwsSigv4 {
        role_arn: "arn:aws:iam::123456789012:role/r".into(),
        source_identity: "alice".into(),
        access_key_id: access_key_id.map(Into::into),
        error: error.map(Into::into),
    }
}

/// The event each golden line must be, built the way the service and the filter build it.
fn built(name: &str) -> AuditEvent {
    match name {
        "request_allowed_initialize" => {
            let mut r = request(Some("alice"), &["eng"], Some("demo"));
            r.message = call("initialize", None, Value::Null, json!(1));
            r.policy_rule = Some(Some("session".into()));
            RequestDecided::Allow(RequestAllowed {
                request: r,
                reason: "allowed by rule \"session\"".into(),
                revealed: None,
            })
            .into()
        }
        "request_allowed_everything" => {
            let mut r = request(Some("alice"), &["a", "b"], Some("demo"));
            r.path = "/mcp".into();
            r.session_id = Some("s1".into());
            r.protocol_version = Some("2025-03-26".into());
            let args = json!({"q": "[MASKED:email]"});
            r.message = call("tools/call", Some("t"), args.clone(), json!(7));
            r.batch = Some(vec![
                BatchMessage {
                    kind: "request".into(),
                    method: Some("tools/call".into()),
                    jsonrpc_id: json!(7),
                    tool: Some("t".into()),
                    arguments: args,
                },
                BatchMessage {
                    kind: "notification".into(),
                    method: Some("notifications/cancelled".into()),
                    jsonrpc_id: Value::Null,
                    tool: None,
                    arguments: Value::Null,
                },
            ]);
            r.masked = Some(MaskCounts([("email".to_owned(), 2)].into()));
            r.policy_rule = Some(Some("r".into()));
            r.approval = Some(ApprovalRef {
                id: "apr_1".into(),
                status: "used".into(),
                rule: "r".into(),
            });
            r.upstream_credential = Some(UpstreamCredentialPresented::StaticHeader {
                header: "x-api-key".into(),
            });
            RequestDecided::Allow(RequestAllowed {
                request: r,
                reason: "allowed by rule \"r\": approval apr_1 by bob".into(),
                revealed: Some(vec!["email".into()]),
            })
            .into()
        }
        "request_allowed_aws" => {
            let mut r = request(Some("alice"), &["eng"], Some("aws"));
            r.path = "/aws".into();
            r.protocol_version = None;
            r.message = call("tools/call", Some("echo"), json!({}), json!("x"));
            r.upstream_credential = Some(aws(Some("ASIAEXAMPLE"), None));
            RequestDecided::Allow(RequestAllowed {
                request: r,
                reason: "caller's group may use the upstream".into(),
                revealed: None,
            })
            .into()
        }
        "request_denied_no_token" => {
            let mut r = request(None, &[], Some("demo"));
            r.http_method = "GET".into();
            r.path = "/mcp".into();
            r.protocol_version = None;
            RequestDecided::Deny(RequestDenied {
                request: r,
                reason: "missing bearer token".into(),
                status: 401,
            })
            .into()
        }
        "request_denied_no_upstream" => {
            let mut r = request(None, &[], None);
            r.http_method = "DELETE".into();
            r.path = "/x".into();
            r.session_id = Some("s".into());
            r.protocol_version = Some("2025-06-18".into());
            RequestDecided::Deny(RequestDenied {
                request: r,
                reason: "route names no known upstream".into(),
                status: 500,
            })
            .into()
        }
        "request_denied_default_deny" => {
            let mut r = request(Some("alice"), &["eng"], Some("demo"));
            r.message = call("tools/call", Some("drop_table"), json!({"a": 1.5}), json!(3));
            r.policy_rule = Some(None);
            RequestDecided::Deny(RequestDenied {
                request: r,
                reason: "denied by no rule matched (default deny)".into(),
                status: 403,
            })
            .into()
        }
        "request_denied_aws_error" => {
            let mut r = request(Some("alice"), &["eng"], Some("aws"));
            r.path = "/aws".into();
            r.protocol_version = None;
            r.message = call("tools/list", None, Value::Null, json!(4));
            r.upstream_credential = Some(aws(None, Some("STS refused")));
            RequestDecided::Deny(RequestDenied {
                request: r,
                reason: "aws_sigv4: STS refused".into(),
                status: 502,
            })
            .into()
        }
        "request_denied_approval_pending" => {
            let mut r = request(Some("alice"), &["eng"], Some("demo"));
            r.session_id = Some("s".into());
            r.message = call("tools/call", Some("run_query"), json!({"sql": "select 1"}), json!(20));
            r.policy_rule = Some(Some("sql".into()));
            r.approval = Some(ApprovalRef {
                id: "apr_2".into(),
                status: "pending".into(),
                rule: "sql".into(),
            });
            RequestDecided::Deny(RequestDenied {
                request: r,
                reason: "rule \"sql\" requires approval: approval apr_2 is pending".into(),
                status: 200,
            })
            .into()
        }
        "response_sse_event" => {
            let mut r = response(
                0,
                false,
                json!({"id": 10, "jsonrpc": "2.0", "result": {"content": [{"text": "[MASKED:email]", "type": "text"}]}}),
            );
            r.masked.insert("email".into(), 6);
            r.sse_event_id = Some("ev-1".into());
            r.jsonrpc_id = Some("10".into());
            r.into()
        }
        "response_stream_end" => {
            let mut r = response(1, true, Value::Null);
            r.end_reason = Some(EndReason::ClientGone.as_str().into());
            r.into()
        }
        "response_whole_error_conflict" => {
            let mut r = response(
                0,
                true,
                json!({"error": {"code": -32003, "message": "no"}, "id": "6bde0c5b", "jsonrpc": "2.0"}),
            );
            r.http_status = 403;
            r.content_type = Some("application/json".into());
            r.body_bytes = 170;
            r.observed_at_unix_ms = 1_796_233_105_078;
            r.jsonrpc_id = Some("\"6bde0c5b\"".into());
            r.is_error = true;
            r.error_code = Some(-32003);
            r.end_reason = Some(EndReason::Complete.as_str().into());
            r.revealed = vec!["email".into()];
            r.source = "gatehouse/1/bbfba08e".into();
            r.conflict = true;
            r.into()
        }
        "response_withheld_text" => {
            let mut r = response(0, true, json!("not json"));
            r.http_status = 502;
            r.content_type = Some("image/png".into());
            r.masked.insert("email".into(), 0);
            r.withheld = Some(Withheld::Binary.as_str().into());
            r.truncated = true;
            r.body_bytes = 9000;
            r.observed_at_unix_ms = 1;
            r.end_reason = Some("complete".into());
            r.source = "s".into();
            r.into()
        }
        "request_rejected" => RequestRejected {
            subject: Some("alice".into()),
            http_status: 400,
            jsonrpc_code: -32700,
            reason: "invalid JSON".into(),
            http_method: "POST".into(),
            path: "/demo".into(),
            session_id: None,
            protocol_version: Some("2025-11-25".into()),
            mcp_method: None,
            observed_at_unix_ms: 1_796_233_105_032,
            decision: Decision::Deny,
            source: "gatehouse/1/bbfba08e".into(),
            conflict: false,
        }
        .into(),
        "request_rejected_conflict" => RequestRejected {
            subject: None,
            http_status: 400,
            jsonrpc_code: -32600,
            reason: "something else".into(),
            http_method: "POST".into(),
            path: "/demo".into(),
            session_id: Some("s".into()),
            protocol_version: None,
            mcp_method: Some("tools/call".into()),
            observed_at_unix_ms: 2,
            decision: Decision::Deny,
            source: "f".into(),
            conflict: true,
        }
        .into(),
        "approval_requested" => ApprovalEvent::Requested(ApprovalRequested {
            approval: facts(Some("run_query")),
            arguments: json!({"sql": "SELECT '[MASKED:email]'"}),
            masked: Some(ArgumentsMasked {
                mode: "show_masked".into(),
                spans: vec![
                    MaskedSpan {
                        kind: "email".into(),
                        pointer: "/sql".into(),
                        inner_pointer: None,
                        offset: Some(8),
                        length: Some(13),
                    },
                    MaskedSpan {
                        kind: "jwt".into(),
                        pointer: "/doc".into(),
                        inner_pointer: Some("/k".into()),
                        offset: None,
                        length: None,
                    },
                ],
                more: 0,
                summary: "2 value(s) masked".into(),
            }),
            expires_at: "2026-12-02T18:38:24.818Z".into(),
            single_use: true,
            grant_seconds: 600,
        })
        .into(),
        "approval_requested_unmasked" => {
            let mut approval = facts(Some("file:///x"));
            approval.mcp_method = "resources/read".into();
            approval.rule = "files".into();
            ApprovalEvent::Requested(ApprovalRequested {
                approval,
                arguments: json!({"uri": "file:///x"}),
                masked: None,
                expires_at: "2026-12-02T18:38:24.818Z".into(),
                single_use: false,
                grant_seconds: 0,
            })
            .into()
        }
        "approval_notified" => ApprovalEvent::Notified(ApproversNotified {
            approval: facts(None),
            attempts: 1,
        })
        .into(),
        "approval_notify_failed" => ApprovalEvent::NotifyFailed(ApproverNotificationFailed {
            approval: facts(Some("run_query")),
            attempts: 4,
            error: "HTTP 500".into(),
        })
        .into(),
        "approval_approved" => ApprovalEvent::Approved(ApprovalGranted {
            approval: facts(Some("run_query")),
            approver: "bob".into(),
            approver_groups: vec!["approvers".into()],
            reason: None,
            grant_expires_at: "2026-12-02T17:48:24.867Z".into(),
        })
        .into(),
        "approval_denied" => ApprovalEvent::Denied(ApprovalDenied {
            approval: facts(Some("run_query")),
            approver: "bob".into(),
            approver_groups: vec!["approvers".into(), "eng".into()],
            reason: Some("no".into()),
        })
        .into(),
        "approval_expired" => ApprovalEvent::Expired(ApprovalExpired {
            approval: facts(Some("run_query")),
        })
        .into(),
        "approval_used" => ApprovalEvent::Used(ApprovalUsed {
            approval: facts(Some("run_query")),
            uses: 1,
            single_use: true,
            approval_request_id: "54e3c42e4cd4af3575259bdbbbdffdea".into(),
        })
        .into(),
        "approval_use_returned" => ApprovalEvent::UseReturned(ApprovalUseReturned {
            approval: facts(Some("run_query")),
            reason: "the call was not let through after all (Envoy gave up on the Check): the use is given back".into(),
        })
        .into(),
        other => panic!("no event built for golden {other:?}"),
    }
}

fn hash_of(kind: &str, data: &Value) -> String {
    record_hash(7, "w", kind, &"a".repeat(32), "2026-12-02T00:00:00.000Z", "0", data)
}

#[test]
fn each_event_writes_its_golden_json_and_reads_back() {
    let goldens = goldens();
    assert!(goldens.len() >= 20);
    for golden in &goldens {
        let event = built(&golden.name);
        assert_eq!(event.kind().as_str(), golden.kind, "{}", golden.name);
        let data = event.to_data().unwrap();
        assert_eq!(
            serde_json::to_string(&data).unwrap(),
            serde_json::to_string(&golden.data).unwrap(),
            "{}",
            golden.name
        );
        assert_eq!(
            hash_of(&golden.kind, &data),
            hash_of(&golden.kind, &golden.data),
            "{}",
            golden.name
        );
        let read = AuditEvent::from_record(&golden.kind, &golden.data).unwrap();
        assert_eq!(read, event, "{}", golden.name);
        assert_eq!(event.into_data().unwrap(), data, "{}: into_data", golden.name);
    }
}

#[test]
fn every_approval_step_and_filter_value_has_a_golden() {
    let names: Vec<String> = goldens().into_iter().map(|g| g.name).collect();
    for step in [
        "requested",
        "notified",
        "notify_failed",
        "approved",
        "denied",
        "expired",
        "used",
        "use_returned",
    ] {
        assert!(names.contains(&format!("approval_{step}")), "{step}");
    }
    for value in Withheld::ALL {
        assert_eq!(Withheld::parse(value.as_str()), Some(*value));
        assert_eq!(serde_json::to_value(value).unwrap(), json!(value.as_str()));
    }
    for value in EndReason::ALL {
        assert_eq!(EndReason::parse(value.as_str()), Some(*value));
        assert_eq!(serde_json::to_value(value).unwrap(), json!(value.as_str()));
    }
    assert_eq!(Withheld::parse("other"), None);
}

#[derive(Deserialize)]
struct Row {
    writer: String,
    seq: u64,
    kind: String,
    request_id: String,
    recorded_at: String,
    prev_hash: String,
    hash: String,
    data: String,
}

fn fixture_databases() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures())
        .expect("fixtures folder")
        .map(|e| e.expect("fixtures folder entry").path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit-") && n.ends_with(".jsonl"))
        })
        .collect();
    files.sort();
    files
}

#[test]
fn every_stored_record_round_trips_through_its_event_with_its_hash() {
    let files = fixture_databases();
    assert!(!files.is_empty());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let mut count = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let row: Row = serde_json::from_str(line).unwrap();
            let at = format!("{} record {} ({})", file.display(), row.seq, row.kind);
            let stored: Value = serde_json::from_str(&row.data).unwrap();
            let event = AuditEvent::from_record(&row.kind, &stored).unwrap_or_else(|e| panic!("{at}: {e}"));
            assert_eq!(event.kind().as_str(), row.kind, "{at}");
            let data = event.to_data().unwrap();
            assert_eq!(serde_json::to_string(&data).unwrap(), row.data, "{at}");
            assert_eq!(event.into_data().unwrap(), data, "{at}: into_data");
            let record = Record {
                seq: row.seq,
                writer: row.writer,
                kind: row.kind,
                request_id: row.request_id,
                recorded_at: row.recorded_at,
                prev_hash: row.prev_hash,
                hash: row.hash,
                data,
            };
            assert!(
                record.hash_holds(),
                "{at}: the stored hash, in the encoding it was written with"
            );
            count += 1;
        }
        assert!(count > 0, "{}", file.display());
    }
}

#[test]
fn a_field_no_event_knows_fails_the_round_trip() {
    // The control for the test above: what a type drops shows as different bytes.
    let golden = goldens().into_iter().find(|g| g.name == "approval_used").unwrap();
    let mut data = golden.data;
    data["unknown"] = json!(1);
    let event = AuditEvent::from_record("approval", &data).unwrap();
    assert_ne!(event.to_data().unwrap(), data);
}
