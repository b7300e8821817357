//! Masking a Server-Sent Events stream event by event.
//!
//! [`SseFramer`] cuts the stream into events whatever the chunking; each event's data is
//! masked as JSON when it parses (`mask_json` semantics) and as text otherwise. An event
//! with nothing masked for the client goes out as its raw bytes, byte for byte; one that
//! changed is rebuilt with its `event`, `id` and `retry` fields, `data:` lines and LF line
//! endings. Since the output of an event depends only on that event, it is the same for
//! every split of the input into chunks.
//!
//! Whatever the client gets is valid UTF-8: an event whose raw bytes are not is rebuilt
//! (or, without data, passed with U+FFFD in place of the bad bytes).
//!
//! An event over the size bound cannot be masked whole (only its first bytes are kept),
//! so it is withheld: the client gets an SSE comment in its place, which `EventSource`
//! ignores.

use crate::sse::{SseEvent, SseFramer, write_event};

use super::{JsonMasked, MaskCounts, Masker, Reveal};

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
    framer: SseFramer,
}

/// What one call of `push` or `finish` writes to and reports.
struct Sink<'a, F: FnMut(MaskedEvent)> {
    masker: &'a Masker,
    reveal: &'a Reveal,
    max_event_bytes: usize,
    out: &'a mut Vec<u8>,
    counts: &'a mut MaskCounts,
    on_event: F,
}

impl SseMasker {
    /// `max_event_bytes` bounds one event; a larger one is withheld (replaced by an SSE
    /// comment) because it cannot be masked whole.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            framer: SseFramer::new(max_event_bytes),
        }
    }

    /// Bytes held for an unfinished event.
    pub fn buffered_bytes(&self) -> usize {
        self.framer.buffered_bytes()
    }

    /// Feeds one chunk: appends the bytes for the client (masked with `reveal`) to `out`,
    /// adds what was masked for the client to `counts`, and hands each completed event to
    /// `on_event`.
    pub fn push(
        &mut self,
        masker: &Masker,
        reveal: &Reveal,
        chunk: &[u8],
        out: &mut Vec<u8>,
        counts: &mut MaskCounts,
        on_event: impl FnMut(MaskedEvent),
    ) {
        let mut sink = self.sink(masker, reveal, out, counts, on_event);
        self.framer.push_with(chunk, |event| sink.event(event));
    }

    /// The stream ended: flushes what is held (an incomplete last event is masked as text).
    pub fn finish(
        &mut self,
        masker: &Masker,
        reveal: &Reveal,
        out: &mut Vec<u8>,
        counts: &mut MaskCounts,
        on_event: impl FnMut(MaskedEvent),
    ) {
        let mut sink = self.sink(masker, reveal, out, counts, on_event);
        let end = self.framer.finish();
        for event in end.events {
            sink.event(event);
        }
        if let Some(tail) = end.incomplete {
            sink.incomplete(tail);
        }
    }

    fn sink<'a, F: FnMut(MaskedEvent)>(
        &self,
        masker: &'a Masker,
        reveal: &'a Reveal,
        out: &'a mut Vec<u8>,
        counts: &'a mut MaskCounts,
        on_event: F,
    ) -> Sink<'a, F> {
        Sink {
            masker,
            reveal,
            max_event_bytes: self.framer.max_event_bytes(),
            out,
            counts,
            on_event,
        }
    }
}

