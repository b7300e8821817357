//! Turning an upstream answer into `ResponseObserved` records, chunk by chunk.
//!
//! The bytes themselves pass through unchanged (the glue always continues); this only
//! watches them. A JSON answer becomes one final part; an SSE answer one part per event
//! plus a final part when the stream ends; anything else one final part without a
//! message. Nothing is ever held beyond one record's worth of JSON or one SSE event.

use gatehouse_core::mcp;
use gatehouse_core::sse::{SseEvent, SseFramer};
use gatehouse_proto::audit::v1::ResponseObserved;

use crate::request::media_type;

/// `end_reason` of a response that ended normally.
pub const END_COMPLETE: &str = "complete";
/// `end_reason` when the client went away (or the stream was reset) before the end.
pub const END_CLIENT_GONE: &str = "client_gone";
/// `end_reason` when the upstream reset the stream before the end.
pub const END_UPSTREAM_RESET: &str = "upstream_reset";

/// How the body of an answer is looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    Json,
    EventStream,
    Other,
}

impl BodyKind {
    pub fn of(content_type: Option<&str>) -> Self {
        let media = content_type.map(media_type).unwrap_or_default();
        if media.eq_ignore_ascii_case("application/json") {
            Self::Json
        } else if media.eq_ignore_ascii_case("text/event-stream") {
            Self::EventStream
        } else {
            Self::Other
        }
    }
}

/// Watches one answer. Feed it the body chunks; it hands out records to queue.
#[derive(Debug)]
pub struct ResponseObserver {
    request_id: String,
    http_status: u32,
    content_type: String,
    kind: BodyKind,
    record_max: usize,
    next_part: u32,
    body_bytes: u64,
    /// JSON body kept for the record, at most `record_max` bytes.
    json: Vec<u8>,
    json_truncated: bool,
    framer: Option<SseFramer>,
    finished: bool,
}

impl ResponseObserver {
    /// `record_max` bounds the message kept per record; `max_event_bytes` one SSE event.
    pub fn new(
        request_id: &str,
        http_status: u32,
        content_type: Option<&str>,
        record_max: usize,
        max_event_bytes: usize,
    ) -> Self {
        let kind = BodyKind::of(content_type);
        Self {
            request_id: request_id.to_owned(),
            http_status,
            content_type: content_type.unwrap_or_default().to_owned(),
            kind,
            record_max,
            next_part: 0,
            body_bytes: 0,
            json: Vec::new(),
            json_truncated: false,
            framer: (kind == BodyKind::EventStream).then(|| SseFramer::new(max_event_bytes)),
            finished: false,
        }
    }

    pub fn kind(&self) -> BodyKind {
        self.kind
    }

    /// Whether the final part has been produced.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Whether the glue must read the body bytes (or may just report their count).
    pub fn wants_bytes(&self) -> bool {
        !self.finished && self.kind != BodyKind::Other
    }

    /// One body chunk as the client receives it.
    pub fn on_chunk(&mut self, chunk: &[u8], now_ms: u64, out: &mut impl FnMut(ResponseObserved)) {
        if self.finished {
            return;
        }
        self.body_bytes += chunk.len() as u64;
        match self.kind {
            BodyKind::Json => {
                let room = self.record_max.saturating_sub(self.json.len());
                if chunk.len() > room {
                    self.json.extend_from_slice(chunk.get(..room).unwrap_or_default());
                    self.json_truncated = true;
                } else {
                    self.json.extend_from_slice(chunk);
                }
            }
            BodyKind::EventStream => {
                let Some(mut framer) = self.framer.take() else {
                    return;
                };
                framer.push_with(chunk, |event| self.event_part(&event, false, now_ms, out));
                self.framer = Some(framer);
            }
            BodyKind::Other => {}
        }
    }

    /// Body bytes that were not read (an `Other` answer, or bytes the host would not
    /// give): counted, and a JSON record is then marked truncated.
    pub fn on_unread(&mut self, len: usize) {
        if self.finished {
            return;
        }
        self.body_bytes += len as u64;
        if self.kind == BodyKind::Json && len > 0 {
            self.json_truncated = true;
        }
    }

