//! The head of an answer: the headers the filter reads (the service's decisions among
//! them), how its body is handled by media type, and the header values that need masking.

use gatehouse_core::mask::{MaskCounts, Masker, Reveal, RevealPlan};
use gatehouse_core::mcp;
use gatehouse_core::tools::{ToolVisibility, ToolsHeaderError};
use gatehouse_core::wire::{
    CREDENTIAL_HEADER, REQUEST_ID_HEADER, REVEAL_HEADER, REVEAL_IDS_HEADER, SESSION_KEY_HEADER, TOOLS_HEADER,
};

use crate::request::media_type;

/// Headers the masker leaves alone: framing and protocol values the client needs as sent
/// (and the session id, which the filter tags itself).
const STRUCTURAL_HEADERS: &[&str] = &[
    ":status",
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "date",
    mcp::SESSION_ID_HEADER,
    mcp::PROTOCOL_VERSION_HEADER,
    REQUEST_ID_HEADER,
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
    /// The service's headers on this answer (`session_key`: the session key was there too),
    /// which the filter removes: the client never sees the service's decisions.
    pub fn decision_headers(&self, session_key: bool) -> impl Iterator<Item = &'static str> {
        [
            (REVEAL_HEADER, self.has_reveal_header),
            (REVEAL_IDS_HEADER, self.reveal_ids.is_some()),
            (TOOLS_HEADER, self.tools.is_some()),
            (CREDENTIAL_HEADER, self.credential.is_some()),
            (SESSION_KEY_HEADER, session_key),
        ]
        .into_iter()
        .filter_map(|(name, present)| present.then_some(name))
    }

    /// What each message of the answer may show: per request id for a batch, else
    /// `reveal` for all.
    pub fn reveal_plan(&self) -> RevealPlan {
        RevealPlan {
            all: self.reveal.clone(),
            by_id: self.reveal_ids.clone().flatten(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EMAIL: &str = "alice.smith@corp-mail.com";

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
    fn every_decision_of_the_service_on_the_answer_is_removed() {
        let none = ResponseHead::from_headers([(":status", &b"200"[..]), ("x-gatehouse-other", b"1")]);
        assert_eq!(none.decision_headers(false).count(), 0);
        let all = ResponseHead::from_headers([
            (REVEAL_HEADER, &b"-"[..]),
            (REVEAL_IDS_HEADER, b"*"),
            (TOOLS_HEADER, b"not json"),
            (CREDENTIAL_HEADER, b"aws_sigv4"),
        ]);
        let names: Vec<_> = all.decision_headers(true).collect();
        assert_eq!(
            names,
            [
                REVEAL_HEADER,
                REVEAL_IDS_HEADER,
                TOOLS_HEADER,
                CREDENTIAL_HEADER,
                SESSION_KEY_HEADER
            ]
        );
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
}
