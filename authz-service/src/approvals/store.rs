//! The approvals table: the state of every approval, next to the audit trail in the same
//! database (SQLite or PostgreSQL; made by the migrations in `migrations/`). The trail is the
//! evidence (each step is a record); this table is what the Check and the approvers'
//! endpoints read and change. Each change that must happen once (a decision, a grant's use,
//! an expiry) is one conditional statement, so concurrent callers — on one service or on
//! several replicas of one database — cannot both make it.

use serde_json::Value;
use sqlx::Row;

use super::{Approval, Status};
use crate::db::Pool;
use crate::on_pool;

/// Most due approvals read (and recorded) at once.
pub const DUE_BATCH: usize = 500;

const COLUMNS: &str = "id, status, subject, upstream, method, tool, arguments, rule, approver_group, single_use, \
     grant_ms, request_id, requested_ms, expires_ms, decided_ms, decided_by, reason, grant_expires_ms, uses, masking";

#[derive(Clone)]
pub struct ApprovalStore {
    pool: Pool,
    /// Serializes this process's transitions (before it takes the database's lock).
    local: std::sync::Arc<tokio::sync::Mutex<()>>,
}

/// The PostgreSQL channel on which a replica announces that approvals changed (a decision,
/// an expiry): the others wake the calls they hold and look again.
pub const CHANGED_CHANNEL: &str = "gatehouse_approvals";
/// The advisory lock key that serializes approval transitions across replicas.
const TRANSITIONS_LOCK: i64 = 0x6761_7465_6170_7072; // "gateapr"

/// One transition's turn: held from before it reads the state until its change is stored.
/// On PostgreSQL a transaction on one pooled connection holds an advisory lock for it (a
/// replica that dies mid-turn releases it with its connection); [`Turn::end`] commits, which
/// also delivers the change's notification. Dropped without `end` (a cancelled request), the
/// transaction rolls back and the lock is released all the same.
pub struct Turn<'a> {
    _local: tokio::sync::MutexGuard<'a, ()>,
    shared: Option<sqlx::Transaction<'static, sqlx::Postgres>>,
    changed: bool,
}

impl Turn<'_> {
    /// Announces to the other replicas, when the turn ends, that approvals changed.
    pub fn changed(&mut self) {
        self.changed = true;
    }

    pub async fn end(self) -> Result<(), sqlx::Error> {
        if let Some(mut tx) = self.shared {
            if self.changed {
                sqlx::query("SELECT pg_notify($1, '')")
                    .bind(CHANGED_CHANNEL)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        }
        Ok(())
    }
}

