//! In-process tests of the Check: a real tonic client against the started service.

use std::collections::{BTreeSet, HashMap};

use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest,
    attribute_context::{HttpRequest, Request},
    authorization_client::AuthorizationClient,
    check_response::HttpResponse,
};
use serde_json::{Value, json};

use crate::{audit::RecordQuery, server::Server, test_support};

const RID: &str = "0123456789abcdef0123456789abcdef";

fn check(headers: &[(&str, &str)], body: &[u8], upstream: Option<&str>) -> CheckRequest {
    let headers: HashMap<String, String> = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let mut extensions = HashMap::new();
    if let Some(u) = upstream {
        extensions.insert("upstream".to_owned(), u.to_owned());
    }
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "POST".into(),
                    path: "/mcp".into(),
                    headers,
                    raw_body: body.to_vec(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: extensions,
            ..Default::default()
        }),
    }
}

/// A started service (the test config with `extra` YAML appended) and its folder.
async fn service(extra: &str) -> (tempfile::TempDir, Server) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(test_support::config_with(dir.path(), extra))
        .await
        .unwrap();
    (dir, server)
}

async fn client(server: &Server) -> AuthorizationClient<tonic::transport::Channel> {
    AuthorizationClient::connect(format!("http://{}", server.grpc_addr))
        .await
        .unwrap()
}

fn token(server: &Server, sub: &str, groups: &[&str]) -> String {
    let groups: BTreeSet<String> = groups.iter().map(|g| (*g).to_owned()).collect();
    let t = server
        .state
        .dev_issuer
        .as_ref()
        .unwrap()
        .mint(sub, &groups, "gatehouse", 60)
        .unwrap();
    format!("Bearer {t}")
}

const CALL: &[u8] =
    br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}"#;

async fn records(server: &Server, request_id: &str) -> Vec<gatehouse_core::audit::Record> {
    let q = RecordQuery {
        request_id: Some(request_id.into()),
        ..Default::default()
    };
    server.state.audit.store().list(&q).await.unwrap()
}

fn denied(resp: &envoy_types::pb::envoy::service::auth::v3::CheckResponse) -> (u32, HashMap<String, String>, Value) {
    let Some(HttpResponse::DeniedResponse(d)) = &resp.http_response else {
        panic!("expected a denial: {resp:?}")
    };
    let headers = d
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect();
    (
        d.status.as_ref().unwrap().code as u32,
        headers,
        serde_json::from_str(&d.body).unwrap(),
    )
}

#[tokio::test]
async fn an_allowed_call_is_recorded_before_ok_and_loses_its_token() {
    let (_dir, server) = service("").await;
    let auth = token(&server, "alice", &["eng"]);
    let session = bound_session(&server, "alice", "s-1");
    let resp = ask(
        &server,
        &[
            ("authorization", &auth),
            ("x-gatehouse-request-id", RID),
            ("mcp-session-id", &session),
        ],
        CALL,
    )
    .await;
    assert_eq!(resp.status.as_ref().unwrap().code, 0);
    let Some(HttpResponse::OkResponse(ok)) = &resp.http_response else {
        panic!("{resp:?}")
    };
    assert_eq!(ok.headers_to_remove, ["authorization"]);
    let set = |name: &str| {
        ok.headers
            .iter()
            .filter_map(|h| h.header.as_ref())
            .find(|h| h.key == name)
            .map(|h| h.value.clone())
    };
    assert_eq!(
        set("mcp-session-id").as_deref(),
        Some("s-1"),
        "the upstream gets its own id"
    );
    let key = ok
        .response_headers_to_add
        .iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == "x-gatehouse-session-key")
        .map(|h| hex::decode(&h.value).unwrap())
        .unwrap();
    assert_eq!(gatehouse_core::session::bind(&key, "s-1"), Some(session.clone()));

    let recs = records(&server, RID).await;
    assert_eq!(recs.len(), 1);
    let d = &recs[0].data;
    assert_eq!(
        (d["subject"].as_str(), d["decision"].as_str(), d["tool"].as_str()),
        (Some("alice"), Some("allow"), Some("echo"))
    );
    assert_eq!(d["arguments"], json!({"message": "hi"}));
    assert_eq!(d["jsonrpc_id"], 4);
    assert_eq!(d["session_id"], "s-1");
    assert_eq!(d["upstream"], "everything");
    assert!(
        !recs[0].data.to_string().contains(auth.trim_start_matches("Bearer ")),
        "the token must not be stored"
    );
    server.stop();
}