    /// The answer ended normally (end of stream, or trailers).
    pub fn on_end(&mut self, now_ms: u64, out: &mut impl FnMut(ResponseObserved)) {
        self.close(END_COMPLETE, now_ms, out);
    }

    /// The stream ended before its end (client gone, reset): the final part says why.
    pub fn on_abort(&mut self, end_reason: &str, now_ms: u64, out: &mut impl FnMut(ResponseObserved)) {
        self.close(end_reason, now_ms, out);
    }

    fn close(&mut self, end_reason: &str, now_ms: u64, out: &mut impl FnMut(ResponseObserved)) {
        if self.finished {
            return;
        }
        if let Some(mut framer) = self.framer.take() {
            let end = framer.finish();
            for event in &end.events {
                self.event_part(event, false, now_ms, out);
            }
            // An event that never got its blank line was not delivered as an event; it
            // is recorded, flagged, so the trail shows what the client got.
            if let Some(tail) = end.incomplete.filter(SseEvent::is_dispatchable) {
                self.event_part(&tail, true, now_ms, out);
            }
        }
        let mut last = self.part(now_ms);
        if self.kind == BodyKind::Json {
            let message = std::mem::take(&mut self.json);
            last.truncated = self.json_truncated || end_reason != END_COMPLETE;
            if !last.truncated {
                summarize_into(&message, &mut last);
            }
            last.message = message;
        }
        last.r#final = true;
        last.end_reason = end_reason.to_owned();
        self.finished = true;
        out(last);
    }

    fn event_part(&mut self, event: &SseEvent, incomplete: bool, now_ms: u64, out: &mut impl FnMut(ResponseObserved)) {
        let Some(data) = event.data.as_deref() else {
            return;
        };
        let mut part = self.part(now_ms);
        let data = data.as_bytes();
        part.truncated = incomplete || event.truncated || data.len() > self.record_max;
        if !part.truncated {
            summarize_into(data, &mut part);
        }
        part.message = data.get(..self.record_max).unwrap_or(data).to_vec();
        part.sse_event_id = event.id.clone().unwrap_or_default();
        out(part);
    }

    fn part(&mut self, now_ms: u64) -> ResponseObserved {
        let part = self.next_part;
        self.next_part = self.next_part.saturating_add(1);
        ResponseObserved {
            request_id: self.request_id.clone(),
            part,
            http_status: self.http_status,
            content_type: self.content_type.clone(),
            body_bytes: self.body_bytes,
            observed_at_unix_ms: now_ms,
            ..Default::default()
        }
    }
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

    fn collect(f: impl FnOnce(&mut dyn FnMut(ResponseObserved))) -> Vec<ResponseObserved> {
        let mut parts = Vec::new();
        f(&mut |p| parts.push(p));
        parts
    }

    #[test]
    fn body_kinds_follow_the_media_type() {
        assert_eq!(BodyKind::of(Some("application/json; charset=utf-8")), BodyKind::Json);
        assert_eq!(BodyKind::of(Some("Text/Event-Stream")), BodyKind::EventStream);
        assert_eq!(BodyKind::of(Some("text/html")), BodyKind::Other);
        assert_eq!(BodyKind::of(None), BodyKind::Other);
    }

