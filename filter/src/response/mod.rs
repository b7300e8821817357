//! The upstream's answer on its way out: masked for the client, recorded masked with
//! nothing revealed.
//!
//! [`ResponseMasker`] is the whole pipeline for one answer, free of host calls: the glue
//! feeds it the response head and the body callbacks, and does what it says ([`Plan`],
//! [`Step`]). It is the Pass/Stream/Buffer state machine; the rest is split by what it does:
//! - [`head`]: the response headers the filter reads, and how a body is handled by media
//!   type ([`BodyKind`]):
//!   - `application/json` and other text: the headers are held and the body buffered (up to
//!     `max_response_bytes`), then masked whole. The client gets it masked with the kinds the
//!     service revealed to it; the record holds it masked with nothing revealed.
//!   - `text/event-stream`: never buffered. Each chunk goes through the SSE pipeline
//!     ([`sse`]), and is replaced by the masked bytes; each event becomes one record.
//!   - Binary types (`image/*`, `audio/*`, `video/*`, `application/octet-stream`): withheld,
//!     as nothing unread may pass.
//! - [`record`]: the records of the answer, one per part.
//!
//! A compressed body (`content-encoding` other than `identity`) cannot be masked, and an
//! over-large one cannot be buffered: the client gets a 502 JSON-RPC error instead, and the
//! record says why (`withheld`). Nothing unmasked is ever passed.
//!
//! The answer to a `tools/list` first loses the tools the caller may not see
//! (`x-gatehouse-tools`, [`ResponseMasker::filter_tools`]): a JSON body before it is
//! masked, an SSE stream event by event before the masker sees it. So the client and the
//! record both get the filtered list.

mod head;
mod record;
mod sse;
#[cfg(test)]
mod tests;

use gatehouse_core::jsonrpc_error::{self, INTERNAL_ERROR};
use gatehouse_core::mask::{JsonMasked, MaskCounts, MaskedEvent, Masker, Reveal, RevealPlan, SseMasker};
use gatehouse_core::tools::{SseToolFilter, ToolVisibility};
use gatehouse_core::upstream;
use gatehouse_proto::audit::v1::ResponseObserved;
use serde_json::Value;

pub use gatehouse_core::events::{EndReason, Withheld};
pub use head::{BodyKind, ResponseHead, masked_headers};
pub use record::{abort_reason, unanswered, withheld_by_envoy};

use record::{Facts, Parts};
use sse::Stages;

/// What the client gets instead of an answer the filter withholds.
pub const WITHHELD_STATUS: u32 = 502;

/// The bounds, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message kept in one record.
    pub record_max: usize,
    /// Largest SSE event masked; a larger one is withheld from the client.
    pub max_event_bytes: usize,
    /// Largest non-SSE body buffered to be masked.
    pub max_response_bytes: usize,
}

/// What to do with the response headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Let them go on; the body (if any) passes unchanged.
    Pass,
    /// Remove `content-length` and let them go on; each body chunk is replaced by its
    /// masked form.
    Stream,
    /// Remove `content-length` and hold them; the body is buffered and masked whole.
    Buffer,
    /// The answer must not reach the client: answer with [`ResponseMasker::local_reply`].
    Withhold,
}

/// What to do with a body callback.
#[derive(Debug, PartialEq, Eq)]
pub enum Step<'a> {
    /// Let the body go on as the host holds it.
    Continue,
    /// Keep buffering (the headers stay held). Also what follows a withheld answer.
    Pause,
    /// Replace the first `len` bytes of the host's body buffer with `bytes`, then go on.
    Replace { len: usize, bytes: &'a [u8] },
    /// The answer must not reach the client: answer with
    /// [`ResponseMasker::local_reply`] if the headers are still held, else reset the stream.
    Withhold { headers_held: bool },
}

#[derive(Debug)]
enum Mode {
    /// Body bytes are counted, not read.
    Pass,
    Stream(Box<SseMasker>),
    Buffer,
    /// The final part has been recorded.
    Done,
}

