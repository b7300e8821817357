//! The writer thread: the only code that appends to this writer's chain.
//!
//! It owns its own connection to the database ([`super::sink`]), so a group commit is one
//! hop from the async side (a channel send) and one back (a oneshot), with one insert per
//! commit. Two lanes: what a caller is waiting on right now (the Check's request record,
//! approval steps) commits at once, together with whatever else is waiting; the ingest's
//! response records linger up to [`LINGER`] and ride along with the next urgent commit, so
//! they do not hold the disk while a request waits. Both are durable before their sender
//! hears back. Housekeeping the database needs (SQLite's WAL reset) runs between two
//! commits ([`Sink::between_commits`]), never inside one.

use std::collections::VecDeque;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use gatehouse_core::audit::{ChainHead, Record, canonical_json};
use tokio::sync::oneshot;

use super::sink::Sink;
use super::{Checkpointer, NewRecord, checkpoint, now_rfc3339};
use crate::metrics::Metrics;

/// How long the ingest's records may wait for an urgent commit to ride along with.
pub const LINGER: Duration = Duration::from_millis(10);
/// The most lingering records one commit takes (along with urgent ones, or on their own), so
/// an ingest batch never makes the request that commits next wait for many inserts. The
/// async side splits a batch into jobs of at most this many ([`super::AuditLog::append_lingering`]).
pub const RIDE_ALONG: usize = 16;

/// Which lane a job waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Someone is waiting on it now: commit at once.
    Now,
    /// May wait up to [`LINGER`] to share an urgent commit.
    Linger,
}

/// A record ready to append: its data's canonical encoding (what its hash covers) and its
/// stored text are made by the task that sends it, so the one thread that appends only
/// hashes and inserts.
pub struct Prepared {
    record: NewRecord,
    canonical: Vec<u8>,
    text: String,
}

impl Prepared {
    pub fn new(record: NewRecord) -> Self {
        Self {
            canonical: canonical_json(&record.data),
            text: serde_json::to_string(&record.data).unwrap_or_default(),
            record,
        }
    }
}

/// What the async side asks of the writer.
pub enum Job {
    Append {
        records: Vec<Prepared>,
        lane: Lane,
        done: oneshot::Sender<Result<Vec<Record>, String>>,
    },
    /// Commit everything waiting and sign a checkpoint of it (on shutdown).
    Flush { done: oneshot::Sender<()> },
}

struct Waiting {
    records: Vec<Prepared>,
    done: oneshot::Sender<Result<Vec<Record>, String>>,
}

pub struct Writer {
    sink: Box<dyn Sink>,
    head: ChainHead,
    /// The newest record a checkpoint vouches for.
    checkpointed: u64,
    max_batch: usize,
    checkpoints: Option<Checkpointer>,
    metrics: Metrics,
    now: VecDeque<Waiting>,
    lingering: VecDeque<Waiting>,
    /// When the oldest lingering job must be committed.
    linger_until: Option<Instant>,
}

impl Writer {
    pub fn new(
        sink: Box<dyn Sink>,
        head: ChainHead,
        checkpointed: u64,
        max_batch: usize,
        checkpoints: Option<Checkpointer>,
        metrics: Metrics,
    ) -> Self {
        Self {
            sink,
            head,
            checkpointed,
            max_batch,
            checkpoints,
            metrics,
            now: VecDeque::new(),
            lingering: VecDeque::new(),
            linger_until: None,
        }
    }

    /// Serves jobs until every sender is gone, then commits what is left and vouches for it.
    pub fn run(mut self, jobs: Receiver<Job>) {
        let every = self.checkpoints.as_ref().map(|c| c.every);
        // The first tick is at once: a tail a crash left unsigned is signed on restart.
        let mut next_tick = every.map(|_| Instant::now());
        let mut flushes = Vec::new();
        loop {
            let deadline = [next_tick, self.linger_until].into_iter().flatten().min();
            let first = match deadline {
                Some(at) => jobs.recv_timeout(at.saturating_duration_since(Instant::now())),
                None => jobs.recv().map_err(|_| RecvTimeoutError::Disconnected),
            };
            let open = match first {
                Ok(job) => {
                    self.take(job, &mut flushes);
                    // Group whatever else is already waiting: concurrent callers share a commit.
                    while let Ok(job) = jobs.try_recv() {
                        self.take(job, &mut flushes);
                    }
                    true
                }
                Err(RecvTimeoutError::Timeout) => true,
                Err(RecvTimeoutError::Disconnected) => false,
            };
            // Urgent jobs first; lingering ones one chunk at a time once due, with whatever
            // became urgent meanwhile going before the next chunk. Checkpoints fall due between
            // commits: a writer that is never idle still signs every `every_records` and tick.
            loop {
                let lingering: usize = self.lingering.iter().map(|w| w.records.len()).sum();
                let linger_due = self.linger_until.is_some_and(|at| at <= Instant::now());
                if !self.now.is_empty() {
                    self.commit_urgent();
                } else if lingering > 0 && (linger_due || lingering >= self.max_batch || !flushes.is_empty() || !open) {
                    self.commit_lingering();
                } else {
                    break;
                }
                self.checkpoint_if_due(&mut next_tick, every, false);
                self.sink.between_commits();
                while let Ok(job) = jobs.try_recv() {
                    self.take(job, &mut flushes);
                }
            }
            if self.lingering.is_empty() {
                self.linger_until = None;
            }
            self.checkpoint_if_due(&mut next_tick, every, !flushes.is_empty() || !open);
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
            if !open {
                return;
            }
        }
    }

