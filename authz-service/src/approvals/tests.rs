use serde_json::json;

use super::*;
use crate::policy::ApprovalSpec;

fn spec() -> ApprovalSpec {
    ApprovalSpec {
        approver_group: "ops".into(),
        hold_seconds: 0,
        expires_seconds: 60,
        grant_seconds: 60,
        single_use: true,
    }
}

async fn approvals(key: Option<&[u8]>) -> Approvals {
    let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
    Approvals::open(pool, key.map(<[u8]>::to_vec)).await.unwrap()
}

#[tokio::test]
async fn identical_calls_share_a_key_and_any_difference_changes_it() {
    let a = approvals(Some(b"k1")).await;
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
    let base = a.key_of(&call("alice", "run", &args));
    assert_eq!(base, a.key_of(&call("alice", "run", &reordered)));
    assert_ne!(base, a.key_of(&call("bob", "run", &args)));
    assert_ne!(base, a.key_of(&call("alice", "run2", &args)));
    let other = json!({"sql": "drop table u", "n": 1});
    assert_ne!(base, a.key_of(&call("alice", "run", &other)));
    // Keyed: without the key, the arguments cannot be guessed from the stored key.
    assert_ne!(base, approvals(Some(b"k2")).await.key_of(&call("alice", "run", &args)));
    assert_ne!(base, approvals(None).await.key_of(&call("alice", "run", &args)));
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

fn approved(id: &str, now: i64) -> Approval {
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
    }
}

#[tokio::test]
async fn a_use_not_kept_is_given_back_and_a_kept_one_stands() {
    let a = approvals(None).await;
    let now = now_ms();
    for (id, key, keep) in [("apr_1", "k1", false), ("apr_2", "k2", true)] {
        let grant = approved(id, now);
        a.store.insert(&grant, key).await.unwrap();
        assert!(a.store.decide(&grant).await.unwrap());
        let used = a.store.use_grant(key, now).await.unwrap().unwrap();
        assert_eq!((used.status, used.uses), (Status::Used, 1));
        // Single use: a second call finds nothing.
        assert!(a.store.use_grant(key, now).await.unwrap().is_none());
        let hold = GrantUse {
            store: a.store.clone(),
            approval_id: id.into(),
            kept: false,
        };
        if keep {
            hold.keep();
        } else {
            drop(hold);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let after = a.store.get(id).await.unwrap().unwrap();
        let expected = if keep { (Status::Used, 1) } else { (Status::Approved, 0) };
        assert_eq!((after.status, after.uses), expected, "{id}");
    }
}

#[tokio::test]
async fn expiry_goes_in_batches_and_expires_only_what_was_read() {
    let a = approvals(None).await;
    let now = now_ms();
    let extra = 3;
    for i in 0..store::DUE_BATCH + extra {
        let mut pending = approved(&format!("apr_{i:04}"), now - 120_000);
        (pending.status, pending.expires_ms) = (Status::Pending, now - 60_000 + i as i64);
        a.store.insert(&pending, &format!("k{i}")).await.unwrap();
    }
    let first = a.store.due(now).await.unwrap();
    assert_eq!(first.len(), store::DUE_BATCH);
    assert_eq!(first[0].id, "apr_0000", "the earliest first");
    let ids: Vec<&str> = first.iter().map(|a| a.id.as_str()).collect();
    a.store.expire(&ids).await.unwrap();
    // The rest stay pending (so they are recorded when they expire), until the next batch.
    let rest = a.store.due(now).await.unwrap();
    assert_eq!(rest.len(), extra);
    assert!(a.store.any_due(now).await.unwrap());
    assert_eq!(a.store.get("apr_0000").await.unwrap().unwrap().status, Status::Expired);
    let ids: Vec<&str> = rest.iter().map(|a| a.id.as_str()).collect();
    a.store.expire(&ids).await.unwrap();
    assert!(!a.store.any_due(now).await.unwrap());
}
