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

use gatehouse_core::events::{AuditEvent, ConfigDigests};

use super::Policy;
use crate::config::{Config, changes};
use crate::metrics::Metrics;

/// How often the file is read.
pub const POLL: Duration = Duration::from_secs(1);

/// What a reload replaces (the policy, `None` without a `policy` section; the recording
/// rules), shared by the Check, which reads it, and the watcher, which replaces it. Cheap
/// to clone.
#[derive(Debug, Clone, Default)]
pub struct InForce<T = Option<Arc<Policy>>>(Arc<RwLock<T>>);

impl<T: Clone> InForce<T> {
    pub fn new(value: T) -> Self {
        Self(Arc::new(RwLock::new(value)))
    }

    /// What is in force now. A Check holds this reference for its whole decision.
    pub fn current(&self) -> T {
        self.0.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn replace(&self, value: T) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = value;
    }
}

/// What the watcher reads and replaces.
pub struct Watched {
    pub policy: InForce,
    pub recording: InForce<Arc<crate::recording::Recording>>,
    /// Where each reload, taken or refused, is recorded (`config_changed`).
    pub audit: crate::audit::AuditLog,
    pub masker: gatehouse_core::mask::Masker,
    pub metrics: Metrics,
    pub path: PathBuf,
    /// The digests of the configuration in force (to say what a reload changes).
    pub digests: ConfigDigests,
}

/// Watches the file until `stop` turns true, replacing the policy and the recording rules,
/// and recording every change (a refused one too).
pub async fn watch(mut w: Watched, mut stop: watch::Receiver<bool>) {
    let path = w.path.clone();
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
        let event = match Config::parse(&text, &path) {
            Ok(config) => {
                let rules = config.policy.as_ref().map_or(0, |p| p.len());
                w.policy.replace(config.policy.map(Arc::new));
                w.recording.replace(Arc::new(config.recording));
                w.metrics.policy_reloads.inc();
                let event = changes::event("reloaded", &path, &now, Some(&w.digests), &[], &w.masker);
                if event.pending_restart.is_empty() {
                    tracing::info!(path = %path.display(), rules, "Policy and recording rules reloaded.");
                } else {
                    tracing::warn!(path = %path.display(), rules, pending_restart = ?event.pending_restart, "Policy and recording rules reloaded; the other sections that changed take effect at the next restart.");
                }
                w.digests = event.digests.clone();
                event
            }
            Err(errors) => {
                w.metrics.policy_reload_errors.inc();
                tracing::error!(path = %path.display(), problems = %errors, "The changed configuration was refused; the policy in force is unchanged.");
                let problems: Vec<String> = errors.to_string().lines().map(str::to_owned).collect();
                changes::event("reload_refused", &path, &now, Some(&w.digests), &problems, &w.masker)
            }
        };
        let id = crate::authz::check::new_request_id();
        if let Err(error) = w.audit.append_event(&id, AuditEvent::ConfigChanged(event)).await {
            tracing::error!(%error, "Could not record the configuration change in the audit trail.");
        }
    }
}