/// One Check on upstream "everything".
async fn ask(
    server: &Server,
    headers: &[(&str, &str)],
    body: &[u8],
) -> envoy_types::pb::envoy::service::auth::v3::CheckResponse {
    ask_on(server, "everything", headers, body).await
}

/// The tools/call [`CALL`] by the holder of `auth`, numbered `rid` by the filter.
async fn call_as(server: &Server, auth: &str, rid: &str) -> envoy_types::pb::envoy::service::auth::v3::CheckResponse {
    ask(
        server,
        &[("authorization", auth), ("x-gatehouse-request-id", rid)],
        CALL,
    )
    .await
}

/// One Check on the route of `upstream`.
async fn ask_on(
    server: &Server,
    upstream: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> envoy_types::pb::envoy::service::auth::v3::CheckResponse {
    client(server)
        .await
        .check(check(headers, body, Some(upstream)))
        .await
        .unwrap()
        .into_inner()
}

/// The session id `subject` was given for the upstream's `id` on upstream "everything".
fn bound_session(server: &Server, subject: &str, id: &str) -> String {
    let key = server.state.sessions.binding_key(subject, "everything").unwrap();
    gatehouse_core::session::bind(&key, id).unwrap()
}

#[tokio::test]
async fn another_callers_session_is_404_and_recorded() {
    let (_dir, server) = service("").await;
    let bob = token(&server, "bob", &["eng"]);
    let alices = bound_session(&server, "alice", "s-1");
    for (i, presented) in [alices.as_str(), "s-1"].into_iter().enumerate() {
        let rid = format!("{i:032x}");
        let headers = [
            ("authorization", bob.as_str()),
            ("x-gatehouse-request-id", &rid),
            ("mcp-session-id", presented),
        ];
        let resp = ask(&server, &headers, CALL).await;
        let (status, _, body) = denied(&resp);
        assert_eq!(status, 404, "{presented}");
        assert_eq!(body["id"], 4);
        assert_eq!(body["error"]["code"], -32600);
        let recs = records(&server, &rid).await;
        let d = &recs[0].data;
        assert_eq!(
            (d["decision"].as_str(), d["status"].as_u64()),
            (Some("deny"), Some(404))
        );
        assert_eq!(d["session_id"], "s-1", "records keep the upstream's id");
        assert_eq!(d["subject"], "bob");
    }
    server.stop();
}

#[tokio::test]
async fn a_call_naming_no_string_tool_is_refused_by_the_service_too() {
    let (_dir, server) = service("").await;
    let auth = token(&server, "alice", &["eng"]);
    for (i, (body, code)) in [
        (
            &br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":["echo"]}}"#[..],
            -32602,
        ),
        (
            br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"a","NAME":"echo"}}"#,
            -32600,
        ),
        (
            br#"{"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"a","name":"echo"}}"#,
            -32600,
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let rid = format!("{:032x}", i + 16);
        let resp = ask(
            &server,
            &[("authorization", &auth), ("x-gatehouse-request-id", &rid)],
            body,
        )
        .await;
        let (status, _, answer) = denied(&resp);
        assert_eq!((status, answer["error"]["code"].as_i64()), (400, Some(code)));
        // Invalid params answer the request's id; an invalid request cannot be trusted to have one.
        assert_eq!(answer["id"], if code == -32602 { json!(4) } else { Value::Null });
        assert_eq!(records(&server, &rid).await[0].data["decision"], "deny");
    }
    server.stop();
}

