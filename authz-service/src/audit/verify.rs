//! `gatehouse audit verify`: recompute every writer's chain from the store, and check it
//! against the writer's signed checkpoints (from the store and from a checkpoint log kept
//! elsewhere).

use ed25519_dalek::VerifyingKey;
use gatehouse_core::audit::{ChainBreak, ChainVerifier, Checkpoint};

use super::{Store, checkpoint::signature_valid};

/// What a verification found, per writer.
#[derive(Debug, PartialEq, Eq)]
pub struct WriterReport {
    pub writer: String,
    pub records: u64,
    /// Valid signed checkpoints (none when verified without a key).
    pub checkpoints: usize,
    /// The newest record a signed checkpoint vouches for (0: none).
    pub vouched: u64,
    /// Records after the newest checkpoint (not yet vouched for).
    pub unvouched: u64,
}

#[derive(Debug)]
pub struct Verified {
    pub writers: Vec<WriterReport>,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Broken(#[from] ChainBreak),
    #[error("cannot read the audit store: {0}")]
    Store(#[from] sqlx::Error),
}

/// Walks every writer's chain in pages; stops at the first break. With `key`, checkpoints
/// are checked too (a bad signature is a break).
pub async fn verify_store(store: &Store, key: Option<&VerifyingKey>) -> Result<Verified, VerifyError> {
    verify_store_with(store, key, &[]).await
}

/// As [`verify_store`], also using checkpoints kept outside the store (`external`), which
/// are signature-checked like the stored ones.
pub async fn verify_store_with(
    store: &Store,
    key: Option<&VerifyingKey>,
    external: &[Checkpoint],
) -> Result<Verified, VerifyError> {
    let mut writers = store.writers().await?;
    // A writer known only from external checkpoints had every record deleted.
    for c in external {
        if !writers.contains(&c.writer) {
            writers.push(c.writer.clone());
        }
    }
    let mut reports = Vec::new();
    for writer in writers {
        let checkpoints = match key {
            Some(key) => {
                let mut cps = store.checkpoints(&writer).await?;
                cps.extend(external.iter().filter(|c| c.writer == writer).cloned());
                cps.sort_by(|a, b| (a.seq, &a.signature).cmp(&(b.seq, &b.signature)));
                cps.dedup();
                if let Some(bad) = cps.iter().find(|c| c.writer != writer || !signature_valid(key, c)) {
                    return Err(ChainBreak::BadCheckpoint { writer, seq: bad.seq }.into());
                }
                cps
            }
            None => Vec::new(),
        };
        let mut verifier = ChainVerifier::new(writer.clone()).with_checkpoints(&checkpoints);
        let mut after = 0;
        loop {
            let page = store.chain_page(&writer, after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for record in &page {
                verifier.push(record)?;
            }
        }
        let records = verifier.finish()?;
        let newest = checkpoints.iter().map(|c| c.seq).max().unwrap_or(0);
        reports.push(WriterReport {
            writer,
            records,
            checkpoints: checkpoints.len(),
            vouched: newest,
            unvouched: records.saturating_sub(newest),
        });
    }
    Ok(Verified { writers: reports })
}

/// Whom a verified trail is trusted from: the chains prove records were not changed since
/// they were written, not who wrote them. A writer must be known, and its records vouched
/// for by a signed checkpoint, apart from a bounded tail the writer had not signed yet.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    /// Writers known without a checkpoint: this service's own writer id.
    pub writers: Vec<String>,
    /// Whether checkpoints were checked (a key was given): only then can a checkpoint make a
    /// writer known, or vouch for records.
    pub checkpoints: bool,
    /// The most records a writer may have after its newest signed checkpoint (its writer
    /// signs one at least every `every_records`, plus one commit's batch).
    pub unvouched_limit: Option<u64>,
}

/// Records a verified trail holds that no one vouches for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Untrusted {
    #[error(
        "writer {writer}: records {first} to {last} come from a writer that is neither this service's writer id nor attested by a signed checkpoint"
    )]
    UnknownWriter { writer: String, first: u64, last: u64 },
    #[error(
        "writer {writer}: records {first} to {last} follow its newest signed checkpoint (record {vouched}); at most {limit} may (checkpoints deleted, or records added without the key)"
    )]
    Unvouched {
        writer: String,
        vouched: u64,
        first: u64,
        last: u64,
        limit: u64,
    },
}

impl Untrusted {
    /// The first record not vouched for.
    pub fn seq(&self) -> u64 {
        match self {
            Self::UnknownWriter { first, .. } | Self::Unvouched { first, .. } => *first,
        }
    }
}

impl Trust {
    /// Every writer of `verified` that is unknown or has too long an unvouched tail.
    pub fn check(&self, verified: &Verified) -> Vec<Untrusted> {
        let mut out = Vec::new();
        for w in verified.writers.iter().filter(|w| w.records > 0) {
            let attested = self.checkpoints && w.checkpoints > 0;
            if !attested && !self.writers.contains(&w.writer) {
                out.push(Untrusted::UnknownWriter {
                    writer: w.writer.clone(),
                    first: 1,
                    last: w.records,
                });
                continue;
            }
            if let Some(limit) = self.unvouched_limit.filter(|_| self.checkpoints)
                && w.unvouched > limit
            {
                out.push(Untrusted::Unvouched {
                    writer: w.writer.clone(),
                    vouched: w.vouched,
                    first: w.vouched + 1,
                    last: w.records,
                    limit,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(writer: &str, records: u64, checkpoints: usize, vouched: u64) -> WriterReport {
        WriterReport {
            writer: writer.into(),
            records,
            checkpoints,
            vouched,
            unvouched: records - vouched,
        }
    }

    fn trust(limit: u64) -> Trust {
        Trust {
            writers: vec!["gatehouse-1".into()],
            checkpoints: true,
            unvouched_limit: Some(limit),
        }
    }

    #[test]
    fn a_writer_without_checkpoints_must_be_configured() {
        let verified = Verified {
            writers: vec![report("gatehouse-1", 3, 0, 0), report("intruder", 3, 0, 0)],
        };
        assert_eq!(
            trust(10).check(&verified),
            vec![Untrusted::UnknownWriter {
                writer: "intruder".into(),
                first: 1,
                last: 3
            }]
        );
        // Without a key, a checkpoint attests nothing.
        let verified = Verified {
            writers: vec![report("old-writer", 3, 2, 3)],
        };
        let unchecked = Trust {
            checkpoints: false,
            ..trust(10)
        };
        assert_eq!(unchecked.check(&verified).len(), 1);
        assert!(trust(10).check(&verified).is_empty());
    }

    #[test]
    fn the_unvouched_tail_is_bounded_and_named() {
        let verified = Verified {
            writers: vec![report("gatehouse-1", 30, 2, 10)],
        };
        assert!(trust(20).check(&verified).is_empty());
        let found = trust(19).check(&verified);
        assert_eq!(
            found,
            vec![Untrusted::Unvouched {
                writer: "gatehouse-1".into(),
                vouched: 10,
                first: 11,
                last: 30,
                limit: 19
            }]
        );
        assert_eq!(found[0].seq(), 11);
    }
}
