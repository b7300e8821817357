//! `gatehouse audit verify`: recompute every writer's chain from the store.

use gatehouse_core::audit::{ChainBreak, ChainVerifier};

use super::Store;

/// What a verification found.
#[derive(Debug)]
pub struct Verified {
    /// Records verified per writer.
    pub writers: Vec<(String, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(transparent)]
    Broken(#[from] ChainBreak),
    #[error("cannot read the audit store: {0}")]
    Store(#[from] sqlx::Error),
}

/// Walks every writer's chain in pages; stops at the first break.
pub async fn verify_store(store: &Store) -> Result<Verified, VerifyError> {
    let mut writers = Vec::new();
    for writer in store.writers().await? {
        let mut verifier = ChainVerifier::new(writer.clone());
        let mut after = 0;
        loop {
            let page = store.chain_page(&writer, after, 1000).await?;
            let Some(last) = page.last() else { break };
            after = last.seq;
            for record in &page {
                verifier.push(record)?;
            }
        }
        writers.push((writer, verifier.head().0));
    }
    Ok(Verified { writers })
}
