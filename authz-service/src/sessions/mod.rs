//! Sessions: the exchanges of one MCP session, for auditors to list, search and replay.
//!
//! A session is the exchanges of one upstream `Mcp-Session-Id` on one upstream, from the
//! `initialize` that opened it (its answer set the id) to a DELETE or idleness. Calls to a
//! server that keeps no sessions are grouped by caller, upstream and `User-Agent`, a new
//! session starting after `audit.session_idle_seconds` without a call.
//!
//! The session tables are an index derived from the trail ([`index`]): the indexer reads every
//! writer's records in chain order from a cursor and files each request (exchange) under its
//! session. They are never evidence: what an auditor is shown of an exchange is read from its
//! records, and an export carries the records with their chain links. The index can be
//! dropped and rebuilt from the trail.

pub mod cli;
pub mod export;
pub mod index;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::AnyPool;
use sqlx::Row;
use sqlx::pool::PoolOptions;

use crate::audit::{Store, normalize_time};
use crate::db::Backend;

/// The session tables of the audit database, through sqlx's `Any` driver: one code path for
/// SQLite and PostgreSQL, transactions included.
#[derive(Clone)]
pub struct Sessions {
    pool: AnyPool,
    backend: Backend,
    /// A session of a server that keeps none ends after this long without a call; any session
    /// shows as `idle` (no longer `open`) after it.
    idle_ms: i64,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("backend", &self.backend)
            .finish_non_exhaustive()
    }
}

/// Filters for listing sessions; all optional (REST query parameters, CLI options).
#[derive(Debug, Default, Clone, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct SessionQuery {
    /// The caller (`sub`).
    #[arg(long)]
    pub user: Option<String>,
    #[arg(long)]
    pub upstream: Option<String>,
    /// Sessions with at least one call of this tool.
    #[arg(long)]
    pub tool: Option<String>,
    /// RFC 3339: sessions active at or after it.
    #[arg(long)]
    pub since: Option<String>,
    /// RFC 3339: sessions started before it.
    #[arg(long)]
    pub until: Option<String>,
    /// `open`, `ended` (a DELETE) or `idle`.
    #[arg(long)]
    pub status: Option<String>,
    /// Words searched in the masked arguments and answers (never a clear value).
    #[arg(long)]
    pub q: Option<String>,
    /// Sessions per page (at most 500; default 50).
    #[arg(long)]
    pub limit: Option<u32>,
    /// The `next` of the previous page.
    #[arg(long)]
    pub before: Option<String>,
}

/// A session as listed.
#[derive(Debug, Clone, Serialize)]
pub struct Session {
    pub id: String,
    pub upstream: String,
    pub subject: Option<String>,
    pub upstream_session: Option<String>,
    pub user_agent: Option<String>,
    pub client: Value,
    pub started_at: String,
    pub last_at: String,
    /// When it ended: its DELETE, or its last exchange once idle; `null` while open.
    pub ended_at: Option<String>,
    pub status: &'static str,
    pub exchanges: i64,
    pub calls: i64,
    pub denials: i64,
    pub approvals: i64,
    /// Values masked in its requests and answers, by kind.
    pub masked: BTreeMap<String, u64>,
}

/// One exchange of a session, as the index files it (the records say the rest).
#[derive(Debug, Clone)]
pub struct Filed {
    pub request_id: String,
    pub at: String,
}

/// The most sessions one page lists.
pub const PAGE_MAX: u32 = 500;

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] sqlx::Error),
}

/// The session index of a SQLite trail: its own migrations, in its own file.
static SQLITE_INDEX_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("migrations/sqlite-sessions");

impl Sessions {
    /// The session index of `store`'s trail: on PostgreSQL the tables of the same database
    /// (migrated with it); on SQLite a database file of its own beside the audit database
    /// (`audit.db` → `audit.sessions.db`, created 0600 and migrated here), so that indexing
    /// never holds the audit database's write lock while a Check commits.
    pub async fn of(store: &Store, idle_seconds: u64) -> Result<Self, sqlx::Error> {
        Self::open(store, idle_seconds, true).await
    }

    /// The index as it is, for reading (the CLI): a SQLite index file that does not exist
    /// yet is not created (the service builds it).
    pub async fn existing(store: &Store, idle_seconds: u64) -> Result<Self, sqlx::Error> {
        Self::open(store, idle_seconds, false).await
    }

