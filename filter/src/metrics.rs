//! The filter's counters (Envoy shows them as `wasmcustom.<name>`): their names, and the
//! per-kind masking counters defined on first use. The host defines and increments them;
//! this module only decides which, so it is tested natively.

use std::collections::BTreeMap;

use gatehouse_core::mask::MaskCounts;

use crate::queue::Outcome;

/// Masked kinds get a counter each; their number is bounded by the configuration, and
/// this bounds it again (wasm memory never shrinks).
pub const MAX_KIND_METRICS: usize = 256;

/// The counters' ids (`None`: the host would not define it; it is then not counted).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Metrics {
    pub queued: Option<u32>,
    pub sent: Option<u32>,
    pub dropped: Option<u32>,
    pub ingest_errors: Option<u32>,
    pub rejected: Option<u32>,
    pub withheld: Option<u32>,
    /// Time spent in response body callbacks (reading, masking, replacing), and the
    /// answers it was spent on: the benchmark's in-Envoy cost per answer.
    pub body_ns: Option<u32>,
    pub answers: Option<u32>,
    /// Tools dropped from `tools/list` answers: the caller may not call them.
    pub tools_hidden: Option<u32>,
}

impl Metrics {
    /// Defines every counter with `define` (the host's).
    pub fn define(mut define: impl FnMut(&str) -> Option<u32>) -> Self {
        Self {
            queued: define("gatehouse_records_queued"),
            sent: define("gatehouse_records_sent"),
            dropped: define("gatehouse_records_dropped"),
            ingest_errors: define("gatehouse_ingest_errors"),
            rejected: define("gatehouse_requests_rejected"),
            withheld: define("gatehouse_responses_withheld"),
            body_ns: define("gatehouse_response_body_ns_total"),
            answers: define("gatehouse_response_bodies_total"),
            tools_hidden: define("gatehouse_tools_hidden"),
        }
    }
}

impl Metrics {
    /// What an ingest call's outcome counts: records sent, or a failed call and the records
    /// it dropped.
    pub fn of_outcome(&self, outcome: Outcome) -> Vec<(Option<u32>, u64)> {
        match outcome {
            Outcome::Sent { records } => vec![(self.sent, records as u64)],
            Outcome::Requeued { dropped, .. } => vec![(self.ingest_errors, 1), (self.dropped, dropped)],
            Outcome::Discarded { records } => vec![(self.ingest_errors, 1), (self.dropped, records as u64)],
            Outcome::Unknown => Vec::new(),
        }
    }
}

/// `gatehouse_masked_<kind>`, the kind reduced to what a stat name may hold (custom rule
/// names are free text).
pub fn masked_metric_name(kind: &str) -> String {
    let kind: String = kind
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("gatehouse_masked_{kind}")
}

/// The `gatehouse_masked_<kind>` counters, by kind, defined on first use (`None`: could not
/// be, or over [`MAX_KIND_METRICS`]).
#[derive(Debug, Default)]
pub struct MaskedKinds(BTreeMap<String, Option<u32>>);

impl MaskedKinds {
    /// The counter and count of each kind in `counts`, defining (with `define`, given the
    /// metric's name) the counters of kinds not seen before.
    pub fn counters(&mut self, counts: &MaskCounts, mut define: impl FnMut(&str) -> Option<u32>) -> Vec<(u32, u64)> {
        let mut out = Vec::new();
        for (kind, n) in &counts.0 {
            let id = match self.0.get(kind) {
                Some(id) => *id,
                None if self.0.len() >= MAX_KIND_METRICS => None,
                None => {
                    let id = define(&masked_metric_name(kind));
                    self.0.insert(kind.clone(), id);
                    id
                }
            };
            if let Some(id) = id {
                out.push((id, *n));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_counter_is_defined_under_its_documented_name() {
        let mut names = Vec::new();
        let mut next = 0;
        let m = Metrics::define(|name| {
            names.push(name.to_owned());
            next += 1;
            (name != "gatehouse_records_sent").then_some(next)
        });
        assert_eq!(names.len(), 9);
        assert!(names.iter().all(|n| n.starts_with("gatehouse_")));
        assert_eq!((m.queued, m.sent, m.tools_hidden), (Some(1), None, Some(9)));
    }

    #[test]
    fn ingest_outcomes_count_what_was_sent_failed_and_dropped() {
        let mut next = 0;
        let m = Metrics::define(|_| {
            next += 1;
            Some(next)
        });
        let (sent, errors, dropped) = (m.sent, m.ingest_errors, m.dropped);
        assert_eq!(m.of_outcome(Outcome::Sent { records: 3 }), [(sent, 3)]);
        assert_eq!(
            m.of_outcome(Outcome::Requeued { records: 3, dropped: 2 }),
            [(errors, 1), (dropped, 2)]
        );
        assert_eq!(
            m.of_outcome(Outcome::Discarded { records: 4 }),
            [(errors, 1), (dropped, 4)]
        );
        assert_eq!(m.of_outcome(Outcome::Unknown), []);
    }

    #[test]
    fn kind_counters_are_defined_once_and_bounded() {
        assert_eq!(masked_metric_name("credit_card"), "gatehouse_masked_credit_card");
        assert_eq!(masked_metric_name("Employee ID.v2"), "gatehouse_masked_employee_id_v2");
        let mut kinds = MaskedKinds::default();
        let mut defined = Vec::new();
        let mut counts = MaskCounts::default();
        counts.add("email", 2);
        counts.add("phone", 1);
        let mut define = |name: &str| {
            defined.push(name.to_owned());
            Some(defined.len() as u32)
        };
        assert_eq!(kinds.counters(&counts, &mut define), [(1, 2), (2, 1)]);
        assert_eq!(kinds.counters(&counts, &mut define), [(1, 2), (2, 1)]);
        assert_eq!(defined, ["gatehouse_masked_email", "gatehouse_masked_phone"]);
        // A kind the host would not define is not asked again, nor counted.
        let mut refused = MaskCounts::default();
        refused.add("iban", 3);
        assert_eq!(kinds.counters(&refused, |_| None), []);
        assert_eq!(kinds.counters(&refused, |_| Some(99)), []);
        // Past the bound, new kinds get no counter.
        let mut many = MaskCounts::default();
        for i in 0..MAX_KIND_METRICS {
            many.add(&format!("k{i}"), 1);
        }
        let mut asked = 0;
        kinds.counters(&many, |_| {
            asked += 1;
            Some(1)
        });
        assert_eq!(asked, MAX_KIND_METRICS - 3);
    }
}