/// One answer, from its headers to its final record.
#[derive(Debug)]
pub struct ResponseMasker {
    /// Numbers and builds the answer's records.
    parts: Parts,
    head: ResponseHead,
    /// What each message may show (from the head).
    plan: RevealPlan,
    kind: BodyKind,
    limits: Limits,
    /// The JSON-RPC id of the request, for a local reply.
    reply_id: Option<Value>,
    mode: Mode,
    /// Body bytes from the upstream so far.
    body_bytes: u64,
    /// What was masked for the client since [`take_client_counts`](Self::take_client_counts).
    client_counts: MaskCounts,
    /// Bytes for the client, reused from chunk to chunk.
    out: Vec<u8>,
    withheld: Option<Withheld>,
    /// The tools this answer may show, when it lists tools and the service said which.
    tools: Option<ToolVisibility>,
    /// Drops hidden tools from SSE events before they are masked.
    tool_filter: Option<SseToolFilter>,
    /// Tools dropped since [`take_tools_hidden`](Self::take_tools_hidden).
    tools_hidden: u64,
}

impl ResponseMasker {
    /// `reply_id`: the JSON-RPC id of the request (single message), for a local reply.
    pub fn new(request_id: &str, head: ResponseHead, reply_id: Option<Value>, limits: Limits) -> Self {
        Self {
            parts: Parts::new(request_id, limits.record_max),
            kind: BodyKind::of(head.content_type.as_deref()),
            plan: head.reveal_plan(),
            head,
            limits,
            reply_id,
            mode: Mode::Pass,
            body_bytes: 0,
            client_counts: MaskCounts::default(),
            out: Vec::new(),
            withheld: None,
            tools: None,
            tool_filter: None,
            tools_hidden: 0,
        }
    }

    /// The upstream's `Mcp-Session-Id` on this answer: its first record says it.
    pub fn set_session_id(&mut self, id: Option<String>) {
        self.parts.session_id = id;
    }

    /// The request lists tools: its answer shows only those the service lets the caller
    /// see (`x-gatehouse-tools`), none if that could not be read, all if the service said
    /// nothing (no policy). Call before [`on_headers`](Self::on_headers).
    pub fn filter_tools(&mut self) {
        self.tools = match &self.head.tools {
            None => None,
            Some(Ok(visibility)) if visibility.shows_all() => None,
            Some(Ok(visibility)) => Some(visibility.clone()),
            Some(Err(_)) => Some(ToolVisibility::none()),
        };
        // Whatever its type says, an answer that lists tools is read: passing it unread
        // would show every tool.
        if self.tools.is_some() && self.kind == BodyKind::Binary {
            self.kind = BodyKind::Other;
        }
    }

    /// How many tools were kept from the client since the last call (for metrics).
    pub fn take_tools_hidden(&mut self) -> u64 {
        std::mem::take(&mut self.tools_hidden)
    }

    pub fn kind(&self) -> BodyKind {
        self.kind
    }

    pub fn reveal(&self) -> &Reveal {
        &self.head.reveal
    }

    /// Whether the final part has been produced.
    pub fn is_finished(&self) -> bool {
        matches!(self.mode, Mode::Done)
    }

    /// Why the answer was withheld, if it was.
    pub fn withheld(&self) -> Option<Withheld> {
        self.withheld
    }

    /// What was masked for the client since the last call (for metrics).
    pub fn take_client_counts(&mut self) -> MaskCounts {
        std::mem::take(&mut self.client_counts)
    }

