//! The upstream's answer on its way out: masked for the client, recorded masked with
//! nothing revealed.
//!
//! [`ResponseMasker`] is the whole pipeline for one answer, free of host calls: the glue
//! feeds it the response head and the body callbacks, and does what it says ([`Plan`],
//! [`Step`]). By content type:
//! - `application/json` and other text: the headers are held and the body buffered (up to
//!   `max_response_bytes`), then masked whole. The client gets it masked with the kinds
//!   the service revealed to it; the record holds it masked with nothing revealed.
//! - `text/event-stream`: never buffered. Each chunk goes through [`SseMasker`], which
//!   carries at most one unfinished event, and is replaced by the masked bytes; each event
//!   becomes one record.
//! - Clearly binary types (`image/*`, `audio/*`, `video/*`, `application/octet-stream`)
//!   pass unchanged.
//! - A compressed body (`content-encoding` other than `identity`) cannot be masked, and
//!   an over-large one cannot be buffered: the client gets a 502 JSON-RPC error instead,
//!   and the record says why (`withheld`). Nothing unmasked is ever passed.
//!
//! The answer to a `tools/list` first loses the tools the caller may not see
//! (`x-gatehouse-tools`, [`ResponseMasker::filter_tools`]): a JSON body before it is
//! masked, an SSE stream event by event before the masker sees it. So the client and the
//! record both get the filtered list.

use gatehouse_core::jsonrpc_error::{self, INTERNAL_ERROR};
use gatehouse_core::mask::{
    JsonMasked, MaskCounts, MaskedEvent, Masker, REVEAL_IDS_HEADER, Reveal, RevealPlan, SseMasker,
};
use gatehouse_core::mcp;
use gatehouse_core::tools::{SseToolFilter, TOOLS_HEADER, ToolEvent, ToolVisibility, ToolsHeaderError};
use gatehouse_core::upstream::{self, CREDENTIAL_HEADER};
use gatehouse_proto::audit::v1::ResponseObserved;
use serde_json::Value;

use crate::request::media_type;

pub use gatehouse_core::wire::REVEAL_HEADER;
/// What the client gets instead of an answer the filter withholds.
pub const WITHHELD_STATUS: u32 = 502;

/// `end_reason` of a response that ended normally.
pub const END_COMPLETE: &str = "complete";
/// `end_reason` when the client went away (or the stream was reset) before the end.
pub const END_CLIENT_GONE: &str = "client_gone";
/// `end_reason` when the upstream reset the stream before the end.
pub const END_UPSTREAM_RESET: &str = "upstream_reset";

/// Values of a record's `withheld`: why the client did not get (part of) the answer.
pub mod withheld {
    /// A compressed body, which cannot be masked.
    pub const ENCODED: &str = "encoded";
    /// A body over `max_response_bytes` (or Envoy's own buffer limit).
    pub const TOO_LARGE: &str = "too_large";
    /// One SSE event over the event bound: replaced by a comment, the stream goes on.
    pub const EVENT_TOO_LARGE: &str = "event_too_large";
    /// The host would not give or take the body, so it could not be masked.
    pub const UNREADABLE: &str = "unreadable";
    /// A binary media type (`image/*`, `audio/*`, `video/*`, `application/octet-stream`):
    /// nothing an MCP server answers with, and nothing the masker can read.
    pub const BINARY: &str = "binary";
    /// The upstream answered 401 or 403 to the gateway's own credential: the client gets a
    /// JSON-RPC error instead (the upstream's answer may quote what was signed).
    pub const CREDENTIAL_REFUSED: &str = "credential_refused";
}

/// Headers the masker leaves alone: framing and protocol values the client needs as sent
/// (and the session id, which the filter tags itself).
const STRUCTURAL_HEADERS: &[&str] = &[
    ":status",
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "date",
    "mcp-session-id",
    "mcp-protocol-version",
    "x-gatehouse-request-id",
];

/// The answer's headers whose values hold something to mask, with the masked value (nothing
/// revealed: a header is not tied to one message). An upstream could otherwise carry a
/// secret past the masker in `x-debug: AKIA…`.
pub fn masked_headers(masker: &Masker, headers: &[(String, Vec<u8>)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (name, value) in headers {
        if STRUCTURAL_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let text = String::from_utf8_lossy(value);
        let mut counts = MaskCounts::default();
        let masked = masker.mask_text(&text, &Reveal::none(), &mut counts);
        // A value that was not UTF-8 goes on only in its replaced (and masked) form.
        if !counts.is_empty() || matches!(text, std::borrow::Cow::Owned(_)) {
            out.push((name.clone(), masked.into_owned()));
        }
    }
    out
}

/// How the body of an answer is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// Masked whole as JSON-RPC (as text if it is not JSON).
    Json,
    /// Masked event by event.
    EventStream,
    /// Withheld: masking bytes as text would corrupt it, and passing it unread would let a
    /// hostile upstream send anything (no MCP answer is binary: resources travel as base64
    /// inside JSON).
    Binary,
    /// Masked whole as text.
    Other,
}

impl BodyKind {
    pub fn of(content_type: Option<&str>) -> Self {
        let media = content_type.map(media_type).unwrap_or_default().to_ascii_lowercase();
        let json = media.split_once('/').is_some_and(|(top, sub)| {
            matches!(top, "application" | "text")
                && (matches!(sub, "json" | "json-seq" | "x-ndjson" | "ndjson") || sub.ends_with("+json"))
        });
        match media.as_str() {
            // Every JSON media type (`application/problem+json`, `application/vnd.api+json`,
            // JSON text sequences): masked as text, JSON escapes would hide a secret.
            _ if json => Self::Json,
            "text/event-stream" => Self::EventStream,
            "application/octet-stream" => Self::Binary,
            m if m.starts_with("image/") || m.starts_with("audio/") || m.starts_with("video/") => Self::Binary,
            _ => Self::Other,
        }
    }
}

/// The response headers the filter reads, taken once from the header map.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResponseHead {
    pub status: u32,
    pub content_type: Option<String>,
    /// The codings of `content-encoding` other than `identity`, comma-separated; `None`
    /// when the body is not encoded.
    pub content_encoding: Option<String>,
    /// `None` if absent or not a number.
    pub content_length: Option<u64>,
    /// From `x-gatehouse-reveal`; nothing when the header is absent. Several values are
    /// intersected, so a second one (an upstream's) can only narrow the service's.
    pub reveal: Reveal,
    /// `x-gatehouse-reveal` is present and must be removed.
    pub has_reveal_header: bool,
    /// From `x-gatehouse-reveal-ids` (present: it must be removed): the reveal of each
    /// message of a batch, by request id; `*` (`Some(None)`) means `reveal` for every
    /// message. A second value reveals nothing to any message.
    pub reveal_ids: Option<Option<std::collections::BTreeMap<String, Reveal>>>,
    /// From `x-gatehouse-tools` (present: it must be removed); `None` when absent. A value
    /// that cannot be read, or a second value, is an error: every tool is then hidden.
    pub tools: Option<Result<ToolVisibility, ToolsHeaderError>>,
    /// From `x-gatehouse-credential` (present: it must be removed): the kind of credential
    /// the gateway presented upstream for this call.
    pub credential: Option<String>,
}

