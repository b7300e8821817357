//! Prometheus metrics, kept small: counters and one latency histogram, rendered by hand in
//! the text exposition format at `/metrics`.

use std::{
    fmt::Write,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

const BUCKETS_MS: [f64; 10] = [0.5, 1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0];

#[derive(Default, Debug)]
pub struct Histogram {
    buckets: [AtomicU64; 10],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        for (i, le) in BUCKETS_MS.iter().enumerate() {
            if ms <= *le {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

/// All of the service's metrics; cheap to clone.
#[derive(Clone, Default, Debug)]
pub struct Metrics(Arc<Inner>);

#[derive(Default, Debug)]
pub struct Inner {
    pub checks_allowed: Counter,
    pub checks_denied: Counter,
    pub checks_failed: Counter,
    pub check_latency: Histogram,
    pub audit_records: Counter,
    pub audit_commits: Counter,
    pub audit_write_failures: Counter,
    pub audit_commit_latency: Histogram,
    pub ingest_batches: Counter,
    pub ingest_records: Counter,
    pub filter_dropped_reported: Counter,
    pub ingest_refused: Counter,
    pub ingest_conflicts: Counter,
    pub policy_reloads: Counter,
    pub policy_reload_errors: Counter,
    pub approvals_requested: Counter,
    pub approvals_approved: Counter,
    pub approvals_denied: Counter,
    pub approvals_expired: Counter,
    pub approvals_used: Counter,
    pub approval_notifications: Counter,
    pub approval_notification_failures: Counter,
}

impl std::ops::Deref for Metrics {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl Metrics {
    pub fn observe_commit(&self, d: Duration, records: usize) {
        self.audit_commits.inc();
        self.audit_records.add(records as u64);
        self.audit_commit_latency.observe(d);
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = [
            (
                "gatehouse_checks_total{decision=\"allow\"}",
                "Requests allowed by ext_authz.",
                &self.checks_allowed,
            ),
            (
                "gatehouse_checks_total{decision=\"deny\"}",
                "Requests denied by ext_authz.",
                &self.checks_denied,
            ),
            (
                "gatehouse_checks_total{decision=\"error\"}",
                "Requests refused because a dependency failed.",
                &self.checks_failed,
            ),
            (
                "gatehouse_audit_records_total",
                "Audit records committed.",
                &self.audit_records,
            ),
            (
                "gatehouse_audit_commits_total",
                "Audit store transactions committed.",
                &self.audit_commits,
            ),
            (
                "gatehouse_audit_write_failures_total",
                "Audit store transactions that failed.",
                &self.audit_write_failures,
            ),
            (
                "gatehouse_ingest_batches_total",
                "Ingest batches received from filters.",
                &self.ingest_batches,
            ),
            (
                "gatehouse_ingest_records_total",
                "Records received from filters.",
                &self.ingest_records,
            ),
            (
                "gatehouse_filter_dropped_records",
                "Records filters reported dropped (sum of the latest totals).",
                &self.filter_dropped_reported,
            ),
            (
                "gatehouse_ingest_refused_total",
                "Ingested records refused: a response with no committed request record, or a rejection of a request that has one.",
                &self.ingest_refused,
            ),
            (
                "gatehouse_ingest_conflicts_total",
                "Ingested records that differ from a stored record of the same request and part (stored, flagged).",
                &self.ingest_conflicts,
            ),
            (
                "gatehouse_policy_reloads_total{result=\"ok\"}",
                "Changed configuration files read for the policy.",
                &self.policy_reloads,
            ),
            (
                "gatehouse_policy_reloads_total{result=\"refused\"}",
                "Changed configuration files read for the policy.",
                &self.policy_reload_errors,
            ),
            (
                "gatehouse_approvals_total{event=\"requested\"}",
                "Approval steps.",
                &self.approvals_requested,
            ),
            (
                "gatehouse_approvals_total{event=\"approved\"}",
                "Approval steps.",
                &self.approvals_approved,
            ),
            (
                "gatehouse_approvals_total{event=\"denied\"}",
                "Approval steps.",
                &self.approvals_denied,
            ),
            (
                "gatehouse_approvals_total{event=\"expired\"}",
                "Approval steps.",
                &self.approvals_expired,
            ),
            (
                "gatehouse_approvals_total{event=\"used\"}",
                "Approval steps.",
                &self.approvals_used,
            ),
            (
                "gatehouse_approval_notifications_total{result=\"ok\"}",
                "Webhook notifications of new approvals.",
                &self.approval_notifications,
            ),
            (
                "gatehouse_approval_notifications_total{result=\"failed\"}",
                "Webhook notifications of new approvals.",
                &self.approval_notification_failures,
            ),
        ];
        let mut last_name = "";
        for (name, help, c) in counters {
            let base = name.split('{').next().unwrap_or(name);
            if base != last_name {
                let _ = writeln!(out, "# HELP {base} {help}\n# TYPE {base} counter");
                last_name = base;
            }
            let _ = writeln!(out, "{name} {}", c.get());
        }
        for (name, help, h) in [
            (
                "gatehouse_check_duration_ms",
                "ext_authz Check latency.",
                &self.check_latency,
            ),
            (
                "gatehouse_audit_commit_duration_ms",
                "Audit commit latency.",
                &self.audit_commit_latency,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
            for (i, le) in BUCKETS_MS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "{name}_bucket{{le=\"{le}\"}} {}",
                    h.buckets[i].load(Ordering::Relaxed)
                );
            }
            let count = h.count.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
            let _ = writeln!(out, "{name}_sum {}", h.sum_us.load(Ordering::Relaxed) as f64 / 1000.0);
            let _ = writeln!(out, "{name}_count {count}");
        }
        out
    }
}
