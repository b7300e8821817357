//! The bounded record queue and the state of the one ingest call in flight.
//!
//! HTTP contexts push records; the root context's tick takes a batch, sends it to the
//! service's audit ingest, and keeps it until the answer. A failed batch goes back to the
//! front of the queue. The queue is bounded in records and in bytes (wasm memory never
//! shrinks): when it is full the newest record is dropped and counted, so the trail shows
//! a gap as a number rather than the VM running out of memory.

use std::collections::VecDeque;

use gatehouse_proto::audit::v1::{IngestBatch, RequestRejected, ResponseObserved};
use prost::Message;

/// gRPC service and method of the audit ingest (proto/gatehouse/audit/v1/ingest.proto).
pub const INGEST_SERVICE: &str = "gatehouse.audit.v1.AuditIngest";
pub const INGEST_METHOD: &str = "Ingest";

const GRPC_OK: u32 = 0;
/// The service will never accept this batch as it is: resending it would wedge the queue.
const GRPC_INVALID_ARGUMENT: u32 = 3;
const BACKOFF_BASE_MS: u64 = 250;
const BACKOFF_MAX_MS: u64 = 10_000;
/// How long past its own timeout a call may stay unanswered before it is given up.
const LOST_CALL_GRACE_MS: u64 = 10_000;

/// One record for the ingest.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    Response(ResponseObserved),
    Rejected(RequestRejected),
}

impl Record {
    /// Size in a batch: the message plus its field key and length prefix.
    pub fn encoded_size(&self) -> usize {
        let len = match self {
            Self::Response(r) => r.encoded_len(),
            Self::Rejected(r) => r.encoded_len(),
        };
        len + 1 + prost::length_delimiter_len(len)
    }
}

/// The bounds, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub queue_max_records: usize,
    pub queue_max_bytes: usize,
    pub batch_max_records: usize,
    /// Records waiting that make a call worth sending before the tick.
    pub batch_min_records: usize,
    pub batch_max_bytes: usize,
    pub call_timeout_ms: u64,
}

/// Whether a pushed record was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pushed {
    Queued,
    /// The queue was full; the record was dropped.
    Dropped {
        dropped_total: u64,
    },
}

/// What became of the batch in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Stored by the service.
    Sent { records: usize },
    /// Failed; put back at the front of the queue (`dropped` did not fit any more).
    Requeued { records: usize, dropped: u64 },
    /// Refused by the service as invalid; dropped and counted.
    Discarded { records: usize },
    /// Not the call in flight (a late answer to a call given up on).
    Unknown,
}

/// The queue plus the ingest call in flight.
#[derive(Debug)]
pub struct Shipper {
    limits: Limits,
    queue: VecDeque<(usize, Record)>,
    queued_bytes: usize,
    dropped_total: u64,
    in_flight: Option<InFlight>,
    failures: u32,
    next_attempt_ms: u64,
}

#[derive(Debug)]
struct InFlight {
    /// `None` between taking the batch and the host accepting the call.
    token: Option<u32>,
    batch: IngestBatch,
    started_ms: u64,
}

impl Shipper {
    pub fn new(limits: Limits) -> Self {
        Self {
            limits,
            queue: VecDeque::new(),
            queued_bytes: 0,
            dropped_total: 0,
            in_flight: None,
            failures: 0,
            next_attempt_ms: 0,
        }
    }