    /// This index for the indexer on the background thread ([`crate::background`]), given
    /// the background's `store`: a pool of its own, opened by the calling thread (SQLite's
    /// connection threads inherit its priority; PostgreSQL connections belong to its
    /// runtime); the same for an in-memory index (unit tests).
    pub async fn background(&self, store: &Store) -> Result<Self, sqlx::Error> {
        if self.backend == Backend::Sqlite && store.path().is_none() {
            return Ok(self.clone());
        }
        let mut index = Self::open(store, 0, false).await?;
        index.idle_ms = self.idle_ms;
        Ok(index)
    }

    async fn open(store: &Store, idle_seconds: u64, create: bool) -> Result<Self, sqlx::Error> {
        sqlx::any::install_default_drivers();
        let (url, backend) = match (store.backend(), store.path()) {
            (Backend::Postgres, _) => (store.url().to_owned(), Backend::Postgres),
            (Backend::Sqlite, Some(path)) => {
                let index = path.with_extension("sessions.db");
                if create {
                    crate::private_file::ensure_private_file(&index).map_err(sqlx::Error::Io)?;
                } else if !index.exists() {
                    return Err(sqlx::Error::Configuration(
                        format!(
                            "there is no session index at {} yet: a running service builds it",
                            index.display()
                        )
                        .into(),
                    ));
                }
                (format!("sqlite://{}", index.display()), Backend::Sqlite)
            }
            // An in-memory trail (unit tests) gets an in-memory index.
            (Backend::Sqlite, None) => ("sqlite::memory:".to_owned(), Backend::Sqlite),
        };
        let pool = PoolOptions::<sqlx::Any>::new()
            // One connection for an in-memory database (each connection would be another one).
            .max_connections(if store.path().is_none() && backend == Backend::Sqlite {
                1
            } else {
                4
            })
            .acquire_timeout(crate::db::PG_ACQUIRE_TIMEOUT)
            .connect(&url)
            .await?;
        if backend == Backend::Sqlite && create {
            SQLITE_INDEX_MIGRATIONS
                .run(&pool)
                .await
                .map_err(|e| sqlx::Error::Protocol(format!("cannot migrate the session index: {e}")))?;
        }
        Ok(Self {
            pool,
            backend,
            idle_ms: i64::try_from(idle_seconds.saturating_mul(1000)).unwrap_or(i64::MAX),
        })
    }

    /// Fills in the exchange, call, denial and approval counts and the masked kinds of
    /// `sessions`: one grouped query for a page instead of five counts per session.
    async fn count(&self, sessions: &mut [Session]) -> Result<(), sqlx::Error> {
        if sessions.is_empty() {
            return Ok(());
        }
        let agg = match self.backend {
            Backend::Postgres => "string_agg",
            Backend::Sqlite => "group_concat",
        };
        let ids = (1..=sessions.len())
            .map(|i| format!("${i}"))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = COUNTS_SELECT.replace("AGG(", &format!("{agg}(")).replace("IDS", &ids);
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for s in sessions.iter() {
            query = query.bind(s.id.as_str());
        }
        let rows = query.fetch_all(&self.pool).await?;
        let mut by_id: std::collections::HashMap<String, &sqlx::any::AnyRow> = std::collections::HashMap::new();
        for r in &rows {
            by_id.insert(r.try_get(0)?, r);
        }
        for s in sessions.iter_mut() {
            let Some(r) = by_id.get(&s.id) else { continue };
            s.exchanges = r.try_get(1)?;
            s.calls = r.try_get(2)?;
            s.denials = r.try_get(3)?;
            s.approvals = r.try_get(4)?;
            for line in r.try_get::<Option<String>, _>(5)?.unwrap_or_default().lines() {
                if let Ok(counts) = serde_json::from_str::<BTreeMap<String, u64>>(line) {
                    for (kind, n) in counts {
                        *s.masked.entry(kind).or_insert(0) += n;
                    }
                }
            }
        }
        Ok(())
    }

    fn idle_cutoff(&self) -> String {
        let now = time::OffsetDateTime::now_utc();
        crate::audit::format_time(now - time::Duration::milliseconds(self.idle_ms))
    }