    /// The response headers are in.
    pub fn on_headers(&mut self, end_of_stream: bool, now_ms: u64, out: &mut impl FnMut(ResponseObserved)) -> Plan {
        if let Some(kind) = &self.head.credential
            && upstream::is_refusal(kind, self.head.status)
        {
            self.withhold(Withheld::CredentialRefused, now_ms, out);
            return Plan::Withhold;
        }
        if end_of_stream {
            self.close(EndReason::Complete, now_ms, out);
            return Plan::Pass;
        }
        if self.kind == BodyKind::Binary {
            self.withhold(Withheld::Binary, now_ms, out);
            return Plan::Withhold;
        }
        if self.head.content_encoding.is_some() {
            self.withhold(Withheld::Encoded, now_ms, out);
            return Plan::Withhold;
        }
        if self.kind == BodyKind::EventStream {
            self.mode = Mode::Stream(Box::new(SseMasker::new(self.limits.max_event_bytes)));
            self.tool_filter = self
                .tools
                .clone()
                .map(|tools| SseToolFilter::new(tools, self.limits.max_event_bytes));
            return Plan::Stream;
        }
        if self
            .head
            .content_length
            .is_some_and(|len| len > self.limits.max_response_bytes as u64)
        {
            self.withhold(Withheld::TooLarge, now_ms, out);
            return Plan::Withhold;
        }
        self.mode = Mode::Buffer;
        Plan::Buffer
    }