impl<F: FnMut(MaskedEvent)> Sink<'_, F> {
    /// Masks one event's data as JSON if it parses, else as text. `None`: nothing masked.
    fn mask_data(&self, data: &str, reveal: &Reveal, counts: &mut MaskCounts) -> Option<String> {
        match self.masker.mask_json(data.as_bytes(), reveal, counts) {
            JsonMasked::Unchanged => None,
            JsonMasked::Changed(bytes) => {
                Some(String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
            }
            JsonMasked::NotJson => match self.masker.mask_text(data, reveal, counts) {
                std::borrow::Cow::Owned(masked) => Some(masked),
                std::borrow::Cow::Borrowed(_) => None,
            },
        }
    }

    /// `data` masked with nothing revealed, for the record.
    fn record_fresh(&self, data: &str) -> (String, MaskCounts) {
        let mut counts = MaskCounts::default();
        let masked = self.mask_data(data, &Reveal::none(), &mut counts);
        (masked.unwrap_or_else(|| data.to_owned()), counts)
    }

    /// The record's copy of `data`: the client's when the client saw nothing in clear
    /// either, else masked again.
    fn record_data(&self, data: &str, client: Option<String>, client_counts: MaskCounts) -> (String, MaskCounts) {
        if self.reveal.is_empty() {
            (client.unwrap_or_else(|| data.to_owned()), client_counts)
        } else {
            self.record_fresh(data)
        }
    }

    fn withhold(&mut self) {
        let note = format!(": gatehouse withheld an event over {} bytes\n\n", self.max_event_bytes);
        self.out.extend_from_slice(note.as_bytes());
    }

    fn event(&mut self, event: SseEvent) {
        let mut record = MaskedEvent {
            data: None,
            id: event.id.clone(),
            len: event.len,
            truncated: event.truncated,
            incomplete: false,
            masked: MaskCounts::default(),
        };
        if event.truncated {
            self.withhold();
            if let Some(data) = event.data.as_deref() {
                let (masked, counts) = self.record_fresh(data);
                record.data = Some(masked);
                record.masked = counts;
            }
            (self.on_event)(record);
            return;
        }
        let Some(data) = event.data.as_deref() else {
            // Comments, keep-alives, a lone `id:`: nothing to mask. Invalid UTF-8 is
            // replaced here too, so the client always gets UTF-8.
            self.out
                .extend_from_slice(String::from_utf8_lossy(&event.raw).as_bytes());
            (self.on_event)(record);
            return;
        };
        let mut client_counts = MaskCounts::default();
        let client = self.mask_data(data, self.reveal, &mut client_counts);
        // Invalid UTF-8 in the raw bytes was replaced in `data`: rebuild, so that it never
        // reaches the client.
        if client.is_none() && std::str::from_utf8(&event.raw).is_ok() {
            self.out.extend_from_slice(&event.raw);
        } else {
            write_event(self.out, &event, client.as_deref().unwrap_or(data));
        }
        self.counts.merge(&client_counts);
        let (data, masked) = self.record_data(data, client, client_counts);
        record.data = Some(data);
        record.masked = masked;
        (self.on_event)(record);
    }

    /// The stream ended inside an event: its raw bytes are masked as text.
    fn incomplete(&mut self, tail: SseEvent) {
        let mut record = MaskedEvent {
            data: None,
            id: tail.id.clone(),
            len: tail.len,
            truncated: tail.truncated,
            incomplete: true,
            masked: MaskCounts::default(),
        };
        let data = tail.data.as_deref().map(|data| self.record_fresh(data));
        if tail.truncated {
            self.withhold();
            record.masked = data.as_ref().map(|(_, counts)| counts.clone()).unwrap_or_default();
        } else {
            let mut client_counts = MaskCounts::default();
            match self
                .masker
                .mask_bytes_as_text(&tail.raw, self.reveal, &mut client_counts)
            {
                Some(masked) => self.out.extend_from_slice(&masked),
                None => self.out.extend_from_slice(&tail.raw),
            }
            self.counts.merge(&client_counts);
            record.masked = if self.reveal.is_empty() {
                client_counts
            } else {
                let mut counts = MaskCounts::default();
                self.masker.mask_bytes_as_text(&tail.raw, &Reveal::none(), &mut counts);
                counts
            };
        }
        record.data = data.map(|(data, _)| data);
        (self.on_event)(record);
    }
}
