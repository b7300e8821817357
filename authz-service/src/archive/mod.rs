//! The S3 archive (`archive:`): the trail sealed into S3 under Object Lock, verifiable from
//! the bucket alone (`gatehouse audit verify --archive`, [`verify`]).
//!
//! Per writer, records are sealed in segments: when `segment_records` of them wait, or when
//! the oldest waiting one is `segment_seconds` old; a segment ends early at the record that
//! brings it to `segment_bytes` (before gzip), the rest waiting for the next. A segment is the records as stored, one
//! JSON line each, gzip'd; it is followed by a digest signed with the checkpoint key that
//! names the segment's SHA-256, its seq range and hashes, and the writer's previous digest
//! (its key and SHA-256), like CloudTrail's digest files. Both objects carry Object Lock
//! retention. Layout and formats: [`digest`].
//!
//! State per writer is in `archive_state`: the last seq a digest in the bucket seals, that
//! digest's SHA-256, and the range planned but not confirmed (`pending_last`). The range is
//! made durable before anything is uploaded, and a planned range is sealed again exactly
//! after a crash: the same records give the same bytes under the same keys (nothing in them
//! reads the clock but the UTC day of a late seal), and an object already there that seals
//! the same records is kept as it is. So the bucket never holds two differing versions of a
//! key, and ranges neither overlap nor leave gaps.
//!
//! S3 failures are retried with backoff, forever; memory holds one segment (at most
//! `segment_bytes` and a record, gzip'd) and a page of records. The archive reads
//! the store and never takes part in a Check. On PostgreSQL one replica archives every writer
//! at a time (lease `archive`, [`crate::db::Lease`]); state moves only from where its holder
//! read it.

pub mod digest;
pub mod s3;
#[cfg(test)]
mod tests;
pub mod verify;

use std::collections::BTreeMap;

use tokio::sync::watch;

use self::digest::{Digest, LockRef, PreviousRef, Segment, SegmentWriter};
use self::s3::{Bucket, Endpoint};
use crate::audit::Store;
use crate::audit::checkpoint::CheckpointSigner;
use crate::config::export::Archive;
use crate::db::Lease;
use crate::export::{BACKOFF_MAX, PASS, Statuses, Writers, age_seconds};
use crate::on_pool;

/// The archive's name in `/healthz` and `/metrics`.
const NAME: &str = "archive";
/// Records read from the store at a time while a segment is written.
const PAGE: u32 = 1000;

/// One writer's row of `archive_state`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// The last seq sealed by a digest in the bucket (0: none).
    pub sealed_seq: u64,
    /// That digest's SHA-256.
    pub digest_sha256: Option<String>,
    /// That digest's key (`None` in rows sealed before the column existed).
    pub digest_key: Option<String>,
    /// A range `sealed_seq + 1 ..= pending_last` planned and perhaps partly uploaded.
    pub pending_last: Option<u64>,
}

/// `archive_state` in the audit database.
#[derive(Clone)]
pub struct States {
    store: Store,
}

impl States {
    pub fn new(store: &Store) -> Self {
        Self { store: store.clone() }
    }

    pub async fn all(&self) -> Result<BTreeMap<String, State>, sqlx::Error> {
        type Row = (String, i64, Option<String>, Option<String>, Option<i64>);
        let rows: Vec<Row> = on_pool!(self.store.pool(), pool => {
            sqlx::query_as("SELECT writer, sealed_seq, digest_sha256, digest_key, pending_last FROM archive_state")
                .fetch_all(pool)
                .await?
        });
        Ok(rows
            .into_iter()
            .map(|(writer, sealed, sha, key, pending)| {
                let state = State {
                    sealed_seq: u64::try_from(sealed).unwrap_or(0),
                    digest_sha256: sha,
                    digest_key: key,
                    pending_last: pending.and_then(|p| u64::try_from(p).ok()),
                };
                (writer, state)
            })
            .collect())
    }

