//! Masking a Server-Sent Events stream event by event.
//!
//! [`SseFramer`] cuts the stream into events whatever the chunking; each event's data is
//! masked as JSON when it parses (`mask_json` semantics, each message with what the
//! [`RevealPlan`] reveals to it) and as text otherwise. Every other line reaches the client
//! too (`id:` even comes back as `Last-Event-ID`), so `id`, `event`, `retry`, comments and
//! unknown fields are masked as text. An event with nothing masked for the client goes out
//! as its raw bytes, byte for byte; one that changed is rebuilt with its masked `event` and
//! `id` fields, its `retry` (if clean), `data:` lines and LF line endings, without its
//! comments and unknown fields. A block without data is masked as text, line by line. Since
//! the output of an event depends only on that event, it is the same for every split of
//! the input into chunks.
//!
//! Whatever the client gets is valid UTF-8: an event whose raw bytes are not is rebuilt
//! (or, without data, passed with U+FFFD in place of the bad bytes).
//!
//! An event over the size bound cannot be masked whole (only its first bytes are kept),
//! so it is withheld: the client gets an SSE comment in its place, which `EventSource`
//! ignores.

use std::borrow::Cow;

use crate::sse::{SseEvent, SseFramer, write_event};

use super::{JsonMasked, MaskCounts, Masker, Reveal, RevealPlan};

