//! The database behind the audit trail, its checkpoints and the approvals: SQLite (one
//! service; the embedded default) or PostgreSQL (several replicas sharing one database).
//!
//! Both hold the same tables, made by versioned migrations per backend (`migrations/sqlite`,
//! `migrations/postgres`), applied at start (on PostgreSQL under sqlx's advisory lock, so one
//! replica at a time) or alone with `gatehouse migrate`. A database already migrated by a
//! newer Gatehouse is refused. Statements shared by both backends use `$N` placeholders
//! (SQLite binds `$N` as the N-th argument too) and run through [`on_pool!`].

use std::str::FromStr;
use std::time::Duration;

use sqlx::migrate::{MigrateError, Migrator};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::SqlitePool;

static SQLITE_MIGRATIONS: Migrator = sqlx::migrate!("migrations/sqlite");
static POSTGRES_MIGRATIONS: Migrator = sqlx::migrate!("migrations/postgres");

/// How long a statement waits for a PostgreSQL connection before it fails (the Check then
/// answers 503): an unreachable database must not hold calls.
pub const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long connecting to PostgreSQL may take.
pub const PG_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn of(url: &str) -> Option<Self> {
        if url.starts_with("sqlite:") {
            Some(Self::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Self::Postgres)
        } else {
            None
        }
    }
}

/// A connection pool to either backend.
#[derive(Clone, Debug)]
pub enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

/// Runs `$body` with `$p` bound to the backend's own pool: the same statement for both.
#[macro_export]
macro_rules! on_pool {
    ($pool:expr, $p:ident => $body:expr) => {
        match $pool {
            $crate::db::Pool::Sqlite($p) => $body,
            $crate::db::Pool::Postgres($p) => $body,
        }
    };
}

impl Pool {
    pub fn backend(&self) -> Backend {
        match self {
            Self::Sqlite(_) => Backend::Sqlite,
            Self::Postgres(_) => Backend::Postgres,
        }
    }
}

/// The connection settings for a `postgres://` URL (`sslmode`, `sslrootcert` and the rest
/// as libpq reads them), with every commit synchronous whatever the server's default: a
/// record the service acknowledged is on the database's disk.
pub fn pg_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    Ok(PgConnectOptions::from_str(url)?
        .application_name("gatehouse")
        .options([("synchronous_commit", "on")]))
}

/// `text` (a database URL, or an error that may quote one) with any password in a URL
/// replaced by `***`: safe to log.
pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let (before, after) = rest.split_at(at + 3);
        out.push_str(before);
        // The authority runs to the next `/`, blank or quote; its user info to its last `@`.
        let end = after
            .find(|c: char| c == '/' || c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(after.len());
        let authority = &after[..end];
        match authority
            .rfind('@')
            .and_then(|a| authority[..a].find(':').map(|c| (c, a)))
        {
            Some((colon, at)) => {
                out.push_str(&authority[..=colon]);
                out.push_str("***");
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// A pool to the PostgreSQL database at `url`; fails if it cannot be reached now.
pub async fn connect_postgres(url: &str) -> Result<PgPool, sqlx::Error> {
    connect_postgres_sized(url, 16).await
}

/// [`connect_postgres`] with at most `max` connections.
pub async fn connect_postgres_sized(url: &str, max: u32) -> Result<PgPool, sqlx::Error> {
    let options = pg_options(url)?;
    PgPoolOptions::new()
        .max_connections(max)
        .acquire_timeout(PG_ACQUIRE_TIMEOUT)
        .connect_with(options)
        .await
}

/// Applies the migrations this Gatehouse has and the database lacks; returns the schema
/// version it is at. A database with a migration this Gatehouse does not know (made by a
/// newer one) is refused, and so is one whose applied migration differs from ours.
pub async fn migrate(pool: &Pool) -> Result<i64, String> {
    let (migrator, result) = match pool {
        Pool::Sqlite(p) => (&SQLITE_MIGRATIONS, SQLITE_MIGRATIONS.run(p).await),
        Pool::Postgres(p) => (&POSTGRES_MIGRATIONS, POSTGRES_MIGRATIONS.run(p).await),
    };
    let latest = migrator.iter().map(|m| m.version).max().unwrap_or(0);
    match result {
        Ok(()) => Ok(latest),
        Err(MigrateError::VersionMissing(version)) => Err(format!(
            "the audit database's schema is at version {version}, newer than this Gatehouse knows \
             (up to {latest}): it was migrated by a newer Gatehouse; run that version or a newer one"
        )),
        Err(MigrateError::VersionMismatch(version)) => Err(format!(
            "the audit database's migration {version} is not the one this Gatehouse has: \
             it was changed by hand or by another build"
        )),
        Err(error) => Err(format!("could not migrate the audit database: {error}")),
    }
}

/// A lease one replica holds at a time on a PostgreSQL database: a session-level advisory
/// lock on a connection of its own, released by the server when that connection ends (the
/// replica stopped, died or lost the network). On SQLite (one service per file) it is
/// always held.
pub struct Lease {
    url: Option<String>,
    key: i64,
    conn: Option<sqlx::PgConnection>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("key", &self.key).finish_non_exhaustive()
    }
}

impl Lease {
    /// The lease `name` on the database of `pool` (`url`: its URL).
    pub fn new(pool: &Pool, url: &str, name: &str) -> Self {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(format!("gatehouse-lease:{name}").as_bytes());
        let mut key = [0u8; 8];
        key.copy_from_slice(&digest[..8]);
        Self {
            url: (pool.backend() == Backend::Postgres).then(|| url.to_owned()),
            key: i64::from_be_bytes(key),
            conn: None,
        }
    }

    /// Whether this replica holds the lease now, taking it if it is free.
    pub async fn hold(&mut self) -> bool {
        use sqlx::Connection;
        let Some(url) = &self.url else {
            return true;
        };
        if self.conn.is_none() {
            // Keepalives: the server notices a replica that died without closing its
            // connection (a lost node) within about a minute and frees the lease.
            let Ok(options) = pg_options(url).map(|o| {
                o.options([
                    ("tcp_keepalives_idle", "30"),
                    ("tcp_keepalives_interval", "10"),
                    ("tcp_keepalives_count", "3"),
                ])
            }) else {
                return false;
            };
            self.conn = tokio::time::timeout(PG_CONNECT_TIMEOUT, sqlx::PgConnection::connect_with(&options))
                .await
                .ok()
                .and_then(Result::ok);
        }
        let Some(conn) = self.conn.as_mut() else {
            return false;
        };
        // Taken again on the same connection: held already, it stays held (counted twice,
        // which nothing minds); another replica's, it is not.
        let taken = sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
            .bind(self.key)
            .fetch_one(&mut *conn);
        match tokio::time::timeout(PG_CONNECT_TIMEOUT, taken).await {
            Ok(Ok(got)) => got,
            _ => {
                self.conn = None;
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_a_url_is_never_shown() {
        assert_eq!(
            redact("cannot open postgres://gh:s3cr:et@db:5432/gh?sslmode=require (refused)"),
            "cannot open postgres://gh:***@db:5432/gh?sslmode=require (refused)"
        );
        assert_eq!(redact("postgres://gh@db/gh"), "postgres://gh@db/gh");
        assert_eq!(redact("sqlite:///var/lib/a:b@c"), "sqlite:///var/lib/a:b@c");
        assert_eq!(redact("no url here"), "no url here");
    }
}
