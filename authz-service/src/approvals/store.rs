//! The approvals table: the state of every approval, next to the audit trail in the same
//! SQLite file. The trail is the evidence (each step is a record); this table is what the
//! Check and the approvers' endpoints read and change.

use serde_json::Value;
use sqlx::{Row, SqlitePool, sqlite::SqliteRow};

use super::{Approval, Status};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS approvals (
    id               TEXT    PRIMARY KEY,
    key              TEXT    NOT NULL,
    status           TEXT    NOT NULL,
    subject          TEXT    NOT NULL,
    upstream         TEXT    NOT NULL,
    method           TEXT    NOT NULL,
    tool             TEXT,
    arguments        TEXT    NOT NULL,
    rule             TEXT    NOT NULL,
    approver_group   TEXT    NOT NULL,
    single_use       INTEGER NOT NULL,
    grant_ms         INTEGER NOT NULL,
    request_id       TEXT    NOT NULL,
    requested_ms     INTEGER NOT NULL,
    expires_ms       INTEGER NOT NULL,
    decided_ms       INTEGER,
    decided_by       TEXT,
    reason           TEXT,
    grant_expires_ms INTEGER,
    uses             INTEGER NOT NULL DEFAULT 0,
    -- What masking changed in the arguments (kinds and places, never a value), as JSON.
    masking          TEXT
);
-- At most one pending approval per call: an identical call joins it.
CREATE UNIQUE INDEX IF NOT EXISTS approvals_one_pending ON approvals (key) WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS approvals_key ON approvals (key, status, decided_ms);
CREATE INDEX IF NOT EXISTS approvals_status ON approvals (status, expires_ms);
CREATE INDEX IF NOT EXISTS approvals_requested ON approvals (requested_ms);
CREATE INDEX IF NOT EXISTS approvals_subject ON approvals (subject, status);
";

/// Most due approvals read (and recorded) at once.
pub const DUE_BATCH: usize = 500;

const COLUMNS: &str = "id, status, subject, upstream, method, tool, arguments, rule, approver_group, single_use, \
     grant_ms, request_id, requested_ms, expires_ms, decided_ms, decided_by, reason, grant_expires_ms, uses, masking";

#[derive(Clone)]
pub struct ApprovalStore {
    pool: SqlitePool,
}

impl ApprovalStore {
    pub async fn open(pool: SqlitePool) -> Result<Self, sqlx::Error> {
        // A table made before `masking` existed gets the column (its rows: nothing masked).
        let table: Option<(String,)> =
            sqlx::query_as("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'approvals'")
                .fetch_optional(&pool)
                .await?;
        if table.is_some_and(|(sql,)| !sql.contains("masking")) {
            sqlx::query("ALTER TABLE approvals ADD COLUMN masking TEXT")
                .execute(&pool)
                .await?;
        }
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        Ok(Self { pool })
    }

