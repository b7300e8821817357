//! Answers held back until their records fit in the queue: backpressure instead of drops, so
//! no answer the client received is missing from the trail.
//!
//! A part of an answer that does not fit in the queue (or comes after one that did not)
//! waits here with its answer, which the glue pauses: the client gets no byte of it beyond
//! what is recorded (Envoy buffers what the upstream sends meanwhile, up to its buffer
//! limit). As ingest batches free room, [`Stalls::drain`] moves waiting parts into the queue,
//! oldest answer first, and names the answers whose parts are all queued, to resume.

use std::collections::{BTreeMap, VecDeque};

use gatehouse_proto::audit::v1::ResponseObserved;

use crate::queue::{Record, Shipper};

/// An answer whose records did not all fit in the queue.
#[derive(Debug, Default)]
struct Stalled {
    /// Its records not yet queued, in order.
    pending: VecDeque<Record>,
    /// Bytes at the start of Envoy's paused body buffer that are masked output already.
    held: usize,
    /// The stream has ended (logged): queue its records, resume nothing.
    gone: bool,
}

/// The stalled answers of one VM, by HTTP context id (ids grow, so the map's order is the
/// answers' age).
#[derive(Debug, Default)]
pub struct Stalls(BTreeMap<u32, Stalled>);

/// Where [`Stalls::push`] put a part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placed {
    Queued,
    /// It waits with its answer.
    Waiting,
}

/// What [`Stalls::drain`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Drained {
    /// Records moved into the queue.
    pub queued: u64,
    /// Answers whose records are all queued and whose streams go on: resume them.
    pub resume: Vec<u32>,
}

impl Stalls {
    /// No answer is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Queues a part of the answer of context `context_id`, unless earlier parts of it wait
    /// or it does not fit: then it waits, in order.
    pub fn push(&mut self, shipper: &mut Shipper, context_id: u32, part: ResponseObserved) -> Placed {
        let record = Record::Response(part);
        if let Some(waiting) = self.0.get_mut(&context_id).filter(|s| !s.pending.is_empty()) {
            waiting.pending.push_back(record);
            return Placed::Waiting;
        }
        match shipper.try_push(record) {
            Ok(()) => Placed::Queued,
            Err(record) => {
                self.0.entry(context_id).or_default().pending.push_back(*record);
                Placed::Waiting
            }
        }
    }

    /// Waits with its answer a part that could not even be offered to the queue.
    pub fn wait(&mut self, context_id: u32, part: ResponseObserved) {
        self.0
            .entry(context_id)
            .or_default()
            .pending
            .push_back(Record::Response(part));
    }

    /// Bytes of this answer's paused body that are already masked (0 when not paused).
    pub fn held_bytes(&self, context_id: u32) -> usize {
        self.0.get(&context_id).map_or(0, |s| s.held)
    }

    /// If records of this answer wait for room, remembers that its first `held` body bytes
    /// are masked already and says it must pause.
    pub fn must_hold(&mut self, context_id: u32, held: usize) -> bool {
        match self.0.get_mut(&context_id) {
            Some(s) if !s.pending.is_empty() => {
                s.held = held;
                true
            }
            Some(_) => {
                self.0.remove(&context_id);
                false
            }
            None => false,
        }
    }

    /// The answer's stream is over: its waiting records are still queued, in order, but it is
    /// not resumed.
    pub fn forget_stream(&mut self, context_id: u32) {
        match self.0.get_mut(&context_id) {
            Some(s) if !s.pending.is_empty() => s.gone = true,
            Some(_) => {
                self.0.remove(&context_id);
            }
            None => {}
        }
    }

    /// Moves waiting records into the queue while they fit, oldest answer first.
    pub fn drain(&mut self, shipper: &mut Shipper) -> Drained {
        let mut drained = Drained::default();
        let mut done = Vec::new();
        'answers: for (context_id, waiting) in self.0.iter_mut() {
            while let Some(record) = waiting.pending.pop_front() {
                if let Err(record) = shipper.try_push(record) {
                    waiting.pending.push_front(*record);
                    break 'answers;
                }
                drained.queued += 1;
            }
            done.push((*context_id, waiting.gone));
        }
        for (context_id, gone) in done {
            self.0.remove(&context_id);
            if !gone {
                drained.resume.push(context_id);
            }
        }
        drained
    }
}

