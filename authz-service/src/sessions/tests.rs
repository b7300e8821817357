use std::collections::BTreeMap;

use serde_json::json;

use super::*;

#[test]
fn a_search_word_is_taken_literally() {
    assert_eq!(escape_like("100%_a\\b"), "100\\%\\_a\\\\b");
    assert_eq!(escape_like("plain"), "plain");
}

#[test]
fn session_ids_are_stable_and_tell_their_parts_apart() {
    let a = index::tests_support::session_id(&["u", "db", "s-1", "alice"]);
    assert_eq!(a, index::tests_support::session_id(&["u", "db", "s-1", "alice"]));
    assert_ne!(a, index::tests_support::session_id(&["u", "db", "s-1", "mallory"]));
    // Parts are separated: moving a character from one part to the next changes the id.
    assert_ne!(index::tests_support::session_id(&["u", "db", "s-1a", "lice"]), a);
    assert!(a.starts_with("s_") && a.len() == 26);
}

#[test]
fn the_transcript_reads_in_order_with_offsets_and_masked_values() {
    let session = Session {
        id: "s_1".into(),
        upstream: "demo".into(),
        subject: Some("alice".into()),
        upstream_session: Some("abc".into()),
        user_agent: None,
        client: json!({"name": "claude-code", "version": "2.1", "protocol_version": "2025-11-25"}),
        started_at: "2026-12-03T10:00:00.000Z".into(),
        last_at: "2026-12-03T10:00:01.500Z".into(),
        ended_at: None,
        status: "open",
        exchanges: 2,
        calls: 1,
        denials: 1,
        approvals: 0,
        masked: BTreeMap::from([("email".to_owned(), 1)]),
    };
    let exchanges = [
        json!({"n": 0, "offset_ms": 0, "method": "initialize", "tool": null, "decision": "allow",
               "arguments": null, "approval": [], "responses": [], "latency_ms": 12}),
        json!({"n": 1, "offset_ms": 1500, "method": "tools/call", "tool": "run_query", "decision": "deny",
               "policy_rule": "no-destructive-sql", "reason": "denied by rule no-destructive-sql",
               "arguments": {"sql": "DELETE FROM t WHERE mail = '[MASKED:email]'"}, "approval": [], "responses": []}),
    ];
    let text = cli::transcript(&session, &exchanges);
    assert!(
        text.starts_with("Session s_1 on demo: alice (claude-code 2.1, protocol 2025-11-25), open"),
        "{text}"
    );
    let init = text
        .find("+0.000s  #0  initialize  [allow, answered in 12 ms]")
        .expect(&text);
    let call = text
        .find("+1.500s  #1  tools/call run_query  [deny by no-destructive-sql]")
        .expect(&text);
    assert!(init < call);
    assert!(text.contains("[MASKED:email]") && text.contains("denied: denied by rule no-destructive-sql"));
    assert!(text.contains("masked: email 1"));
}

#[test]
fn the_transcript_escapes_control_characters_from_callers_and_upstreams() {
    let session = Session {
        id: "s_1".into(),
        upstream: "demo".into(),
        subject: Some("mallory\u{1b}[2J".into()),
        upstream_session: None,
        user_agent: None,
        client: json!({"name": "evil\nSession s_2 on demo: alice", "version": null, "protocol_version": null}),
        started_at: "2026-12-03T10:00:00.000Z".into(),
        last_at: "2026-12-03T10:00:00.000Z".into(),
        ended_at: None,
        status: "open",
        exchanges: 1,
        calls: 1,
        denials: 0,
        approvals: 0,
        masked: BTreeMap::new(),
    };
    let exchanges = [
        json!({"n": 0, "offset_ms": 0, "method": "tools/call", "tool": "x\r\n+0.000s  #9  fake",
        "decision": "allow", "arguments": {"a": "\u{7}"}, "approval": [],
        "responses": [{"message": "ok\n    answer: forged"}]}),
    ];
    let text = cli::transcript(&session, &exchanges);
    assert!(
        !text.contains('\u{1b}') && !text.contains('\r') && !text.contains('\u{7}'),
        "{text}"
    );
    assert_eq!(text.lines().filter(|l| l.starts_with("Session ")).count(), 1, "{text}");
    assert!(!text.lines().any(|l| l.starts_with("+0.000s  #9")), "{text}");
    assert!(
        !text.lines().any(|l| l.trim_start().starts_with("answer: forged")),
        "{text}"
    );
}

/// An index file built before search had its full-text index (migration 0001 only) keeps its
/// exchanges when 0002 rebuilds the table, and they are found through the new index, which
/// follows later inserts, rewrites and deletes.
#[tokio::test]
async fn the_search_migration_indexes_what_was_there_and_follows_changes() {
    use sqlx::Executor;
    let pool = sqlx::SqlitePool::connect("sqlite::memory:").await.unwrap();
    pool.execute(include_str!("../../migrations/sqlite-sessions/0001_sessions.sql"))
        .await
        .unwrap();
    pool.execute(
        "INSERT INTO session_exchanges (request_id, session_id, at, text) \
         VALUES ('r1', 's_old', '2026-01-01T00:00:00Z', 'rotate Kubernetes credentials')",
    )
    .await
    .unwrap();
    pool.execute(include_str!("../../migrations/sqlite-sessions/0002_search.sql"))
        .await
        .unwrap();
    let found = |word: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT w.session_id FROM session_text t JOIN session_exchanges w ON w.id = t.rowid \
                 WHERE session_text MATCH $1 ORDER BY 1",
            )
            .bind(format!("\"{word}\""))
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(found("KUBERN").await, ["s_old"]);
    pool.execute(
        "INSERT INTO session_exchanges (request_id, session_id, at, text) VALUES ('r2', 's_new', 'x', 'deploy'); \
         UPDATE session_exchanges SET text = text || ' answered: done' WHERE request_id = 'r1'; \
         UPDATE session_exchanges SET session_id = 's_moved' WHERE request_id = 'r2'",
    )
    .await
    .unwrap();
    assert_eq!(found("deploy").await, ["s_moved"]);
    assert_eq!(found("answered").await, ["s_old"]);
    assert_eq!(
        found("rotate").await,
        ["s_old"],
        "the rewritten text keeps its first words"
    );
    pool.execute("DELETE FROM session_exchanges WHERE request_id = 'r1'")
        .await
        .unwrap();
    assert!(found("rotate").await.is_empty() && found("answered").await.is_empty());
    // The table keeps its ids over a VACUUM (the index refers to them).
    pool.execute("VACUUM").await.unwrap();
    assert_eq!(found("deploy").await, ["s_moved"]);
}