    /// Plans `sealed + 1 ..= last` for `writer`; false when the state was not at `sealed` with
    /// nothing planned any more (another replica moved it).
    pub async fn plan(&self, writer: &str, sealed: u64, last: u64) -> Result<bool, sqlx::Error> {
        let now = crate::audit::now_rfc3339();
        let (sealed, last) = (to_i64(sealed), to_i64(last));
        let moved = on_pool!(self.store.pool(), pool => {
            if sealed == 0 {
                sqlx::query(
                    "INSERT INTO archive_state (writer, sealed_seq, digest_sha256, pending_last, updated_at) \
                     VALUES ($1, 0, NULL, $2, $3) \
                     ON CONFLICT (writer) DO UPDATE SET pending_last = excluded.pending_last, updated_at = excluded.updated_at \
                     WHERE archive_state.sealed_seq = 0 AND archive_state.pending_last IS NULL",
                )
                .bind(writer)
                .bind(last)
                .bind(&now)
                .execute(pool)
                .await?
                .rows_affected()
            } else {
                sqlx::query(
                    "UPDATE archive_state SET pending_last = $1, updated_at = $2 \
                     WHERE writer = $3 AND sealed_seq = $4 AND pending_last IS NULL",
                )
                .bind(last)
                .bind(&now)
                .bind(writer)
                .bind(sealed)
                .execute(pool)
                .await?
                .rows_affected()
            }
        });
        Ok(moved == 1)
    }

