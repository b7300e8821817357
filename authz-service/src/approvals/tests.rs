use serde_json::json;

use super::*;
use crate::AppState;
use crate::on_pool;
use crate::policy::{ApprovalSpec, MaskedArguments};

fn spec() -> ApprovalSpec {
    ApprovalSpec {
        approver_group: "ops".into(),
        hold_seconds: 0,
        expires_seconds: 60,
        grant_seconds: 60,
        single_use: true,
        masked_arguments: crate::policy::MaskedArguments::Refuse,
    }
}

fn keys(key: Option<&[u8]>) -> CallKeys {
    CallKeys::new(key.map(<[u8]>::to_vec))
}

/// An approvals table of its own, in memory.
async fn table() -> ApprovalStore {
    let pool = crate::db::Pool::Sqlite(sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap());
    crate::db::migrate(&pool).await.unwrap();
    ApprovalStore::new(pool)
}

#[tokio::test]
async fn identical_calls_share_a_key_and_any_difference_changes_it() {
    let a = keys(Some(b"k1"));
    let spec = spec();
    let masked = json!(null);
    let args = json!({"sql": "drop table t", "n": 1});
    let reordered: Value = serde_json::from_str(r#"{"n": 1, "sql": "drop table t"}"#).unwrap();
    let call = |subject, tool, arguments| Call {
        subject,
        upstream: "db",
        method: "tools/call",
        tool: Some(tool),
        params: Some(arguments),
        masked_arguments: &masked,
        rule: "r",
        spec: &spec,
        request_id: "0",
    };
    let base = a.of(&call("alice", "run", &args));
    assert_eq!(base, a.of(&call("alice", "run", &reordered)));
    assert_ne!(base, a.of(&call("bob", "run", &args)));
    assert_ne!(base, a.of(&call("alice", "run2", &args)));
    let other = json!({"sql": "drop table u", "n": 1});
    assert_ne!(base, a.of(&call("alice", "run", &other)));
    // Keyed: without the key, the arguments cannot be guessed from the stored key.
    assert_ne!(base, keys(Some(b"k2")).of(&call("alice", "run", &args)));
    assert_ne!(base, keys(None).of(&call("alice", "run", &args)));
}

#[test]
fn statuses_round_trip() {
    for s in [
        Status::Pending,
        Status::Approved,
        Status::Denied,
        Status::Expired,
        Status::Used,
    ] {
        assert_eq!(Status::parse(s.as_str()), Some(s));
        assert_eq!(json!(s), json!(s.as_str()));
    }
    assert_eq!(Status::parse("maybe"), None);
}

/// An approval of alice's `run` on `db` under rule `r`, approved by bob at `now`.
pub(crate) fn approved(id: &str, now: i64) -> Approval {
    Approval {
        id: id.into(),
        status: Status::Approved,
        subject: "alice".into(),
        upstream: "db".into(),
        method: "tools/call".into(),
        tool: Some("run".into()),
        arguments: json!({}),
        rule: "r".into(),
        approver_group: "ops".into(),
        single_use: true,
        grant_ms: 60_000,
        request_id: "0".into(),
        requested_ms: now,
        expires_ms: now + 60_000,
        decided_ms: Some(now),
        decided_by: Some("bob".into()),
        reason: None,
        grant_expires_ms: Some(now + 60_000),
        uses: 0,
        masking: None,
    }
}

#[tokio::test]
async fn a_use_not_kept_is_given_back_and_a_kept_one_stands() {
    let store = table().await;
    let now = now_ms();
    for (id, key, keep) in [("apr_1", "k1", false), ("apr_2", "k2", true)] {
        let grant = approved(id, now);
        store.insert(&grant, key).await.unwrap();
        assert!(store.decide(&grant).await.unwrap());
        let used = store.use_grant(key, now).await.unwrap().unwrap();
        assert_eq!((used.status, used.uses), (Status::Used, 1));
        // Single use: a second call finds nothing.
        assert!(store.use_grant(key, now).await.unwrap().is_none());
        let hold = GrantUse {
            store: store.clone(),
            approval_id: id.into(),
            kept: false,
            returned: None,
            audit: None,
        };
        if keep {
            hold.keep();
        } else {
            drop(hold);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = store.get(id).await.unwrap().unwrap();
        let expected = if keep { (Status::Used, 1) } else { (Status::Approved, 0) };
        assert_eq!((after.status, after.uses), expected, "{id}");
    }
}

#[tokio::test]
async fn expiry_goes_in_batches_and_expires_only_what_was_read() {
    let store = table().await;
    let now = now_ms();
    let extra = 3;
    for i in 0..store::DUE_BATCH + extra {
        let mut pending = approved(&format!("apr_{i:04}"), now - 120_000);
        (pending.status, pending.expires_ms) = (Status::Pending, now - 60_000 + i as i64);
        store.insert(&pending, &format!("k{i}")).await.unwrap();
    }
    let first = store.due(now).await.unwrap();
    assert_eq!(first.len(), store::DUE_BATCH);
    assert_eq!(first[0].id, "apr_0000", "the earliest first");
    let ids: Vec<&str> = first.iter().map(|a| a.id.as_str()).collect();
    store.expire(&ids).await.unwrap();
    // The rest stay pending (so they are recorded when they expire), until the next batch.
    let rest = store.due(now).await.unwrap();
    assert_eq!(rest.len(), extra);
    assert!(store.any_due(now).await.unwrap());
    assert_eq!(store.get("apr_0000").await.unwrap().unwrap().status, Status::Expired);
    let ids: Vec<&str> = rest.iter().map(|a| a.id.as_str()).collect();
    store.expire(&ids).await.unwrap();
    assert!(!store.any_due(now).await.unwrap());
}

/// A started service with these `approvals:` settings (YAML flow map body).
async fn service(dir: &std::path::Path, approvals: &str) -> crate::server::Server {
    let config = crate::test_support::config_with(dir, &format!("approvals: {{ {approvals} }}"));
    crate::server::Server::start(config).await.unwrap()
}

fn call<'a>(subject: &'a str, params: &'a Value, masked: &'a Value, spec: &'a ApprovalSpec) -> Call<'a> {
    Call {
        subject,
        upstream: "everything",
        method: "tools/call",
        tool: Some("run_query"),
        params: Some(params),
        masked_arguments: masked,
        rule: "r",
        spec,
        request_id: "00000000000000000000000000000001",
    }
}

async fn records_of(state: &AppState, request_id: &str) -> Vec<Value> {
    let records = state.audit.store().request_records(request_id, 100).await.unwrap();
    records.into_iter().map(|r| r.data).collect()
}

#[tokio::test]
async fn a_use_given_back_after_its_used_record_is_recorded_too() {
    let dir = tempfile::tempdir().unwrap();
    let server = service(dir.path(), "").await;
    let state = server.state.clone();
    let now = now_ms();
    let grant = approved("apr_back", now);
    state.approvals.store.insert(&grant, "kb").await.unwrap();
    assert!(state.approvals.store.decide(&grant).await.unwrap());
    let (spec, params) = (spec(), json!({"name": "run_query", "arguments": {}}));
    let masked = json!({});
    let mut c = call("alice", &params, &masked, &spec);
    c.request_id = "00000000000000000000000000000002";
    // Through the gate, so the use is taken as a Check takes it.
    let key = state.approvals.keys.of(&c);
    crate::on_pool!(state.audit.store().pool(), pool => {
        sqlx::query("UPDATE approvals SET key = $1 WHERE id = 'apr_back'").bind(&key).execute(pool).await.unwrap().rows_affected()
    });
    let Gate::Granted { used, mut hold, .. } = state.approvals.gate(&c, Duration::ZERO).await.unwrap() else {
        panic!("the grant should let the call through");
    };
    // The `used` record is committed, then Envoy gives up on the Check: the grant is dropped.
    state.audit.append(vec![used]).await.unwrap();
    hold.recorded(&state.audit);
    drop(hold);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = state.approvals.store.get("apr_back").await.unwrap().unwrap();
    assert_eq!((after.status, after.uses), (Status::Approved, 0));
    let events: Vec<String> = records_of(&state, c.request_id)
        .await
        .iter()
        .filter_map(|d| d.get("event").and_then(Value::as_str).map(str::to_owned))
        .collect();
    assert_eq!(events, ["used", "use_returned"]);
    server.stop();
}

#[tokio::test]
async fn held_calls_are_capped_per_caller_and_in_all() {
    let dir = tempfile::tempdir().unwrap();
    let server = service(dir.path(), "max_held_per_caller: 2, max_held: 3").await;
    let a = &server.state.approvals;
    let first = a.hold_slot("alice").await.unwrap().unwrap();
    let _second = a.hold_slot("alice").await.unwrap().unwrap();
    assert!(matches!(
        a.hold_slot("alice").await.unwrap(),
        Err(Refusal::TooManyHeld { limit: 2, total: false })
    ));
    // Another caller is not held up by alice, until all slots are taken.
    let bob = a.hold_slot("bob").await.unwrap().unwrap();
    assert!(matches!(
        a.hold_slot("carol").await.unwrap(),
        Err(Refusal::TooManyHeld { limit: 3, total: true })
    ));
    // A slot comes back when its call ends...
    first.end().await;
    let third = a.hold_slot("alice").await.unwrap().unwrap();
    // ... and when the Check is dropped (its row goes in the background).
    drop(third);
    drop(bob);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while a.hold_slot("alice").await.unwrap().is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a dropped slot's row was never cleared"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.stop();
}

#[tokio::test]
async fn pending_approvals_are_capped_per_caller_but_joining_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let server = service(dir.path(), "max_pending_per_caller: 2").await;
    let state = server.state.clone();
    let gate = |subject: &'static str, n: u32| {
        let state = state.clone();
        async move {
            let (spec, params, shown) = (
                spec(),
                json!({"name": "run_query", "arguments": {"n": n}}),
                json!({"n": n}),
            );
            let c = call(subject, &params, &shown, &spec);
            state.approvals.gate(&c, Duration::ZERO).await.unwrap()
        }
    };
    assert!(matches!(gate("alice", 1).await, Gate::Stopped(_)));
    assert!(matches!(gate("alice", 2).await, Gate::Stopped(_)));
    assert!(matches!(
        gate("alice", 3).await,
        Gate::Refused(Refusal::TooManyPending { limit: 2 })
    ));
    // The same call again joins its pending approval; another caller asks freely.
    assert!(matches!(gate("alice", 1).await, Gate::Stopped(_)));
    assert!(matches!(gate("bob", 3).await, Gate::Stopped(_)));
    assert_eq!(state.approvals.store.pending_count("alice").await.unwrap(), 2);
    server.stop();
}

