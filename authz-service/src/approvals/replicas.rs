//! What the replicas of one database share about the calls they hold now, so that a caller
//! or an approver sees the same on any replica: the calls held per caller (the cap
//! `approvals.max_held_per_caller` counts them across replicas), the calls waiting on each
//! approval (the approvers' page's "alice is waiting (12 s)"), and the clear arguments of
//! pending `show_clear` approvals (sealed, so an approver on any replica can read them).
//!
//! Each held Check is a row of `held_calls`, taken before it waits and deleted when it ends.
//! A replica says it is alive every [`HEARTBEAT`] (`replicas.seen_ms`); the rows of one that
//! stopped saying so for [`LIVE_FOR`] (killed, partitioned) no longer count, and after
//! [`GONE_AFTER`] they are deleted. A replica's own rows always count for it, and it clears
//! what an earlier process with its writer id left when it starts (the writer id is leased, so
//! no other live process has it). One SQLite service uses the same tables alone.
//!
//! The clear arguments are sealed with ChaCha20-Poly1305, bound to their approval's id, and
//! deleted once the approval is decided or expired. The key (chosen in `server.rs`): on
//! PostgreSQL one derived from the session secret every replica shares
//! (`service.session_key_file`, a Secret kept off the database's disks); one SQLite service
//! uses a key of its process only, so what its file, WAL and backups hold never opens and a
//! restart loses the clear arguments as memory would. A replica that cannot open them
//! (another key) treats them as absent: the caller's retry seals them again.

use std::collections::HashMap;
use std::time::Duration;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use serde_json::Value;

use super::now_ms;
use crate::db::Pool;
use crate::on_pool;

/// How often a replica says it is alive (and clears what it owes).
pub const HEARTBEAT: Duration = Duration::from_secs(2);
/// A replica not heard from for this long holds nothing as far as the others count.
pub const LIVE_FOR: Duration = Duration::from_secs(10);
/// A replica not heard from for this long is forgotten with its rows.
pub const GONE_AFTER: Duration = Duration::from_secs(60);

/// This replica's view of the shared tables.
pub struct Replicas {
    pool: Pool,
    /// This replica's name: its audit writer id.
    name: String,
    seal: LessSafeKey,
    /// Serializes this process's takes (on PostgreSQL a lock per caller serializes replicas).
    local: tokio::sync::Mutex<()>,
    /// Held rows whose delete failed (the database was away): the next heartbeat deletes them.
    owed: std::sync::Mutex<Vec<String>>,
}

impl std::fmt::Debug for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replicas")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The label under which the sealing key is derived from the session secret.
pub const SEAL_LABEL: &str = "gatehouse approvals: clear arguments v1";

