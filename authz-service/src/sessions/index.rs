//! The session indexer: reads each writer's records in chain order after its cursor, files
//! every request (exchange) under its session, and moves the cursor, one transaction per
//! batch. Filing is the same whatever order writers are read in: an exchange's records may
//! come from several writers (the Check's request record on one replica, the filter's
//! response records ingested on another), so each record updates the exchange's row and the
//! exchange is filed once it can be:
//!
//! - it presented an upstream session id, or its answer set one (an `initialize`): the session
//!   of that id on that upstream, for that caller (another caller presenting the id gets a
//!   session of their own: the attempt shows under the attacker, not the victim);
//! - an allowed `initialize` waits for its answer's first record to know;
//! - anything else: the caller's open session of that upstream and `User-Agent` with a call
//!   within the idle gap, or a new one.
//!
//! Within a batch each exchange is read once and written once, at the batch's end, so the
//! search index takes its text once for a request and its answer read together, rather than
//! at each part of the answer.
//!
//! On PostgreSQL one replica indexes at a time (a session-level advisory lock on a connection
//! of its own; another takes over when its connection goes).

use std::collections::BTreeMap;
use std::time::Duration;

use gatehouse_core::audit::Record;
use serde_json::Value;
use sha2::Digest;
use sqlx::{Any, Row, Transaction};
use tokio::sync::watch;

use super::Sessions;
use crate::audit::Store;

/// Records read per transaction.
pub const BATCH: u32 = 500;
/// How often the indexer looks for new records.
pub const PASS: Duration = Duration::from_millis(500);
/// How often it lists every writer of the trail (a scan); the live replicas' writer ids
/// (`replicas`) and the writers it has a cursor for are read every pass.
const WRITERS_EVERY: Duration = Duration::from_secs(60);
/// The most searchable text kept per exchange (masked arguments and answers).
const TEXT_MAX: usize = 16 * 1024;

/// One exchange's row as the indexer keeps it.
#[derive(Debug, Default)]
struct Exchange {
    session_id: Option<String>,
    at: String,
    subject: Option<String>,
    upstream: Option<String>,
    user_agent: Option<String>,
    http_method: Option<String>,
    mcp_method: Option<String>,
    tool: Option<String>,
    decision: Option<String>,
    approval: bool,
    masked: BTreeMap<String, u64>,
    text: String,
    client: Option<Value>,
    upstream_session: Option<String>,
    answered: bool,
    requested: bool,
}

const EXCHANGE_COLUMNS: &str = "session_id, at, subject, upstream, user_agent, http_method, mcp_method, tool, decision, \
     approval, masked, text, client, upstream_session, answered, requested";

impl Exchange {
    async fn load(tx: &mut Transaction<'_, Any>, request_id: &str) -> Result<Option<Self>, sqlx::Error> {
        let sql = format!("SELECT {EXCHANGE_COLUMNS} FROM session_exchanges WHERE request_id = $1");
        let Some(r) = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(request_id)
            .fetch_optional(&mut **tx)
            .await?
        else {
            return Ok(None);
        };
        let text = |i: usize| r.try_get::<Option<String>, _>(i);
        Ok(Some(Self {
            session_id: text(0)?,
            at: r.try_get(1)?,
            subject: text(2)?,
            upstream: text(3)?,
            user_agent: text(4)?,
            http_method: text(5)?,
            mcp_method: text(6)?,
            tool: text(7)?,
            decision: text(8)?,
            approval: r.try_get::<i64, _>(9)? != 0,
            masked: serde_json::from_str(&r.try_get::<String, _>(10)?).unwrap_or_default(),
            text: r.try_get(11)?,
            client: text(12)?.and_then(|c| serde_json::from_str(&c).ok()),
            upstream_session: text(13)?,
            answered: r.try_get::<i64, _>(14)? != 0,
            requested: r.try_get::<i64, _>(15)? != 0,
        }))
    }