    #[test]
    fn a_json_answer_is_one_final_part() {
        let mut o = ResponseObserver::new("r1", 200, Some("application/json"), 1024, 1024);
        let body = br#"{"jsonrpc":"2.0","id":"x","error":{"code":-32601,"message":"no"}}"#;
        let (a, b) = body.split_at(10);
        let parts = collect(|out| {
            o.on_chunk(a, 1, &mut |p| out(p));
            o.on_chunk(b, 2, &mut |p| out(p));
            o.on_end(3, &mut |p| out(p));
            o.on_end(4, &mut |p| out(p));
            o.on_abort(END_CLIENT_GONE, 5, &mut |p| out(p));
        });
        assert_eq!(parts.len(), 1);
        let p = &parts[0];
        assert!(p.r#final);
        assert_eq!(
            (p.part, p.http_status, p.content_type.as_str()),
            (0, 200, "application/json")
        );
        assert_eq!(p.message, body);
        assert_eq!(p.body_bytes, body.len() as u64);
        assert_eq!(p.jsonrpc_id, "\"x\"");
        assert!(p.is_error);
        assert_eq!(p.error_code, -32601);
        assert_eq!(p.end_reason, "complete");
        assert_eq!(p.observed_at_unix_ms, 3);
        assert!(!p.truncated);
    }

    #[test]
    fn a_json_answer_over_the_record_limit_is_truncated() {
        let mut o = ResponseObserver::new("r1", 200, Some("application/json"), 8, 1024);
        let body = br#"{"jsonrpc":"2.0","id":1,"result":{}}"#;
        let parts = collect(|out| {
            o.on_chunk(body, 1, &mut |p| out(p));
            o.on_end(2, &mut |p| out(p));
        });
        assert_eq!(parts[0].message, &body[..8]);
        assert!(parts[0].truncated);
        assert_eq!(parts[0].body_bytes, body.len() as u64);
        assert_eq!(parts[0].jsonrpc_id, "", "a cut message is not parsed");
    }

    #[test]
    fn an_sse_answer_is_one_part_per_event_then_a_final_part() {
        let mut o = ResponseObserver::new("r2", 200, Some("text/event-stream"), 1024, 1024);
        let stream = b": ping\n\nid: e1\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\n\nid: e2\r\ndata: {\"jsonrpc\":\"2.0\",\"id\":5,\"result\":{}}\r\n\r\n";
        let parts = collect(|out| {
            for chunk in stream.chunks(7) {
                o.on_chunk(chunk, 1, &mut |p| out(p));
            }
            o.on_end(9, &mut |p| out(p));
        });
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].sse_event_id, "e1");
        assert_eq!(parts[0].jsonrpc_id, "");
        assert_eq!(parts[1].sse_event_id, "e2");
        assert_eq!(parts[1].jsonrpc_id, "5");
        assert_eq!(parts[1].message, br#"{"jsonrpc":"2.0","id":5,"result":{}}"#);
        assert!(!parts[0].r#final && !parts[1].r#final);
        let last = &parts[2];
        assert!(last.r#final);
        assert_eq!((last.part, last.end_reason.as_str()), (2, "complete"));
        assert!(last.message.is_empty());
        assert_eq!(last.body_bytes, stream.len() as u64);
    }

    #[test]
    fn an_sse_stream_cut_short_records_client_gone_and_flags_the_partial_event() {
        let mut o = ResponseObserver::new("r3", 200, Some("text/event-stream"), 1024, 1024);
        let parts = collect(|out| {
            o.on_chunk(b"data: 1\n\ndata: {\"half\n", 1, &mut |p| out(p));
            o.on_abort(END_CLIENT_GONE, 2, &mut |p| out(p));
        });
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0].message, b"1");
        assert_eq!(parts[1].message, b"{\"half");
        assert!(parts[1].truncated);
        assert_eq!((parts[2].r#final, parts[2].end_reason.as_str()), (true, "client_gone"));
        assert!(o.is_finished());
    }

    #[test]
    fn other_answers_are_one_final_part_without_message() {
        let mut o = ResponseObserver::new("r4", 202, None, 1024, 1024);
        assert!(!o.wants_bytes());
        let parts = collect(|out| {
            o.on_unread(5);
            o.on_end(1, &mut |p| out(p));
        });
        assert_eq!(parts.len(), 1);
        assert_eq!((parts[0].http_status, parts[0].body_bytes), (202, 5));
        assert!(parts[0].message.is_empty() && parts[0].r#final);
    }

    #[test]
    fn sse_events_over_the_record_limit_are_cut() {
        let mut o = ResponseObserver::new("r5", 200, Some("text/event-stream"), 4, 1024);
        let parts = collect(|out| o.on_chunk(b"data: 123456\n\n", 1, &mut |p| out(p)));
        assert_eq!(parts[0].message, b"1234");
        assert!(parts[0].truncated);
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
    }
}
