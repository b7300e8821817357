//! Reloading the policy when `gatehouse.yaml` changes, without a restart.
//!
//! The file is read once a second and compared with what was last read. A changed file is
//! validated whole; if it is good its `policy` section replaces the one in force (other
//! sections still need a restart, and a warning says so). A bad file is refused with every
//! problem logged, and the policy in force stays. A Check takes its own reference to the
//! policy when it starts, so a swap never changes a decision already being made.

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::watch;

use super::Policy;
use crate::config::Config;
use crate::metrics::Metrics;

/// How often the file is read.
pub const POLL: Duration = Duration::from_secs(1);

/// The policy in force (`None`: no `policy` section), shared by the Check, which reads it,
/// and the watcher, which replaces it. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct InForce(Arc<RwLock<Option<Arc<Policy>>>>);

impl InForce {
    pub fn new(policy: Option<Arc<Policy>>) -> Self {
        Self(Arc::new(RwLock::new(policy)))
    }

    /// The policy in force now. A Check holds this reference for its whole decision.
    pub fn current(&self) -> Option<Arc<Policy>> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn replace(&self, policy: Option<Arc<Policy>>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = policy;
    }
}

/// Watches `path` until `stop` turns true, replacing the policy in `in_force`.
pub async fn watch(in_force: InForce, metrics: Metrics, path: PathBuf, mut stop: watch::Receiver<bool>) {
    let mut last = tokio::fs::read(&path).await.ok();
    loop {
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let now = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            Err(error) => {
                if last.is_some() {
                    tracing::warn!(path = %path.display(), %error, "Cannot read the configuration; the policy in force is unchanged.");
                }
                last = None;
                continue;
            }
        };
        if last.as_deref() == Some(now.as_slice()) {
            continue;
        }
        last = Some(now.clone());
        let text = String::from_utf8_lossy(&now);
        match Config::parse(&text, &path) {
            Ok(config) => {
                let rules = config.policy.as_ref().map_or(0, |p| p.len());
                in_force.replace(config.policy.map(Arc::new));
                metrics.policy_reloads.inc();
                tracing::info!(path = %path.display(), rules, "Policy reloaded. Other sections take effect at the next restart.");
            }
            Err(errors) => {
                metrics.policy_reload_errors.inc();
                tracing::error!(path = %path.display(), problems = %errors, "The changed configuration was refused; the policy in force is unchanged.");
            }
        }
    }
}
