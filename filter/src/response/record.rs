//! The records of one answer (`ResponseObserved`, one per part): numbered from 0, each
//! saying what the answer was at that moment; a JSON answer is one final part, an SSE answer
//! a part per event and a final part. Messages are already masked with nothing revealed when
//! they get here; this module only cuts them to the record bound and reads their JSON-RPC id
//! and error.
//!
//! `withheld` and `end_reason` are typed here ([`Withheld`], [`EndReason`], the audit
//! events' own); the ingest proto carries their text.

use std::collections::HashMap;

use gatehouse_core::events::{EndReason, Withheld};
use gatehouse_core::mask::{MaskCounts, MaskedEvent};
use gatehouse_core::mcp;
use gatehouse_proto::audit::v1::ResponseObserved;

/// What every part says about its answer when it is recorded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Facts {
    pub http_status: u32,
    pub content_type: String,
    /// Body bytes from the upstream so far.
    pub body_bytes: u64,
    pub withheld: Option<Withheld>,
    /// The kinds the client may see in clear (never the record).
    pub revealed: Vec<String>,
    pub now_ms: u64,
}

/// Numbers the parts of one answer and builds them.
#[derive(Debug)]
pub(super) struct Parts {
    request_id: String,
    next: u32,
    /// The upstream's session id the answer set, for the first part.
    pub session_id: Option<String>,
    /// Largest message kept in one record (`truncated` beyond it).
    record_max: usize,
}

impl Parts {
    pub fn new(request_id: &str, record_max: usize) -> Self {
        Self {
            request_id: request_id.to_owned(),
            next: 0,
            session_id: None,
            record_max,
        }
    }

    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    fn next(&mut self, at: Facts) -> ResponseObserved {
        let part = self.next;
        self.next = self.next.saturating_add(1);
        ResponseObserved {
            request_id: self.request_id.clone(),
            part,
            http_status: at.http_status,
            content_type: at.content_type,
            body_bytes: at.body_bytes,
            observed_at_unix_ms: at.now_ms,
            withheld: at.withheld.map(Withheld::as_str).unwrap_or_default().to_owned(),
            revealed: at.revealed,
            session_id: if part == 0 {
                self.session_id.clone().unwrap_or_default()
            } else {
                String::new()
            },
            ..Default::default()
        }
    }

    /// The one, final part of an answer read whole: `record` is its body masked with nothing
    /// revealed (`counts`: what that masked); a JSON body is kept (up to the bound), other
    /// text only counted.
    pub fn whole(&mut self, at: Facts, record: &[u8], json: bool, counts: &MaskCounts) -> ResponseObserved {
        let mut last = self.next(at);
        if json {
            last.truncated = record.len() > self.record_max;
            if !last.truncated {
                summarize_into(record, &mut last);
            }
            last.message = record.get(..self.record_max).unwrap_or(record).to_vec();
        }
        last.masked = masked_map(counts);
        last.r#final = true;
        last.end_reason = EndReason::Complete.as_str().to_owned();
        last
    }

    /// Whether an SSE event gets a part: blocks without data (comments, keep-alives) do not;
    /// a withheld event does, even when none of its data could be parsed within the bound.
    pub fn records_event(event: &MaskedEvent) -> bool {
        event.data.is_some() || event.truncated
    }

    /// The part of one SSE event (see [`Parts::records_event`]).
    pub fn event(&mut self, at: Facts, event: MaskedEvent) -> ResponseObserved {
        let mut part = self.next(at);
        let data = event.data.unwrap_or_default().into_bytes();
        part.truncated = event.incomplete || event.truncated || data.len() > self.record_max;
        if !part.truncated {
            summarize_into(&data, &mut part);
        }
        if event.truncated {
            part.withheld = Withheld::EventTooLarge.as_str().to_owned();
        }
        part.message = match data.get(..self.record_max) {
            Some(cut) => cut.to_vec(),
            None => data,
        };
        part.sse_event_id = event.id.unwrap_or_default();
        part.masked = masked_map(&event.masked);
        part
    }

    /// The final part, without a message. `json`: the answer was a JSON message, which is
    /// marked cut when it did not arrive whole (it is then not recorded).
    pub fn last(&mut self, at: Facts, end_reason: EndReason, json: bool) -> ResponseObserved {
        let mut last = self.next(at);
        last.r#final = true;
        last.end_reason = end_reason.as_str().to_owned();
        last.truncated = end_reason != EndReason::Complete && json;
        last
    }
}