    async fn save(&self, tx: &mut Transaction<'_, Any>, request_id: &str) -> Result<(), sqlx::Error> {
        let sql = format!(
            "INSERT INTO session_exchanges (request_id, {EXCHANGE_COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
             ON CONFLICT (request_id) DO UPDATE SET session_id = excluded.session_id, at = excluded.at, \
             subject = excluded.subject, upstream = excluded.upstream, user_agent = excluded.user_agent, \
             http_method = excluded.http_method, mcp_method = excluded.mcp_method, tool = excluded.tool, \
             decision = excluded.decision, approval = excluded.approval, masked = excluded.masked, \
             text = excluded.text, client = excluded.client, upstream_session = excluded.upstream_session, \
             answered = excluded.answered, requested = excluded.requested"
        );
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(request_id)
            .bind(self.session_id.clone())
            .bind(self.at.clone())
            .bind(self.subject.clone())
            .bind(self.upstream.clone())
            .bind(self.user_agent.clone())
            .bind(self.http_method.clone())
            .bind(self.mcp_method.clone())
            .bind(self.tool.clone())
            .bind(self.decision.clone())
            .bind(i64::from(self.approval))
            .bind(serde_json::to_string(&self.masked).unwrap_or_else(|_| "{}".into()))
            .bind(self.text.clone())
            .bind(self.client.as_ref().map(Value::to_string))
            .bind(self.upstream_session.clone())
            .bind(i64::from(self.answered))
            .bind(i64::from(self.requested))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    fn count_masked(&mut self, masked: Option<&Value>) {
        for (kind, n) in masked.and_then(Value::as_object).into_iter().flatten() {
            *self.masked.entry(kind.clone()).or_insert(0) += n.as_u64().unwrap_or(0);
        }
    }

    /// Adds `value` (already masked) to what a search reads, up to [`TEXT_MAX`].
    fn add_text(&mut self, value: &Value) {
        let more = match value {
            Value::Null => return,
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let room = TEXT_MAX.saturating_sub(self.text.len());
        if room > 1 {
            if !self.text.is_empty() {
                self.text.push('\n');
            }
            let mut end = (room - 1).min(more.len());
            while !more.is_char_boundary(end) {
                end -= 1;
            }
            self.text.push_str(&more[..end]);
        }
    }

    /// Whether a record of this kind is about an exchange.
    fn learns_from(r: &Record) -> bool {
        matches!(
            r.kind.as_str(),
            "request" | "request_rejected" | "response" | "approval"
        )
    }

    /// What the record adds to its exchange (one [`Self::learns_from`]).
    fn learn(&mut self, r: &Record) {
        let d = &r.data;
        let text = |key: &str| d.get(key).and_then(Value::as_str).map(str::to_owned);
        match r.kind.as_str() {
            "request" | "request_rejected" => {
                self.requested = true;
                self.at = r.recorded_at.clone();
                self.subject = text("subject");
                self.upstream = text("upstream").or_else(|| self.upstream.take());
                self.user_agent = text("user_agent");
                self.http_method = text("http_method");
                self.mcp_method = text("mcp_method");
                self.tool = text("tool");
                self.decision = text("decision");
                self.approval |= d.get("approval").is_some_and(|a| !a.is_null());
                if let Some(session) = text("session_id") {
                    self.upstream_session = Some(session);
                }
                self.client = d.get("client").filter(|c| !c.is_null()).cloned();
                self.count_masked(d.get("masked"));
                if let Some(tool) = &self.tool.clone() {
                    self.add_text(&Value::String(tool.clone()));
                }
                self.add_text(d.get("arguments").unwrap_or(&Value::Null));
                if let Some(batch) = d.get("batch").and_then(Value::as_array) {
                    for m in batch.iter().skip(1) {
                        self.add_text(m.get("arguments").unwrap_or(&Value::Null));
                    }
                }
            }
            "response" => {
                if !self.requested && self.at.is_empty() {
                    self.at = r.recorded_at.clone();
                }
                self.answered = true;
                if self.upstream_session.is_none() {
                    self.upstream_session = text("session_id");
                }
                self.count_masked(d.get("masked"));
                self.add_text(d.get("message").unwrap_or(&Value::Null));
            }
            "approval" => {
                if self.at.is_empty() {
                    self.at = r.recorded_at.clone();
                }
                self.approval = true;
            }
            _ => {}
        }
    }
}

/// The exchanges one batch learned about, by request id, each written once when the batch
/// ends (the index orders exchanges by time, not by when they were written).
#[derive(Default)]
struct Batch {
    exchanges: BTreeMap<String, Exchange>,
}

impl Batch {
    /// Exchange `request_id` as the batch knows it, read from the index the first time.
    async fn exchange(
        &mut self,
        tx: &mut Transaction<'_, Any>,
        request_id: &str,
    ) -> Result<&mut Exchange, sqlx::Error> {
        use std::collections::btree_map::Entry;
        Ok(match self.exchanges.entry(request_id.to_owned()) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(new) => new.insert(Exchange::load(tx, request_id).await?.unwrap_or_default()),
        })
    }

    async fn save(self, tx: &mut Transaction<'_, Any>) -> Result<(), sqlx::Error> {
        for (request_id, e) in &self.exchanges {
            e.save(tx, request_id).await?;
        }
        Ok(())
    }
}

/// Session `id` has exchange `e`: its times, its end (a DELETE), the client an `initialize`
/// named.
async fn touch(tx: &mut Transaction<'_, Any>, id: &str, e: &Exchange) -> Result<(), sqlx::Error> {
    let client = |key: &str| {
        e.client
            .as_ref()
            .and_then(|c| c.get(key))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let ended = (e.http_method.as_deref() == Some("DELETE")).then(|| e.at.clone());
    sqlx::query(
        "UPDATE sessions SET \
         started_at = CASE WHEN $2 < started_at THEN $2 ELSE started_at END, \
         last_at = CASE WHEN $2 > last_at THEN $2 ELSE last_at END, \
         ended_at = COALESCE(ended_at, $3), client_name = COALESCE(client_name, $4), \
         client_version = COALESCE(client_version, $5), protocol_version = COALESCE(protocol_version, $6) \
         WHERE id = $1",
    )
    .bind(id.to_owned())
    .bind(e.at.clone())
    .bind(ended)
    .bind(client("name"))
    .bind(client("version"))
    .bind(client("protocol_version"))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A session id: a hash of what makes the session.
fn session_id(parts: &[&str]) -> String {
    let digest = sha2::Sha256::digest(parts.join("\0").as_bytes());
    format!("s_{}", &hex::encode(digest)[..24])
}

/// `at` moved by `ms` milliseconds, in the record time format.
fn shifted(at: &str, ms: i64) -> String {
    time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
        .map(|t| crate::audit::format_time(t + time::Duration::milliseconds(ms)))
        .unwrap_or_else(|_| at.to_owned())
}

impl Sessions {
    /// Files the next records of `writer` after its cursor; how many it read.
    pub async fn index_writer(&self, store: &Store, writer: &str) -> Result<usize, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        let after: Option<i64> = sqlx::query_scalar("SELECT seq FROM session_cursor WHERE writer = $1")
            .bind(writer)
            .fetch_optional(&mut *tx)
            .await?;
        let after = after.and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
        let records = store.chain_page(writer, after, BATCH).await?;
        let Some(last) = records.last().map(|r| r.seq) else {
            return Ok(0);
        };
        let mut batch = Batch::default();
        for record in &records {
            self.file(&mut tx, &mut batch, record).await?;
        }
        batch.save(&mut tx).await?;
        // The cursor moves only from where this batch read it: an indexer that took over
        // meanwhile (a replica whose lease connection dropped) makes this batch roll back
        // rather than count its records twice.
        let last = i64::try_from(last).unwrap_or(i64::MAX);
        let moved = if after == 0 {
            sqlx::query("INSERT INTO session_cursor (writer, seq) VALUES ($1, $2) ON CONFLICT (writer) DO NOTHING")
                .bind(writer)
                .bind(last)
                .execute(&mut *tx)
                .await?
        } else {
            sqlx::query("UPDATE session_cursor SET seq = $2 WHERE writer = $1 AND seq = $3")
                .bind(writer)
                .bind(last)
                .bind(i64::try_from(after).unwrap_or(i64::MAX))
                .execute(&mut *tx)
                .await?
        };
        if moved.rows_affected() != 1 {
            tx.rollback().await?;
            return Ok(0);
        }
        tx.commit().await?;
        Ok(records.len())
    }

    /// What record `r` tells of its exchange, filed at once (sessions are found and touched
    /// in record order); the exchange itself is written with `batch`.
    async fn file(&self, tx: &mut Transaction<'_, Any>, batch: &mut Batch, r: &Record) -> Result<(), sqlx::Error> {
        if r.request_id.is_empty() || !Exchange::learns_from(r) {
            return Ok(());
        }
        let e = batch.exchange(tx, &r.request_id).await?;
        e.learn(r);
        self.settle(tx, &r.request_id, e).await
    }

    /// Files exchange `e` under its session if it can be filed now.
    async fn settle(
        &self,
        tx: &mut Transaction<'_, Any>,
        request_id: &str,
        e: &mut Exchange,
    ) -> Result<(), sqlx::Error> {
        if e.session_id.is_none() && e.requested {
            e.session_id = self.assign(tx, request_id, e).await?;
        }
        if let Some(id) = &e.session_id {
            touch(tx, id, e).await?;
        }
        Ok(())
    }

    /// The session of an exchange whose request is known, creating it if new; `None` while
    /// an allowed `initialize` waits for its answer.
    async fn assign(
        &self,
        tx: &mut Transaction<'_, Any>,
        request_id: &str,
        e: &Exchange,
    ) -> Result<Option<String>, sqlx::Error> {
        let subject = e.subject.clone().unwrap_or_default();
        let upstream = e.upstream.clone().unwrap_or_default();
        let agent = e.user_agent.clone().unwrap_or_default();
        let (id, upstream_session) = match &e.upstream_session {
            Some(session) => (session_id(&["u", &upstream, session, &subject]), Some(session.clone())),
            None if e.mcp_method.as_deref() == Some("initialize")
                && e.decision.as_deref() == Some("allow")
                && !e.answered =>
            {
                return Ok(None);
            }
            None => {
                let open: Option<String> = sqlx::query_scalar(
                    "SELECT id FROM sessions WHERE upstream_session IS NULL AND subject = $1 AND upstream = $2 \
                     AND user_agent = $3 AND ended_at IS NULL AND last_at >= $4 AND started_at <= $5 \
                     ORDER BY last_at DESC LIMIT 1",
                )
                .bind(subject.clone())
                .bind(upstream.clone())
                .bind(agent.clone())
                .bind(shifted(&e.at, -self.idle_ms))
                .bind(shifted(&e.at, self.idle_ms))
                .fetch_optional(&mut **tx)
                .await?;
                match open {
                    Some(id) => return Ok(Some(id)),
                    None => (session_id(&["g", &upstream, &subject, &agent, request_id]), None),
                }
            }
        };
        sqlx::query(
            "INSERT INTO sessions (id, upstream, subject, upstream_session, user_agent, started_at, last_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (id) DO NOTHING",
        )
        .bind(id.clone())
        .bind(upstream)
        .bind(subject)
        .bind(upstream_session)
        .bind(agent)
        .bind(e.at.clone())
        .execute(&mut **tx)
        .await?;
        Ok(Some(id))
    }

    /// The writers the index has a cursor for, and the live replicas' writer ids.
    async fn known_writers(&self, store: &Store) -> Result<Vec<String>, sqlx::Error> {
        let mut writers: Vec<String> = sqlx::query_scalar("SELECT writer FROM session_cursor")
            .fetch_all(&self.pool)
            .await?;
        writers.extend(store.live_replicas().await?);
        Ok(writers)
    }

    /// Reads every writer up to its head once (tests, and the indexer's pass), then files
    /// what waited too long to be filed.
    pub async fn catch_up(&self, store: &Store, writers: &[String]) -> Result<usize, sqlx::Error> {
        let mut total = 0;
        for writer in writers {
            loop {
                let n = self.index_writer(store, writer).await?;
                total += n;
                if n < BATCH as usize {
                    break;
                }
            }
        }
        self.file_unanswered().await?;
        Ok(total)
    }

    /// An allowed `initialize` whose answer never came (the client went away, the record was
    /// lost) waits to learn its session id; after the idle gap it is filed without one.
    async fn file_unanswered(&self) -> Result<(), sqlx::Error> {
        let cutoff = shifted(
            &crate::audit::format_time(time::OffsetDateTime::now_utc()),
            -self.idle_ms,
        );
        let waiting: Vec<String> = sqlx::query_scalar(
            "SELECT request_id FROM session_exchanges WHERE session_id IS NULL AND requested = 1 AND at < $1 LIMIT 100",
        )
        .bind(cutoff)
        .fetch_all(&self.pool)
        .await?;
        if waiting.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for request_id in waiting {
            if let Some(mut e) = Exchange::load(&mut tx, &request_id).await? {
                e.answered = true;
                self.settle(&mut tx, &request_id, &mut e).await?;
                e.save(&mut tx, &request_id).await?;
            }
        }
        tx.commit().await
    }
}

/// Indexes new records every [`PASS`] until `stop`.
pub async fn run(sessions: Sessions, store: Store, mut stop: watch::Receiver<bool>) {
    let mut lease = crate::db::Lease::new(store.pool(), store.url(), "sessions-indexer");
    let mut writers: Vec<String> = Vec::new();
    let mut writers_read: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(PASS) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if !lease.hold().await {
            continue;
        }
        if writers_read.is_none_or(|at| at.elapsed() >= WRITERS_EVERY) {
            match store.writers().await {
                Ok(found) => {
                    writers = found;
                    writers_read = Some(tokio::time::Instant::now());
                }
                Err(error) => tracing::warn!(%error, "Could not list the trail's writers for the session index."),
            }
        }
        let mut all = writers.clone();
        match sessions.known_writers(&store).await {
            Ok(more) => all.extend(more),
            Err(error) => tracing::warn!(%error, "Could not read the live replicas for the session index."),
        }
        all.sort();
        all.dedup();
        if let Err(error) = sessions.catch_up(&store, &all).await {
            tracing::warn!(%error, "Could not index sessions; will try again.");
        }
    }
}

/// What the module's unit tests reach.
#[cfg(test)]
pub mod tests_support {
    pub fn session_id(parts: &[&str]) -> String {
        super::session_id(parts)
    }
}