    /// A body callback. `body_size` is what the host holds: everything buffered so far
    /// while buffering, else this chunk. `read(n)` reads the first `n` bytes of it
    /// (`None` if the host would not).
    pub fn on_body(
        &mut self,
        masker: &Masker,
        body_size: usize,
        end_of_stream: bool,
        read: impl FnOnce(usize) -> Option<Vec<u8>>,
        now_ms: u64,
        out: &mut impl FnMut(ResponseObserved),
    ) -> Step<'_> {
        // The host has nothing to hand over for an empty body.
        let read = move |n: usize| if n == 0 { Some(Vec::new()) } else { read(n) };
        match &self.mode {
            Mode::Done if self.withheld.is_some() => Step::Pause,
            Mode::Done => Step::Continue,
            Mode::Pass => {
                self.body_bytes += body_size as u64;
                if end_of_stream {
                    self.close(EndReason::Complete, now_ms, out);
                }
                Step::Continue
            }
            Mode::Buffer => {
                if body_size > self.limits.max_response_bytes {
                    self.withhold(Withheld::TooLarge, now_ms, out);
                    return Step::Withhold { headers_held: true };
                }
                if !end_of_stream {
                    return Step::Pause;
                }
                let body = read(body_size);
                self.finish_buffered(masker, body, body_size, now_ms, out)
            }
            Mode::Stream(_) => {
                let chunk = read(body_size);
                let Some(chunk) = chunk else {
                    // The headers went on: only a reset keeps the chunk from the client.
                    self.on_abort(masker, EndReason::Complete, Some(Withheld::Unreadable), now_ms, out);
                    return Step::Withhold { headers_held: false };
                };
                self.body_bytes += chunk.len() as u64;
                self.out.clear();
                self.stream_chunk(masker, &chunk, end_of_stream, now_ms, out);
                if self.out == chunk {
                    Step::Continue
                } else {
                    Step::Replace {
                        len: body_size,
                        bytes: &self.out,
                    }
                }
            }
        }
    }

    /// The answer ended with trailers. `read(n)` reads up to `n` bytes of the body the
    /// host holds (all of it, when buffering).
    pub fn on_trailers(
        &mut self,
        masker: &Masker,
        read: impl FnOnce(usize) -> Option<Vec<u8>>,
        now_ms: u64,
        out: &mut impl FnMut(ResponseObserved),
    ) -> Step<'_> {
        match &self.mode {
            Mode::Done if self.withheld.is_some() => Step::Pause,
            Mode::Done => Step::Continue,
            Mode::Pass => {
                self.close(EndReason::Complete, now_ms, out);
                Step::Continue
            }
            Mode::Buffer => {
                let body = read(self.limits.max_response_bytes.saturating_add(1));
                let len = body.as_ref().map_or(0, Vec::len);
                if len > self.limits.max_response_bytes {
                    self.withhold(Withheld::TooLarge, now_ms, out);
                    return Step::Withhold { headers_held: true };
                }
                self.finish_buffered(masker, body, len, now_ms, out)
            }
            Mode::Stream(_) => {
                // Trailers cannot carry body bytes: what the stream still held (an
                // unfinished event, or one waiting for the LF of its last CRLF) is recorded
                // but not sent, as a client would not have dispatched an unfinished event.
                self.out.clear();
                self.stream_chunk(masker, &[], true, now_ms, out);
                Step::Continue
            }
        }
    }

    /// The glue could not do what was asked (a header or the body could not be changed):
    /// the answer is withheld for `reason`. Records the final part unless it has been.
    pub fn refuse(&mut self, masker: &Masker, reason: Withheld, now_ms: u64, out: &mut impl FnMut(ResponseObserved)) {
        self.on_abort(masker, EndReason::Complete, Some(reason), now_ms, out);
    }

    /// The local reply that replaces a withheld answer: status and JSON-RPC error body.
    pub fn local_reply(&self) -> (u32, Vec<u8>) {
        if let (Some(Withheld::CredentialRefused), Some(kind)) = (self.withheld, &self.head.credential) {
            let body = upstream::refused_body(self.reply_id.as_ref(), self.parts.request_id(), kind, self.head.status);
            return (WITHHELD_STATUS, body);
        }
        let why = match self.withheld {
            Some(Withheld::Encoded) => format!(
                " (content-encoding {})",
                self.head.content_encoding.as_deref().unwrap_or("unknown")
            ),
            Some(Withheld::TooLarge) => format!(
                " (answer too large to inspect: over {} bytes)",
                self.limits.max_response_bytes
            ),
            _ => String::new(),
        };
        let message = format!("Gatehouse could not inspect the upstream's answer{why}");
        let body = jsonrpc_error::error_body(self.reply_id.as_ref(), INTERNAL_ERROR, &message, None);
        (WITHHELD_STATUS, body)
    }

    /// Masks the whole buffered body; `body_size` is what the host holds.
    fn finish_buffered(
        &mut self,
        masker: &Masker,
        body: Option<Vec<u8>>,
        body_size: usize,
        now_ms: u64,
        out: &mut impl FnMut(ResponseObserved),
    ) -> Step<'_> {
        let Some(body) = body else {
            self.withhold(Withheld::Unreadable, now_ms, out);
            return Step::Withhold { headers_held: true };
        };
        if body.len() > self.limits.max_response_bytes {
            self.withhold(Withheld::TooLarge, now_ms, out);
            return Step::Withhold { headers_held: true };
        }
        self.body_bytes = body.len() as u64;
        let (body, filtered) = match self.hide_tools(&body) {
            Some(filtered) => (filtered, true),
            None => (body, false),
        };
        let reveal = &self.plan;
        let mut client_counts = MaskCounts::default();
        let client = mask_body(masker, self.kind, &body, reveal, &mut client_counts);
        // The record is masked with nothing revealed: a second pass only when the client
        // was shown something.
        let mut record_counts = MaskCounts::default();
        let record_masked = if reveal.is_empty() {
            record_counts = client_counts.clone();
            None
        } else {
            mask_body(masker, self.kind, &body, &RevealPlan::default(), &mut record_counts)
        };
        let record: &[u8] = match (&record_masked, &client, self.plan.is_empty()) {
            (Some(masked), _, _) | (None, Some(masked), true) => masked,
            _ => &body,
        };
        let last = self
            .parts
            .whole(self.facts(now_ms), record, self.kind == BodyKind::Json, &record_counts);
        self.mode = Mode::Done;
        out(last);
        self.client_counts.merge(&client_counts);
        match client {
            Some(client) => self.out = client,
            None if filtered => self.out = body,
            None => return Step::Continue,
        }
        Step::Replace {
            len: body_size,
            bytes: &self.out,
        }
    }

    /// The body without the tools the caller may not see; `None` when nothing was dropped.
    fn hide_tools(&mut self, body: &[u8]) -> Option<Vec<u8>> {
        let (filtered, hidden) = self.tools.as_ref()?.filter_message(body)?;
        self.tools_hidden += hidden as u64;
        Some(filtered)
    }

    /// Feeds one SSE chunk (and ends the stream if `end`), appending the client's bytes
    /// to `self.out` and recording each event.
    fn stream_chunk(
        &mut self,
        masker: &Masker,
        chunk: &[u8],
        end: bool,
        now_ms: u64,
        out: &mut impl FnMut(ResponseObserved),
    ) {
        let Mode::Stream(sse) = &mut self.mode else {
            return;
        };
        let mut events = Vec::new();
        let stages = Stages {
            tools: self.tool_filter.as_mut(),
            masker,
            sse,
        };
        let hidden = stages.feed(
            &self.plan,
            chunk,
            end,
            &mut self.out,
            &mut self.client_counts,
            &mut events,
        );
        self.tools_hidden += hidden as u64;
        for event in events {
            self.event_part(event, now_ms, out);
        }
        if end {
            self.close(EndReason::Complete, now_ms, out);
        }
    }

    /// The answer ended before its end (client gone, reset, Envoy's own limit, or a body
    /// the host would not hand over): the final part says why, an SSE stream's held events
    /// are recorded, and nothing more goes to the client.
    pub fn on_abort(
        &mut self,
        masker: &Masker,
        end_reason: EndReason,
        withheld: Option<Withheld>,
        now_ms: u64,
        out: &mut impl FnMut(ResponseObserved),
    ) {
        if withheld.is_some() {
            self.withheld = withheld;
        }
        if let Mode::Stream(sse) = &mut self.mode {
            let mut events = Vec::new();
            let stages = Stages {
                tools: self.tool_filter.as_mut(),
                masker,
                sse,
            };
            // The client is not sent these bytes; only the events are wanted.
            let mut discard = Vec::new();
            stages.feed(
                &RevealPlan::default(),
                &[],
                true,
                &mut discard,
                &mut MaskCounts::default(),
                &mut events,
            );
            for event in events {
                self.event_part(event, now_ms, out);
            }
        }
        self.close(end_reason, now_ms, out);
    }

    fn withhold(&mut self, reason: Withheld, now_ms: u64, out: &mut impl FnMut(ResponseObserved)) {
        self.withheld = Some(reason);
        self.out = Vec::new();
        self.close(EndReason::Complete, now_ms, out);
    }

    /// Records the final part (without a message) unless it has been.
    fn close(&mut self, end_reason: EndReason, now_ms: u64, out: &mut impl FnMut(ResponseObserved)) {
        if matches!(self.mode, Mode::Done) {
            return;
        }
        self.mode = Mode::Done;
        let last = self
            .parts
            .last(self.facts(now_ms), end_reason, self.kind == BodyKind::Json);
        out(last);
    }

    fn event_part(&mut self, event: MaskedEvent, now_ms: u64, out: &mut impl FnMut(ResponseObserved)) {
        if Parts::records_event(&event) {
            let part = self.parts.event(self.facts(now_ms), event);
            out(part);
        }
    }

    /// What the next part says about the answer.
    fn facts(&self, now_ms: u64) -> Facts {
        Facts {
            http_status: self.head.status,
            content_type: self.head.content_type.clone().unwrap_or_default(),
            body_bytes: self.body_bytes,
            withheld: self.withheld,
            revealed: self.plan.kinds().into_iter().collect(),
            now_ms,
        }
    }
}

/// Masks a whole body for one audience; `None` when it is unchanged.
fn mask_body(
    masker: &Masker,
    kind: BodyKind,
    body: &[u8],
    reveal: &RevealPlan,
    counts: &mut MaskCounts,
) -> Option<Vec<u8>> {
    if kind == BodyKind::Json {
        match masker.mask_json_for(body, reveal, counts) {
            JsonMasked::Unchanged => return None,
            JsonMasked::Changed(masked) => return Some(masked),
            JsonMasked::NotJson => {}
        }
    }
    masker.mask_bytes_as_text(body, reveal.for_other(), counts)
}