fn masked_map(counts: &MaskCounts) -> HashMap<String, u64> {
    counts.0.iter().map(|(kind, n)| (kind.clone(), *n)).collect()
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

/// The final part of a request whose answer never started (no response headers).
pub fn unanswered(request_id: &str, end_reason: EndReason, now_ms: u64) -> ResponseObserved {
    ResponseObserved {
        request_id: request_id.to_owned(),
        r#final: true,
        end_reason: end_reason.as_str().to_owned(),
        observed_at_unix_ms: now_ms,
        ..Default::default()
    }
}

/// Why a stream that did not end normally ended, from Envoy's response code details.
pub fn abort_reason(code_details: Option<&str>) -> EndReason {
    match code_details {
        Some(d) if d.contains("upstream") => EndReason::UpstreamReset,
        _ => EndReason::ClientGone,
    }
}

/// Whether Envoy itself withheld the answer: over its buffer limit it answers 500
/// (`response_payload_too_large`) while the filter holds the body.
pub fn withheld_by_envoy(code_details: Option<&str>) -> Option<Withheld> {
    code_details
        .filter(|d| d.contains("response_payload_too_large"))
        .map(|_| Withheld::TooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unanswered_requests_and_abort_reasons() {
        let p = unanswered("r6", EndReason::ClientGone, 7);
        assert!(p.r#final);
        assert_eq!((p.http_status, p.end_reason.as_str()), (0, "client_gone"));
        assert_eq!(
            abort_reason(Some("upstream_reset_after_response_started{remote_reset}")).as_str(),
            "upstream_reset"
        );
        assert_eq!(
            abort_reason(Some("downstream_remote_disconnect")).as_str(),
            "client_gone"
        );
        assert_eq!(abort_reason(None).as_str(), "client_gone");
        assert_eq!(
            withheld_by_envoy(Some("response_payload_too_large")).map(Withheld::as_str),
            Some("too_large")
        );
        assert_eq!(withheld_by_envoy(Some("via_upstream")), None);
    }

    fn facts(withheld: Option<Withheld>) -> Facts {
        Facts {
            http_status: 200,
            content_type: "text/event-stream".into(),
            body_bytes: 10,
            withheld,
            revealed: vec!["email".into()],
            now_ms: 5,
        }
    }

    #[test]
    fn parts_are_numbered_and_say_what_the_answer_was() {
        let mut parts = Parts::new("r1", 8);
        let event = MaskedEvent {
            data: Some(r#"{"jsonrpc":"2.0","id":3,"error":{"code":-1,"message":"m"}}"#.into()),
            ..MaskedEvent::default()
        };
        assert!(Parts::records_event(&event));
        // Over the bound: cut, and its id and error not read from a cut message.
        let p = parts.event(facts(None), event.clone());
        assert_eq!((p.part, p.truncated, p.message.len()), (0, true, 8));
        assert_eq!((p.jsonrpc_id.as_str(), p.is_error), ("", false));
        let mut parts = Parts::new("r1", 1 << 10);
        let p = parts.event(facts(None), event);
        assert_eq!((p.part, p.truncated, p.jsonrpc_id.as_str()), (0, false, "3"));
        assert_eq!((p.is_error, p.error_code), (true, -1));
        assert_eq!((p.request_id.as_str(), p.http_status, p.body_bytes), ("r1", 200, 10));
        assert_eq!(
            (p.revealed.as_slice(), p.observed_at_unix_ms),
            (&["email".to_owned()][..], 5)
        );
        assert!(!p.r#final && p.end_reason.is_empty() && p.withheld.is_empty());
        // A keep-alive is not recorded; an event withheld for its size is, and says so.
        assert!(!Parts::records_event(&MaskedEvent::default()));
        let withheld = MaskedEvent {
            truncated: true,
            ..MaskedEvent::default()
        };
        assert!(Parts::records_event(&withheld));
        let p = parts.event(facts(None), withheld);
        assert_eq!((p.part, p.withheld.as_str(), p.truncated), (1, "event_too_large", true));
        let p = parts.last(facts(Some(Withheld::Unreadable)), EndReason::Complete, false);
        assert_eq!((p.part, p.r#final, p.end_reason.as_str()), (2, true, "complete"));
        assert_eq!((p.withheld.as_str(), p.truncated), ("unreadable", false));
    }

    #[test]
    fn a_whole_answer_is_one_final_part_and_a_cut_one_is_marked() {
        let mut counts = MaskCounts::default();
        counts.add("email", 2);
        let body = br#"{"jsonrpc":"2.0","id":"a","result":{}}"#;
        let p = Parts::new("r1", 1 << 10).whole(facts(None), body, true, &counts);
        assert_eq!((p.part, p.r#final, p.end_reason.as_str()), (0, true, "complete"));
        assert_eq!((p.message.as_slice(), p.jsonrpc_id.as_str()), (&body[..], "\"a\""));
        assert_eq!(p.masked.get("email"), Some(&2));
        // Other text is counted, not kept.
        let p = Parts::new("r1", 1 << 10).whole(facts(None), b"text", false, &counts);
        assert!(p.message.is_empty() && !p.truncated && p.masked.get("email") == Some(&2));
        // A JSON message that never arrived whole is marked cut; a stream's end is not.
        let mut parts = Parts::new("r1", 1 << 10);
        assert!(parts.last(facts(None), EndReason::ClientGone, true).truncated);
        assert!(!parts.last(facts(None), EndReason::ClientGone, false).truncated);
        assert!(!parts.last(facts(None), EndReason::Complete, true).truncated);
    }
}