impl ResponseHead {
    /// Reads the head from header pairs (names in lower case, as Envoy gives them).
    pub fn from_headers<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Self {
        let mut head = Self::default();
        let mut codings: Vec<String> = Vec::new();
        for (name, value) in headers {
            let value = String::from_utf8_lossy(value);
            let value = value.trim();
            match name.to_ascii_lowercase().as_str() {
                ":status" => head.status = value.parse().unwrap_or(0),
                "content-type" => head.content_type = Some(value.to_owned()),
                "content-length" => head.content_length = value.parse().ok(),
                "content-encoding" => codings.extend(
                    value
                        .split(',')
                        .map(|c| c.trim().to_ascii_lowercase())
                        .filter(|c| !c.is_empty() && c != "identity"),
                ),
                REVEAL_HEADER => {
                    let reveal = Reveal::from_header(value);
                    if head.has_reveal_header {
                        head.reveal.0.retain(|kind| reveal.contains(kind));
                    } else {
                        head.reveal = reveal;
                    }
                    head.has_reveal_header = true;
                }
                REVEAL_IDS_HEADER => {
                    head.reveal_ids = Some(match (&head.reveal_ids, value) {
                        (None, "*") => None,
                        (None, value) => Some(RevealPlan::by_id_from_header(value)),
                        (Some(_), _) => Some(Default::default()),
                    });
                }
                CREDENTIAL_HEADER => head.credential = Some(value.to_owned()),
                TOOLS_HEADER => {
                    head.tools = Some(match head.tools {
                        None => ToolVisibility::from_header(value),
                        Some(_) => Err(ToolsHeaderError::Repeated),
                    });
                }
                _ => {}
            }
        }
        head.content_encoding = (!codings.is_empty()).then(|| codings.join(", "));
        head
    }
}

