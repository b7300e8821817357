//! The state machine played as the host plays it: every kind of answer, split at every
//! byte where it matters, checked for what the client got and what the trail got.

use gatehouse_core::tools::ToolsHeaderError;
use gatehouse_core::wire::{CREDENTIAL_HEADER, REVEAL_HEADER, REVEAL_IDS_HEADER, TOOLS_HEADER};
use serde_json::json;

use super::*;

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
            (Withheld::CredentialRefused.as_str(), status.parse().unwrap())
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
        assert!(last.r#final && last.withheld == Withheld::Binary.as_str(), "{last:?}");
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
    r.on_abort(&masker, EndReason::ClientGone, None, 2, &mut |p| records.push(p));
    r.on_abort(&masker, EndReason::ClientGone, None, 3, &mut |p| records.push(p));
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
    r.on_abort(&masker, EndReason::UpstreamReset, None, 2, &mut |p| records.push(p));
    assert_eq!(records.len(), 1);
    assert!(records[0].truncated && records[0].message.is_empty());
    assert_eq!(records[0].end_reason, "upstream_reset");
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
    let plain =
        serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 7, "result": {"tools": [{"name": "echo"}, {"name": "x"}]}}))
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
    r.on_abort(&masker, EndReason::ClientGone, None, 2, &mut |p| records.push(p));
    assert_eq!(records.len(), 2);
    assert_eq!(records[0].message, b"1");
    assert!(records[1].r#final);
}