    /// How many approvals of this caller are pending.
    pub async fn pending_count(&self, subject: &str) -> Result<u64, sqlx::Error> {
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM approvals WHERE subject = ? AND status = 'pending'")
            .bind(subject)
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    pub async fn get(&self, id: &str) -> Result<Option<Approval>, sqlx::Error> {
        self.optional(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM approvals WHERE id = ?"
            )))
            .bind(id),
        )
        .await
    }

    /// Newest first; `status` filters when given.
    pub async fn list(&self, status: Option<Status>, limit: u32) -> Result<Vec<Approval>, sqlx::Error> {
        let sql = match status {
            Some(_) => format!("SELECT {COLUMNS} FROM approvals WHERE status = ? ORDER BY requested_ms DESC LIMIT ?"),
            None => format!("SELECT {COLUMNS} FROM approvals WHERE ? IS NULL ORDER BY requested_ms DESC LIMIT ?"),
        };
        self.all(
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(status.map(Status::as_str))
                .bind(i64::from(limit)),
        )
        .await
    }

    /// The pending approval of this call, if any.
    pub async fn pending_for(&self, key: &str) -> Result<Option<Approval>, sqlx::Error> {
        self.optional(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM approvals WHERE key = ? AND status = 'pending'"
            )))
            .bind(key),
        )
        .await
    }

    /// A denial of this call that still stands (for the rule's grant time after it was made).
    pub async fn standing_denial(&self, key: &str, now_ms: i64) -> Result<Option<Approval>, sqlx::Error> {
        self.optional(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM approvals WHERE key = ? AND status = 'denied' AND decided_ms + grant_ms > ?
             ORDER BY decided_ms DESC LIMIT 1"
            )))
            .bind(key)
            .bind(now_ms),
        )
        .await
    }

    /// Uses a live grant of this call, in one statement so two calls cannot both use a
    /// single-use grant. Returns the grant as it is after the use.
    pub async fn use_grant(&self, key: &str, now_ms: i64) -> Result<Option<Approval>, sqlx::Error> {
        self.optional(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "UPDATE approvals SET uses = uses + 1,
                 status = CASE WHEN single_use = 1 THEN 'used' ELSE status END
             WHERE id = (SELECT id FROM approvals WHERE key = ? AND status = 'approved' AND grant_expires_ms > ?
                         ORDER BY decided_ms DESC LIMIT 1)
               AND status = 'approved'
             RETURNING {COLUMNS}"
            )))
            .bind(key)
            .bind(now_ms),
        )
        .await
    }

    /// Gives back a use whose call was not let through after all.
    pub async fn restore_use(&self, id: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "UPDATE approvals SET uses = uses - 1, status = CASE WHEN status = 'used' THEN 'approved' ELSE status END
             WHERE id = ? AND uses > 0",
        )
        .bind(id)
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    pub async fn insert(&self, a: &Approval, key: &str) -> Result<(), sqlx::Error> {
        sqlx::query(
            "INSERT INTO approvals (id, key, status, subject, upstream, method, tool, arguments, rule, approver_group,
                 single_use, grant_ms, request_id, requested_ms, expires_ms, uses, masking)
             VALUES (?, ?, 'pending', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?)",
        )
        .bind(&a.id)
        .bind(key)
        .bind(&a.subject)
        .bind(&a.upstream)
        .bind(&a.method)
        .bind(&a.tool)
        .bind(serde_json::to_string(&a.arguments).unwrap_or_default())
        .bind(&a.rule)
        .bind(&a.approver_group)
        .bind(a.single_use)
        .bind(a.grant_ms)
        .bind(&a.request_id)
        .bind(a.requested_ms)
        .bind(a.expires_ms)
        .bind(a.masking.as_ref().and_then(|m| serde_json::to_string(m).ok()))
        .execute(&self.pool)
        .await
        .map(|_| ())
    }

    /// Records a decision on a pending approval; false when it was no longer pending.
    pub async fn decide(&self, a: &Approval) -> Result<bool, sqlx::Error> {
        let done = sqlx::query(
            "UPDATE approvals SET status = ?, decided_ms = ?, decided_by = ?, reason = ?, grant_expires_ms = ?
             WHERE id = ? AND status = 'pending'",
        )
        .bind(a.status.as_str())
        .bind(a.decided_ms)
        .bind(&a.decided_by)
        .bind(&a.reason)
        .bind(a.grant_expires_ms)
        .bind(&a.id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Pending approvals whose time is up, the earliest first, at most [`DUE_BATCH`].
    pub async fn due(&self, now_ms: i64) -> Result<Vec<Approval>, sqlx::Error> {
        self.all(
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM approvals WHERE status = 'pending' AND expires_ms <= ? ORDER BY expires_ms LIMIT {DUE_BATCH}"
            )))
            .bind(now_ms),
        )
        .await
    }

    /// Whether any pending approval is due at `now_ms` (without reading it).
    pub async fn any_due(&self, now_ms: i64) -> Result<bool, sqlx::Error> {
        sqlx::query("SELECT 1 FROM approvals WHERE status = 'pending' AND expires_ms <= ? LIMIT 1")
            .bind(now_ms)
            .fetch_optional(&self.pool)
            .await
            .map(|row| row.is_some())
    }

    /// Expires these pending approvals (the ones just recorded), in one statement.
    pub async fn expire(&self, ids: &[&str]) -> Result<(), sqlx::Error> {
        let marks = vec!["?"; ids.len()].join(", ");
        let sql = format!("UPDATE approvals SET status = 'expired' WHERE status = 'pending' AND id IN ({marks})");
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
        for id in ids {
            query = query.bind(*id);
        }
        query.execute(&self.pool).await.map(|_| ())
    }
}

type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

impl ApprovalStore {
    async fn optional(&self, query: Query<'_>) -> Result<Option<Approval>, sqlx::Error> {
        query
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(approval_from_row)
            .transpose()
    }

    async fn all(&self, query: Query<'_>) -> Result<Vec<Approval>, sqlx::Error> {
        query
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(approval_from_row)
            .collect()
    }
}

fn approval_from_row(row: &SqliteRow) -> Result<Approval, sqlx::Error> {
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