/// One event as it goes to the audit trail: masked with nothing revealed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MaskedEvent {
    /// The event's `data` (lines joined with `\n`), masked; `None` for blocks without data.
    pub data: Option<String>,
    /// The event's `id`, masked with nothing revealed.
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
    reveal: &'a RevealPlan,
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
        self.push_for(
            masker,
            &RevealPlan::uniform(reveal.clone()),
            chunk,
            out,
            counts,
            on_event,
        );
    }

    /// [`push`](Self::push), each message masked with what `plan` reveals to it.
    pub fn push_for(
        &mut self,
        masker: &Masker,
        plan: &RevealPlan,
        chunk: &[u8],
        out: &mut Vec<u8>,
        counts: &mut MaskCounts,
        on_event: impl FnMut(MaskedEvent),
    ) {
        let mut sink = self.sink(masker, plan, out, counts, on_event);
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
        self.finish_for(masker, &RevealPlan::uniform(reveal.clone()), out, counts, on_event);
    }

    /// [`finish`](Self::finish), each message masked with what `plan` reveals to it.
    pub fn finish_for(
        &mut self,
        masker: &Masker,
        plan: &RevealPlan,
        out: &mut Vec<u8>,
        counts: &mut MaskCounts,
        on_event: impl FnMut(MaskedEvent),
    ) {
        let mut sink = self.sink(masker, plan, out, counts, on_event);
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
        reveal: &'a RevealPlan,
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
    fn mask_data(&self, data: &str, plan: &RevealPlan, counts: &mut MaskCounts) -> Option<String> {
        match self.masker.mask_json_for(data.as_bytes(), plan, counts) {
            JsonMasked::Unchanged => None,
            JsonMasked::Changed(bytes) => {
                Some(String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
            }
            JsonMasked::NotJson => match self.masker.mask_text(data, plan.for_other(), counts) {
                Cow::Owned(masked) => Some(masked),
                Cow::Borrowed(_) => None,
            },
        }
    }

    /// `data` masked with nothing revealed, for the record.
    fn record_fresh(&self, data: &str) -> (String, MaskCounts) {
        let mut counts = MaskCounts::default();
        let masked = self.mask_data(data, &RevealPlan::default(), &mut counts);
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

    /// A field's value masked as text; `None` when nothing in it is masked.
    fn mask_field(&self, value: &str, reveal: &Reveal, counts: &mut MaskCounts) -> Option<String> {
        match self.masker.mask_text(value, reveal, counts) {
            Cow::Owned(masked) => Some(masked),
            Cow::Borrowed(_) => None,
        }
    }

    /// The event's `id` for the record (masked with nothing revealed), counting what was
    /// masked in it.
    fn record_id(&self, event: &SseEvent, counts: &mut MaskCounts) -> Option<String> {
        let id = event.id.as_deref()?;
        Some(
            self.mask_field(id, &Reveal::none(), counts)
                .unwrap_or_else(|| id.to_owned()),
        )
    }

    /// Whether a line other than `data:` has something to mask for `reveal`: `id`, `event`,
    /// `retry`, comments and unknown fields all reach the client.
    fn fields_need_masking(&self, raw: &[u8], reveal: &Reveal) -> bool {
        raw.split(|&b| b == b'\n' || b == b'\r').any(|line| {
            let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
            if line == b"data" || line.starts_with(b"data:") || line.is_empty() {
                return false;
            }
            let mut scratch = MaskCounts::default();
            matches!(
                self.masker
                    .mask_text(&String::from_utf8_lossy(line), reveal, &mut scratch),
                Cow::Owned(_)
            )
        })
    }

    /// The event's fields for a rebuilt event: `id` and `event` masked, `retry` kept only
    /// when nothing in it is masked. Comments and unknown fields are left out.
    fn masked_fields(&self, event: &SseEvent, reveal: &Reveal, counts: &mut MaskCounts) -> SseEvent {
        let mut field = |value: &Option<String>| {
            value
                .as_deref()
                .map(|v| self.mask_field(v, reveal, counts).unwrap_or_else(|| v.to_owned()))
        };
        let id = field(&event.id);
        let name = field(&event.event);
        let retry = event.retry.filter(|r| {
            self.mask_field(&r.to_string(), reveal, &mut MaskCounts::default())
                .is_none()
        });
        SseEvent {
            event: name,
            id,
            retry,
            ..SseEvent::default()
        }
    }

    fn withhold(&mut self) {
        let note = format!(": gatehouse withheld an event over {} bytes\n\n", self.max_event_bytes);
        self.out.extend_from_slice(note.as_bytes());
    }

    fn event(&mut self, event: SseEvent) {
        let mut record = MaskedEvent {
            data: None,
            id: None,
            len: event.len,
            truncated: event.truncated,
            incomplete: false,
            masked: MaskCounts::default(),
        };
        let mut record_field_counts = MaskCounts::default();
        record.id = self.record_id(&event, &mut record_field_counts);
        if event.truncated {
            self.withhold();
            if let Some(data) = event.data.as_deref() {
                let (masked, counts) = self.record_fresh(data);
                record.data = Some(masked);
                record.masked = counts;
            }
            record.masked.merge(&record_field_counts);
            (self.on_event)(record);
            return;
        }
        let fields_reveal = self.reveal.for_other();
        let Some(data) = event.data.as_deref() else {
            // Comments, keep-alives, a lone `id:`: masked as text, line by line. Invalid
            // UTF-8 is replaced here too, so the client always gets UTF-8.
            let mut client_counts = MaskCounts::default();
            match self
                .masker
                .mask_bytes_as_text(&event.raw, fields_reveal, &mut client_counts)
            {
                Some(masked) => self.out.extend_from_slice(&masked),
                None => self.out.extend_from_slice(&event.raw),
            }
            self.counts.merge(&client_counts);
            (self.on_event)(record);
            return;
        };
        let mut client_counts = MaskCounts::default();
        let client = self.mask_data(data, self.reveal, &mut client_counts);
        let fields = self
            .fields_need_masking(&event.raw, fields_reveal)
            .then(|| self.masked_fields(&event, fields_reveal, &mut client_counts));
        // Invalid UTF-8 in the raw bytes was replaced in `data`: rebuild, so that it never
        // reaches the client.
        if client.is_none() && fields.is_none() && std::str::from_utf8(&event.raw).is_ok() {
            self.out.extend_from_slice(&event.raw);
        } else {
            write_event(
                self.out,
                fields.as_ref().unwrap_or(&event),
                client.as_deref().unwrap_or(data),
            );
        }
        self.counts.merge(&client_counts);
        let (data, mut masked) = self.record_data(data, client, MaskCounts::default());
        if !self.reveal.is_empty() {
            masked.merge(&record_field_counts);
        } else {
            // The client's counts (data and fields, nothing revealed) are the record's.
            masked = client_counts;
        }
        record.data = Some(data);
        record.masked = masked;
        (self.on_event)(record);
    }

    /// The stream ended inside an event: its raw bytes are masked as text.
    fn incomplete(&mut self, tail: SseEvent) {
        let mut record = MaskedEvent {
            data: None,
            id: None,
            len: tail.len,
            truncated: tail.truncated,
            incomplete: true,
            masked: MaskCounts::default(),
        };
        let mut record_field_counts = MaskCounts::default();
        record.id = self.record_id(&tail, &mut record_field_counts);
        let data = tail.data.as_deref().map(|data| self.record_fresh(data));
        if tail.truncated {
            self.withhold();
            record.masked = data.as_ref().map(|(_, counts)| counts.clone()).unwrap_or_default();
            record.masked.merge(&record_field_counts);
        } else {
            let reveal = self.reveal.for_other();
            let mut client_counts = MaskCounts::default();
            match self.masker.mask_bytes_as_text(&tail.raw, reveal, &mut client_counts) {
                Some(masked) => self.out.extend_from_slice(&masked),
                None => self.out.extend_from_slice(&tail.raw),
            }
            self.counts.merge(&client_counts);
            record.masked = if reveal.is_empty() {
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