#[tokio::test]
async fn no_token_is_401_with_resource_metadata() {
    let (_dir, server) = service("").await;
    let resp = ask(&server, &[("x-gatehouse-request-id", RID)], CALL).await;
    let (status, headers, body) = denied(&resp);
    assert_eq!(status, 401);
    assert_eq!(
        headers["www-authenticate"],
        r#"Bearer resource_metadata="https://gw.example/.well-known/oauth-protected-resource/mcp""#
    );
    assert_eq!(body["id"], 4);
    assert_eq!(body["error"]["code"], -32001);
    let recs = records(&server, RID).await;
    assert_eq!(recs[0].data["decision"], "deny");
    assert_eq!(recs[0].data["status"], 401);
    server.stop();
}

#[tokio::test]
async fn a_caller_outside_the_upstreams_groups_is_403() {
    let (_dir, server) = service("").await;
    let auth = token(&server, "bob", &["approvers"]);
    let resp = call_as(&server, &auth, RID).await;
    let (status, _, body) = denied(&resp);
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], -32003);
    assert_eq!(records(&server, RID).await[0].data["subject"], "bob");
    server.stop();
}

#[tokio::test]
async fn requests_that_bypassed_the_filter_or_name_no_upstream_are_refused() {
    let (_dir, server) = service("").await;
    let auth = token(&server, "alice", &["eng"]);
    let no_id = ask(&server, &[("authorization", &auth)], CALL).await;
    assert_eq!(denied(&no_id).0, 500);
    let spoofed_id = ask(
        &server,
        &[("authorization", &auth), ("x-gatehouse-request-id", "../../etc")],
        CALL,
    )
    .await;
    assert_eq!(denied(&spoofed_id).0, 500);
    let unknown = ask_on(
        &server,
        "nope",
        &[("authorization", &auth), ("x-gatehouse-request-id", RID)],
        CALL,
    )
    .await;
    assert_eq!(denied(&unknown).0, 500);
    server.stop();
}

#[tokio::test]
async fn an_unwritable_audit_store_denies_the_call() {
    use sqlx::{Connection, Executor};
    let (dir, server) = service("").await;
    let auth = token(&server, "alice", &["eng"]);
    // Another process holds SQLite's write lock: the service cannot commit.
    let mut locker = sqlx::SqliteConnection::connect(&format!("sqlite://{}", dir.path().join("audit.db").display()))
        .await
        .unwrap();
    locker.execute("BEGIN EXCLUSIVE").await.unwrap();
    let resp = call_as(&server, &auth, RID).await;
    let (status, _, body) = denied(&resp);
    assert_eq!(status, 503);
    assert_eq!(body["error"]["code"], -32603);
    locker.execute("ROLLBACK").await.unwrap();
    assert!(records(&server, RID).await.is_empty());
    assert_eq!(server.state.metrics.checks_failed.get(), 1);
    server.stop();
}

