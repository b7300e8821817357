//! An incremental Server-Sent Events framer: bytes in, complete events out, no I/O.
//!
//! MCP's Streamable HTTP transport answers a POST (and a GET) with `text/event-stream`,
//! and such a stream may stay open for hours. The gateway must look at it event by
//! event, so [`SseFramer`] is fed the chunks exactly as the proxy receives them — split
//! at any byte, including between the CR and LF of a line break or inside a UTF-8
//! sequence — and yields each event once its terminating blank line has arrived. It
//! carries only the unfinished event from one chunk to the next, never the stream.
//!
//! Parsing follows the WHATWG `EventSource` rules: lines end with CRLF, LF or CR; a
//! leading byte-order mark is ignored; `data` lines are joined with `\n`; `event`, `id`
//! and `retry` are read; comments (`:` lines) and unknown fields are ignored.
//!
//! Every [`SseEvent`] keeps the raw bytes it was parsed from, so that a caller can pass
//! unchanged events through byte for byte and rebuild only the ones it must alter. The
//! raw bytes of all events, in order, followed by the incomplete tail that
//! [`SseFramer::finish`] reports, are exactly the input — unless an event was over the
//! size limit, whose raw bytes are then cut (see [`SseEvent::truncated`]).
//!
//! Blocks without a `data` field (keep-alive comments, a lone `id:`) are yielded too,
//! with [`SseEvent::data`] `None`, because their bytes are part of the stream; a browser
//! would not dispatch them.
//!
//! One trade-off: when a chunk ends with the CR of the blank line that ends an event, the
//! framer cannot yet know whether an LF follows (CRLF) or not (a bare CR), and the LF
//! belongs to that event's raw bytes. It therefore holds the finished event until the
//! next byte or [`SseFramer::finish`]. Servers that end lines with LF never hit this.

/// The default bound on one event's size (raw bytes, line breaks included).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1 << 20;

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// One block of the stream, from its first byte up to and including the blank line that
/// ends it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// The `data` lines joined with `\n`; `None` when the block has no `data` field at all
    /// (a browser would not dispatch it). Invalid UTF-8 is replaced with U+FFFD.
    pub data: Option<String>,
    /// The `event` field (the event type); `None` means the default type, `message`.
    pub event: Option<String>,
    /// The `id` field of this block, if it has one (ids containing NUL are ignored).
    pub id: Option<String>,
    /// The `retry` field (reconnection time in milliseconds), if it is a valid number.
    pub retry: Option<u64>,
    /// The bytes of the block as received. Cut to the framer's limit if `truncated`.
    pub raw: Vec<u8>,
    /// How many bytes the block had in the stream (more than `raw.len()` if truncated).
    pub len: u64,
    /// The block was larger than the framer's limit: only its first bytes were kept, and
    /// the fields hold only what was parsed from complete lines within the limit. Such an
    /// event cannot be re-emitted from `raw`.
    pub truncated: bool,
}

impl SseEvent {
    /// Whether a browser would dispatch this block as an event (it has a `data` field).
    pub fn is_dispatchable(&self) -> bool {
        self.data.is_some()
    }
}

/// What is left when the stream ends, from [`SseFramer::finish`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEnd {
    /// Complete events still held back (at most one: see the module notes on CR).
    pub events: Vec<SseEvent>,
    /// A block that never got its terminating blank line. Its fields are what was parsed
    /// from its complete lines; it must not be treated as a delivered event.
    pub incomplete: Option<SseEvent>,
}

/// The incremental framer. Feed it with [`push`](Self::push) (or
/// [`push_with`](Self::push_with)) and close it with [`finish`](Self::finish).
#[derive(Debug, Clone)]
pub struct SseFramer {
    max_event_bytes: usize,
    /// The block being read (complete lines plus the start of the current line).
    block: SseEvent,
    /// Where the current, unfinished line starts in `block.raw`.
    line_start: usize,
    /// Length of the current line so far, counted even when its bytes are not kept.
    line_len: usize,
    /// The previous byte was a CR line break: an LF right after it belongs to it.
    after_cr: bool,
    /// A finished event whose blank line ended with CR at the end of the last chunk.
    held: Option<SseEvent>,
    /// No line of the stream is complete yet (a BOM can only be there).
    first_line: bool,
    last_event_id: Option<String>,
}

