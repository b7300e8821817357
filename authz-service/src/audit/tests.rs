use gatehouse_core::audit::{ChainBreak, RecordKind};
use serde_json::json;
use sqlx::{Connection, Executor};

use super::{checkpoint, verify::verify_store};
use crate::test_support;

async fn append_n(server: &crate::server::Server, n: usize) {
    for i in 0..n {
        server
            .state
            .audit
            .append_one(RecordKind::Request, &format!("{i:032x}"), json!({"i": i}))
            .await
            .unwrap();
    }
}

/// The store at `dir`/audit.db, with no service around it.
async fn store_in(dir: &std::path::Path) -> super::Store {
    let url = format!("sqlite://{}", dir.join("audit.db").display());
    super::Store::open(&url, std::time::Duration::from_secs(5))
        .await
        .unwrap()
}

async fn raw(dir: &std::path::Path) -> sqlx::SqliteConnection {
    sqlx::SqliteConnection::connect(&format!("sqlite://{}", dir.join("audit.db").display()))
        .await
        .unwrap()
}

#[tokio::test]
async fn checkpoints_are_signed_and_catch_a_deleted_tail() {
    let dir = tempfile::tempdir().unwrap();
    let server = test_support::start(dir.path()).await;
    append_n(&server, 12).await;
    let key = checkpoint::load_public_key(&dir.path().join("cp.pem")).unwrap();
    let store = server.state.audit.store();
    // The writer checkpoints every 5 records.
    let report = verify_store(store, Some(&key)).await.unwrap();
    // Its configuration's record, then the twelve.
    assert_eq!(report.writers[0].records, 13);
    assert!(report.writers[0].checkpoints >= 2, "{report:?}");

    // Deleting the newest records leaves a valid chain, but not the checkpoint at 10.
    raw(dir.path())
        .await
        .execute("DELETE FROM audit_records WHERE seq > 7")
        .await
        .unwrap();
    match verify_store(store, Some(&key)).await {
        Err(super::verify::VerifyError::Broken(ChainBreak::Truncated {
            last: 7, checkpoint, ..
        })) => assert!(checkpoint >= 10),
        other => panic!("expected a truncation, got {other:?}"),
    }
    server.stop();
}

#[tokio::test]
async fn a_forged_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = test_support::start(dir.path()).await;
    append_n(&server, 6).await;
    let key = checkpoint::load_public_key(&dir.path().join("cp.pem")).unwrap();
    raw(dir.path())
        .await
        .execute("UPDATE audit_checkpoints SET seq = seq + 100")
        .await
        .unwrap();
    let err = verify_store(server.state.audit.store(), Some(&key)).await.unwrap_err();
    assert!(
        matches!(
            err,
            super::verify::VerifyError::Broken(ChainBreak::BadCheckpoint { .. })
        ),
        "{err:?}"
    );
    server.stop();
}

#[tokio::test]
async fn a_restarted_writer_continues_its_chain() {
    let dir = tempfile::tempdir().unwrap();
    let config = test_support::config(dir.path());
    let first = crate::server::Server::start(config.clone()).await.unwrap();
    append_n(&first, 3).await;
    first.stop();
    drop(first);
    let second = crate::server::Server::start(test_support::config(dir.path()))
        .await
        .unwrap();
    let r = second
        .state
        .audit
        .append_one(RecordKind::Request, "r", json!({}))
        .await
        .unwrap();
    // Each start records its configuration first: 1 + 3, then 5 and this one.
    assert_eq!(r.seq, 6);
    assert_eq!(
        verify_store(second.state.audit.store(), None).await.unwrap().writers[0].records,
        6
    );
    second.stop();
}