    /// Records that the digest of `sealed + 1 ..= last` is in the bucket at `digest_key`;
    /// false when the state had moved.
    pub async fn sealed(
        &self,
        writer: &str,
        sealed: u64,
        last: u64,
        digest_key: &str,
        digest_sha256: &str,
    ) -> Result<bool, sqlx::Error> {
        let now = crate::audit::now_rfc3339();
        let (sealed, last) = (to_i64(sealed), to_i64(last));
        let moved = on_pool!(self.store.pool(), pool => {
            sqlx::query(
                "UPDATE archive_state SET sealed_seq = $1, digest_sha256 = $2, digest_key = $7, pending_last = NULL, \
                 updated_at = $3 WHERE writer = $4 AND sealed_seq = $5 AND pending_last = $6",
            )
            .bind(last)
            .bind(digest_sha256)
            .bind(&now)
            .bind(writer)
            .bind(sealed)
            .bind(last)
            .bind(digest_key)
            .execute(pool)
            .await?
            .rows_affected()
        });
        Ok(moved == 1)
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The digest a writer's next one links to.
#[derive(Debug, Clone)]
struct Tail {
    last_seq: u64,
    key: String,
    sha256: String,
}

/// Why a seal did not finish; each is retried.
#[derive(Debug, thiserror::Error)]
enum SealError {
    #[error("cannot read the trail or the archive state: {0}")]
    Store(#[from] sqlx::Error),
    #[error("cannot write the segment: {0}")]
    Encode(#[from] std::io::Error),
    #[error(
        "writer {writer}: the digest sealing record {seq} is not in the bucket (was the bucket or prefix changed?)"
    )]
    NoPreviousDigest { writer: String, seq: u64 },
    #[error("writer {writer}: records {first} to {last} are due for the archive and are not in the trail")]
    Vanished { writer: String, first: u64, last: u64 },
    /// The service is stopping.
    #[error("stopped")]
    Stopped,
}

/// The sealer of one replica.
struct Sealer {
    archive: Archive,
    bucket: Bucket,
    store: Store,
    states: States,
    signer: CheckpointSigner,
    statuses: Statuses,
    stop: watch::Receiver<bool>,
    /// Per writer, the newest digest this sealer knows of (read from the bucket once).
    tails: BTreeMap<String, Tail>,
    /// Passes that failed in a row.
    failed: u32,
}

/// Seals the trail into S3 until `stop` (status under the name `archive`).
pub async fn run(
    archive: Archive,
    store: Store,
    signer: CheckpointSigner,
    statuses: Statuses,
    stop: watch::Receiver<bool>,
) {
    statuses.update(NAME, |s| {
        s.sink = "s3";
        s.format = "gatehouse";
    });
    let endpoint = Endpoint {
        region: Some(&archive.region),
        url: archive.endpoint.as_ref().map(url::Url::as_str),
        ca_file: archive.ca_file.as_deref(),
    };
    let bucket = match Bucket::new(&archive.bucket, endpoint).await {
        Ok(bucket) => bucket,
        Err(error) => {
            // Only a CA file that became unreadable since the config was checked.
            tracing::error!(%error, "Cannot build the S3 client: the trail is not archived.");
            statuses.update(NAME, |s| {
                s.last_error = Some(format!("cannot build the S3 client: {error}"))
            });
            return;
        }
    };
    let mut sealer = Sealer {
        states: States::new(&store),
        archive,
        bucket,
        store,
        signer,
        statuses,
        stop,
        tails: BTreeMap::new(),
        failed: 0,
    };
    sealer.run().await;
}

impl Sealer {
    async fn run(&mut self) {
        let mut lease = Lease::new(self.store.pool(), self.store.url(), NAME);
        let mut writers = Writers::default();
        let mut wait = PASS;
        loop {
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = self.stop.wait_for(|s| *s) => return,
            }
            wait = PASS;
            let active = lease.hold().await;
            self.statuses.update(NAME, |s| s.active = active);
            if !active {
                // Another replica seals: what this one knew of the bucket gets old.
                self.tails.clear();
                continue;
            }
            match self.pass(&mut writers).await {
                Ok(()) => {
                    self.failed = 0;
                    self.statuses.update(NAME, |s| s.last_error = None);
                }
                Err(SealError::Stopped) => return,
                Err(error) => {
                    // The next pass seals the same range again (from `pending_last`).
                    let message = error.to_string();
                    tracing::warn!(error = %message, "Archiving failed; will try again.");
                    self.statuses.update(NAME, |s| {
                        s.failures += 1;
                        s.last_error = Some(message);
                    });
                    self.failed = self.failed.saturating_add(1);
                    wait = (PASS * 2u32.saturating_pow(self.failed.min(16))).min(BACKOFF_MAX);
                }
            }
        }
    }

    /// Seals what is due for every writer, then reports the lag. A writer whose seal fails
    /// does not hold the others back; the first failure is the pass's.
    async fn pass(&mut self, writers: &mut Writers) -> Result<(), SealError> {
        let states = self.states.all().await?;
        let (mut lag_records, mut overdue) = (0u64, 0f64);
        let mut failed = None;
        for writer in writers.current(&self.store, states.keys().cloned()).await {
            let state = states.get(&writer).cloned().unwrap_or_default();
            match self.writer_pass(&writer, state).await {
                Ok((lag, late)) => {
                    lag_records += lag;
                    overdue = overdue.max(late);
                }
                Err(SealError::Stopped) => return Err(SealError::Stopped),
                Err(error) => {
                    failed.get_or_insert(error);
                }
            }
        }
        self.statuses.update(NAME, |s| {
            s.lag_records = lag_records;
            s.lag_seconds = overdue;
        });
        failed.map_or(Ok(()), Err)
    }

    /// Seals what is due for `writer`; what it leaves waiting (records, seconds overdue).
    async fn writer_pass(&mut self, writer: &str, mut state: State) -> Result<(u64, f64), SealError> {
        let (mut lag_records, mut overdue) = (0u64, 0f64);
        self.show_waiting(writer, &state).await?;
        // A writer far behind seals segment after segment in one pass.
        loop {
            if *self.stop.borrow() {
                return Err(SealError::Stopped);
            }
            let head = self.store.head_seq(writer).await?;
            let due = match state.pending_last {
                Some(last) => Some(last),
                None => self.due(writer, &state, head).await?,
            };
            let Some(last) = due else {
                let waiting = head.saturating_sub(state.sealed_seq);
                lag_records = waiting;
                if waiting > 0 {
                    overdue = self.overdue(writer, state.sealed_seq).await?;
                }
                break;
            };
            match self.seal(writer, &state, last).await? {
                Some(sealed) => state = sealed,
                // Another replica moved the state: read it again next pass.
                None => break,
            }
        }
        Ok((lag_records, overdue))
    }

    /// Shows this writer's waiting records at once (at least), before a seal that may wait
    /// for S3 a long time; the pass's end sets the exact figures.
    async fn show_waiting(&self, writer: &str, state: &State) -> Result<(), SealError> {
        let waiting = self.store.head_seq(writer).await?.saturating_sub(state.sealed_seq);
        if waiting > 0 {
            let overdue = self.overdue(writer, state.sealed_seq).await?;
            self.statuses.update(NAME, |s| {
                s.lag_records = s.lag_records.max(waiting);
                s.lag_seconds = s.lag_seconds.max(overdue);
            });
        }
        Ok(())
    }

    /// The last seq of the segment to seal now, if one is due: `segment_records` records
    /// waiting, or the oldest of them `segment_seconds` old.
    async fn due(&self, writer: &str, state: &State, head: u64) -> Result<Option<u64>, SealError> {
        let n = u64::from(self.archive.segment_records);
        let waiting = head.saturating_sub(state.sealed_seq);
        if waiting == 0 {
            return Ok(None);
        }
        if waiting >= n {
            return Ok(Some(state.sealed_seq + n));
        }
        let oldest = self.store.chain_page(writer, state.sealed_seq, 1).await?;
        let old_enough = oldest
            .first()
            .is_some_and(|r| age_seconds(&r.recorded_at) >= self.archive.segment_age.as_secs_f64());
        Ok(old_enough.then_some(head))
    }

    /// How long past its due time the oldest waiting record is (0 while not due): what
    /// `/healthz` calls behind, as records are meant to wait up to `segment_seconds`.
    async fn overdue(&self, writer: &str, sealed: u64) -> Result<f64, SealError> {
        let oldest = self.store.chain_page(writer, sealed, 1).await?;
        Ok(oldest.first().map_or(0.0, |r| {
            (age_seconds(&r.recorded_at) - self.archive.segment_age.as_secs_f64()).max(0.0)
        }))
    }

    /// Seals `state.sealed_seq + 1 ..= last`, or the start of it that holds `segment_bytes`:
    /// plans it (unless it was planned: then all of it, whatever its size), uploads the
    /// segment, then the digest, then records it. The new state, or `None` when another
    /// replica moved it.
    async fn seal(&mut self, writer: &str, state: &State, last: u64) -> Result<Option<State>, SealError> {
        let sealed = state.sealed_seq;
        let first = sealed + 1;
        let again = state.pending_last.is_some();
        let previous = self.tail(writer, state).await?;
        let most_bytes = (!again).then_some(self.archive.segment_bytes);
        let Some(mut segment) = self.read_segment(writer, sealed, last, most_bytes).await? else {
            // Records that are not in the trail any more: nothing to seal honestly.
            return Err(SealError::Vanished {
                writer: writer.to_owned(),
                first,
                last,
            });
        };
        let last = match again {
            true => last,
            false => segment.last.seq,
        };
        if !again && !self.states.plan(writer, sealed, last).await? {
            tracing::info!(writer, "The archive state was moved by another replica.");
            return Ok(None);
        }
        let prefix = &self.archive.prefix;
        let segment_key = digest::segment_key(prefix, writer, first, last);
        let digest_key = digest::digest_key(prefix, writer, first, last);
        let retain = digest::retain_until(
            &segment.last.recorded_at,
            time::OffsetDateTime::now_utc(),
            self.archive.lock_days,
        );
        // A range sealed again: an object already there that holds the same records stays.
        let mut present = false;
        if again && let Some(theirs) = self.existing_segment(&segment_key, &segment).await? {
            segment.bytes = theirs;
            present = true;
        }
        let lock = LockRef {
            mode: self.archive.lock_mode.as_str().to_owned(),
            retain_until: digest::format_seconds(retain),
        };
        let previous = previous.map(|p| PreviousRef {
            key: p.key,
            sha256: p.sha256,
        });
        let digest = Digest::of(prefix, writer, first, last, &segment, previous, lock);
        let records = segment.records;
        if !present {
            self.put(&segment_key, segment.bytes, "application/gzip", retain)
                .await?;
        }
        let digest_bytes = match again {
            true => self.existing_digest(&digest_key, &digest).await?,
            false => None,
        };
        let digest_bytes = match digest_bytes {
            Some(kept) => kept,
            None => {
                let bytes = digest.sign(&self.signer);
                self.put(&digest_key, bytes.clone(), "application/json", retain).await?;
                bytes
            }
        };
        let sha256 = digest::sha256_hex(&digest_bytes);
        if !self.states.sealed(writer, sealed, last, &digest_key, &sha256).await? {
            tracing::info!(writer, "The archive state was moved by another replica.");
            return Ok(None);
        }
        tracing::info!(writer, first, last, records, key = %digest_key, "Sealed a segment of the trail into the archive.");
        self.statuses.update(NAME, |s| s.sent += records);
        self.tails.insert(
            writer.to_owned(),
            Tail {
                last_seq: last,
                key: digest_key.clone(),
                sha256: sha256.clone(),
            },
        );
        Ok(Some(State {
            sealed_seq: last,
            digest_sha256: Some(sha256),
            digest_key: Some(digest_key),
            pending_last: None,
        }))
    }

    /// The records `sealed < seq <= last` as a segment, read a page at a time (`None`: none);
    /// with `most_bytes`, only up to the record that brings it to that many bytes.
    async fn read_segment(
        &self,
        writer: &str,
        sealed: u64,
        last: u64,
        most_bytes: Option<u64>,
    ) -> Result<Option<Segment>, SealError> {
        let mut out = SegmentWriter::new();
        let mut after = sealed;
        'pages: loop {
            let page = self.store.chain_page(writer, after, PAGE).await?;
            let full = page.len() == PAGE as usize;
            for record in page {
                if record.seq > last {
                    break 'pages;
                }
                after = record.seq;
                out.push(record)?;
                if most_bytes.is_some_and(|most| out.raw_bytes() >= most) {
                    break 'pages;
                }
            }
            if !full || after >= last {
                break;
            }
        }
        Ok(out.finish()?)
    }