#[cfg(test)]
mod tests {
    use gatehouse_proto::audit::v1::IngestBatch;
    use prost::Message;

    use super::*;
    use crate::queue::Limits;

    fn shipper(records: usize) -> Shipper {
        Shipper::new(Limits {
            queue_max_records: records,
            queue_max_bytes: 1 << 20,
            batch_max_records: 100,
            batch_min_records: 1,
            batch_max_bytes: 1 << 20,
            call_timeout_ms: 1_000,
        })
    }

    fn part(request_id: &str, part: u32) -> ResponseObserved {
        ResponseObserved {
            request_id: request_id.into(),
            part,
            ..Default::default()
        }
    }

    /// Ships everything queued; returns it as (request id, part), in order.
    fn queued(shipper: &mut Shipper) -> Vec<(String, u32)> {
        let mut out = Vec::new();
        let mut token = 0;
        while let Some(encoded) = shipper.begin("src", 0) {
            token += 1;
            shipper.dispatched(token);
            shipper.finished(token, 0, 0);
            let batch = IngestBatch::decode(encoded.as_slice()).unwrap();
            out.extend(batch.responses.into_iter().map(|p| (p.request_id, p.part)));
        }
        out
    }

    #[test]
    fn parts_that_do_not_fit_wait_in_order_and_hold_their_answer() {
        let mut q = shipper(2);
        let mut stalls = Stalls::default();
        assert_eq!(stalls.push(&mut q, 1, part("a", 0)), Placed::Queued);
        assert_eq!(stalls.push(&mut q, 1, part("a", 1)), Placed::Queued);
        assert!(!stalls.must_hold(1, 10), "all of its parts are queued");
        assert_eq!(stalls.push(&mut q, 1, part("a", 2)), Placed::Waiting);
        assert!(stalls.must_hold(1, 10));
        assert_eq!((stalls.held_bytes(1), stalls.held_bytes(2)), (10, 0));
        assert_eq!(stalls.push(&mut q, 2, part("b", 0)), Placed::Waiting);
        assert_eq!(queued(&mut q), [("a".to_owned(), 0), ("a".to_owned(), 1)]);
        // Room in the queue does not let a later part jump ahead of its answer's waiting ones.
        assert_eq!(stalls.push(&mut q, 1, part("a", 3)), Placed::Waiting);
        assert_eq!(stalls.push(&mut q, 2, part("b", 1)), Placed::Waiting);
        // Oldest answer first; an answer is resumed once all its parts are queued.
        assert_eq!(
            stalls.drain(&mut q),
            Drained {
                queued: 2,
                resume: vec![1]
            }
        );
        assert_eq!(queued(&mut q), [("a".to_owned(), 2), ("a".to_owned(), 3)]);
        assert!(stalls.must_hold(2, 5), "b still waits");
        assert_eq!(
            stalls.drain(&mut q),
            Drained {
                queued: 2,
                resume: vec![2]
            }
        );
        assert!(!stalls.must_hold(2, 5));
        assert_eq!(stalls.drain(&mut q), Drained::default());
        assert_eq!(queued(&mut q), [("b".to_owned(), 0), ("b".to_owned(), 1)]);
    }

    #[test]
    fn an_ended_stream_still_gets_its_records_queued_but_is_not_resumed() {
        let mut q = shipper(1);
        let mut stalls = Stalls::default();
        stalls.push(&mut q, 7, part("a", 0));
        stalls.push(&mut q, 7, part("a", 1));
        stalls.wait(7, part("a", 2));
        stalls.forget_stream(7);
        // One record of room per round: queued in order, never resumed.
        for next in [1, 2] {
            assert_eq!(queued(&mut q).last(), Some(&("a".to_owned(), next - 1)));
            let drained = stalls.drain(&mut q);
            assert_eq!((drained.queued, drained.resume), (1, vec![]));
        }
        assert_eq!(stalls.held_bytes(7), 0, "nothing of it is left");
        // An answer with nothing waiting is simply forgotten.
        stalls.forget_stream(8);
        assert_eq!(stalls.drain(&mut q), Drained::default());
    }
}