    /// Signs a checkpoint when `every_records` records, the tick (or `now`: a flush, the end)
    /// has come and there is something new to vouch for.
    fn checkpoint_if_due(&mut self, next_tick: &mut Option<Instant>, every: Option<Duration>, now: bool) {
        let tick_due = next_tick.is_some_and(|at| at <= Instant::now());
        if tick_due {
            *next_tick = every.map(|e| Instant::now() + e);
        }
        let by_count = self
            .checkpoints
            .as_ref()
            .is_some_and(|c| self.head.seq >= self.checkpointed + c.every_records);
        if by_count || ((tick_due || now) && self.head.seq > self.checkpointed) {
            self.checkpoint();
        }
    }

    fn take(&mut self, job: Job, flushes: &mut Vec<oneshot::Sender<()>>) {
        match job {
            Job::Append { records, lane, done } if !records.is_empty() => {
                let waiting = Waiting { records, done };
                match lane {
                    Lane::Now => self.now.push_back(waiting),
                    Lane::Linger => {
                        self.linger_until.get_or_insert_with(|| Instant::now() + LINGER);
                        self.lingering.push_back(waiting);
                    }
                }
            }
            Job::Append { done, .. } => {
                let _ = done.send(Ok(Vec::new()));
            }
            Job::Flush { done } => flushes.push(done),
        }
    }

    /// One transaction: urgent jobs up to `max_batch` records, and lingering ones along.
    fn commit_urgent(&mut self) {
        let mut batch = take_up_to(&mut self.now, self.max_batch);
        batch.extend(take_up_to(&mut self.lingering, RIDE_ALONG));
        self.commit(batch);
    }

    fn commit_lingering(&mut self) {
        let batch = take_up_to(&mut self.lingering, RIDE_ALONG);
        self.commit(batch);
    }

    fn commit(&mut self, batch: Vec<Waiting>) {
        let count: usize = batch.iter().map(|w| w.records.len()).sum();
        // A new connection may follow a commit whose answer was lost but which landed: go on
        // from the stored head, not the remembered one.
        let ready = self.sink.ready().and_then(|fresh| match fresh {
            true => self
                .sink
                .read_head(&self.head.writer)
                .map(|stored| self.adopt_head(stored)),
            false => Ok(()),
        });
        if let Err(error) = ready {
            self.refuse(batch.into_iter().map(|w| w.done).collect(), count, &error);
            return;
        }
        let started = Instant::now();
        let now = now_rfc3339();
        let mut next_head = self.head.clone();
        let mut texts = Vec::with_capacity(count);
        let mut built = Vec::with_capacity(batch.len());
        let mut senders = Vec::with_capacity(batch.len());
        for waiting in batch {
            let records: Vec<Record> = waiting
                .records
                .into_iter()
                .map(|p| {
                    texts.push(p.text);
                    let r = p.record;
                    next_head.append_encoded(r.kind.as_str(), &r.request_id, &now, r.data, &p.canonical)
                })
                .collect();
            built.push(records);
            senders.push(waiting.done);
        }
        let rows: Vec<(&Record, &str)> = built.iter().flatten().zip(texts.iter().map(String::as_str)).collect();
        let result = self.sink.insert_all(&rows);
        drop(rows);
        self.metrics.observe_commit(started.elapsed(), count);
        match result {
            Ok(()) => {
                self.head = next_head;
                for (done, records) in senders.into_iter().zip(built) {
                    let _ = done.send(Ok(records));
                }
            }
            Err(error) => {
                self.refuse(senders, count, &error);
                // The commit may still have landed (an error after COMMIT reached disk), or
                // another process wrote with this writer id: trust the store, not memory.
                if let Ok(stored) = self.sink.read_head(&self.head.writer) {
                    self.adopt_head(stored);
                }
            }
        }
    }

    /// Tells the requests waiting on a commit that it failed, and backs off briefly so a
    /// broken store is not hammered.
    fn refuse(&mut self, senders: Vec<oneshot::Sender<Result<Vec<Record>, String>>>, count: usize, error: &str) {
        self.metrics.audit_write_failures.inc();
        tracing::error!(%error, records = count, "Could not commit audit records; the requests waiting on them are refused.");
        for done in senders {
            let _ = done.send(Err(error.to_owned()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }

    /// Goes on from the stored chain head when it is not the one in memory.
    fn adopt_head(&mut self, stored: ChainHead) {
        if stored.seq != self.head.seq || stored.hash != self.head.hash {
            tracing::error!(
                expected_seq = self.head.seq,
                stored_seq = stored.seq,
                "The audit store's chain head is not the one this writer holds; continuing from the store's."
            );
            self.head = stored;
        }
    }

    fn checkpoint(&mut self) {
        let Some(c) = self.checkpoints.as_ref() else {
            return;
        };
        let checkpoint = c.signer.sign(&self.head, &now_rfc3339());
        if let Some(path) = &c.log_file
            && let Err(error) = checkpoint::append_to_log(path, &checkpoint)
        {
            tracing::error!(%error, log_file = %path.display(), "Could not append a checkpoint to the checkpoint log.");
        }
        match self.sink.insert_checkpoint(&checkpoint) {
            Ok(()) => self.checkpointed = checkpoint.seq,
            Err(error) => {
                tracing::error!(%error, seq = checkpoint.seq, "Could not store an audit checkpoint; will try again.");
            }
        }
    }
}

/// Whole jobs from the front of `queue` while they fit in `limit` records (at least one).
fn take_up_to(queue: &mut VecDeque<Waiting>, limit: usize) -> Vec<Waiting> {
    let mut out = Vec::new();
    let mut count = 0;
    while let Some(next) = queue.front() {
        if !out.is_empty() && count + next.records.len() > limit {
            break;
        }
        count += next.records.len();
        out.extend(queue.pop_front());
    }
    out
}