    /// Sessions matching `q`, most recently active first, and the `before` of the next page.
    pub async fn list(&self, q: &SessionQuery) -> Result<(Vec<Session>, Option<String>), QueryError> {
        let limit = q.limit.unwrap_or(50).clamp(1, PAGE_MAX);
        let mut sql = SESSION_SELECT.to_owned();
        sql.push_str(" WHERE 1 = 1");
        let mut args: Vec<String> = Vec::new();
        let mut arg = |sql: &mut String, clause: &str, value: String| {
            args.push(value);
            sql.push_str(&clause.replace("$?", &format!("${}", args.len())));
        };
        if let Some(user) = &q.user {
            arg(&mut sql, " AND s.subject = $?", user.clone());
        }
        if let Some(upstream) = &q.upstream {
            arg(&mut sql, " AND s.upstream = $?", upstream.clone());
        }
        if let Some(since) = &q.since {
            arg(&mut sql, " AND s.last_at >= $?", time_arg("since", since)?);
        }
        if let Some(until) = &q.until {
            arg(&mut sql, " AND s.started_at < $?", time_arg("until", until)?);
        }
        if let Some(tool) = &q.tool {
            arg(
                &mut sql,
                " AND EXISTS (SELECT 1 FROM session_exchanges t WHERE t.session_id = s.id AND t.tool = $?)",
                tool.clone(),
            );
        }
        if let Some(words) = q.q.as_deref().map(str::trim).filter(|w| !w.is_empty()) {
            for word in words.split_whitespace().take(8) {
                let (clause, value) = self.search_clause(word);
                arg(&mut sql, clause, value);
            }
        }
        match q.status.as_deref() {
            None | Some("") => {}
            Some("open") => arg(
                &mut sql,
                " AND s.ended_at IS NULL AND s.last_at >= $?",
                self.idle_cutoff(),
            ),
            Some("ended") => sql.push_str(" AND s.ended_at IS NOT NULL"),
            Some("idle") => arg(
                &mut sql,
                " AND s.ended_at IS NULL AND s.last_at < $?",
                self.idle_cutoff(),
            ),
            Some(_) => return Err(QueryError::Invalid("status must be open, ended or idle".into())),
        }
        if let Some(before) = &q.before {
            let (last_at, id) = before
                .split_once('|')
                .ok_or_else(|| QueryError::Invalid("before must be the `next` of a previous page".into()))?;
            arg(&mut sql, " AND (s.last_at, s.id) < ($?", last_at.to_owned());
            arg(&mut sql, ", $?)", id.to_owned());
        }
        sql.push_str(&format!(" ORDER BY s.last_at DESC, s.id DESC LIMIT {}", limit + 1));
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for a in &args {
            query = query.bind(a.as_str());
        }
        let rows = query.fetch_all(&self.pool).await?;
        let cutoff = self.idle_cutoff();
        let mut sessions: Vec<Session> = rows
            .iter()
            .map(|r| session_from_row(r, &cutoff))
            .collect::<Result<_, _>>()?;
        let next = (sessions.len() > limit as usize).then(|| {
            sessions.truncate(limit as usize);
            sessions
                .last()
                .map(|s| format!("{}|{}", s.last_at, s.id))
                .unwrap_or_default()
        });
        self.count(&mut sessions).await?;
        Ok((sessions, next))
    }

    /// The clause that keeps sessions with `word` in the masked text of one of their
    /// exchanges (a substring, any case), and its parameter. Words of three characters or more
    /// are looked up in the trigram index (FTS5 on SQLite, pg_trgm on PostgreSQL); shorter ones
    /// have no trigram and are read from the table.
    fn search_clause(&self, word: &str) -> (&'static str, String) {
        let like = format!("%{}%", escape_like(word));
        match self.backend {
            // pg_trgm serves ILIKE directly; backslash is PostgreSQL's default LIKE escape.
            Backend::Postgres => (
                " AND s.id IN (SELECT w.session_id FROM session_exchanges w WHERE w.text ILIKE $?)",
                like,
            ),
            Backend::Sqlite if word.chars().count() >= 3 => (
                " AND s.id IN (SELECT w.session_id FROM session_text t \
                 JOIN session_exchanges w ON w.id = t.rowid WHERE session_text MATCH $?)",
                // One FTS5 phrase: the word as a string, its quotes doubled (never syntax).
                format!("\"{}\"", word.replace('"', "\"\"")),
            ),
            Backend::Sqlite => (
                " AND s.id IN (SELECT w.session_id FROM session_exchanges w WHERE w.text LIKE $? ESCAPE '\\')",
                like,
            ),
        }
    }