#[tokio::test]
async fn concurrent_checks_share_commits_and_keep_one_chain() {
    let (_dir, server) = service("").await;
    let auth = token(&server, "alice", &["eng"]);
    // The start's own commit (its configuration record) is not one of the Checks'.
    let commits_before = server.state.metrics.audit_commits.get();
    let mut tasks = Vec::new();
    for i in 0..64 {
        let mut c = client(&server).await;
        let auth = auth.clone();
        tasks.push(tokio::spawn(async move {
            let rid = format!("{i:032x}");
            c.check(check(
                &[("authorization", &auth), ("x-gatehouse-request-id", &rid)],
                CALL,
                Some("everything"),
            ))
            .await
            .unwrap()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().into_inner().status.unwrap().code, 0);
    }
    let verified = crate::audit::verify::verify_store(server.state.audit.store(), None)
        .await
        .unwrap();
    // The configuration's record at start, then the 64.
    assert_eq!(verified.writers[0].records, 65);
    assert!(server.state.metrics.audit_commits.get() - commits_before <= 64);
    server.stop();
}

const POLICY: &str = r#"
policy:
  rules:
    - {id: no-drop, tools: [echo], arguments: [{pointer: /message, equals: drop}], outcome: deny}
    - {id: add-needs-approval, tools: [add], outcome: approve, approval: {approver_group: approvers, hold_seconds: 0}}
    - {id: eng-may-call, groups: [eng], methods: ["tools/*", initialize, "notifications/*"], outcome: allow}
"#;

fn call(tool: &str, arguments: Value) -> Vec<u8> {
    json!({"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": tool, "arguments": arguments}})
        .to_string()
        .into_bytes()
}

#[tokio::test]
async fn the_policy_decides_calls_and_its_rule_is_recorded() {
    let (_dir, server) = service(POLICY).await;
    let auth = token(&server, "alice", &["eng"]);
    let mut client = client(&server).await;
    let cases = [
        (
            "00000000000000000000000000000001",
            call("echo", json!({"message": "hi"})),
            Some("eng-may-call"),
            0,
        ),
        (
            "00000000000000000000000000000002",
            call("echo", json!({"message": "drop"})),
            Some("no-drop"),
            403,
        ),
        (
            "00000000000000000000000000000003",
            call("add", json!({"a": 1, "b": 2})),
            Some("add-needs-approval"),
            // Answered with the approval to wait for (a JSON-RPC error), not forwarded.
            200,
        ),
        (
            "00000000000000000000000000000004",
            br#"{"jsonrpc":"2.0","id":5,"method":"resources/read","params":{"uri":"x"}}"#.to_vec(),
            None,
            403,
        ),
    ];
    for (rid, body, rule, status) in cases {
        let resp = client
            .check(check(
                &[("authorization", &auth), ("x-gatehouse-request-id", rid)],
                &body,
                Some("everything"),
            ))
            .await
            .unwrap()
            .into_inner();
        // An approval's own records share the request id: pick the request record.
        let recs: Vec<_> = records(&server, rid)
            .await
            .into_iter()
            .filter(|r| r.kind == "request")
            .collect();
        assert_eq!(recs[0].data["policy_rule"].as_str(), rule, "{rid}: {}", recs[0].data);
        if status == 0 {
            assert_eq!(resp.status.as_ref().unwrap().code, 0, "{rid}");
            assert_eq!(recs[0].data["decision"], "allow");
        } else {
            let (got, _, body) = denied(&resp);
            assert_eq!(got, status, "{rid}");
            let code = if status == 200 { -32030 } else { -32003 };
            assert_eq!(body["error"]["code"], code, "{rid}");
            assert_eq!(recs[0].data["decision"], "deny");
        }
    }
    server.stop();
}

#[tokio::test]
async fn a_changed_policy_is_reloaded_and_a_bad_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gatehouse.yaml");
    let base = test_support::config_text("");
    let with = |rules: &str| format!("{base}policy:\n  rules:\n{rules}");
    std::fs::write(&path, with("    - {id: allow-all, outcome: allow}\n")).unwrap();
    let server = Server::start(crate::config::Config::load(&path).unwrap())
        .await
        .unwrap();
    let auth = token(&server, "alice", &["eng"]);
    let mut client = client(&server).await;
    let body = call("echo", json!({"message": "hi"}));
    let mut n = 0u32;
    let mut rule_now = async |client: &mut AuthorizationClient<tonic::transport::Channel>| {
        n += 1;
        let rid = format!("{n:032x}");
        client
            .check(check(
                &[("authorization", &auth), ("x-gatehouse-request-id", &rid)],
                &body,
                Some("everything"),
            ))
            .await
            .unwrap();
        records(&server, &rid).await[0].data["policy_rule"]
            .as_str()
            .map(str::to_owned)
    };
    assert_eq!(rule_now(&mut client).await.as_deref(), Some("allow-all"));

    std::fs::write(&path, with("    - {id: echo-off, tools: [echo], outcome: deny}\n")).unwrap();
    let mut reloaded = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if rule_now(&mut client).await.as_deref() == Some("echo-off") {
            reloaded = true;
            break;
        }
    }
    assert!(reloaded, "the new policy was not picked up");

    // A broken file is refused: the policy in force stays.
    std::fs::write(
        &path,
        with("    - {id: bad, outcome: allow, arguments: [{pointer: /x, regex: '('}]}\n"),
    )
    .unwrap();
    tokio::time::sleep(crate::policy::reload::POLL * 3).await;
    assert_eq!(rule_now(&mut client).await.as_deref(), Some("echo-off"));
    assert!(server.state.metrics.policy_reload_errors.get() >= 1);
    server.stop();
}

