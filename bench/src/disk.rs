//! `gatehouse-bench disk --dir D`: what the disk under the audit database costs per commit.
//!
//! Three figures, each timed alone `writes` times after a tenth as many unmeasured, in `D`:
//! a 4 KiB `pwrite` into a preallocated file followed by `fsync`, the same followed by
//! `fdatasync`, and one SQLite transaction of one ~1 KB row with the service's settings (WAL,
//! `synchronous=FULL`, no automatic checkpoint) through the same bundled SQLite the service
//! links (rusqlite over sqlx's libsqlite3-sys, built with `HAVE_FDATASYNC`).

use std::{fs::OpenOptions, os::unix::fs::FileExt, path::Path, time::Duration};

use rusqlite::{Connection, params};
use serde_json::{Value, json};

const BLOCK: usize = 4096;
/// The preallocated file the writes cycle through (rewritten blocks, as a reused WAL is).
const FILE_BLOCKS: u64 = 256;

pub fn run(dir: &Path, writes: u32) -> anyhow::Result<Value> {
    std::fs::create_dir_all(dir)?;
    let fsync = sync_latency(dir, writes, |f| f.sync_all())?;
    let fdatasync = sync_latency(dir, writes, |f| f.sync_data())?;
    let sqlite = sqlite_commit_latency(dir, writes)?;
    Ok(json!({
        "dir": dir.display().to_string(),
        "writes": writes,
        "fsync": summary(&fsync),
        "fdatasync": summary(&fdatasync),
        "sqlite_commit": summary(&sqlite),
        "sqlite_version": rusqlite::version(),
    }))
}

fn summary(sorted: &[Duration]) -> Value {
    json!({
        "p50_ms": crate::us(sorted, 0.50) / 1000.0,
        "p99_ms": crate::us(sorted, 0.99) / 1000.0,
        "max_ms": crate::us(sorted, 1.0) / 1000.0,
    })
}

fn sync_latency(
    dir: &Path,
    writes: u32,
    sync: impl Fn(&std::fs::File) -> std::io::Result<()>,
) -> anyhow::Result<Vec<Duration>> {
    let path = dir.join("disk-bench.bin");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)?;
    file.write_all_at(&vec![0u8; BLOCK * FILE_BLOCKS as usize], 0)?;
    file.sync_all()?;
    let block = [0x5au8; BLOCK];
    let mut i = 0u64;
    let mut failed = None;
    let times = crate::timed(writes, || {
        let at = (i % FILE_BLOCKS) * BLOCK as u64;
        i += 1;
        if let Err(e) = file.write_all_at(&block, at).and_then(|()| sync(&file)) {
            failed = Some(e);
        }
    });
    drop(file);
    std::fs::remove_file(&path)?;
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(times),
    }
}

fn commit_one(conn: &mut Connection, row: &str) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    tx.prepare_cached("INSERT INTO t (data) VALUES (?)")?
        .execute(params![row])?;
    tx.commit()
}

fn sqlite_commit_latency(dir: &Path, writes: u32) -> anyhow::Result<Vec<Duration>> {
    let path = dir.join("disk-bench.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let mut conn = Connection::open(&path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.execute_batch("CREATE TABLE t (id INTEGER PRIMARY KEY, data TEXT NOT NULL)")?;
    let row = "r".repeat(1000);
    let mut failed = None;
    let times = crate::timed(writes, || {
        if let Err(e) = commit_one(&mut conn, &row) {
            failed = Some(e);
        }
    });
    drop(conn);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(times),
    }
}