    /// Makes sure search has its index: FTS5 is built into SQLite (migration 0002 of the
    /// index file); on PostgreSQL the index needs the pg_trgm extension, which migration 0005
    /// creates where the role may. Where it could not, this creates the index once the
    /// extension is there, and otherwise says why there is none (search still works, by scan).
    pub async fn ensure_search_index(&self) -> Result<(), sqlx::Error> {
        if self.backend == Backend::Sqlite {
            return Ok(());
        }
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM pg_indexes WHERE indexname = 'session_exchanges_text'")
                .fetch_optional(&self.pool)
                .await?;
        if found.is_none() {
            sqlx::query(
                "CREATE INDEX IF NOT EXISTS session_exchanges_text ON session_exchanges USING gin (text gin_trgm_ops)",
            )
            .execute(&self.pool)
            .await?;
        }
        Ok(())
    }

    /// One session.
    pub async fn get(&self, id: &str) -> Result<Option<Session>, sqlx::Error> {
        let sql = format!("{SESSION_SELECT} WHERE s.id = $1");
        let Some(row) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let mut session = [session_from_row(&row, &self.idle_cutoff())?];
        self.count(&mut session).await?;
        let [session] = session;
        Ok(Some(session))
    }

    /// A session's exchanges in order, `limit` from position `from` (0-based).
    pub async fn exchanges(&self, id: &str, from: u64, limit: u32) -> Result<Vec<Filed>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT request_id, at FROM session_exchanges WHERE session_id = $1 \
             ORDER BY at, request_id LIMIT $2 OFFSET $3",
        )
        .bind(id)
        .bind(i64::from(limit))
        .bind(i64::try_from(from).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Filed {
                    request_id: r.try_get(0)?,
                    at: r.try_get(1)?,
                })
            })
            .collect()
    }

    /// How many records the index has yet to read, over every writer it knows.
    pub async fn behind(&self, store: &Store) -> Result<u64, sqlx::Error> {
        let mut behind = 0u64;
        for writer in store.writers().await? {
            let head = store.head_seq(&writer).await?;
            let seen: Option<i64> = sqlx::query_scalar("SELECT seq FROM session_cursor WHERE writer = $1")
                .bind(&writer)
                .fetch_optional(&self.pool)
                .await?;
            behind += head.saturating_sub(u64::try_from(seen.unwrap_or(0)).unwrap_or(0));
        }
        Ok(behind)
    }
}

/// A session row (its counts come from [`Sessions::count`]).
const SESSION_SELECT: &str = "SELECT s.id, s.upstream, s.subject, s.upstream_session, s.user_agent, \
     s.client_name, s.client_version, s.protocol_version, s.started_at, s.last_at, s.ended_at \
     FROM sessions s";

/// The counts of the sessions `$1..$n`, one pass over their exchanges (`AGG`: the backend's
/// string aggregate, which skips nulls).
const COUNTS_SELECT: &str = "SELECT session_id, COUNT(*), \
     COUNT(CASE WHEN mcp_method = 'tools/call' THEN 1 END), \
     COUNT(CASE WHEN decision = 'deny' THEN 1 END), \
     COUNT(CASE WHEN approval = 1 THEN 1 END), \
     AGG(CASE WHEN masked <> '{}' THEN masked END, '\n') \
     FROM session_exchanges WHERE session_id IN (IDS) GROUP BY session_id";

fn session_from_row(r: &sqlx::any::AnyRow, idle_cutoff: &str) -> Result<Session, sqlx::Error> {
    let text = |i: usize| -> Result<Option<String>, sqlx::Error> { r.try_get::<Option<String>, _>(i) };
    let blank = |v: Option<String>| v.filter(|s| !s.is_empty());
    let (last_at, ended): (String, Option<String>) = (r.try_get(9)?, text(10)?);
    let status = match (&ended, last_at.as_str() < idle_cutoff) {
        (Some(_), _) => "ended",
        (None, true) => "idle",
        (None, false) => "open",
    };
    Ok(Session {
        id: r.try_get(0)?,
        upstream: r.try_get(1)?,
        subject: blank(text(2)?),
        upstream_session: text(3)?,
        user_agent: blank(text(4)?),
        client: json!({"name": text(5)?, "version": text(6)?, "protocol_version": text(7)?}),
        started_at: r.try_get(8)?,
        ended_at: ended.clone().or_else(|| (status == "idle").then(|| last_at.clone())),
        last_at,
        status,
        exchanges: 0,
        calls: 0,
        denials: 0,
        approvals: 0,
        masked: BTreeMap::new(),
    })
}

