//! What the root context of a VM shares with its HTTP contexts: the record queue and the
//! answers held for it, the counters, and the source of request ids. Only built for
//! `wasm32`: it counts and logs through the host; the decisions it applies are in
//! [`crate::queue`], [`crate::stalls`] and [`crate::metrics`], tested natively.

use std::cell::{Cell, RefCell};

use gatehouse_core::mask::MaskCounts;
use gatehouse_core::wire;
use gatehouse_proto::audit::v1::ResponseObserved;
use log::{debug, error, warn};

use crate::host;
use crate::ids;
use crate::metrics::{MaskedKinds, Metrics};
use crate::queue::{Limits, Pushed, Record, Shipper};
use crate::stalls::{Placed, Stalls};

/// Log a full queue on the first drop and then once per this many.
const DROP_LOG_EVERY: u64 = 1_000;

/// Adds `by` to a counter. A metric that cannot be counted is not worth failing a request
/// for.
pub fn count(metric: Option<u32>, by: u64) {
    if let (Some(id), true) = (metric, by > 0) {
        let _ = host::increment(id, by);
    }
}

/// Defines a counter with the host; `None` (logged) if it would not.
pub fn define_counter(name: &str) -> Option<u32> {
    match host::define_counter(name) {
        Ok(id) => Some(id),
        Err(status) => {
            warn!("Could not define metric {name}: host status {}", status.0);
            None
        }
    }
}

/// The root's state, shared with its HTTP contexts through an `Rc`. Callbacks never nest,
/// so a `RefCell` that is busy means a bug; it is logged or skipped, never a panic.
pub struct Shared {
    shipper: RefCell<Shipper>,
    metrics: Cell<Metrics>,
    id_seed: u64,
    id_counter: Cell<u64>,
    random_failed: Cell<bool>,
    masked_kinds: RefCell<MaskedKinds>,
    /// Answers held back, by HTTP context, until their records fit in the queue.
    stalls: RefCell<Stalls>,
}

impl Shared {
    pub fn new(limits: Limits, id_seed: u64) -> Self {
        Self {
            shipper: RefCell::new(Shipper::new(limits)),
            metrics: Cell::new(Metrics::default()),
            id_seed,
            id_counter: Cell::new(0),
            random_failed: Cell::new(false),
            masked_kinds: RefCell::new(MaskedKinds::default()),
            stalls: RefCell::new(Stalls::default()),
        }
    }

    pub fn metrics(&self) -> Metrics {
        self.metrics.get()
    }

    /// Defines the counters (from `on_configure`: the host refuses it earlier).
    pub fn define_metrics(&self) {
        self.metrics.set(Metrics::define(define_counter));
    }

    /// The queue, unless it is busy (it cannot be: callbacks do not nest).
    pub fn shipper(&self) -> Option<std::cell::RefMut<'_, Shipper>> {
        self.shipper.try_borrow_mut().ok()
    }

    /// Counts what was masked for a client, per kind. Kinds and counts only, never values.
    pub fn count_masked(&self, request_id: &str, counts: &MaskCounts) {
        if counts.is_empty() {
            return;
        }
        debug!("Masked in the answer to request {request_id}: {:?}", counts.0);
        let Ok(mut kinds) = self.masked_kinds.try_borrow_mut() else {
            return;
        };
        for (id, n) in kinds.counters(counts, define_counter) {
            count(Some(id), n);
        }
    }

    /// Queues a record with no answer to hold (a rejection): dropped and counted when the
    /// queue is full.
    pub fn enqueue(&self, record: Record) {
        let metrics = self.metrics.get();
        let pushed = match self.shipper.try_borrow_mut() {
            Ok(mut shipper) => shipper.push(record),
            Err(_) => {
                error!("Audit queue busy: dropped a record");
                count(metrics.dropped, 1);
                return;
            }
        };
        match pushed {
            Pushed::Queued => count(metrics.queued, 1),
            Pushed::Dropped { dropped_total } => {
                count(metrics.dropped, 1);
                if dropped_total == 1 || dropped_total % DROP_LOG_EVERY == 0 {
                    warn!(
                        "Audit queue full: dropped {dropped_total} record(s) so far (the audit \
                         ingest is slow or down, or queue_max_records/queue_max_bytes is too small)"
                    );
                }
            }
        }
    }

    /// Queues a part of the answer of HTTP context `context_id`. A part that does not fit
    /// (or comes after one that did not) waits with its answer, which is held back.
    pub fn enqueue_part(&self, context_id: u32, part: ResponseObserved) {
        let Ok(mut stalls) = self.stalls.try_borrow_mut() else {
            // The bounded queue still takes it or counts it.
            return self.enqueue(Record::Response(part));
        };
        let placed = match self.shipper.try_borrow_mut() {
            Ok(mut shipper) => stalls.push(&mut shipper, context_id, part),
            Err(_) => {
                stalls.wait(context_id, part);
                Placed::Waiting
            }
        };
        if placed == Placed::Queued {
            count(self.metrics.get().queued, 1);
        }
    }

    /// Bytes of this answer's paused body that are already masked (0 when not paused).
    pub fn held_bytes(&self, context_id: u32) -> usize {
        self.stalls.try_borrow().map_or(0, |s| s.held_bytes(context_id))
    }

    /// If records of this answer wait for room, remembers `held` masked bytes and says
    /// the answer must pause.
    pub fn must_hold(&self, context_id: u32, held: usize) -> bool {
        self.stalls
            .try_borrow_mut()
            .is_ok_and(|mut s| s.must_hold(context_id, held))
    }

    /// The answer's stream is over: its waiting records are still queued, in order.
    pub fn forget_stream(&self, context_id: u32) {
        if let Ok(mut stalls) = self.stalls.try_borrow_mut() {
            stalls.forget_stream(context_id);
        }
    }

    /// Some answer waits for room in the queue (or the stalls are busy, which they cannot be).
    pub fn answers_held(&self) -> bool {
        self.stalls.try_borrow().map_or(true, |s| !s.is_empty())
    }

    /// Moves waiting records into the queue while they fit, oldest answer first, and
    /// returns the answers that are now fully queued and must be resumed.
    pub fn drain_stalled(&self) -> Vec<u32> {
        let (Ok(mut stalls), Ok(mut shipper)) = (self.stalls.try_borrow_mut(), self.shipper.try_borrow_mut()) else {
            return Vec::new();
        };
        let drained = stalls.drain(&mut shipper);
        count(self.metrics.get().queued, drained.queued);
        drained.resume
    }

    pub fn random_bytes(&self) -> [u8; wire::REQUEST_ID_RANDOM_BYTES] {
        let mut bytes = [0; wire::REQUEST_ID_RANDOM_BYTES];
        if getrandom::fill(&mut bytes).is_ok() {
            return bytes;
        }
        if !self.random_failed.replace(true) {
            warn!("The host gives no randomness; request ids fall back to time and a counter");
        }
        let counter = self.id_counter.get().wrapping_add(1);
        self.id_counter.set(counter);
        ids::fallback_bytes(self.id_seed, counter)
    }

    pub fn new_request_id(&self) -> String {
        wire::format_request_id(host::now_ms(), &self.random_bytes())
    }
}