    /// The bytes of the segment already at `key` if it holds exactly the records of `ours` (a
    /// seal cut short after its upload); kept even if this build compresses otherwise.
    async fn existing_segment(&self, key: &str, ours: &Segment) -> Result<Option<Vec<u8>>, SealError> {
        let Some(theirs) = self.retry(|b| async move { b.get_latest(key).await }).await? else {
            return Ok(None);
        };
        let same = theirs == ours.bytes
            || matches!(
                (digest::read_segment(&theirs), digest::read_segment(&ours.bytes)),
                (Ok(a), Ok(b)) if a == b
            );
        if !same {
            // The trail's records are not what was sealed before the crash, or the object was
            // replaced: the upload that follows leaves two versions, which verify names.
            tracing::error!(
                key,
                "The archived segment differs from the trail's records for its range."
            );
        }
        Ok(same.then_some(theirs))
    }

    /// The digest already at `key` if it is ours and seals the same (on another day it may
    /// carry another retention date).
    async fn existing_digest(&self, key: &str, ours: &Digest) -> Result<Option<Vec<u8>>, SealError> {
        let Some(theirs) = self.retry(|b| async move { b.get_latest(key).await }).await? else {
            return Ok(None);
        };
        let same = Digest::open(&theirs, &self.signer.public_key()).is_ok_and(|d| d.same_seal(ours));
        Ok(same.then_some(theirs))
    }