/// Polls `fut` once; whether it finished.
async fn poll_once<F: std::future::Future + Unpin>(fut: &mut F) -> bool {
    std::future::poll_fn(|cx| std::task::Poll::Ready(std::pin::Pin::new(&mut *fut).poll(cx).is_ready())).await
}

#[tokio::test]
async fn a_check_envoy_abandons_after_its_used_record_gives_the_use_back_and_says_so() {
    use envoy_types::pb::envoy::service::auth::v3::authorization_server::Authorization;
    let policy = POLICY.replace("hold_seconds: 0}", "hold_seconds: 0, single_use: false}");
    let (_dir, server) = service(&policy).await;
    let state = server.state.clone();
    let auth = token(&server, "alice", &["eng"]);
    let body = call("add", json!({"a": 1, "b": 2}));
    let ask = |rid: &str| {
        check(
            &[("authorization", &auth), ("x-gatehouse-request-id", rid)],
            &body,
            Some("everything"),
        )
    };
    let service = super::AuthzService::new(state.clone());
    // Asked, then approved by bob.
    service.check(tonic::Request::new(ask(RID))).await.unwrap();
    let pending = state
        .approvals
        .store()
        .list(Some(crate::approvals::Status::Pending), 10)
        .await
        .unwrap()
        .remove(0);
    let bob = crate::identity::Principal {
        subject: "bob".into(),
        groups: ["approvers".to_owned()].into(),
    };
    state.approvals.decide(&pending.id, &bob, true, None).await.unwrap();

    // A Check whose `used` record is committed, dropped before it answers (Envoy gave up).
    // The commit runs in a task of its own; it may finish just before a poll, and then the
    // Check answers: that call went through, so try again with the next request id.
    let mut delivered = 0;
    let abandoned = 'attempts: {
        for n in 1..=20 {
            let rid = format!("{n:032x}");
            let mut fut = Box::pin(service.check(tonic::Request::new(ask(&rid))));
            loop {
                if poll_once(&mut fut).await {
                    delivered += 1;
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                let events: Vec<_> = records(&server, &rid).await.into_iter().map(|r| r.data).collect();
                if events.iter().any(|d| d["event"] == "used") {
                    drop(fut);
                    break 'attempts rid;
                }
            }
        }
        panic!("no Check was caught between its commit and its answer");
    };
    // The use is given back by a task of its own: wait for it (a loaded machine is slow).
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let (after, events) = loop {
        let after = state.approvals.store().get(&pending.id).await.unwrap().unwrap();
        let events: Vec<Value> = records(&server, &abandoned)
            .await
            .into_iter()
            .filter(|r| r.data.get("event").is_some())
            .map(|r| r.data["event"].clone())
            .collect();
        if (after.uses == delivered && events.len() > 1) || tokio::time::Instant::now() > deadline {
            break (after, events);
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(after.uses, delivered, "the abandoned call's use was given back");
    assert_eq!(events, [json!("used"), json!("use_returned")]);
    server.stop();
}