#[cfg(unix)]
#[tokio::test]
async fn the_store_and_checkpoint_log_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state/audit.db");
    let store = super::Store::open(&format!("sqlite://{}", db.display()), std::time::Duration::from_secs(5))
        .await
        .unwrap();
    let mut head = gatehouse_core::audit::ChainHead::genesis("w");
    let record = head.append("request", "r", "2026-01-01T00:00:00.000Z", json!({}));
    store.insert_all(std::iter::once(&record)).await.unwrap();
    let signer = checkpoint::CheckpointSigner::load_or_create(&dir.path().join("keys/cp.pem")).unwrap();
    let log = dir.path().join("logs/checkpoints.log");
    checkpoint::append_to_log(&log, &signer.sign(&head, "2026-01-01T00:00:00.000Z")).unwrap();
    for name in ["audit.db", "audit.db-wal", "audit.db-shm"] {
        assert_eq!(mode(&db.with_file_name(name)), 0o600, "{name}");
    }
    for path in [log.clone(), dir.path().join("keys/cp.pem")] {
        assert_eq!(mode(&path), 0o600, "{}", path.display());
    }
    for sub in ["state", "keys", "logs"] {
        assert_eq!(mode(&dir.path().join(sub)), 0o700, "{sub}");
    }
}

#[tokio::test]
async fn a_tail_left_unsigned_by_a_crash_is_signed_on_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path()).await;
    // What a writer killed before its next checkpoint leaves: records, no checkpoint.
    let mut head = gatehouse_core::audit::ChainHead::genesis("w");
    let records: Vec<_> = (0..3)
        .map(|i| head.append("request", &format!("{i:032x}"), "2026-01-01T00:00:00.000Z", json!({})))
        .collect();
    store.insert_all(records.iter()).await.unwrap();

    let checkpoints = super::Checkpointer {
        signer: checkpoint::CheckpointSigner::load_or_create(&dir.path().join("cp.pem")).unwrap(),
        every_records: 100,
        every: std::time::Duration::from_secs(3600),
        log_file: None,
    };
    let _log = super::AuditLog::start(
        store.clone(),
        "w",
        4,
        Some(checkpoints),
        crate::metrics::Metrics::default(),
    )
    .await
    .unwrap();
    // Neither count nor interval is due: only the restart itself signs the tail.
    let mut signed = Vec::new();
    for _ in 0..500 {
        signed = store.checkpoints("w").await.unwrap();
        if !signed.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(signed.iter().map(|c| c.seq).collect::<Vec<_>>(), vec![3]);
}

/// An attacker (or a long stream) floods the ingest with response records: a request's record
/// must still commit at once, with at most one chunk of them along, not after the flood.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_ingested_records_does_not_hold_back_a_request() {
    let dir = tempfile::tempdir().unwrap();
    let store = store_in(dir.path()).await;
    let log = super::AuditLog::start(store, "w", 256, None, crate::metrics::Metrics::default())
        .await
        .unwrap();
    let flood: usize = 500 * super::writer::RIDE_ALONG;
    let response = |i: usize| super::NewRecord {
        kind: RecordKind::Response,
        request_id: format!("{i:032x}"),
        data: json!({"part": 0, "message": "x".repeat(100)}),
    };
    let lingering = {
        let log = log.clone();
        tokio::spawn(async move { log.append_lingering((0..flood).map(response).collect()).await })
    };
    // The flood's jobs are queued (the writer has begun on them) before the request arrives.
    let mut conn = raw(dir.path()).await;
    let max_seq = async |conn: &mut sqlx::SqliteConnection| -> i64 {
        sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM audit_records")
            .fetch_one(conn)
            .await
            .unwrap()
    };
    while max_seq(&mut conn).await == 0 {
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    }
    let request = log
        .append_one(
            RecordKind::Request,
            &format!("{:032x}", flood + 1),
            json!({"tool": "echo"}),
        )
        .await
        .unwrap();
    // Its commit carried at most one chunk of the flood along (a few more chunks may commit
    // between its return and this look), not the whole queue.
    let stored = max_seq(&mut conn).await as u64;
    let chunk = super::writer::RIDE_ALONG as u64;
    assert!(
        request.seq < flood as u64 / 4 && stored - request.seq <= 4 * chunk,
        "the request (seq {}) came back with {stored} of {flood} flooded records committed",
        request.seq
    );
    assert_eq!(lingering.await.unwrap().unwrap().len(), flood);
}
