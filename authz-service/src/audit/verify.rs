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
    pub checkpoints: usize,
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
            unvouched: records.saturating_sub(newest),
        });
    }
    Ok(Verified { writers: reports })
}