    /// The digest the next one of `writer` links to: the one `archive_state` names (the key
    /// and SHA-256 this archive uploaded, whatever the bucket shows now: a delete marker on it
    /// is verify's to name, not a reason to stop sealing), or for a row from before
    /// `digest_key` existed, found in the bucket by the seq it ends at.
    async fn tail(&mut self, writer: &str, state: &State) -> Result<Option<Tail>, SealError> {
        let sealed = state.sealed_seq;
        if sealed == 0 {
            return Ok(None);
        }
        if let Some(tail) = self.tails.get(writer).filter(|t| t.last_seq == sealed) {
            return Ok(Some(tail.clone()));
        }
        let ending = format!("-{sealed:020}.json");
        if let (Some(key), Some(sha256)) = (&state.digest_key, &state.digest_sha256)
            && key.ends_with(&ending)
        {
            let tail = Tail {
                last_seq: sealed,
                key: key.clone(),
                sha256: sha256.clone(),
            };
            self.tails.insert(writer.to_owned(), tail.clone());
            return Ok(Some(tail));
        }
        let folder = format!("{}{}/digests/", self.archive.prefix, digest::writer_folder(writer));
        // Segments hold at most segment_records records: the digest starts no earlier than
        // this, unless the setting was larger then (the whole folder is listed).
        let lowest = sealed.saturating_sub(u64::from(self.archive.segment_records));
        let start = format!("{folder}{lowest:020}");
        let mut found = self
            .retry(|b| {
                let (folder, start) = (folder.clone(), start.clone());
                async move { b.keys(&folder, Some(&start)).await }
            })
            .await?
            .into_iter()
            .find(|k| k.ends_with(&ending));
        if found.is_none() {
            found = self
                .retry(|b| {
                    let folder = folder.clone();
                    async move { b.keys(&folder, None).await }
                })
                .await?
                .into_iter()
                .find(|k| k.ends_with(&ending));
        }
        let key = found.ok_or_else(|| SealError::NoPreviousDigest {
            writer: writer.to_owned(),
            seq: sealed,
        })?;
        // The link is to the digest this archive uploaded, whatever the bucket holds now.
        let sha256 = state.digest_sha256.clone().unwrap_or_default();
        let tail = Tail {
            last_seq: sealed,
            key,
            sha256,
        };
        self.tails.insert(writer.to_owned(), tail.clone());
        Ok(Some(tail))
    }

