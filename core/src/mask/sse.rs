//! Masking a Server-Sent Events stream event by event.
//!
//! STUB: the signatures are the contract.

use crate::sse::SseFramer;

use super::{MaskCounts, Masker, Reveal};

/// One event as it goes to the audit trail: masked with nothing revealed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MaskedEvent {
    /// The event's `data` (lines joined with `\n`), masked; `None` for blocks without data.
    pub data: Option<String>,
    pub id: Option<String>,
    /// Bytes of the event in the upstream stream.
    pub len: u64,
    /// The event was over the size bound: it was withheld from the client, and `data` is
    /// only what was parsed of it, masked.
    pub truncated: bool,
    /// The stream ended before this event's blank line.
    pub incomplete: bool,
    /// What was masked in this event (for the record).
    pub masked: MaskCounts,
}

/// Feeds an upstream SSE stream through the masker. Output bytes go to the client; each
/// event is also handed out, masked with nothing revealed, for the record.
#[derive(Debug, Clone)]
pub struct SseMasker {
    _framer: SseFramer,
}

impl SseMasker {
    /// `max_event_bytes` bounds one event; a larger one is withheld (replaced by an SSE
    /// comment) because it cannot be masked whole.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            _framer: SseFramer::new(max_event_bytes),
        }
    }

    /// Bytes held for an unfinished event.
    pub fn buffered_bytes(&self) -> usize {
        0
    }

    /// Feeds one chunk: appends the bytes for the client (masked with `reveal`) to `out`,
    /// adds what was masked for the client to `counts`, and hands each completed event to
    /// `on_event`.
    pub fn push(
        &mut self,
        _masker: &Masker,
        _reveal: &Reveal,
        chunk: &[u8],
        out: &mut Vec<u8>,
        _counts: &mut MaskCounts,
        _on_event: impl FnMut(MaskedEvent),
    ) {
        out.extend_from_slice(chunk);
    }

    /// The stream ended: flushes what is held (an incomplete last event is masked as text).
    pub fn finish(
        &mut self,
        _masker: &Masker,
        _reveal: &Reveal,
        _out: &mut Vec<u8>,
        _counts: &mut MaskCounts,
        _on_event: impl FnMut(MaskedEvent),
    ) {
    }
}