impl Default for SseFramer {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_EVENT_BYTES)
    }
}

impl SseFramer {
    /// A framer that keeps at most `max_event_bytes` of any one event (at least 1).
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            max_event_bytes: max_event_bytes.max(1),
            block: SseEvent::default(),
            line_start: 0,
            line_len: 0,
            after_cr: false,
            held: None,
            first_line: true,
            last_event_id: None,
        }
    }

    /// The configured bound on one event's size.
    pub fn max_event_bytes(&self) -> usize {
        self.max_event_bytes
    }

    /// The last `id` seen on the stream (what a client would send as `Last-Event-ID`).
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    /// Bytes held for the unfinished event (never more than the limit, plus one held
    /// event).
    pub fn buffered_bytes(&self) -> usize {
        self.block.raw.len() + self.held.as_ref().map_or(0, |e| e.raw.len())
    }

    /// Feeds the next chunk and returns the events it completed, in order.
    pub fn push(&mut self, chunk: &[u8]) -> Vec<SseEvent> {
        let mut events = Vec::new();
        self.push_with(chunk, |e| events.push(e));
        events
    }

    /// Feeds the next chunk and hands each completed event to `emit`, in order.
    pub fn push_with(&mut self, mut chunk: &[u8], mut emit: impl FnMut(SseEvent)) {
        if chunk.is_empty() {
            return;
        }
        if let Some(mut held) = self.held.take() {
            self.after_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                append_raw(&mut held, b"\n", self.max_event_bytes);
                chunk = rest;
            }
            emit(held);
        }
        while !chunk.is_empty() {
            if self.after_cr {
                self.after_cr = false;
                if let Some(rest) = chunk.strip_prefix(b"\n") {
                    append_raw(&mut self.block, b"\n", self.max_event_bytes);
                    self.line_start = self.block.raw.len();
                    chunk = rest;
                    continue;
                }
            }
            let Some(pos) = chunk.iter().position(|&b| b == b'\r' || b == b'\n') else {
                append_raw(&mut self.block, chunk, self.max_event_bytes);
                self.line_len += chunk.len();
                return;
            };
            let (line, rest) = chunk.split_at(pos);
            let Some((&terminator, rest)) = rest.split_first() else {
                return; // `pos` is in bounds, so this does not happen.
            };
            append_raw(&mut self.block, line, self.max_event_bytes);
            append_raw(&mut self.block, &[terminator], self.max_event_bytes);
            self.line_len += line.len();
            chunk = rest;
            // The line is parsed before the LF of a CRLF is appended, so that where the
            // chunk boundary falls cannot change what fits within the size limit.
            let blank = self.end_line();
            if terminator == b'\r' {
                self.after_cr = true;
            }
            if blank {
                let mut event = self.take_block();
                if self.after_cr {
                    match chunk.strip_prefix(b"\n") {
                        Some(rest) => {
                            append_raw(&mut event, b"\n", self.max_event_bytes);
                            chunk = rest;
                            self.after_cr = false;
                        }
                        None if chunk.is_empty() => {
                            self.held = Some(event);
                            return;
                        }
                        None => self.after_cr = false,
                    }
                }
                emit(event);
            }
        }
    }

    /// Ends the stream: returns a held event, and the unfinished block, if any. The framer
    /// is then ready for a new stream.
    pub fn finish(&mut self) -> SseEnd {
        let events = self.held.take().into_iter().collect();
        let incomplete = (self.block.len > 0).then(|| self.take_block());
        *self = Self::new(self.max_event_bytes);
        SseEnd { events, incomplete }
    }

    /// Finishes the current line: parses its field and says whether it was blank.
    fn end_line(&mut self) -> bool {
        let line_len = std::mem::take(&mut self.line_len);
        let first_line = std::mem::replace(&mut self.first_line, false);
        let line_start = std::mem::replace(&mut self.line_start, self.block.raw.len());
        if self.block.truncated {
            return line_len == 0;
        }
        let Some(mut line) = self.block.raw.get(line_start..line_start + line_len) else {
            return line_len == 0;
        };
        if first_line {
            line = line.strip_prefix(BOM).unwrap_or(line);
        }
        if line.is_empty() {
            return true;
        }
        let (name, value) = match line.iter().position(|&b| b == b':') {
            Some(0) => return false, // A comment.
            Some(colon) => {
                let (name, value) = line.split_at(colon);
                let value = value.get(1..).unwrap_or_default();
                (name, value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        let value = String::from_utf8_lossy(value);
        match name {
            b"data" => {
                let data = self.block.data.get_or_insert_with(String::new);
                data.push_str(&value);
                data.push('\n');
            }
            b"event" => self.block.event = Some(value.into_owned()),
            b"id" if !value.contains('\0') => {
                self.block.id = Some(value.to_string());
                self.last_event_id = Some(value.into_owned());
            }
            b"retry" if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) => {
                self.block.retry = value.parse().ok();
            }
            _ => {}
        }
        false
    }

    fn take_block(&mut self) -> SseEvent {
        self.line_start = 0;
        self.line_len = 0;
        let mut event = std::mem::take(&mut self.block);
        if let Some(data) = event.data.as_mut()
            && data.ends_with('\n')
        {
            data.pop();
        }
        event
    }
}

/// Appends to an event's raw bytes, keeping at most `max` of them.
fn append_raw(event: &mut SseEvent, bytes: &[u8], max: usize) {
    event.len += bytes.len() as u64;
    if event.truncated {
        return;
    }
    let room = max.saturating_sub(event.raw.len());
    if bytes.len() > room {
        event.raw.extend_from_slice(bytes.get(..room).unwrap_or_default());
        event.truncated = true;
    } else {
        event.raw.extend_from_slice(bytes);
    }
}

/// Rebuilds an event around new data, with LF line endings.
pub fn write_event(out: &mut Vec<u8>, event: &SseEvent, data: &str) {
    if let Some(name) = &event.event {
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(name.as_bytes());
        out.push(b'\n');
    }
    if let Some(id) = &event.id {
        out.extend_from_slice(b"id: ");
        out.extend_from_slice(id.as_bytes());
        out.push(b'\n');
    }
    if let Some(retry) = event.retry {
        out.extend_from_slice(format!("retry: {retry}\n").as_bytes());
    }
    for line in data.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all(framer: &mut SseFramer, chunks: &[&[u8]]) -> (Vec<SseEvent>, SseEnd) {
        let mut events = Vec::new();
        for chunk in chunks {
            events.extend(framer.push(chunk));
        }
        let end = framer.finish();
        (events, end)
    }

    /// Events and tail, with held events folded in, for comparisons across splits.
    fn run(input: &[u8], chunks: &[&[u8]], max: usize) -> (Vec<SseEvent>, Option<SseEvent>) {
        let joined: Vec<u8> = chunks.concat();
        assert_eq!(joined, input);
        let mut framer = SseFramer::new(max);
        let (mut events, end) = feed_all(&mut framer, chunks);
        events.extend(end.events);
        (events, end.incomplete)
    }

    fn data(s: &str) -> Option<String> {
        Some(s.to_owned())
    }

    #[test]
    fn parses_fields_and_joins_data_lines() {
        let mut f = SseFramer::default();
        let events = f.push(b"event: message\nid: 7\nretry: 1500\ndata: {\"a\":\ndata:1}\n\n");
        assert_eq!(events.len(), 1);
        let e = &events[0];
        assert_eq!(e.event.as_deref(), Some("message"));
        assert_eq!(e.id.as_deref(), Some("7"));
        assert_eq!(e.retry, Some(1500));
        assert_eq!(e.data, data("{\"a\":\n1}"));
        assert_eq!(e.raw, b"event: message\nid: 7\nretry: 1500\ndata: {\"a\":\ndata:1}\n\n");
        assert_eq!(e.len, e.raw.len() as u64);
        assert!(!e.truncated);
        assert_eq!(f.last_event_id(), Some("7"));
        assert_eq!(f.finish(), SseEnd::default());
    }

    #[test]
    fn follows_the_whatwg_field_rules() {
        let mut f = SseFramer::default();
        let events = f.push(b": comment\ndata\ndata:  two spaces\nfoo: bar\nid: a\0b\nretry: 12x\nevent\n\n");
        let e = &events[0];
        // `data` alone is an empty data line; only one leading space is removed.
        assert_eq!(e.data, data("\n two spaces"));
        assert_eq!(e.id, None, "an id with NUL is ignored");
        assert_eq!(e.retry, None, "a non-numeric retry is ignored");
        assert_eq!(e.event.as_deref(), Some(""));
    }

    #[test]
    fn blocks_without_data_are_yielded_but_not_dispatchable() {
        let mut f = SseFramer::default();
        let events = f.push(b": keep-alive\n\nid: 9\n\n\ndata:\n\n");
        let raws: Vec<&[u8]> = events.iter().map(|e| e.raw.as_slice()).collect();
        assert_eq!(raws, [&b": keep-alive\n\n"[..], b"id: 9\n\n", b"\n", b"data:\n\n"]);
        let dispatchable: Vec<_> = events.iter().map(SseEvent::is_dispatchable).collect();
        assert_eq!(dispatchable, [false, false, false, true]);
        assert_eq!(events[3].data, data(""));
        assert_eq!(f.last_event_id(), Some("9"));
    }

    #[test]
    fn handles_crlf_lf_and_cr_line_breaks() {
        let input = b"data: a\r\ndata: b\r\n\r\ndata: c\rdata: d\r\rdata: e\ndata: f\n\n";
        let mut f = SseFramer::default();
        let mut events = f.push(input);
        let end = f.finish();
        events.extend(end.events);
        assert_eq!(end.incomplete, None);
        let got: Vec<_> = events.iter().map(|e| e.data.clone()).collect();
        assert_eq!(got, [data("a\nb"), data("c\nd"), data("e\nf")]);
        assert_eq!(events[0].raw, b"data: a\r\ndata: b\r\n\r\n");
        assert_eq!(events[1].raw, b"data: c\rdata: d\r\r");
    }

    #[test]
    fn a_cr_at_the_end_of_a_chunk_holds_the_event_for_its_lf() {
        let mut f = SseFramer::default();
        assert!(f.push(b"data: x\r\n\r").is_empty());
        let events = f.push(b"\ndata: y\r\n\r\n");
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].raw, b"data: x\r\n\r\n");
        assert_eq!(events[1].raw, b"data: y\r\n\r\n");

        // A bare CR followed by something else releases the event as it is.
        let mut f = SseFramer::default();
        assert!(f.push(b"data: x\r\r").is_empty());
        let events = f.push(b"data: y\r\r");
        assert_eq!(events[0].raw, b"data: x\r\r");
        let end = f.finish();
        assert_eq!(end.events.len(), 1, "the held event is complete at end of stream");
        assert_eq!(end.events[0].data, data("y"));
        assert_eq!(end.incomplete, None);
    }

    #[test]
    fn ignores_a_leading_bom_only_at_the_start() {
        let mut f = SseFramer::default();
        let events = f.push(b"\xEF\xBB\xBFdata: a\n\n\xEF\xBB\xBFdata: b\n\n");
        assert_eq!(events[0].data, data("a"));
        assert_eq!(events[0].raw, b"\xEF\xBB\xBFdata: a\n\n");
        // A BOM later in the stream is part of the field name, so the field is unknown.
        assert_eq!(events[1].data, None);

        let mut f = SseFramer::default();
        let events = f.push(b"\xEF\xBB\xBF\n");
        assert_eq!(events.len(), 1, "a BOM-only first line is blank");
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        let mut f = SseFramer::default();
        let events = f.push(b"data: \xFF\xC3(\n\n");
        assert_eq!(events[0].data, data("\u{FFFD}\u{FFFD}("));
        assert_eq!(events[0].raw, b"data: \xFF\xC3(\n\n");
    }

    #[test]
    fn finish_reports_a_trailing_partial_event_as_incomplete() {
        let mut f = SseFramer::default();
        let events = f.push(b"data: done\n\ndata: half\nid: 3\ndata: wa");
        assert_eq!(events.len(), 1);
        let end = f.finish();
        assert!(end.events.is_empty());
        let tail = end.incomplete.expect("an incomplete tail");
        assert_eq!(tail.data, data("half"), "only complete lines are parsed");
        assert_eq!(tail.id.as_deref(), Some("3"));
        assert_eq!(tail.raw, b"data: half\nid: 3\ndata: wa");

        // Finishing resets the framer for a new stream.
        assert_eq!(f.finish(), SseEnd::default());
        assert_eq!(f.push(b"\xEF\xBB\xBFdata: new\n\n")[0].data, data("new"));
    }

    #[test]
    fn an_oversize_event_is_cut_and_flagged_and_the_buffer_stays_bounded() {
        let max = 32;
        let mut f = SseFramer::new(max);
        let big = format!("data: {}\n", "x".repeat(100));
        let mut events = Vec::new();
        events.extend(f.push(b"id: 1\ndata: kept\n"));
        for _ in 0..50 {
            events.extend(f.push(big.as_bytes()));
            assert!(f.buffered_bytes() <= max);
        }
        events.extend(f.push(b"\ndata: next\n\n"));
        assert_eq!(events.len(), 2);
        let e = &events[0];
        assert!(e.truncated);
        assert_eq!(e.raw.len(), max);
        assert_eq!(e.len, (6 + 11 + 50 * big.len() + 1) as u64);
        assert_eq!(e.data, data("kept"), "lines within the limit are still parsed");
        assert_eq!(e.id.as_deref(), Some("1"));
        assert_eq!(events[1].data, data("next"));
        assert!(!events[1].truncated);
    }

    #[test]
    fn a_line_that_does_not_fit_is_not_parsed() {
        // The limit falls on the LF of `data: b\n`: the line is not complete within it.
        let input = b"data: a\ndata: b\n\n";
        let (events, _) = run(input, &[input], 15);
        assert!(events[0].truncated);
        assert_eq!(events[0].data, data("a"));
        assert_eq!(events[0].len, input.len() as u64);
    }

    const STREAM: &[u8] = b"\xEF\xBB\xBF: hello\r\n\r\nevent: message\r\nid: 1\r\ndata: {\"jsonrpc\":\"2.0\",\r\ndata: \"id\":1,\"result\":{\"t\":\"h\xC3\xA9llo \xE2\x82\xAC \xF0\x9F\x98\x80\"}}\r\n\r\nretry: 10\rdata: cr only\r\rdata: lf\nid: 2\n\n: ping\n\ndata: mixed\r\n\ndata: last\r\n\r\ndata: tail";

    #[test]
    fn every_split_point_yields_the_same_events() {
        let (whole, whole_tail) = run(STREAM, &[STREAM], DEFAULT_MAX_EVENT_BYTES);
        assert_eq!(whole.iter().filter(|e| e.is_dispatchable()).count(), 5);
        assert!(whole_tail.is_some());
        // Lossless: the raw bytes of all events and the tail are the stream.
        let mut rebuilt: Vec<u8> = whole.iter().flat_map(|e| e.raw.clone()).collect();
        rebuilt.extend(whole_tail.as_ref().map(|t| t.raw.clone()).unwrap_or_default());
        assert_eq!(rebuilt, STREAM);
        assert!(
            whole[1]
                .data
                .as_deref()
                .unwrap()
                .contains("h\u{e9}llo \u{20ac} \u{1F600}")
        );

        for i in 0..=STREAM.len() {
            let (a, b) = STREAM.split_at(i);
            assert_eq!(
                run(STREAM, &[a, b], DEFAULT_MAX_EVENT_BYTES),
                (whole.clone(), whole_tail.clone()),
                "split at {i}"
            );
            for j in i..=STREAM.len() {
                let (b, c) = STREAM[i..].split_at(j - i);
                assert_eq!(
                    run(STREAM, &[a, b, c], DEFAULT_MAX_EVENT_BYTES),
                    (whole.clone(), whole_tail.clone()),
                    "split at {i} and {j}"
                );
            }
        }
        let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
        assert_eq!(run(STREAM, &bytes, DEFAULT_MAX_EVENT_BYTES), (whole, whole_tail));
    }

    #[test]
    fn every_split_point_yields_the_same_events_under_a_small_limit() {
        for max in [1, 7, 20, 40, 64] {
            let whole = run(STREAM, &[STREAM], max);
            assert!(whole.0.iter().any(|e| e.truncated), "limit {max}");
            for i in 0..=STREAM.len() {
                let (a, b) = STREAM.split_at(i);
                assert_eq!(run(STREAM, &[a, b], max), whole, "limit {max}, split at {i}");
            }
            let bytes: Vec<&[u8]> = STREAM.chunks(1).collect();
            assert_eq!(run(STREAM, &bytes, max), whole, "limit {max}, byte by byte");
        }
    }
}