#[tokio::test]
async fn masked_arguments_are_refused_or_shown_in_clear_sealed_outside_the_trail() {
    let dir = tempfile::tempdir().unwrap();
    let server = service(dir.path(), "").await;
    let state = server.state.clone();
    let secret = "SELECT 1 /*AKIAQWERTYUIOPASDFGHJ*/ UNION SELECT password FROM users";
    let params = json!({"name": "run_query", "arguments": {"sql": secret}});
    let masked = json!({"sql": "SELECT 1 /*[MASKED:aws_access_key]*/ UNION SELECT password FROM users"});
    let mut spec = spec();

    // The default: refused before any approval is asked.
    let refused = state
        .approvals
        .gate(&call("alice", &params, &masked, &spec), Duration::ZERO)
        .await
        .unwrap();
    let Gate::Refused(Refusal::MaskedArguments(report)) = refused else {
        panic!("masked arguments must be refused by default: {refused:?}");
    };
    assert_eq!(report.spans[0].pointer, "/sql");
    assert_eq!((report.spans[0].offset, report.spans[0].length), (Some(11), Some(21)));
    assert_eq!(state.approvals.store.pending_count("alice").await.unwrap(), 0);

    // show_clear: asked, flagged, the clear text sealed outside the trail and the table.
    spec.masked_arguments = MaskedArguments::ShowClear;
    let c = call("alice", &params, &masked, &spec);
    let Gate::Stopped(approval) = state.approvals.gate(&c, Duration::ZERO).await.unwrap() else {
        panic!("a show_clear call waits for its approval");
    };
    let masking = approval.masking.clone().expect("the approval says it was masked");
    assert_eq!(masking.mode, MaskedArguments::ShowClear);
    assert_eq!(
        state.approvals.clear_arguments(&approval.id).await.unwrap(),
        Some(json!({"sql": secret}))
    );
    assert!(state.approvals.readable(&approval).await.unwrap());
    let sealed: String = on_pool!(state.audit.store().pool(), pool =>
        sqlx::query_scalar("SELECT sealed FROM approval_clear WHERE approval_id = $1")
            .bind(&approval.id).fetch_one(pool).await.unwrap());
    assert!(
        !sealed.contains("AKIA") && !sealed.contains("SELECT"),
        "sealed, not stored in clear"
    );
    let stored = state.approvals.store.get(&approval.id).await.unwrap().unwrap();
    assert_eq!(stored.masking, Some(masking));
    assert_eq!(stored.arguments, masked);
    let requested = records_of(&state, c.request_id).await;
    assert!(!serde_json::to_string(&requested).unwrap().contains("AKIA"));
    assert_eq!(requested[0]["masked"]["spans"][0]["kind"], "aws_access_key");

    // Without the clear text (sealed under another key: a restart without a session key
    // file), it cannot be approved; a denial still works.
    let bob = crate::identity::Principal {
        subject: "bob".into(),
        groups: ["ops".to_owned()].into(),
    };
    let other_key = Replicas::new(state.audit.store().pool().clone(), "other", &[7; 32]);
    other_key
        .keep_clear(&approval.id, &json!({"sql": "other"}))
        .await
        .unwrap();
    assert!(!state.approvals.readable(&approval).await.unwrap());
    // A row moved to another approval does not open either (the id is bound in).
    assert_eq!(state.approvals.clear_arguments("apr_other").await.unwrap(), None);
    assert!(matches!(
        state.approvals.decide(&approval.id, &bob, true, None).await,
        Err(DecideError::Unreadable(_))
    ));
    // The caller's retry puts it back; the decision drops it from memory.
    let Gate::Stopped(again) = state.approvals.gate(&c, Duration::ZERO).await.unwrap() else {
        panic!("the retry joins the pending approval");
    };
    assert_eq!(again.id, approval.id);
    assert!(state.approvals.readable(&approval).await.unwrap());
    state.approvals.decide(&approval.id, &bob, true, None).await.unwrap();
    assert_eq!(state.approvals.clear_arguments(&approval.id).await.unwrap(), None);
    let left: i64 = on_pool!(state.audit.store().pool(), pool =>
        sqlx::query_scalar("SELECT COUNT(*) FROM approval_clear").fetch_one(pool).await.unwrap());
    assert_eq!(left, 0, "a decided approval's clear arguments are deleted");
    server.stop();
}