impl Replicas {
    /// `name` is the writer id; `seal_key` seals clear arguments (the replicas of one
    /// database share it: the session secret's key for [`SEAL_LABEL`]).
    pub fn new(pool: Pool, name: &str, seal_key: &[u8; 32]) -> Self {
        let seal = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, seal_key).expect("a 32-byte key"));
        Self {
            pool,
            name: name.to_owned(),
            seal,
            local: tokio::sync::Mutex::default(),
            owed: std::sync::Mutex::default(),
        }
    }

    /// At start: forgets the calls an earlier process with this name held (they ended with
    /// it) and says this one is alive.
    pub async fn start(&self) -> Result<(), sqlx::Error> {
        let sql = "DELETE FROM held_calls WHERE replica = $1";
        on_pool!(&self.pool, pool => { sqlx::query(sql).bind(&self.name).execute(pool).await?; });
        let now = self.clock().await?;
        on_pool!(&self.pool, pool => { sqlx::query(ALIVE).bind(&self.name).bind(now).execute(pool).await?; });
        self.heartbeat().await
    }

    /// The time by the database's clock (ms since the epoch), so that replicas whose clocks
    /// differ agree on who is alive; one SQLite service uses its own.
    async fn clock(&self) -> Result<i64, sqlx::Error> {
        match &self.pool {
            Pool::Postgres(pool) => {
                sqlx::query_scalar("SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT")
                    .fetch_one(pool)
                    .await
            }
            Pool::Sqlite(_) => Ok(now_ms()),
        }
    }

    /// Says this replica is alive, deletes the rows it owes, and clears away what replicas
    /// gone for [`GONE_AFTER`] left, and the clear arguments of approvals no longer pending.
    /// One SQLite service writes only what it owes: its own rows always count, and a write
    /// every heartbeat would take the audit database's write lock for nothing.
    pub async fn heartbeat(&self) -> Result<(), sqlx::Error> {
        let owed = std::mem::take(&mut *self.owed.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        for (i, id) in owed.iter().enumerate() {
            if let Err(error) = self.delete(id).await {
                self.owe(&owed[i..]);
                return Err(error);
            }
        }
        let any_clear = "SELECT EXISTS (SELECT 1 FROM approval_clear)";
        if on_pool!(&self.pool, pool => sqlx::query_scalar::<_, bool>(any_clear).fetch_one(pool).await?) {
            on_pool!(&self.pool, pool => { sqlx::query(FORGET_SETTLED_CLEAR).execute(pool).await?; });
        }
        let Pool::Postgres(pool) = &self.pool else {
            return Ok(());
        };
        let now = self.clock().await?;
        sqlx::query(ALIVE).bind(&self.name).bind(now).execute(pool).await?;
        let gone = now - GONE_AFTER.as_millis() as i64;
        sqlx::query("DELETE FROM held_calls WHERE replica IN (SELECT replica FROM replicas WHERE seen_ms < $1)")
            .bind(gone)
            .execute(pool)
            .await?;
        sqlx::query("DELETE FROM replicas WHERE seen_ms < $1")
            .bind(gone)
            .execute(pool)
            .await?;
        Ok(())
    }

    fn owe(&self, ids: &[String]) {
        self.owed
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend_from_slice(ids);
    }

    /// Takes held row `id` (from [`new_held_id`]) for `subject` if the calls it holds on
    /// every live replica are fewer than `limit`; `false` over the cap. Count and insert
    /// happen under a lock per caller, so concurrent calls on several replicas cannot all
    /// pass the cap. The caller keeps `id` before calling, so that a Check cancelled while
    /// the insert commits still deletes the row.
    pub async fn hold(&self, id: &str, subject: &str, limit: u32) -> Result<bool, sqlx::Error> {
        let now = self.clock().await?;
        let live = now - LIVE_FOR.as_millis() as i64;
        let count = "SELECT COUNT(*) FROM held_calls h LEFT JOIN replicas r ON r.replica = h.replica \
                     WHERE h.subject = $1 AND (h.replica = $2 OR r.seen_ms >= $3)";
        let insert =
            "INSERT INTO held_calls (id, replica, subject, approval_id, since_ms) VALUES ($1, $2, $3, NULL, $4)";
        // Counts, and inserts if there is room, on `$conn` (evaluated for each statement).
        macro_rules! count_then_insert {
            ($conn:expr) => {{
                let n: i64 = sqlx::query_scalar(count)
                    .bind(subject)
                    .bind(&self.name)
                    .bind(live)
                    .fetch_one($conn)
                    .await?;
                let fits = n < i64::from(limit);
                if fits {
                    sqlx::query(insert)
                        .bind(id)
                        .bind(&self.name)
                        .bind(subject)
                        .bind(now)
                        .execute($conn)
                        .await?;
                }
                fits
            }};
        }
        let taken = match &self.pool {
            Pool::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                    .bind(format!("gatehouse held calls of {subject}"))
                    .execute(&mut *tx)
                    .await?;
                let fits = count_then_insert!(&mut *tx);
                tx.commit().await?;
                fits
            }
            // One service per SQLite database: the process's lock is enough.
            Pool::Sqlite(pool) => {
                let _local = self.local.lock().await;
                count_then_insert!(pool)
            }
        };
        Ok(taken)
    }

    /// The held call `id` waits on `approval_id` from now.
    pub async fn waits_on(&self, id: &str, approval_id: &str) -> Result<(), sqlx::Error> {
        let sql = "UPDATE held_calls SET approval_id = $1, since_ms = $2 WHERE id = $3";
        let now = self.clock().await?;
        on_pool!(&self.pool, pool => { sqlx::query(sql).bind(approval_id).bind(now).bind(id).execute(pool).await?; });
        Ok(())
    }

    async fn delete(&self, id: &str) -> Result<(), sqlx::Error> {
        let sql = "DELETE FROM held_calls WHERE id = $1";
        on_pool!(&self.pool, pool => { sqlx::query(sql).bind(id).execute(pool).await?; });
        Ok(())
    }

    /// The held call `id` ended: its row goes (now, or with the next heartbeat if the
    /// database is away).
    pub async fn release(&self, id: String) {
        if let Err(error) = self.delete(&id).await {
            tracing::warn!(%error, "Could not clear a held call's row; the next heartbeat will.");
            self.owe(&[id]);
        }
    }

    /// Per approval, the calls waiting on it now on every live replica: since when (ms since
    /// the epoch) the first has waited, and how many.
    pub async fn waiting(&self) -> Result<HashMap<String, (i64, u32)>, sqlx::Error> {
        let live = self.clock().await? - LIVE_FOR.as_millis() as i64;
        let sql = "SELECT h.approval_id, MIN(h.since_ms), COUNT(*) FROM held_calls h \
                   LEFT JOIN replicas r ON r.replica = h.replica \
                   WHERE h.approval_id IS NOT NULL AND (h.replica = $1 OR r.seen_ms >= $2) \
                   GROUP BY h.approval_id";
        let rows: Vec<(String, i64, i64)> =
            on_pool!(&self.pool, pool => sqlx::query_as(sql).bind(&self.name).bind(live).fetch_all(pool).await?);
        Ok(rows
            .into_iter()
            .map(|(id, since, n)| (id, (since, u32::try_from(n).unwrap_or(u32::MAX))))
            .collect())
    }

    /// Keeps the clear arguments of pending approval `approval_id`, sealed.
    pub async fn keep_clear(&self, approval_id: &str, clear: &Value) -> Result<(), sqlx::Error> {
        let mut sealed = serde_json::to_vec(clear).unwrap_or_default();
        let nonce_bytes: [u8; 12] = rand::random();
        let nonce = Nonce::assume_unique_for_key(nonce_bytes);
        if self
            .seal
            .seal_in_place_append_tag(nonce, Aad::from(approval_id.as_bytes()), &mut sealed)
            .is_err()
        {
            return Ok(());
        }
        let text = format!("{}{}", hex::encode(nonce_bytes), hex::encode(&sealed));
        let sql = "INSERT INTO approval_clear (approval_id, sealed) VALUES ($1, $2) \
                   ON CONFLICT (approval_id) DO UPDATE SET sealed = excluded.sealed";
        on_pool!(&self.pool, pool => { sqlx::query(sql).bind(approval_id).bind(text).execute(pool).await?; });
        Ok(())
    }

    /// The clear arguments of `approval_id`, if they are kept and this replica can open them.
    pub async fn clear(&self, approval_id: &str) -> Result<Option<Value>, sqlx::Error> {
        let sql = "SELECT sealed FROM approval_clear WHERE approval_id = $1";
        let text: Option<String> =
            on_pool!(&self.pool, pool => sqlx::query_scalar(sql).bind(approval_id).fetch_optional(pool).await?);
        Ok(text.and_then(|text| self.open(approval_id, &text)))
    }

    fn open(&self, approval_id: &str, text: &str) -> Option<Value> {
        let bytes = hex::decode(text).ok()?;
        if bytes.len() < 12 {
            return None;
        }
        let (nonce, sealed) = bytes.split_at(12);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut sealed = sealed.to_vec();
        let clear = self
            .seal
            .open_in_place(nonce, Aad::from(approval_id.as_bytes()), &mut sealed)
            .ok()?;
        serde_json::from_slice(clear).ok()
    }

    /// Deletes the clear arguments of approvals no longer pending (decided or expired).
    pub async fn forget_settled_clear(&self) -> Result<(), sqlx::Error> {
        on_pool!(&self.pool, pool => { sqlx::query(FORGET_SETTLED_CLEAR).execute(pool).await?; });
        Ok(())
    }
}

/// A replica says it is alive at a time (ms, the database's clock).
const ALIVE: &str = "INSERT INTO replicas (replica, seen_ms) VALUES ($1, $2) ON CONFLICT (replica) DO UPDATE SET seen_ms = excluded.seen_ms";

/// Clear arguments are kept only while their approval is pending.
const FORGET_SETTLED_CLEAR: &str =
    "DELETE FROM approval_clear WHERE approval_id NOT IN (SELECT id FROM approvals WHERE status = 'pending')";

/// A new held row's id.
pub fn new_held_id() -> String {
    format!("held_{}", hex::encode(rand::random::<[u8; 12]>()))
}

/// Says this replica is alive every [`HEARTBEAT`] until `stop`.
pub async fn heartbeat(approvals: std::sync::Arc<super::Approvals>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(HEARTBEAT) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if let Err(error) = approvals.replicas.heartbeat().await {
            tracing::warn!(%error, "Could not tell the other replicas this one is alive; will try again.");
        }
    }
}