impl ResponseHead {
    /// What each message of the answer may show: per request id for a batch, else
    /// `reveal` for all.
    pub fn reveal_plan(&self) -> RevealPlan {
        RevealPlan {
            all: self.reveal.clone(),
            by_id: self.reveal_ids.clone().flatten(),
        }
    }
}

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
    request_id: String,
    head: ResponseHead,
    /// What each message may show (from the head).
    plan: RevealPlan,
    kind: BodyKind,
    limits: Limits,
    /// The JSON-RPC id of the request, for a local reply.
    reply_id: Option<Value>,
    mode: Mode,
    next_part: u32,
    /// Body bytes from the upstream so far.
    body_bytes: u64,
    /// What was masked for the client since [`take_client_counts`](Self::take_client_counts).
    client_counts: MaskCounts,
    /// Bytes for the client, reused from chunk to chunk.
    out: Vec<u8>,
    withheld: Option<&'static str>,
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
            request_id: request_id.to_owned(),
            kind: BodyKind::of(head.content_type.as_deref()),
            plan: head.reveal_plan(),
            head,
            limits,
            reply_id,
            mode: Mode::Pass,
            next_part: 0,
            body_bytes: 0,
            client_counts: MaskCounts::default(),
            out: Vec::new(),
            withheld: None,
            tools: None,
            tool_filter: None,
            tools_hidden: 0,
        }
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
    pub fn withheld(&self) -> Option<&'static str> {
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
            self.withhold(withheld::CREDENTIAL_REFUSED, now_ms, out);
            return Plan::Withhold;
        }
        if end_of_stream {
            self.close(END_COMPLETE, now_ms, out);
            return Plan::Pass;
        }
        if self.kind == BodyKind::Binary {
            self.withhold(withheld::BINARY, now_ms, out);
            return Plan::Withhold;
        }
        if self.head.content_encoding.is_some() {
            self.withhold(withheld::ENCODED, now_ms, out);
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
            self.withhold(withheld::TOO_LARGE, now_ms, out);
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
                    self.close(END_COMPLETE, now_ms, out);
                }
                Step::Continue
            }
            Mode::Buffer => {
                if body_size > self.limits.max_response_bytes {
                    self.withhold(withheld::TOO_LARGE, now_ms, out);
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
                    self.on_abort(masker, END_COMPLETE, Some(withheld::UNREADABLE), now_ms, out);
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
                self.close(END_COMPLETE, now_ms, out);
                Step::Continue
            }
            Mode::Buffer => {
                let body = read(self.limits.max_response_bytes.saturating_add(1));
                let len = body.as_ref().map_or(0, Vec::len);
                if len > self.limits.max_response_bytes {
                    self.withhold(withheld::TOO_LARGE, now_ms, out);
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
    pub fn refuse(
        &mut self,
        masker: &Masker,
        reason: &'static str,
        now_ms: u64,
        out: &mut impl FnMut(ResponseObserved),
    ) {
        self.on_abort(masker, END_COMPLETE, Some(reason), now_ms, out);
    }

    /// The local reply that replaces a withheld answer: status and JSON-RPC error body.
    pub fn local_reply(&self) -> (u32, Vec<u8>) {
        if let (Some(withheld::CREDENTIAL_REFUSED), Some(kind)) = (self.withheld, &self.head.credential) {
            let body = upstream::refused_body(self.reply_id.as_ref(), &self.request_id, kind, self.head.status);
            return (WITHHELD_STATUS, body);
        }
        let why = match self.withheld {
            Some(withheld::ENCODED) => format!(
                " (content-encoding {})",
                self.head.content_encoding.as_deref().unwrap_or("unknown")
            ),
            Some(withheld::TOO_LARGE) => format!(
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
            self.withhold(withheld::UNREADABLE, now_ms, out);
            return Step::Withhold { headers_held: true };
        };
        if body.len() > self.limits.max_response_bytes {
            self.withhold(withheld::TOO_LARGE, now_ms, out);
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
        let mut last = self.part(now_ms);
        if self.kind == BodyKind::Json {
            last.truncated = record.len() > self.limits.record_max;
            if !last.truncated {
                summarize_into(record, &mut last);
            }
            last.message = record.get(..self.limits.record_max).unwrap_or(record).to_vec();
        }
        last.masked = masked_map(&record_counts);
        last.r#final = true;
        last.end_reason = END_COMPLETE.to_owned();
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
            self.close(END_COMPLETE, now_ms, out);
        }
    }

    /// The answer ended before its end (client gone, reset, Envoy's own limit, or a body
    /// the host would not hand over): the final part says why, an SSE stream's held events
    /// are recorded, and nothing more goes to the client.
    pub fn on_abort(
        &mut self,
        masker: &Masker,
        end_reason: &str,
        withheld: Option<&'static str>,
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

    fn withhold(&mut self, reason: &'static str, now_ms: u64, out: &mut impl FnMut(ResponseObserved)) {
        self.withheld = Some(reason);
        self.out = Vec::new();
        self.close(END_COMPLETE, now_ms, out);
    }

    /// Records the final part (without a message) unless it has been.
    fn close(&mut self, end_reason: &str, now_ms: u64, out: &mut impl FnMut(ResponseObserved)) {
        if matches!(self.mode, Mode::Done) {
            return;
        }
        self.mode = Mode::Done;
        let mut last = self.part(now_ms);
        last.r#final = true;
        last.end_reason = end_reason.to_owned();
        // A message that never arrived whole is not recorded, so it is marked cut.
        last.truncated = end_reason != END_COMPLETE && self.kind == BodyKind::Json;
        out(last);
    }

    fn event_part(&mut self, event: MaskedEvent, now_ms: u64, out: &mut impl FnMut(ResponseObserved)) {
        // Blocks without data (comments, keep-alives) are not recorded; a withheld event
        // is, even when none of its data could be parsed within the bound.
        if event.data.is_none() && !event.truncated {
            return;
        }
        let mut part = self.part(now_ms);
        let data = event.data.unwrap_or_default().into_bytes();
        part.truncated = event.incomplete || event.truncated || data.len() > self.limits.record_max;
        if !part.truncated {
            summarize_into(&data, &mut part);
        }
        if event.truncated {
            part.withheld = withheld::EVENT_TOO_LARGE.to_owned();
        }
        part.message = match data.get(..self.limits.record_max) {
            Some(cut) => cut.to_vec(),
            None => data,
        };
        part.sse_event_id = event.id.unwrap_or_default();
        part.masked = masked_map(&event.masked);
        out(part);
    }

    fn part(&mut self, now_ms: u64) -> ResponseObserved {
        let part = self.next_part;
        self.next_part = self.next_part.saturating_add(1);
        ResponseObserved {
            request_id: self.request_id.clone(),
            part,
            http_status: self.head.status,
            content_type: self.head.content_type.clone().unwrap_or_default(),
            body_bytes: self.body_bytes,
            observed_at_unix_ms: now_ms,
            withheld: self.withheld.unwrap_or_default().to_owned(),
            revealed: self.plan.kinds().into_iter().collect(),
            ..Default::default()
        }
    }
}

/// The SSE pipeline of one answer: the tool filter (for a `tools/list`), then the masker.
struct Stages<'a> {
    tools: Option<&'a mut SseToolFilter>,
    masker: &'a Masker,
    sse: &'a mut SseMasker,
}

impl Stages<'_> {
    /// Feeds one chunk (`end`: and flushes both stages): appends the client's bytes to
    /// `out`, what was masked for the client to `counts`, and each event to `events`.
    /// Returns how many tools were dropped.
    fn feed(
        self,
        reveal: &RevealPlan,
        chunk: &[u8],
        end: bool,
        out: &mut Vec<u8>,
        counts: &mut MaskCounts,
        events: &mut Vec<MaskedEvent>,
    ) -> usize {
        let Self { tools, masker, sse } = self;
        let mut hidden = 0;
        match tools {
            None => sse.push_for(masker, reveal, chunk, out, counts, |e| events.push(e)),
            Some(tools) => {
                let mut mask = |event: ToolEvent| match event {
                    ToolEvent::Pass(bytes) => sse.push_for(masker, reveal, &bytes, out, counts, |e| events.push(e)),
                    ToolEvent::Withheld { note, id, len } => {
                        // Through the masker, so that an event it still holds goes first.
                        sse.push_for(masker, reveal, &note, out, counts, |e| events.push(e));
                        // The record's event id is masked like every other value.
                        let id = id.map(|id| {
                            masker
                                .mask_text(&id, &Reveal::none(), &mut MaskCounts::default())
                                .into_owned()
                        });
                        events.push(MaskedEvent {
                            id,
                            len,
                            truncated: true,
                            ..MaskedEvent::default()
                        });
                    }
                };
                hidden += tools.push(chunk, &mut mask);
                if end {
                    hidden += tools.finish(&mut mask);
                }
            }
        }
        if end {
            sse.finish_for(masker, reveal, out, counts, |e| events.push(e));
        }
        hidden
    }
}

fn masked_map(counts: &MaskCounts) -> std::collections::HashMap<String, u64> {
    counts.0.iter().map(|(kind, n)| (kind.clone(), *n)).collect()
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

/// The final part of a request whose answer never started (no response headers).
pub fn unanswered(request_id: &str, end_reason: &str, now_ms: u64) -> ResponseObserved {
    ResponseObserved {
        request_id: request_id.to_owned(),
        r#final: true,
        end_reason: end_reason.to_owned(),
        observed_at_unix_ms: now_ms,
        ..Default::default()
    }
}

/// Why a stream that did not end normally ended, from Envoy's response code details.
pub fn abort_reason(code_details: Option<&str>) -> &'static str {
    match code_details {
        Some(d) if d.contains("upstream") => END_UPSTREAM_RESET,
        _ => END_CLIENT_GONE,
    }
}

/// Whether Envoy itself withheld the answer: over its buffer limit it answers 500
/// (`response_payload_too_large`) while the filter holds the body.
pub fn withheld_by_envoy(code_details: Option<&str>) -> Option<&'static str> {
    code_details
        .filter(|d| d.contains("response_payload_too_large"))
        .map(|_| withheld::TOO_LARGE)
}

/// Fills the JSON-RPC id and error fields from a complete message (or batch).
fn summarize_into(message: &[u8], part: &mut ResponseObserved) {
    let Ok(envelope) = mcp::parse_body(message) else {
        return;
    };
    if let Some(error) = envelope.messages.iter().find(|m| m.error_code.is_some()) {
        part.is_error = true;
        part.error_code = error.error_code.unwrap_or_default();
    }
    if !envelope.batch {
        part.jsonrpc_id = envelope.first().and_then(|m| m.id_text()).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: Limits = Limits {
        record_max: 1 << 16,
        max_event_bytes: 1 << 16,
        max_response_bytes: 1 << 20,
    };

    fn head(content_type: &str, extra: &[(&str, &str)]) -> ResponseHead {
        head_with_status("200", content_type, extra)
    }

    fn head_with_status(status: &str, content_type: &str, extra: &[(&str, &str)]) -> ResponseHead {
        let mut pairs = vec![(":status", status), ("content-type", content_type)];
        pairs.extend_from_slice(extra);
        ResponseHead::from_headers(pairs.iter().map(|(n, v)| (*n, v.as_bytes())))
    }

    /// What the client got and what the trail got.
    #[derive(Debug, Default, PartialEq)]
    struct Run {
        plan: Option<Plan>,
        client: Vec<u8>,
        records: Vec<ResponseObserved>,
        /// The local reply, when the answer was withheld while its headers were held.
        reply: Option<(u32, Value)>,
        reset: bool,
        client_counts: MaskCounts,
        tools_hidden: u64,
    }

    /// Plays the host: `chunks` arrive one per body callback, the last with end of stream
    /// (or followed by trailers). While the filter pauses, the host keeps buffering.
    fn run_with(masker: &Masker, head: ResponseHead, limits: Limits, chunks: &[&[u8]], trailers: bool) -> Run {
        play(
            masker,
            ResponseMasker::new("r1", head, Some(json!(7)), limits),
            chunks,
            trailers,
        )
    }

    fn play(masker: &Masker, mut r: ResponseMasker, chunks: &[&[u8]], trailers: bool) -> Run {
        let mut run = Run::default();
        let mut records = Vec::new();
        let plan = r.on_headers(chunks.is_empty() && !trailers, 1, &mut |p| records.push(p));
        run.plan = Some(plan);
        let mut held = Vec::new();
        let mut withheld = None;
        if plan == Plan::Withhold {
            withheld = Some(true);
        } else {
            for (i, chunk) in chunks.iter().enumerate() {
                let end = i + 1 == chunks.len() && !trailers;
                held.extend_from_slice(chunk);
                let size = held.len();
                let read = |n: usize| Some(held[..n.min(held.len())].to_vec());
                let step = r.on_body(masker, size, end, read, 2, &mut |p| records.push(p));
                match step {
                    Step::Continue => run.client.append(&mut held),
                    Step::Replace { len, bytes } => {
                        held.splice(..len, bytes.iter().copied());
                        run.client.append(&mut held);
                    }
                    Step::Pause => {}
                    Step::Withhold { headers_held } => {
                        withheld = Some(headers_held);
                        break;
                    }
                }
            }
            if trailers && withheld.is_none() {
                let read = |n: usize| Some(held[..n.min(held.len())].to_vec());
                match r.on_trailers(masker, read, 3, &mut |p| records.push(p)) {
                    Step::Continue => run.client.append(&mut held),
                    Step::Replace { len, bytes } => {
                        held.splice(..len, bytes.iter().copied());
                        run.client.append(&mut held);
                    }
                    Step::Pause => {}
                    Step::Withhold { headers_held } => withheld = Some(headers_held),
                }
            }
        }
        match withheld {
            Some(true) => {
                let (status, body) = r.local_reply();
                run.reply = Some((status, serde_json::from_slice(&body).unwrap()));
            }
            Some(false) => run.reset = true,
            None => {}
        }
        assert!(r.is_finished(), "every answer ends with a final part");
        run.client_counts = r.take_client_counts();
        run.tools_hidden = r.take_tools_hidden();
        run.records = records;
        run
    }

    fn run(masker: &Masker, head: ResponseHead, chunks: &[&[u8]]) -> Run {
        run_with(masker, head, LIMITS, chunks, false)
    }

    fn revealing(content_type: &str, kinds: &str) -> ResponseHead {
        head(content_type, &[(REVEAL_HEADER, kinds)])
    }

    fn masked_json(masker: &Masker, body: &[u8], reveal: &Reveal) -> Vec<u8> {
        match masker.mask_json(body, reveal, &mut MaskCounts::default()) {
            JsonMasked::Changed(b) => b,
            JsonMasked::Unchanged => body.to_vec(),
            JsonMasked::NotJson => panic!("not JSON"),
        }
    }

    const EMAIL: &str = "alice.smith@corp-mail.com";
    const CARD: &str = "4111 1111 1111 1111";

    fn tool_result() -> Vec<u8> {
        serde_json::to_vec(&json!({
            "jsonrpc": "2.0", "id": 7,
            "result": {"content": [{"type": "text", "text": format!("Mail {EMAIL}, card {CARD}")}]}
        }))
        .unwrap()
    }

    fn contains(haystack: &[u8], needle: &str) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
    }

    #[test]
    fn a_refusal_of_the_gateways_credential_becomes_a_json_rpc_error_and_its_body_is_not_passed() {
        let masker = Masker::default();
        let refusal = br#"{"message":"The request signature we calculated does not match. The Canonical String was ... x-amz-security-token:IQoJb3JpZ2luX2Vj"}"#;
        for status in ["401", "403"] {
            let head = head_with_status(status, "application/json", &[(CREDENTIAL_HEADER, "aws_sigv4")]);
            let r = run(&masker, head, &[refusal]);
            assert_eq!(r.plan, Some(Plan::Withhold));
            let (reply_status, reply) = r.reply.clone().unwrap();
            assert_eq!(reply_status, 502);
            assert_eq!(reply["id"], 7);
            assert_eq!(reply["error"]["code"], jsonrpc_error::UPSTREAM_CREDENTIAL);
            assert_eq!(reply["error"]["data"]["request_id"], "r1");
            assert!(
                reply["error"]["message"]
                    .as_str()
                    .unwrap()
                    .contains(&format!("HTTP {status}"))
            );
            assert!(r.client.is_empty() && !contains(&serde_json::to_vec(&reply).unwrap(), "IQoJ"));
            let last = r.records.last().unwrap();
            assert_eq!(
                (last.withheld.as_str(), last.http_status),
                (withheld::CREDENTIAL_REFUSED, status.parse().unwrap())
            );
            assert!(
                r.records.iter().all(|p| p.message.is_empty()),
                "the refusal's body is not recorded"
            );
        }
        // Without the gateway's credential, a 403 is the upstream's answer to the call.
        let passed = |status: &str, extra: &[(&str, &str)]| {
            run(&masker, head_with_status(status, "application/json", extra), &[b"{}"]).client == b"{}"
        };
        assert!(passed("403", &[]));
        // Behind a static credential a 403 is the server's own answer; a 401 refuses the credential.
        assert!(passed("403", &[(CREDENTIAL_HEADER, "static_header")]));
        let head = head_with_status("401", "application/json", &[(CREDENTIAL_HEADER, "static_header")]);
        assert_eq!(run(&masker, head, &[b"{}"]).reply.map(|r| r.0), Some(502));
        // A credential on a 200 changes nothing.
        assert!(passed("200", &[(CREDENTIAL_HEADER, "static_header")]));
    }

    #[test]
    fn header_values_are_masked_and_framing_headers_left_alone() {
        let masker = Masker::default();
        let headers: Vec<(String, Vec<u8>)> = [
            ("x-debug", format!("key AKIAIVF3HDRHMIRTO2I2 for {EMAIL}").into_bytes()),
            ("content-type", b"application/json".to_vec()),
            ("x-plain", b"nothing here".to_vec()),
            ("x-bytes", b"caf\xe9".to_vec()),
            ("mcp-session-id", b"0123abcd.9f8e".to_vec()),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_owned(), v))
        .collect();
        let masked = masked_headers(&masker, &headers);
        let names: Vec<_> = masked.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["x-debug", "x-bytes"]);
        assert!(
            !masked[0].1.contains("AKIA") && !masked[0].1.contains(EMAIL),
            "{}",
            masked[0].1
        );
        assert!(masked[0].1.contains("[MASKED:"));
        assert_eq!(masked[1].1, "caf\u{fffd}");
    }

    #[test]
    fn body_kinds_follow_the_media_type() {
        assert_eq!(BodyKind::of(Some("application/json; charset=utf-8")), BodyKind::Json);
        assert_eq!(BodyKind::of(Some("Text/Event-Stream")), BodyKind::EventStream);
        assert_eq!(BodyKind::of(Some("text/html")), BodyKind::Other);
        assert_eq!(BodyKind::of(Some("application/jsonx")), BodyKind::Other);
        assert_eq!(BodyKind::of(None), BodyKind::Other);
        for binary in ["image/png", "Audio/ogg", "video/mp4", "application/octet-stream; x=1"] {
            assert_eq!(BodyKind::of(Some(binary)), BodyKind::Binary, "{binary}");
        }
        for json in [
            "application/vnd.api+json",
            "Application/Problem+JSON; charset=utf-8",
            "application/json-seq",
            "text/json",
            "application/x-ndjson",
        ] {
            assert_eq!(BodyKind::of(Some(json)), BodyKind::Json, "{json}");
        }
    }

    #[test]
    fn a_json_media_type_with_escapes_is_masked_as_json() {
        let masker = Masker::default();
        let body = br#"{"jsonrpc":"2.0","id":7,"result":{"k":"AKIAIOSFODNN7EXAMPLE","m":"ops@example.com"}}"#;
        for ct in ["application/problem+json", "application/vnd.api+json; v=1"] {
            let r = run(&masker, head(ct, &[]), &[body]);
            assert!(!contains(&r.client, "IOSFODNN7") && !contains(&r.client, "ops"), "{ct}");
            assert_eq!(r.records[0].masked.get("email"), Some(&1));
        }
    }

    #[test]
    fn each_message_of_a_batch_answer_gets_the_reveal_of_its_request() {
        let masker = Masker::default();
        let by_id = [(RevealPlan::id_key(&json!(1)), Reveal::from_header("email"))].into();
        let ids = RevealPlan::ids_header(&by_id);
        let head = head(
            "application/json",
            &[(REVEAL_HEADER, "-"), (REVEAL_IDS_HEADER, ids.as_str())],
        );
        assert!(head.reveal_ids.is_some());
        let body =
            br#"[{"jsonrpc":"2.0","id":1,"result":"a@example.com"},{"jsonrpc":"2.0","id":2,"result":"b@example.com"}]"#;
        let r = run(&masker, head.clone(), &[body]);
        assert!(contains(&r.client, "a@example.com") && !contains(&r.client, "b@example.com"));
        assert!(
            !contains(&r.records[0].message, "a@example.com"),
            "records reveal nothing"
        );
        assert_eq!(r.records[0].revealed, ["email"]);
        let sse = b"data: {\"jsonrpc\":\"2.0\",\"id\":2,\"result\":\"b@example.com\"}\n\ndata: {\"jsonrpc\":\"2.0\",\"id\":1,\"result\":\"a@example.com\"}\n\n";
        let r = run(
            &masker,
            ResponseHead {
                content_type: Some("text/event-stream".into()),
                ..head.clone()
            },
            &[sse],
        );
        assert!(contains(&r.client, "a@example.com") && !contains(&r.client, "b@example.com"));
        // `*` keeps the one set for every message; a second value reveals nothing at all.
        let star = ResponseHead::from_headers([("x-gatehouse-reveal", &b"email"[..]), (REVEAL_IDS_HEADER, b"*")]);
        assert_eq!(star.reveal_plan(), RevealPlan::uniform(Reveal::from_header("email")));
        let twice = ResponseHead::from_headers([
            ("x-gatehouse-reveal", &b"email"[..]),
            (REVEAL_IDS_HEADER, ids.as_bytes()),
            (REVEAL_IDS_HEADER, b"*"),
        ]);
        assert!(twice.reveal_plan().is_empty());
    }

    #[test]
    fn an_sse_event_id_reaches_neither_client_nor_record_in_clear() {
        let masker = Masker::default();
        let sse = b"id: ops@example.com\nevent: AKIAIOSFODNN7EXAMPLE\n: 4111 1111 1111 1111\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{}}\n\n";
        let r = run(&masker, head("text/event-stream", &[]), &[sse]);
        for secret in ["ops@", "AKIA", "4111"] {
            assert!(!contains(&r.client, secret), "{secret}");
        }
        let event = r.records.iter().find(|p| !p.sse_event_id.is_empty()).unwrap();
        assert_eq!(event.sse_event_id, "[MASKED:email]");
    }

    #[test]
    fn the_head_is_read_and_reveal_values_are_intersected() {
        let h = ResponseHead::from_headers([
            (":status", &b"201"[..]),
            ("content-length", b"12"),
            ("content-encoding", b"identity"),
            ("x-gatehouse-reveal", b"email, phone"),
        ]);
        assert_eq!(
            (h.status, h.content_length, h.content_encoding.as_deref()),
            (201, Some(12), None)
        );
        assert!(h.has_reveal_header);
        assert_eq!(h.reveal, Reveal::from_header("email,phone"));
        // A second value (an upstream's) can only narrow the service's.
        let h = ResponseHead::from_headers([
            ("x-gatehouse-reveal", &b"email"[..]),
            ("x-gatehouse-reveal", b"email,credit_card"),
            ("content-encoding", b"GZIP"),
            ("content-encoding", b"identity, br"),
        ]);
        assert_eq!(h.reveal, Reveal::from_header("email"));
        assert_eq!(h.content_encoding.as_deref(), Some("gzip, br"));
        let h = ResponseHead::from_headers([("x-gatehouse-reveal", &b"-"[..])]);
        assert!(h.has_reveal_header && h.reveal.is_empty());
        let h = ResponseHead::from_headers([("content-type", &b"text/plain"[..])]);
        assert!(!h.has_reveal_header && h.reveal.is_empty());
    }

    #[test]
    fn a_json_answer_is_masked_for_the_client_with_its_reveal_and_recorded_with_none() {
        let masker = Masker::default();
        let body = tool_result();
        let (a, b) = body.split_at(10);
        let r = run(&masker, revealing("application/json", "email"), &[a, b]);
        assert_eq!(r.plan, Some(Plan::Buffer));
        let reveal = Reveal::from_header("email");
        assert_eq!(r.client, masked_json(&masker, &body, &reveal));
        assert_eq!(r.records.len(), 1);
        let p = &r.records[0];
        assert!(p.r#final && !p.truncated);
        assert_eq!(p.message, masked_json(&masker, &body, &Reveal::none()));
        assert_eq!((p.jsonrpc_id.as_str(), p.end_reason.as_str()), ("7", "complete"));
        assert_eq!(p.body_bytes, body.len() as u64);
        assert_eq!(p.withheld, "");
        let mut record_counts = MaskCounts::default();
        masker.mask_json(&body, &Reveal::none(), &mut record_counts);
        assert_eq!(p.masked, record_counts.0.clone().into_iter().collect());
        let mut client_counts = MaskCounts::default();
        masker.mask_json(&body, &reveal, &mut client_counts);
        assert_eq!(r.client_counts, client_counts);
    }

    #[test]
    fn the_client_sees_revealed_kinds_but_the_record_never_does() {
        let masker = Masker::default();
        let body = tool_result();
        let r = run(&masker, revealing("application/json", "email"), &[&body]);
        assert!(contains(&r.client, EMAIL), "revealed to the client");
        assert!(!contains(&r.client, CARD), "not revealed");
        let p = &r.records[0];
        assert!(!contains(&p.message, EMAIL) && !contains(&p.message, CARD));
        assert_eq!(p.masked.get("email"), Some(&1));
        assert_eq!(p.masked.get("credit_card"), Some(&1));
        assert_eq!(p.revealed, ["email"]);
        assert_eq!(r.client_counts.0.get("email"), None, "nothing masked for the client");
        assert_eq!(r.client_counts.0.get("credit_card"), Some(&1));

        // Nothing revealed: one pass serves both.
        let r = run(&masker, head("application/json", &[]), &[&body]);
        assert!(!contains(&r.client, EMAIL));
        assert_eq!(r.client, r.records[0].message);
        assert!(r.records[0].revealed.is_empty());
        let r = run(&masker, revealing("application/json", "-"), &[&body]);
        assert!(r.records[0].revealed.is_empty());
        assert_eq!(r.client_counts.0.get("email"), Some(&1));
    }

    #[test]
    fn a_body_that_is_not_json_is_masked_as_text() {
        let masker = Masker::default();
        let body = format!("oops {EMAIL}");
        let r = run(&masker, head("application/json", &[]), &[body.as_bytes()]);
        let expected = masker
            .mask_bytes_as_text(body.as_bytes(), &Reveal::none(), &mut MaskCounts::default())
            .unwrap_or_else(|| body.clone().into_bytes());
        assert_eq!(r.client, expected);
        assert_eq!(r.records[0].message, expected);
        assert!(!contains(&r.client, EMAIL));

        // Other text types: masked, recorded without a message.
        let r = run(&masker, head("text/plain", &[]), &[body.as_bytes()]);
        assert_eq!(r.client, expected);
        assert!(r.records[0].message.is_empty());
    }

    #[test]
    fn binary_answers_are_withheld_not_passed_unread() {
        let masker = Masker::default();
        let body = format!("\u{89}PNG {EMAIL}");
        for content_type in ["image/png", "application/octet-stream; x=1", "video/mp4"] {
            let r = run(&masker, revealing(content_type, "-"), &[body.as_bytes(), b"\xff\x00"]);
            assert_eq!(r.plan, Some(Plan::Withhold), "{content_type}");
            assert!(!contains(&r.client, EMAIL), "{content_type}");
            let last = r.records.last().unwrap();
            assert!(last.r#final && last.withheld == withheld::BINARY, "{last:?}");
            assert!(r.records.iter().all(|p| !contains(&p.message, EMAIL)));
        }
    }

    #[test]
    fn an_encoded_answer_is_replaced_by_a_502_json_rpc_error() {
        let masker = Masker::default();
        for ct in ["application/json", "text/event-stream", "text/html"] {
            let r = run(&masker, head(ct, &[("content-encoding", "gzip")]), &[b"\x1f\x8b..."]);
            assert_eq!(r.plan, Some(Plan::Withhold), "{ct}");
            assert!(r.client.is_empty());
            let (status, body) = r.reply.unwrap();
            assert_eq!(status, 502);
            assert_eq!(body["id"], 7);
            assert_eq!(body["error"]["code"], -32603);
            assert_eq!(
                body["error"]["message"],
                "Gatehouse could not inspect the upstream's answer (content-encoding gzip)"
            );
            assert_eq!(r.records.len(), 1);
            let p = &r.records[0];
            assert!(p.r#final && p.message.is_empty());
            assert_eq!((p.withheld.as_str(), p.http_status), ("encoded", 200));
        }
        // `identity` is no encoding.
        let r = run(
            &masker,
            head("application/json", &[("content-encoding", "identity")]),
            &[b"{}"],
        );
        assert_eq!(r.plan, Some(Plan::Buffer));
    }

    #[test]
    fn an_answer_over_the_bound_is_refused_whether_announced_or_not() {
        let masker = Masker::default();
        let limits = Limits {
            max_response_bytes: 10,
            ..LIMITS
        };
        let r = run_with(
            &masker,
            head("application/json", &[("content-length", "11")]),
            limits,
            &[b"x"],
            false,
        );
        assert_eq!(r.plan, Some(Plan::Withhold));
        assert_eq!(r.records[0].withheld, "too_large");
        let r = run_with(
            &masker,
            head("application/json", &[]),
            limits,
            &[b"123456", b"78901", b"2"],
            false,
        );
        assert_eq!(r.plan, Some(Plan::Buffer));
        assert!(r.client.is_empty(), "nothing passed");
        let (status, body) = r.reply.unwrap();
        assert_eq!(status, 502);
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("too large to inspect")
        );
        assert_eq!(r.records.len(), 1);
        assert_eq!(r.records[0].withheld, "too_large");
        // Exactly at the bound is fine; trailers end a buffered answer too.
        let r = run_with(&masker, head("text/plain", &[]), limits, &[b"12345", b"67890"], true);
        assert_eq!((r.client.as_slice(), r.reply.is_none()), (&b"1234567890"[..], true));
        let r = run_with(&masker, head("text/plain", &[]), limits, &[b"12345", b"678901"], true);
        assert_eq!(r.records[0].withheld, "too_large");
        assert!(r.client.is_empty() && r.reply.is_some());
    }

    #[test]
    fn empty_answers_are_one_final_part() {
        let masker = Masker::default();
        for ct in ["application/json", "text/event-stream", "image/png"] {
            let r = run(&masker, head(ct, &[("content-encoding", "gzip")]), &[]);
            assert_eq!(r.plan, Some(Plan::Pass), "{ct}: no body, nothing to refuse");
            assert_eq!(r.records.len(), 1);
            assert!(r.records[0].r#final && r.records[0].withheld.is_empty());
        }
        // Headers without end of stream, then an empty last chunk.
        let r = run(&masker, head("application/json", &[]), &[b""]);
        assert_eq!((r.plan, r.client.len(), r.records.len()), (Some(Plan::Buffer), 0, 1));
    }

    #[test]
    fn records_are_bounded() {
        let masker = Masker::default();
        let limits = Limits {
            record_max: 8,
            ..LIMITS
        };
        let body = br#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
        let r = run_with(&masker, head("application/json", &[]), limits, &[body], false);
        assert_eq!(r.client, body);
        assert_eq!(r.records[0].message, &body[..8]);
        assert!(r.records[0].truncated);
        assert_eq!(r.records[0].jsonrpc_id, "", "a cut message is not parsed");
        let r = run_with(
            &masker,
            head("text/event-stream", &[]),
            limits,
            &[b"data: 123456789\n\n"],
            false,
        );
        assert_eq!(r.records[0].message, b"12345678");
        assert!(r.records[0].truncated);
    }

    const STREAM: &[u8] = b": hello\r\n\r\nid: e1\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{\"data\":\"from alice.smith@corp-mail.com\"}}\r\n\r\nid: e2\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\ndata: \"result\":{\"content\":[{\"type\":\"text\",\"text\":\"card 4111 1111 1111 1111 of alice.smith@corp-mail.com\"}]}}\n\n: ping\n\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"x\"}\r\r";

    /// Records without what depends on where chunks were split.
    fn comparable(records: &[ResponseObserved]) -> Vec<ResponseObserved> {
        records
            .iter()
            .map(|p| ResponseObserved {
                body_bytes: 0,
                observed_at_unix_ms: 0,
                ..p.clone()
            })
            .collect()
    }

    #[test]
    fn an_sse_answer_is_masked_event_by_event_the_same_at_every_split() {
        let masker = Masker::default();
        let h = || revealing("text/event-stream; charset=utf-8", "email");
        let whole = run(&masker, h(), &[STREAM]);
        assert_eq!(whole.plan, Some(Plan::Stream));
        let records = comparable(&whole.records);
        for i in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(i);
            let r = run(&masker, h(), &[a, b]);
            assert_eq!(r.client, whole.client, "split at {i}");
            assert_eq!(comparable(&r.records), records, "split at {i}");
            assert_eq!(r.client_counts, whole.client_counts, "split at {i}");
        }
        for i in (0..=STREAM.len()).step_by(7) {
            for j in (i..=STREAM.len()).step_by(5) {
                let r = run(&masker, h(), &[&STREAM[..i], &STREAM[i..j], &STREAM[j..]]);
                assert_eq!(r.client, whole.client, "split at {i} and {j}");
                assert_eq!(comparable(&r.records), records, "split at {i} and {j}");
            }
        }
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        let r = run(&masker, h(), &bytes);
        assert_eq!(r.client, whole.client, "byte by byte");
        assert_eq!(comparable(&r.records), records, "byte by byte");
        let last = whole.records.last().unwrap();
        assert!(last.r#final && last.message.is_empty());
        assert_eq!(last.body_bytes, STREAM.len() as u64);
    }

    #[test]
    fn sse_events_are_recorded_masked_with_nothing_revealed() {
        let masker = Masker::default();
        let r = run(&masker, revealing("text/event-stream", "email"), &[STREAM]);
        assert!(contains(&r.client, EMAIL), "email revealed to the client");
        assert!(!contains(&r.client, CARD));
        let events: Vec<&ResponseObserved> = r.records.iter().filter(|p| !p.r#final).collect();
        assert_eq!(events.len(), 3);
        assert_eq!(events[0].sse_event_id, "e1");
        assert_eq!(events[1].sse_event_id, "e2");
        assert_eq!(events[1].jsonrpc_id, "7");
        for e in &events {
            assert!(!contains(&e.message, EMAIL) && !contains(&e.message, CARD), "{e:?}");
        }
        assert_eq!(events[0].masked.get("email"), Some(&1));
        assert_eq!(events[1].masked.get("credit_card"), Some(&1));
        assert!(events[2].masked.is_empty());
        assert!(r.records.iter().all(|p| p.revealed == ["email"]), "on every part");
        assert_eq!(r.client_counts.0.get("credit_card"), Some(&1));
        assert_eq!(r.client_counts.0.get("email"), None);
    }

    #[test]
    fn an_oversize_sse_event_is_withheld_and_the_stream_goes_on() {
        let masker = Masker::default();
        let limits = Limits {
            max_event_bytes: 48,
            ..LIMITS
        };
        let big = format!(
            "data: {}\n\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"x\"}}\n\n",
            "x".repeat(100)
        );
        let r = run_with(
            &masker,
            head("text/event-stream", &[]),
            limits,
            &[big.as_bytes()],
            false,
        );
        assert!(!contains(&r.client, &"x".repeat(100)));
        assert!(contains(&r.client, r#"{"jsonrpc":"2.0","method":"x"}"#));
        assert_eq!(r.records[0].withheld, "event_too_large");
        assert!(r.records[0].truncated);
        assert_eq!(r.records[1].withheld, "");
    }

    #[test]
    fn an_sse_answer_cut_short_records_what_was_held() {
        let masker = Masker::default();
        let mut r = ResponseMasker::new("r3", head("text/event-stream", &[]), None, LIMITS);
        let mut records = Vec::new();
        assert_eq!(r.on_headers(false, 1, &mut |p| records.push(p)), Plan::Stream);
        let chunk = b"data: 1\n\ndata: {\"half\n";
        let _ = r.on_body(&masker, chunk.len(), false, |_| Some(chunk.to_vec()), 1, &mut |p| {
            records.push(p)
        });
        r.on_abort(&masker, END_CLIENT_GONE, None, 2, &mut |p| records.push(p));
        r.on_abort(&masker, END_CLIENT_GONE, None, 3, &mut |p| records.push(p));
        assert!(r.is_finished());
        let last = records.last().unwrap();
        assert_eq!((last.r#final, last.end_reason.as_str()), (true, "client_gone"));
        assert_eq!(records.iter().filter(|p| p.r#final).count(), 1);
    }

    #[test]
    fn an_unreadable_chunk_resets_a_stream_and_a_buffered_answer_is_replaced() {
        let masker = Masker::default();
        let mut records = Vec::new();
        let mut r = ResponseMasker::new("r", head("text/event-stream", &[]), None, LIMITS);
        r.on_headers(false, 1, &mut |p| records.push(p));
        let step = r.on_body(&masker, 5, false, |_| None, 1, &mut |p| records.push(p));
        assert_eq!(step, Step::Withhold { headers_held: false });
        assert_eq!(records.last().unwrap().withheld, "unreadable");
        assert_eq!(
            r.on_body(&masker, 5, false, |_| None, 1, &mut |p| records.push(p)),
            Step::Pause,
            "nothing goes on after"
        );

        let mut r = ResponseMasker::new("r", head("application/json", &[]), None, LIMITS);
        r.on_headers(false, 1, &mut |p| records.push(p));
        let step = r.on_body(&masker, 5, true, |_| None, 1, &mut |p| records.push(p));
        assert_eq!(step, Step::Withhold { headers_held: true });
        let (status, body) = r.local_reply();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((status, body["id"].clone()), (502, Value::Null));
        assert_eq!(
            body["error"]["message"],
            "Gatehouse could not inspect the upstream's answer"
        );
    }

    #[test]
    fn a_buffered_answer_cut_short_is_recorded_truncated() {
        let masker = Masker::default();
        let mut r = ResponseMasker::new("r", head("application/json", &[]), None, LIMITS);
        let mut records = Vec::new();
        r.on_headers(false, 1, &mut |p| records.push(p));
        assert_eq!(
            r.on_body(&masker, 3, false, |_| None, 1, &mut |p| records.push(p)),
            Step::Pause
        );
        r.on_abort(&masker, END_UPSTREAM_RESET, None, 2, &mut |p| records.push(p));
        assert_eq!(records.len(), 1);
        assert!(records[0].truncated && records[0].message.is_empty());
        assert_eq!(records[0].end_reason, "upstream_reset");
    }

    #[test]
    fn unanswered_requests_and_abort_reasons() {
        let p = unanswered("r6", END_CLIENT_GONE, 7);
        assert!(p.r#final);
        assert_eq!((p.http_status, p.end_reason.as_str()), (0, "client_gone"));
        assert_eq!(
            abort_reason(Some("upstream_reset_after_response_started{remote_reset}")),
            "upstream_reset"
        );
        assert_eq!(abort_reason(Some("downstream_remote_disconnect")), "client_gone");
        assert_eq!(abort_reason(None), "client_gone");
        assert_eq!(withheld_by_envoy(Some("response_payload_too_large")), Some("too_large"));
        assert_eq!(withheld_by_envoy(Some("via_upstream")), None);
    }

    // --- tools/list answers -------------------------------------------------------------

    /// The answer to a `tools/list`, as the filter reads it when the request listed tools.
    fn run_listing(masker: &Masker, head: ResponseHead, chunks: &[&[u8]]) -> Run {
        let mut r = ResponseMasker::new("r1", head, Some(json!(7)), LIMITS);
        r.filter_tools();
        play(masker, r, chunks, false)
    }

    /// Only `find_*` and `echo` may be seen.
    const VISIBLE: &str = r#"[["-","find_secret"],["+","find_*"],["+","echo"]]"#;

    fn listing(content_type: &str, tools: &str) -> ResponseHead {
        head(content_type, &[(TOOLS_HEADER, tools)])
    }

    fn tools_list(names: &[&str]) -> Value {
        let tools: Vec<Value> = names
            .iter()
            .map(|n| json!({"name": n, "description": format!("{n}: ask {EMAIL}"), "inputSchema": {"type": "object"}}))
            .collect();
        json!({"jsonrpc": "2.0", "id": 7, "result": {"tools": tools}})
    }

    const ALL_TOOLS: [&str; 5] = ["echo", "run_query", "find_customer", "find_secret", "drop_db"];

    fn tool_names(message: &[u8]) -> Vec<String> {
        let message: Value = serde_json::from_slice(message).unwrap();
        message["result"]["tools"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn the_tools_header_is_read_once() {
        let h = listing("application/json", VISIBLE);
        let tools = h.tools.unwrap().unwrap();
        assert!(tools.is_visible("find_x") && !tools.is_visible("find_secret"));
        let h = ResponseHead::from_headers([(TOOLS_HEADER, &b"[[\"+\",\"*\"]]"[..]), (TOOLS_HEADER, b"[]")]);
        assert_eq!(h.tools, Some(Err(ToolsHeaderError::Repeated)));
        let h = listing("application/json", "find_*");
        assert!(matches!(h.tools, Some(Err(ToolsHeaderError::Malformed(_)))));
        assert_eq!(head("application/json", &[]).tools, None);
    }

    #[test]
    fn a_json_tools_list_shows_only_visible_tools_to_the_client_and_the_record() {
        let masker = Masker::default();
        let body = serde_json::to_vec(&tools_list(&ALL_TOOLS)).unwrap();
        let (a, b) = body.split_at(17);
        let r = run_listing(&masker, listing("application/json", VISIBLE), &[a, b]);
        assert_eq!(tool_names(&r.client), ["echo", "find_customer"]);
        assert!(!contains(&r.client, EMAIL), "still masked");
        assert_eq!(r.tools_hidden, 3);
        let p = &r.records[0];
        assert_eq!(p.message, r.client, "the record shows what the client saw");
        assert_eq!(p.body_bytes, body.len() as u64, "the upstream's size");
        assert_eq!(p.masked.get("email"), Some(&2));

        // Dropping tools alone changes the body: it is replaced even with nothing masked.
        let plain = serde_json::to_vec(
            &json!({"jsonrpc": "2.0", "id": 7, "result": {"tools": [{"name": "echo"}, {"name": "x"}]}}),
        )
        .unwrap();
        let r = run_listing(&masker, listing("application/json", VISIBLE), &[&plain]);
        assert_eq!(tool_names(&r.client), ["echo"]);
        assert_eq!(
            (r.tools_hidden, r.records[0].message.as_slice()),
            (1, r.client.as_slice())
        );

        // Revealed kinds stay in clear for the client, and the record still masks them.
        let r = run_listing(
            &masker,
            head("application/json", &[(TOOLS_HEADER, VISIBLE), (REVEAL_HEADER, "email")]),
            &[&body],
        );
        assert_eq!(tool_names(&r.client), ["echo", "find_customer"]);
        assert!(contains(&r.client, EMAIL));
        assert_eq!(tool_names(&r.records[0].message), ["echo", "find_customer"]);
        assert!(!contains(&r.records[0].message, EMAIL));
    }

    #[test]
    fn tools_are_filtered_only_in_the_answer_to_a_tools_list_with_a_readable_header() {
        let masker = Masker::default();
        let body = serde_json::to_vec(&tools_list(&ALL_TOOLS)).unwrap();
        // Not a tools/list: nothing is dropped, whatever the header.
        let r = run(&masker, listing("application/json", VISIBLE), &[&body]);
        assert_eq!(tool_names(&r.client), ALL_TOOLS);
        // No header: no policy, every tool shows.
        let r = run_listing(&masker, head("application/json", &[]), &[&body]);
        assert_eq!(
            (tool_names(&r.client), r.tools_hidden),
            (ALL_TOOLS.map(String::from).to_vec(), 0)
        );
        // A header that cannot be read, or two of them: no tool shows.
        for bad in [
            listing("application/json", "find_*"),
            head(
                "application/json",
                &[(TOOLS_HEADER, "[]"), (TOOLS_HEADER, r#"[["+","*"]]"#)],
            ),
        ] {
            let r = run_listing(&masker, bad, &[&body]);
            assert!(tool_names(&r.client).is_empty());
            assert_eq!(r.tools_hidden, 5);
        }
        // An answer that claims to be binary is read all the same.
        let r = run_listing(&masker, listing("application/octet-stream", VISIBLE), &[&body]);
        assert_eq!(tool_names(&r.client), ["echo", "find_customer"]);
    }

    fn tools_stream() -> Vec<u8> {
        let list = serde_json::to_string(&tools_list(&ALL_TOOLS)).unwrap();
        format!(
            ": hello\r\n\r\nid: e1\r\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"notifications/message\",\"params\":{{\"data\":\"{EMAIL}\"}}}}\r\n\r\nevent: message\nid: e2\ndata: {list}\n\ndata: {{\"jsonrpc\":\"2.0\",\"method\":\"x\"}}\r\r"
        )
        .into_bytes()
    }

    #[test]
    fn an_sse_tools_list_loses_hidden_tools_the_same_at_every_split() {
        let masker = Masker::default();
        let stream = tools_stream();
        let h = || listing("text/event-stream", VISIBLE);
        let whole = run_listing(&masker, h(), &[&stream]);
        assert_eq!(whole.plan, Some(Plan::Stream));
        assert_eq!(whole.tools_hidden, 3);
        for name in ["run_query", "find_secret", "drop_db", EMAIL] {
            assert!(!contains(&whole.client, name), "{name}");
        }
        assert!(contains(&whole.client, "find_customer"));
        let events: Vec<&ResponseObserved> = whole.records.iter().filter(|p| !p.r#final).collect();
        assert_eq!(events.len(), 3);
        assert_eq!(
            (events[1].sse_event_id.as_str(), events[1].jsonrpc_id.as_str()),
            ("e2", "7")
        );
        assert_eq!(tool_names(&events[1].message), ["echo", "find_customer"]);
        assert_eq!(events[0].masked.get("email"), Some(&1));
        assert_eq!(whole.records.last().unwrap().body_bytes, stream.len() as u64);

        let records = comparable(&whole.records);
        for i in 0..=stream.len() {
            let (a, b) = stream.split_at(i);
            let r = run_listing(&masker, h(), &[a, b]);
            assert_eq!(r.client, whole.client, "split at {i}");
            assert_eq!(comparable(&r.records), records, "split at {i}");
            assert_eq!(r.tools_hidden, 3, "split at {i}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        let r = run_listing(&masker, h(), &bytes);
        assert_eq!(r.client, whole.client, "byte by byte");
        assert_eq!(comparable(&r.records), records, "byte by byte");

        // Not a tools/list: the stream is only masked.
        let r = run(&masker, h(), &[&stream]);
        assert!(contains(&r.client, "find_secret") && !contains(&r.client, EMAIL));
    }

    #[test]
    fn an_sse_tools_list_too_large_to_filter_is_withheld_and_recorded_without_it() {
        let masker = Masker::default();
        let limits = Limits {
            max_event_bytes: 256,
            ..LIMITS
        };
        let list = serde_json::to_string(&tools_list(&ALL_TOOLS)).unwrap();
        assert!(list.len() > 256);
        let stream = format!("data: 1\r\rid: big\ndata: {list}\n\ndata: 2\n\n");
        let mut r = ResponseMasker::new("r1", listing("text/event-stream", VISIBLE), None, limits);
        r.filter_tools();
        let r = play(&masker, r, &[stream.as_bytes()], false);
        assert!(!contains(&r.client, "find_secret") && !contains(&r.client, "echo"));
        assert!(contains(&r.client, ": gatehouse withheld an event over 256 bytes"));
        let events: Vec<&ResponseObserved> = r.records.iter().filter(|p| !p.r#final).collect();
        assert_eq!(events.len(), 3, "{events:?}");
        assert_eq!(
            (events[0].message.as_slice(), events[2].message.as_slice()),
            (&b"1"[..], &b"2"[..]),
            "in order"
        );
        assert_eq!(
            (events[1].withheld.as_str(), events[1].sse_event_id.as_str()),
            ("event_too_large", "big")
        );
        assert!(events[1].message.is_empty() && events[1].truncated);
    }

    #[test]
    fn an_sse_tools_list_cut_short_keeps_its_unfinished_event_from_the_client() {
        let masker = Masker::default();
        let list = serde_json::to_string(&tools_list(&ALL_TOOLS)).unwrap();
        let stream = format!("data: 1\n\ndata: {list}");
        let r = run_listing(&masker, listing("text/event-stream", VISIBLE), &[stream.as_bytes()]);
        assert_eq!(r.client, b"data: 1\n\n");
        // The same when the answer is aborted: its held events are still recorded.
        let mut r = ResponseMasker::new("r1", listing("text/event-stream", VISIBLE), None, LIMITS);
        r.filter_tools();
        let mut records = Vec::new();
        r.on_headers(false, 1, &mut |p| records.push(p));
        let chunk = b"data: 1\r\r";
        let _ = r.on_body(&masker, chunk.len(), false, |_| Some(chunk.to_vec()), 1, &mut |p| {
            records.push(p)
        });
        r.on_abort(&masker, END_CLIENT_GONE, None, 2, &mut |p| records.push(p));
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].message, b"1");
        assert!(records[1].r#final);
    }
}