/// A value bound to a statement (the same statement runs on either backend).
#[derive(Clone, Copy)]
enum Arg<'a> {
    Text(&'a str),
    MaybeText(Option<&'a str>),
    Int(i64),
    MaybeInt(Option<i64>),
    Bool(bool),
}

/// `$query` with `$args` bound in order.
macro_rules! bind_all {
    ($query:expr, $args:expr) => {{
        let mut query = $query;
        for arg in $args {
            query = match *arg {
                Arg::Text(v) => query.bind(v),
                Arg::MaybeText(v) => query.bind(v),
                Arg::Int(v) => query.bind(v),
                Arg::MaybeInt(v) => query.bind(v),
                Arg::Bool(v) => query.bind(v),
            };
        }
        query
    }};
}

impl ApprovalStore {
    /// The approvals table of the store's database (its migrations made it).
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            local: std::sync::Arc::default(),
        }
    }

    /// Waits for this transition's turn: one at a time in this process, and on PostgreSQL
    /// one at a time across every replica of the database. (A SQLite database has one
    /// service.)
    pub async fn turn(&self) -> Result<Turn<'_>, sqlx::Error> {
        let local = self.local.lock().await;
        let shared = match &self.pool {
            Pool::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)")
                    .bind(TRANSITIONS_LOCK)
                    .execute(&mut *tx)
                    .await?;
                Some(tx)
            }
            Pool::Sqlite(_) => None,
        };
        Ok(Turn {
            _local: local,
            shared,
            changed: false,
        })
    }

    /// How many approvals of this caller are pending.
    pub async fn pending_count(&self, subject: &str) -> Result<u64, sqlx::Error> {
        let sql = "SELECT COUNT(*) FROM approvals WHERE subject = $1 AND status = 'pending'";
        let n: i64 = on_pool!(&self.pool, pool => sqlx::query_scalar(sql).bind(subject).fetch_one(pool).await?);
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub async fn get(&self, id: &str) -> Result<Option<Approval>, sqlx::Error> {
        self.optional(
            format!("SELECT {COLUMNS} FROM approvals WHERE id = $1"),
            &[Arg::Text(id)],
        )
        .await
    }

    /// Newest first; `status` filters when given.
    pub async fn list(&self, status: Option<Status>, limit: u32) -> Result<Vec<Approval>, sqlx::Error> {
        let sql = match status {
            Some(_) => format!("SELECT {COLUMNS} FROM approvals WHERE status = $1 ORDER BY requested_ms DESC LIMIT $2"),
            None => format!("SELECT {COLUMNS} FROM approvals WHERE $1 IS NULL ORDER BY requested_ms DESC LIMIT $2"),
        };
        self.all(
            sql,
            &[Arg::MaybeText(status.map(Status::as_str)), Arg::Int(i64::from(limit))],
        )
        .await
    }

    /// The pending approval of this call, if any.
    pub async fn pending_for(&self, key: &str) -> Result<Option<Approval>, sqlx::Error> {
        self.optional(
            format!("SELECT {COLUMNS} FROM approvals WHERE key = $1 AND status = 'pending'"),
            &[Arg::Text(key)],
        )
        .await
    }

    /// A denial of this call that still stands (for the rule's grant time after it was made).
    pub async fn standing_denial(&self, key: &str, now_ms: i64) -> Result<Option<Approval>, sqlx::Error> {
        self.optional(
            format!(
                "SELECT {COLUMNS} FROM approvals WHERE key = $1 AND status = 'denied' AND decided_ms + grant_ms > $2
                 ORDER BY decided_ms DESC LIMIT 1"
            ),
            &[Arg::Text(key), Arg::Int(now_ms)],
        )
        .await
    }

    /// Uses a live grant of this call, in one statement so two calls cannot both use a
    /// single-use grant. Returns the grant as it is after the use.
    pub async fn use_grant(&self, key: &str, now_ms: i64) -> Result<Option<Approval>, sqlx::Error> {
        self.optional(
            format!(
                "UPDATE approvals SET uses = uses + 1,
                     status = CASE WHEN single_use THEN 'used' ELSE status END
                 WHERE id = (SELECT id FROM approvals WHERE key = $1 AND status = 'approved' AND grant_expires_ms > $2
                             ORDER BY decided_ms DESC LIMIT 1)
                   AND status = 'approved'
                 RETURNING {COLUMNS}"
            ),
            &[Arg::Text(key), Arg::Int(now_ms)],
        )
        .await
    }

    /// Gives back a use whose call was not let through after all.
    pub async fn restore_use(&self, id: &str) -> Result<(), sqlx::Error> {
        self.execute(
            "UPDATE approvals SET uses = uses - 1, status = CASE WHEN status = 'used' THEN 'approved' ELSE status END
             WHERE id = $1 AND uses > 0",
            &[Arg::Text(id)],
        )
        .await
        .map(drop)
    }

    pub async fn insert(&self, a: &Approval, key: &str) -> Result<(), sqlx::Error> {
        let arguments = serde_json::to_string(&a.arguments).unwrap_or_default();
        let masking = a.masking.as_ref().and_then(|m| serde_json::to_string(m).ok());
        self.execute(
            "INSERT INTO approvals (id, key, status, subject, upstream, method, tool, arguments, rule, approver_group,
                 single_use, grant_ms, request_id, requested_ms, expires_ms, uses, masking)
             VALUES ($1, $2, 'pending', $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 0, $15)",
            &[
                Arg::Text(&a.id),
                Arg::Text(key),
                Arg::Text(&a.subject),
                Arg::Text(&a.upstream),
                Arg::Text(&a.method),
                Arg::MaybeText(a.tool.as_deref()),
                Arg::Text(&arguments),
                Arg::Text(&a.rule),
                Arg::Text(&a.approver_group),
                Arg::Bool(a.single_use),
                Arg::Int(a.grant_ms),
                Arg::Text(&a.request_id),
                Arg::Int(a.requested_ms),
                Arg::Int(a.expires_ms),
                Arg::MaybeText(masking.as_deref()),
            ],
        )
        .await
        .map(drop)
    }

    /// Records a decision on a pending approval; false when it was no longer pending.
    pub async fn decide(&self, a: &Approval) -> Result<bool, sqlx::Error> {
        let done = self
            .execute(
                "UPDATE approvals SET status = $1, decided_ms = $2, decided_by = $3, reason = $4, grant_expires_ms = $5
                 WHERE id = $6 AND status = 'pending'",
                &[
                    Arg::Text(a.status.as_str()),
                    Arg::MaybeInt(a.decided_ms),
                    Arg::MaybeText(a.decided_by.as_deref()),
                    Arg::MaybeText(a.reason.as_deref()),
                    Arg::MaybeInt(a.grant_expires_ms),
                    Arg::Text(&a.id),
                ],
            )
            .await?;
        Ok(done == 1)
    }

    /// Pending approvals whose time is up, the earliest first, at most [`DUE_BATCH`].
    pub async fn due(&self, now_ms: i64) -> Result<Vec<Approval>, sqlx::Error> {
        self.all(
            format!(
                "SELECT {COLUMNS} FROM approvals WHERE status = 'pending' AND expires_ms <= $1 ORDER BY expires_ms LIMIT {DUE_BATCH}"
            ),
            &[Arg::Int(now_ms)],
        )
        .await
    }

    /// Whether any pending approval is due at `now_ms` (without reading it).
    pub async fn any_due(&self, now_ms: i64) -> Result<bool, sqlx::Error> {
        let sql = "SELECT EXISTS (SELECT 1 FROM approvals WHERE status = 'pending' AND expires_ms <= $1)";
        on_pool!(&self.pool, pool => sqlx::query_scalar(sql).bind(now_ms).fetch_one(pool).await)
    }

    /// Expires these pending approvals (the ones just recorded), in one statement.
    pub async fn expire(&self, ids: &[&str]) -> Result<(), sqlx::Error> {
        let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
        let sql = format!(
            "UPDATE approvals SET status = 'expired' WHERE status = 'pending' AND id IN ({})",
            marks.join(", ")
        );
        let args: Vec<Arg> = ids.iter().map(|id| Arg::Text(id)).collect();
        self.execute(&sql, &args).await.map(drop)
    }

    async fn optional(&self, sql: String, args: &[Arg<'_>]) -> Result<Option<Approval>, sqlx::Error> {
        on_pool!(&self.pool, pool => {
            bind_all!(sqlx::query(sqlx::AssertSqlSafe(sql)), args)
                .fetch_optional(pool)
                .await?
                .as_ref()
                .map(approval_from_row)
                .transpose()
        })
    }

    async fn all(&self, sql: String, args: &[Arg<'_>]) -> Result<Vec<Approval>, sqlx::Error> {
        on_pool!(&self.pool, pool => {
            bind_all!(sqlx::query(sqlx::AssertSqlSafe(sql)), args)
                .fetch_all(pool)
                .await?
                .iter()
                .map(approval_from_row)
                .collect()
        })
    }

    /// Runs a statement; how many rows it changed.
    async fn execute(&self, sql: &str, args: &[Arg<'_>]) -> Result<u64, sqlx::Error> {
        let sql = sql.to_owned();
        on_pool!(&self.pool, pool => {
            Ok(bind_all!(sqlx::query(sqlx::AssertSqlSafe(sql)), args).execute(pool).await?.rows_affected())
        })
    }
}

fn approval_from_row<R: Row>(row: &R) -> Result<Approval, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    for<'r> String: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> i64: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    for<'r> bool: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let status: String = row.try_get(1)?;
    let arguments: String = row.try_get(6)?;
    let masking: Option<String> = row.try_get(19)?;
    Ok(Approval {
        id: row.try_get(0)?,
        status: Status::parse(&status)
            .ok_or_else(|| sqlx::Error::Decode(format!("unknown status {status:?}").into()))?,
        subject: row.try_get(2)?,
        upstream: row.try_get(3)?,
        method: row.try_get(4)?,
        tool: row.try_get(5)?,
        arguments: serde_json::from_str(&arguments).unwrap_or(Value::Null),
        rule: row.try_get(7)?,
        approver_group: row.try_get(8)?,
        single_use: row.try_get(9)?,
        grant_ms: row.try_get(10)?,
        request_id: row.try_get(11)?,
        requested_ms: row.try_get(12)?,
        expires_ms: row.try_get(13)?,
        decided_ms: row.try_get(14)?,
        decided_by: row.try_get(15)?,
        reason: row.try_get(16)?,
        grant_expires_ms: row.try_get(17)?,
        uses: row.try_get(18)?,
        // Unreadable (written by a newer version?): still flagged as masked, shown masked
        // would hide that; so it reads as masked with nothing listed, and cannot be approved
        // in clear.
        masking: masking.map(|m| {
            serde_json::from_str(&m).unwrap_or_else(|_| super::Masking {
                mode: crate::policy::MaskedArguments::ShowClear,
                report: super::MaskReport::default(),
            })
        }),
    })
}