#[tokio::test]
async fn approvals_work_with_only_the_parts_they_are_given() {
    let dir = tempfile::tempdir().unwrap();
    let config = crate::test_support::config(dir.path());
    let store = crate::audit::Store::open(&config.audit.database, Duration::from_millis(500))
        .await
        .unwrap();
    let metrics = Metrics::default();
    let audit = AuditLog::start(store.clone(), "gh-parts", 16, None, metrics.clone())
        .await
        .unwrap();
    let approvals = Arc::new(Approvals::new(
        ApprovalStore::new(store.pool().clone()),
        CallKeys::new(None),
        Limits::from(&config.approvals),
        audit.clone(),
        metrics.clone(),
        Notifier::new(&config.approvals, audit, metrics.clone()),
        Replicas::new(store.pool().clone(), "gh-parts", &[1; 32]),
    ));
    let (spec, params, shown) = (spec(), json!({"name": "run_query", "arguments": {}}), json!({}));
    let c = call("alice", &params, &shown, &spec);
    let Gate::Stopped(asked) = approvals.gate(&c, Duration::ZERO).await.unwrap() else {
        panic!("a call without a grant waits for its approval");
    };
    assert_eq!(metrics.approvals_requested.get(), 1);
    let events: Vec<Value> = store
        .request_records(c.request_id, 10)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.data["event"].clone())
        .collect();
    assert_eq!(events, [json!("requested")]);
    let url = approvals.approver_url(&asked.id);
    assert!(
        url.starts_with(config.approvals.ui_url.as_str()) && url.ends_with(&format!("approval={}", asked.id)),
        "{url}"
    );
}