    async fn put(
        &self,
        key: &str,
        bytes: Vec<u8>,
        content_type: &str,
        retain: time::OffsetDateTime,
    ) -> Result<(), SealError> {
        let mode = self.archive.lock_mode.as_str();
        self.retry(|b| {
            let bytes = bytes.clone();
            async move { b.put_locked(key, bytes, content_type, mode, retain).await }
        })
        .await
    }

    /// Calls S3 until it answers, backing off up to [`BACKOFF_MAX`]; each failure shows on
    /// `/healthz` at once. Stops when the service does.
    async fn retry<'a, T, F, Fut>(&'a self, call: F) -> Result<T, SealError>
    where
        F: Fn(&'a Bucket) -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let mut wait = PASS;
        let mut stop = self.stop.clone();
        loop {
            match call(&self.bucket).await {
                Ok(value) => return Ok(value),
                Err(message) => {
                    tracing::warn!(error = %message, retry_in_ms = wait.as_millis() as u64, "An S3 call of the archive failed; will try again.");
                    self.statuses.update(NAME, |s| {
                        s.failures += 1;
                        s.last_error = Some(message);
                    });
                }
            }
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                _ = stop.wait_for(|s| *s) => return Err(SealError::Stopped),
            }
            wait = (wait * 2).min(BACKOFF_MAX);
        }
    }
}