    /// New bounds (a reconfiguration); records over them are dropped, newest first.
    pub fn set_limits(&mut self, limits: Limits) -> u64 {
        self.limits = limits;
        self.enforce_bounds()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    pub fn in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Failed calls since the last success.
    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    /// Queues a record if it fits, or gives it back: the caller holds it (and its answer)
    /// until there is room. Nothing is dropped.
    pub fn try_push(&mut self, record: Record) -> Result<(), Box<Record>> {
        let size = record.encoded_size();
        if self.queue.len() >= self.limits.queue_max_records
            || self.queued_bytes.saturating_add(size) > self.limits.queue_max_bytes
        {
            return Err(Box::new(record));
        }
        self.queued_bytes += size;
        self.queue.push_back((size, record));
        Ok(())
    }

    /// Queues a record, or drops it (the new one) if the queue is full.
    pub fn push(&mut self, record: Record) -> Pushed {
        match self.try_push(record) {
            Ok(()) => Pushed::Queued,
            Err(_) => {
                self.dropped_total += 1;
                Pushed::Dropped {
                    dropped_total: self.dropped_total,
                }
            }
        }
    }

    /// Whether the records waiting are worth a call before the next tick: enough records, or
    /// half a batch's bytes. A call costs both processes about as much CPU as a few records
    /// do, so under a light load sending one as soon as the last is answered would make a
    /// call per record; under a heavy one, waiting for the tick would make bursts.
    pub fn worth_a_call(&self) -> bool {
        self.queue.len() >= self.limits.batch_min_records
            || self.queued_bytes.saturating_mul(2) >= self.limits.batch_max_bytes
    }

    /// If no call is in flight, it is time, and records wait: takes a batch and returns
    /// it encoded, to send. Follow with [`dispatched`](Self::dispatched) or
    /// [`dispatch_failed`](Self::dispatch_failed).
    pub fn begin(&mut self, source: &str, now_ms: u64) -> Option<Vec<u8>> {
        if self.in_flight.is_some() || self.queue.is_empty() || now_ms < self.next_attempt_ms {
            return None;
        }
        let mut batch = IngestBatch {
            source: source.to_owned(),
            ..Default::default()
        };
        let mut bytes = batch.encoded_len();
        let mut count = 0;
        while let Some((size, _)) = self.queue.front() {
            let size = *size;
            let full = count >= self.limits.batch_max_records
                || (count > 0 && bytes.saturating_add(size) > self.limits.batch_max_bytes);
            let Some((_, record)) = (!full).then(|| self.queue.pop_front()).flatten() else {
                break;
            };
            self.queued_bytes = self.queued_bytes.saturating_sub(size);
            bytes = bytes.saturating_add(size);
            count += 1;
            match record {
                Record::Response(r) => batch.responses.push(r),
                Record::Rejected(r) => batch.rejections.push(r),
            }
        }
        batch.dropped_total = self.dropped_total;
        let encoded = batch.encode_to_vec();
        self.in_flight = Some(InFlight {
            token: None,
            batch,
            started_ms: now_ms,
        });
        Some(encoded)
    }

    /// The host accepted the call.
    pub fn dispatched(&mut self, token: u32) {
        if let Some(call) = self.in_flight.as_mut() {
            call.token = Some(token);
        }
    }

    /// The host refused to start the call: the batch goes back.
    pub fn dispatch_failed(&mut self, now_ms: u64) -> Outcome {
        self.fail(now_ms)
    }

    /// The answer to call `token` arrived with gRPC status `status`.
    pub fn finished(&mut self, token: u32, status: u32, now_ms: u64) -> Outcome {
        if self.in_flight.as_ref().and_then(|c| c.token) != Some(token) {
            return Outcome::Unknown;
        }
        match status {
            GRPC_OK => {
                let records = self.in_flight.take().map_or(0, |c| batch_len(&c.batch));
                self.failures = 0;
                self.next_attempt_ms = 0;
                Outcome::Sent { records }
            }
            GRPC_INVALID_ARGUMENT => {
                let records = self.in_flight.take().map_or(0, |c| batch_len(&c.batch));
                self.dropped_total += records as u64;
                Outcome::Discarded { records }
            }
            _ => self.fail(now_ms),
        }
    }

    /// Gives up on a call the host never answered (it has its own timeout, so this is a
    /// safety net that keeps the queue from stalling for ever).
    pub fn expire(&mut self, now_ms: u64) -> Option<Outcome> {
        let call = self.in_flight.as_ref()?;
        let deadline = call
            .started_ms
            .saturating_add(self.limits.call_timeout_ms)
            .saturating_add(LOST_CALL_GRACE_MS);
        (now_ms > deadline).then(|| self.fail(now_ms))
    }

    fn fail(&mut self, now_ms: u64) -> Outcome {
        let Some(call) = self.in_flight.take() else {
            return Outcome::Unknown;
        };
        let records = batch_len(&call.batch);
        let batch = call.batch;
        let returned = batch
            .responses
            .into_iter()
            .map(Record::Response)
            .chain(batch.rejections.into_iter().map(Record::Rejected));
        let returned: Vec<Record> = returned.collect();
        for record in returned.into_iter().rev() {
            let size = record.encoded_size();
            self.queued_bytes = self.queued_bytes.saturating_add(size);
            self.queue.push_front((size, record));
        }
        let dropped = self.enforce_bounds();
        self.failures = self.failures.saturating_add(1);
        let shift = self.failures.saturating_sub(1).min(16);
        let backoff = BACKOFF_BASE_MS.saturating_mul(1 << shift).min(BACKOFF_MAX_MS);
        self.next_attempt_ms = now_ms.saturating_add(backoff);
        Outcome::Requeued { records, dropped }
    }

    /// Drops the newest records until the queue is within its bounds.
    fn enforce_bounds(&mut self) -> u64 {
        let mut dropped = 0;
        while self.queue.len() > self.limits.queue_max_records || self.queued_bytes > self.limits.queue_max_bytes {
            let Some((size, _)) = self.queue.pop_back() else {
                break;
            };
            self.queued_bytes = self.queued_bytes.saturating_sub(size);
            dropped += 1;
        }
        self.dropped_total += dropped;
        dropped
    }
}

fn batch_len(batch: &IngestBatch) -> usize {
    batch.responses.len() + batch.rejections.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            queue_max_records: 4,
            queue_max_bytes: 1 << 20,
            batch_max_records: 3,
            batch_min_records: 2,
            batch_max_bytes: 1 << 20,
            call_timeout_ms: 1000,
        }
    }

    fn response(id: &str) -> Record {
        Record::Response(ResponseObserved {
            request_id: id.into(),
            ..Default::default()
        })
    }

    fn rejected(id: &str) -> Record {
        Record::Rejected(RequestRejected {
            request_id: id.into(),
            ..Default::default()
        })
    }

    fn ids(encoded: &[u8]) -> Vec<String> {
        let batch = IngestBatch::decode(encoded).unwrap();
        let mut ids: Vec<String> = batch.responses.into_iter().map(|r| r.request_id).collect();
        ids.extend(batch.rejections.into_iter().map(|r| r.request_id));
        ids
    }

    #[test]
    fn a_full_queue_drops_the_new_record_and_counts_it() {
        let mut s = Shipper::new(limits());
        for i in 0..4 {
            assert_eq!(s.push(response(&i.to_string())), Pushed::Queued);
        }
        assert_eq!(s.push(response("4")), Pushed::Dropped { dropped_total: 1 });
        assert_eq!(s.push(response("5")), Pushed::Dropped { dropped_total: 2 });
        assert_eq!(s.len(), 4);
        let batch = IngestBatch::decode(s.begin("src", 0).unwrap().as_slice()).unwrap();
        assert_eq!(batch.dropped_total, 2);
        assert_eq!(batch.source, "src");
    }

    #[test]
    fn a_call_is_worth_sending_early_for_enough_records_or_bytes() {
        let mut s = Shipper::new(limits());
        assert!(!s.worth_a_call(), "nothing waits");
        s.push(response("a"));
        assert!(!s.worth_a_call(), "one record waits for the tick");
        s.push(response("b"));
        assert!(s.worth_a_call(), "batch_min_records wait");
        let mut s = Shipper::new(Limits {
            batch_max_bytes: 60,
            ..limits()
        });
        s.push(response("a"));
        assert!(!s.worth_a_call());
        s.push(response(&"x".repeat(40)));
        assert!(s.worth_a_call(), "half a batch's bytes wait");
    }

    #[test]
    fn try_push_gives_a_record_back_when_full_and_counts_nothing_dropped() {
        let mut s = Shipper::new(limits());
        for i in 0..4 {
            assert!(s.try_push(response(&i.to_string())).is_ok());
        }
        let back = *s.try_push(response("4")).unwrap_err();
        assert_eq!(back, response("4"));
        assert_eq!((s.len(), s.dropped_total()), (4, 0));
        // Room again once a batch is taken.
        s.begin("src", 0).unwrap();
        assert!(s.try_push(back).is_ok());
    }

    #[test]
    fn the_queue_is_bounded_in_bytes_too() {
        let mut s = Shipper::new(Limits {
            queue_max_bytes: 100,
            ..limits()
        });
        let big = Record::Response(ResponseObserved {
            message: vec![b'x'; 60],
            ..Default::default()
        });
        assert_eq!(s.push(big.clone()), Pushed::Queued);
        assert_eq!(s.push(big), Pushed::Dropped { dropped_total: 1 });
        assert!(s.queued_bytes() <= 100);
    }

    #[test]
    fn one_call_at_a_time_and_batches_are_bounded() {
        let mut s = Shipper::new(limits());
        assert_eq!(s.begin("src", 0), None, "nothing to send");
        for id in ["a", "b", "c", "d"] {
            s.push(response(id));
        }
        let first = s.begin("src", 0).unwrap();
        assert_eq!(ids(&first), ["a", "b", "c"]);
        assert_eq!(s.begin("src", 0), None, "a call is in flight");
        s.dispatched(7);
        assert_eq!(s.finished(8, 0, 0), Outcome::Unknown);
        assert_eq!(s.finished(7, 0, 0), Outcome::Sent { records: 3 });
        assert_eq!(ids(&s.begin("src", 0).unwrap()), ["d"]);
    }

    #[test]
    fn batches_are_bounded_in_bytes_but_always_carry_one_record() {
        let mut s = Shipper::new(Limits {
            batch_max_bytes: 50,
            ..limits()
        });
        let big = |id: &str| {
            Record::Response(ResponseObserved {
                request_id: id.into(),
                message: vec![b'x'; 60],
                ..Default::default()
            })
        };
        s.push(big("a"));
        s.push(big("b"));
        assert_eq!(ids(&s.begin("src", 0).unwrap()), ["a"]);
        s.dispatched(1);
        s.finished(1, 0, 0);
        assert_eq!(ids(&s.begin("src", 0).unwrap()), ["b"]);
    }

    #[test]
    fn a_failed_batch_goes_back_to_the_front_with_backoff() {
        let mut s = Shipper::new(limits());
        for id in ["a", "b", "c"] {
            s.push(response(id));
        }
        s.push(rejected("r"));
        let _ = s.begin("src", 1000).unwrap();
        s.dispatched(1);
        assert_eq!(s.push(response("e")), Pushed::Queued);
        // gRPC UNAVAILABLE: back to the front; the queue stays within its 4 records.
        assert_eq!(s.finished(1, 14, 1000), Outcome::Requeued { records: 3, dropped: 1 });
        assert_eq!(s.len(), 4);
        assert_eq!(s.dropped_total(), 1);
        assert_eq!(s.begin("src", 1100), None, "backing off");
        assert_eq!(ids(&s.begin("src", 1250).unwrap()), ["a", "b", "c"]);
        assert_eq!(s.dispatch_failed(1250), Outcome::Requeued { records: 3, dropped: 0 });
        assert_eq!(s.begin("src", 1600), None, "the backoff doubles");
        let again = s.begin("src", 1750).unwrap();
        s.dispatched(2);
        assert_eq!(ids(&again), ["a", "b", "c"]);
        assert_eq!(s.finished(2, 0, 1800), Outcome::Sent { records: 3 });
        assert_eq!(ids(&s.begin("src", 1800).unwrap()), ["r"], "success resets the backoff");
    }

    #[test]
    fn an_invalid_batch_is_discarded_and_counted() {
        let mut s = Shipper::new(limits());
        s.push(response("a"));
        s.begin("src", 0).unwrap();
        s.dispatched(3);
        assert_eq!(s.finished(3, 3, 0), Outcome::Discarded { records: 1 });
        assert_eq!(s.dropped_total(), 1);
        assert!(!s.in_flight());
    }

    #[test]
    fn a_call_never_answered_is_given_up_after_its_timeout() {
        let mut s = Shipper::new(limits());
        s.push(response("a"));
        s.begin("src", 0).unwrap();
        s.dispatched(4);
        assert_eq!(s.expire(11_000), None);
        assert_eq!(s.expire(11_001), Some(Outcome::Requeued { records: 1, dropped: 0 }));
        assert_eq!(s.finished(4, 0, 11_002), Outcome::Unknown, "its late answer is ignored");
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn shrinking_limits_drop_the_newest() {
        let mut s = Shipper::new(limits());
        for id in ["a", "b", "c"] {
            s.push(response(id));
        }
        assert_eq!(
            s.set_limits(Limits {
                queue_max_records: 1,
                ..limits()
            }),
            2
        );
        assert_eq!(ids(&s.begin("src", 0).unwrap()), ["a"]);
    }
}