/// Milliseconds since the epoch of a record time.
fn ms_of(at: &str) -> Option<i64> {
    time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
        .ok()
        .map(|t| (t.unix_timestamp_nanos() / 1_000_000) as i64)
}

/// Exchange `n` of a session started at `started_at`, as its records tell it: the call
/// (masked), the decision and its rule, approval steps, and the answer's parts with timing.
pub fn exchange_view(n: u64, filed: &Filed, started_at: &str, records: &[gatehouse_core::audit::Record]) -> Value {
    let request = records
        .iter()
        .find(|r| r.kind == "request" || r.kind == "request_rejected");
    let d = request.map(|r| &r.data);
    let field = |key: &str| d.and_then(|d| d.get(key)).cloned().unwrap_or(Value::Null);
    let at_ms = ms_of(&filed.at);
    let mut masked: BTreeMap<String, u64> = BTreeMap::new();
    let mut count = |m: Option<&Value>| {
        for (kind, n) in m.and_then(Value::as_object).into_iter().flatten() {
            *masked.entry(kind.clone()).or_insert(0) += n.as_u64().unwrap_or(0);
        }
    };
    count(d.and_then(|d| d.get("masked")));
    let mut responses = Vec::new();
    let mut answered_ms = None;
    for r in records.iter().filter(|r| r.kind == "response") {
        count(r.data.get("masked"));
        let observed = r.data.get("observed_at_unix_ms").and_then(Value::as_i64);
        if r.data.get("final") == Some(&Value::Bool(true)) {
            answered_ms = observed;
        }
        responses.push(json!({
            "part": r.data.get("part"),
            "final": r.data.get("final"),
            "offset_ms": observed.zip(at_ms).map(|(o, a)| o - a),
            "http_status": r.data.get("http_status"),
            "message": r.data.get("message"),
            "masked": r.data.get("masked"),
            "withheld": r.data.get("withheld"),
            "end_reason": r.data.get("end_reason"),
            "writer": r.writer, "seq": r.seq, "hash": r.hash,
        }));
    }
    let approval: Vec<Value> = records
        .iter()
        .filter(|r| r.kind == "approval")
        .map(|r| {
            json!({
                "event": r.data.get("event"),
                "at": r.recorded_at,
                "approval_id": r.data.get("approval_id"),
                "approver": r.data.get("approver"),
                "reason": r.data.get("reason"),
                "writer": r.writer, "seq": r.seq, "hash": r.hash,
            })
        })
        .collect();
    json!({
        "n": n,
        "request_id": filed.request_id,
        "at": filed.at,
        "offset_ms": at_ms.zip(ms_of(started_at)).map(|(a, s)| a - s),
        "kind": request.map(|r| r.kind.clone()),
        "http_method": field("http_method"),
        "method": field("mcp_method"),
        "tool": field("tool"),
        "arguments": field("arguments"),
        "decision": field("decision"),
        "reason": field("reason"),
        "policy_rule": field("policy_rule"),
        "status": d.and_then(|d| d.get("status").or_else(|| d.get("http_status"))).cloned(),
        "latency_ms": answered_ms.zip(at_ms).map(|(done, at)| done - at),
        "masked": masked,
        "approval": approval,
        "responses": responses,
        "record": request.map(|r| json!({"writer": r.writer, "seq": r.seq, "hash": r.hash})),
    })
}

fn time_arg(name: &str, value: &str) -> Result<String, QueryError> {
    normalize_time(value).ok_or_else(|| QueryError::Invalid(format!("{name} must be an RFC 3339 time")))
}

/// `word` with LIKE's wildcards taken literally (escape character `\`).
fn escape_like(word: &str) -> String {
    let mut out = String::with_capacity(word.len());
    for c in word.chars() {
        if matches!(c, '%' | '_' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests;
