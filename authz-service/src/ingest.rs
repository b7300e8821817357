//! Audit ingest (gRPC): response and rejection records reported by the wasm filter.
//!
//! A batch is acknowledged only after its records are committed, so the filter keeps (and
//! retries) anything the store did not take. A rejection's bearer token is verified to name
//! the caller and then dropped: it is never stored or logged.
//!
//! Anyone who reaches the listener can send records, and a request id is in every answer.
//! So a response is taken only for a request whose request record is committed (a rejection
//! only for one that has none), and a record that differs from a stored one for the same
//! request and part is stored flagged as a conflict rather than dropped: a forgery that
//! arrives first cannot push the filter's record out of the trail.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    sync::Arc,
};

use gatehouse_core::audit::canonical_json;
use gatehouse_core::events::{self, AuditEvent, Decision, ResponsePartObserved};
use gatehouse_core::mask::{MaskCounts, Masker, Reveal};
use gatehouse_proto::audit::v1::{
    IngestAck, IngestBatch, RequestRejected, ResponseObserved, audit_ingest_server::AuditIngest,
};
use serde_json::Value;
use tokio::sync::Mutex;

use crate::{
    AppState,
    audit::{IngestView, NewRecord},
};

/// The most filter sources whose drop counters are tracked at once.
const MAX_SOURCES: usize = 4096;

pub struct IngestService {
    state: Arc<AppState>,
    /// The latest `dropped_total` each filter source reported.
    dropped: Mutex<HashMap<String, u64>>,
    claims: Claims,
}

impl IngestService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self {
            state,
            dropped: Mutex::default(),
            claims: Claims::default(),
        }
    }
}

#[tonic::async_trait]
impl AuditIngest for IngestService {
    async fn ingest(&self, request: tonic::Request<IngestBatch>) -> Result<tonic::Response<IngestAck>, tonic::Status> {
        let batch = request.into_inner();
        let state = &self.state;
        state.metrics.ingest_batches.inc();
        self.note_dropped(&batch).await;

        // Records of one request are decided one batch at a time: two deliveries of the
        // same batch (a retry racing a slow first attempt) must not both look new.
        let ids: Vec<&str> = batch
            .responses
            .iter()
            .map(|r| r.request_id.as_str())
            .chain(batch.rejections.iter().map(|r| r.request_id.as_str()))
            .collect();
        let _claim = self.claims.claim(&ids).await;
        // And across replicas of one PostgreSQL database.
        let _shared_claim = match state.audit.store().claim_requests(&ids).await {
            Ok(claim) => claim,
            Err(error) => {
                tracing::error!(%error, "Could not claim the batch's requests in the audit store; the filter will retry.");
                return Err(tonic::Status::unavailable("audit store unavailable"));
            }
        };
        let parts: Vec<u64> = batch.responses.iter().map(|r| u64::from(r.part)).collect();
        let mut view = match state.audit.store().ingest_view(&ids, &parts).await {
            Ok(view) => view,
            Err(error) => {
                tracing::error!(%error, "Could not read the audit store; the filter will retry.");
                return Err(tonic::Status::unavailable("audit store unavailable"));
            }
        };
        let mut records = Vec::with_capacity(batch.responses.len() + batch.rejections.len());
        let mut refused = 0_u64;
        for r in &batch.responses {
            // The request record is committed before Envoy forwards, so a genuine answer
            // always finds it: one that does not was made up by someone else.
            if !view.requested.contains(&r.request_id) {
                refused += 1;
                continue;
            }
            let mut event = response_event(r, &batch.source, &state.masker);
            if view.metadata_only.contains(&r.request_id) {
                keep_metadata_only(&mut event, r.message.len() as u64);
            }
            if let Some(record) = admit(&mut view, &r.request_id, Some(u64::from(r.part)), event, state) {
                records.push(record);
            }
        }
        for r in &batch.rejections {
            // The filter rejects before ext_authz sees the request: a genuine rejection
            // never has a request record.
            if view.requested.contains(&r.request_id) {
                refused += 1;
                continue;
            }
            let subject = match r.bearer_token.as_str() {
                "" => None,
                token => state.identity.verify(token).await.ok().map(|p| p.subject),
            };
            let event = rejection_event(r, subject, &batch.source);
            if let Some(record) = admit(&mut view, &r.request_id, None, event, state) {
                records.push(record);
            }
        }
        if refused > 0 {
            state.metrics.ingest_refused.add(refused);
            tracing::warn!(
                source = %batch.source,
                refused,
                "Refused ingested records: responses to requests with no committed request record, or rejections of requests that have one."
            );
        }
        let accepted = records.len() as u32;
        state.metrics.ingest_records.add(u64::from(accepted));
        if records.is_empty() {
            return Ok(tonic::Response::new(IngestAck { accepted }));
        }
        match state.audit.append_lingering(records).await {
            Ok(_) => Ok(tonic::Response::new(IngestAck { accepted })),
            Err(error) => {
                tracing::error!(%error, source = %batch.source, "Could not store ingested records; the filter will retry.");
                Err(tonic::Status::unavailable("audit store unavailable"))
            }
        }
    }
}

impl IngestService {
    async fn note_dropped(&self, batch: &IngestBatch) {
        let mut dropped = self.dropped.lock().await;
        // Sources are chosen by the sender: bound the map (a restart of Envoy makes new ones).
        if dropped.len() >= MAX_SOURCES && !dropped.contains_key(&batch.source) {
            dropped.clear();
        }
        let previous = dropped.insert(batch.source.clone(), batch.dropped_total).unwrap_or(0);
        if batch.dropped_total > previous {
            tracing::warn!(source = %batch.source, dropped_total = batch.dropped_total, "A filter dropped audit records because its buffer was full.");
            self.state
                .metrics
                .filter_dropped_reported
                .add(batch.dropped_total - previous);
        }
    }
}

/// Whether a filter record is stored, and as what: an identical copy of a stored record is a
/// retry (nothing stored); a different one for the same request and part is stored with
/// `"conflict": true`, so neither version is lost and auditors see both.
fn admit(
    view: &mut IngestView,
    request_id: &str,
    part: Option<u64>,
    event: AuditEvent,
    state: &AppState,
) -> Option<NewRecord> {
    let encode = |event: AuditEvent| match NewRecord::from_event(request_id, event) {
        Ok(record) => Some(record),
        Err(error) => {
            tracing::error!(request_id, %error, "Could not encode an ingested record; it is not stored.");
            None
        }
    };
    // A rejection retried after its token expired (or while the issuer's keys could not be
    // fetched) names no subject: the stored delivery that does is the same record.
    let lost_subject = matches!(&event, AuditEvent::RequestRejected(e) if e.subject.is_none());
    let record = encode(event)?;
    let stored = view.stored.entry((request_id.to_owned(), part)).or_default();
    // Nothing stored for this part (the usual case): nothing to compare with.
    if !stored.is_empty() {
        let canonical = unflagged(&record.data, lost_subject);
        if stored.iter().any(|s| unflagged(s, lost_subject) == canonical) {
            return None;
        }
    }
    let conflict = !stored.is_empty();
    stored.push(record.data.clone());
    if !conflict {
        return Some(record);
    }
    state.metrics.ingest_conflicts.inc();
    // Rare: the event is read back from its data to be flagged, not edited as JSON.
    let mut event = match AuditEvent::from_record(record.kind.as_str(), &record.data) {
        Ok(event) => event,
        Err(error) => {
            tracing::error!(request_id, %error, "Could not flag an ingested record as a conflict; it is not stored.");
            return None;
        }
    };
    let source = match &mut event {
        AuditEvent::Response(e) => {
            e.conflict = true;
            e.source.clone()
        }
        AuditEvent::RequestRejected(e) => {
            e.conflict = true;
            e.source.clone()
        }
        AuditEvent::Request(_) | AuditEvent::Approval(_) | AuditEvent::ConfigChanged(_) => "-".to_owned(),
    };
    tracing::warn!(
        request_id,
        part,
        source,
        "An ingested record differs from the stored one for the same request and part; both are kept, this one flagged as a conflict."
    );
    encode(event)
}

/// A filter record's data as hashed, without what the service added (the conflict flag, and
/// with `without_subject` the subject it verified): what two deliveries of one record have in
/// common.
fn unflagged(data: &Value, without_subject: bool) -> Vec<u8> {
    match data {
        // Most records have nothing to leave out: no copy of their message.
        Value::Object(fields)
            if !(fields.contains_key("conflict") || without_subject && fields.contains_key("subject")) =>
        {
            canonical_json(data)
        }
        Value::Object(fields) => {
            let mut fields = fields.clone();
            fields.remove("conflict");
            if without_subject {
                fields.remove("subject");
            }
            canonical_json(&Value::Object(fields))
        }
        other => canonical_json(other),
    }
}

/// The request ids whose records an ingest is deciding on right now.
#[derive(Default)]
struct Claims {
    held: std::sync::Mutex<HashSet<String>>,
    released: tokio::sync::Notify,
}

/// Releases its request ids when dropped (the ingest finished or was cancelled).
struct Claim<'a> {
    claims: &'a Claims,
    ids: Vec<String>,
}

impl Claims {
    /// Waits until no other ingest holds any of `ids`, then holds them.
    async fn claim(&self, ids: &[&str]) -> Claim<'_> {
        loop {
            // Registered before the check, so a release between the check and the wait
            // still wakes this task.
            let released = self.released.notified();
            {
                let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if !ids.iter().any(|id| held.contains(*id)) {
                    let ids: Vec<String> = ids.iter().map(|id| (*id).to_owned()).collect();
                    held.extend(ids.iter().cloned());
                    return Claim { claims: self, ids };
                }
            }
            released.await;
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut held = self
            .claims
            .held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for id in &self.ids {
            held.remove(id);
        }
        drop(held);
        self.claims.released.notify_waiters();
    }
}

/// Leaves an answer's content out under `metadata` recording: its message becomes `null`,
/// and `content` holds its size and the SHA-256 of the masked message left out.
fn keep_metadata_only(event: &mut AuditEvent, bytes: u64) {
    if let AuditEvent::Response(part) = event {
        let message = std::mem::take(&mut part.message);
        if !message.is_null() {
            part.content = Some(crate::recording::digest(bytes, &message));
        }
    }
}

/// The message as JSON when it parses, else as text (a truncated or non-JSON body).
fn message_value(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

/// Empty proto strings are "not sent": the record says `null`.
fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// The record of one response part. The filter masked the message already; it is masked
/// again here (nothing revealed) so that a misconfigured or outdated filter cannot put a
/// clear value into the trail. What this second pass finds is counted and logged (kinds
/// only).
pub fn response_event(r: &ResponseObserved, source: &str, masker: &Masker) -> AuditEvent {
    let mut message = message_value(&r.message);
    let mut found = MaskCounts::default();
    match &mut message {
        Value::String(text) => {
            if let Cow::Owned(masked) = masker.mask_text(text, &Reveal::none(), &mut found) {
                *text = masked;
            }
        }
        Value::Null => {}
        other => {
            masker.mask_message(other, &Reveal::none(), &mut found);
        }
    }
    let mut masked = MaskCounts(r.masked.clone().into_iter().collect());
    if !found.is_empty() {
        tracing::warn!(source, request_id = %r.request_id, kinds = ?found.0.keys().collect::<Vec<_>>(), "A response record from the filter held values the service had to mask; is the filter's masking configuration current?");
        masked.merge(&found);
    }
    ResponsePartObserved {
        part: r.part,
        is_final: r.r#final,
        http_status: r.http_status,
        content_type: non_empty(&r.content_type),
        message,
        masked: masked.0,
        revealed: r.revealed.clone(),
        withheld: non_empty(&r.withheld),
        truncated: r.truncated,
        body_bytes: r.body_bytes,
        observed_at_unix_ms: r.observed_at_unix_ms,
        sse_event_id: non_empty(&r.sse_event_id),
        jsonrpc_id: non_empty(&r.jsonrpc_id),
        is_error: r.is_error,
        error_code: r.is_error.then_some(r.error_code),
        end_reason: non_empty(&r.end_reason),
        source: source.to_owned(),
        session_id: non_empty(&r.session_id),
        content: None,
        conflict: false,
    }
    .into()
}

fn rejection_event(r: &RequestRejected, subject: Option<String>, source: &str) -> AuditEvent {
    events::RequestRejected {
        subject,
        http_status: r.http_status,
        jsonrpc_code: r.jsonrpc_code,
        reason: r.reason.clone(),
        http_method: r.http_method.clone(),
        path: r.path.clone(),
        session_id: non_empty(&r.session_id),
        protocol_version: non_empty(&r.protocol_version),
        mcp_method: non_empty(&r.jsonrpc_method),
        observed_at_unix_ms: r.observed_at_unix_ms,
        decision: Decision::Deny,
        source: source.to_owned(),
        conflict: false,
    }
    .into()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use gatehouse_proto::audit::v1::audit_ingest_client::AuditIngestClient;

    use gatehouse_core::audit::RecordKind;
    use serde_json::json;

    use super::*;
    use crate::{audit::RecordQuery, test_support};

    fn batch(token: &str) -> IngestBatch {
        IngestBatch {
            source: "gatehouse/test/1".into(),
            responses: vec![ResponseObserved {
                request_id: "a".repeat(32),
                part: 0,
                r#final: true,
                http_status: 200,
                content_type: "application/json".into(),
                message: br#"{"jsonrpc":"2.0","id":1,"result":{"x":0.1}}"#.to_vec(),
                jsonrpc_id: "1".into(),
                end_reason: "complete".into(),
                ..Default::default()
            }],
            rejections: vec![RequestRejected {
                request_id: "b".repeat(32),
                http_status: 400,
                jsonrpc_code: -32700,
                reason: "invalid JSON".into(),
                http_method: "POST".into(),
                path: "/mcp".into(),
                bearer_token: token.into(),
                ..Default::default()
            }],
            dropped_total: 0,
        }
    }

    async fn client(server: &crate::server::Server) -> AuditIngestClient<tonic::transport::Channel> {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr)).unwrap();
        AuditIngestClient::new(channel.connect().await.unwrap())
    }

    /// The request record the service commits before Envoy forwards request `id`.
    async fn requested(server: &crate::server::Server, id: &str) {
        server
            .state
            .audit
            .append_one(RecordKind::Request, id, json!({"decision": "allow"}))
            .await
            .unwrap();
    }

    fn alice_token(server: &crate::server::Server) -> String {
        server
            .state
            .dev_issuer
            .as_ref()
            .unwrap()
            .mint("alice", &BTreeSet::new(), "gatehouse", 60)
            .unwrap()
    }

    fn filter_records(all: &[gatehouse_core::audit::Record]) -> Vec<&gatehouse_core::audit::Record> {
        all.iter()
            .filter(|r| r.kind != "request" && r.kind != "config_changed")
            .collect()
    }

    #[tokio::test]
    async fn a_retried_batch_is_stored_once_and_rejections_name_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let server = test_support::start(dir.path()).await;
        requested(&server, &"a".repeat(32)).await;
        let token = alice_token(&server);
        let mut client = client(&server).await;
        assert_eq!(client.ingest(batch(&token)).await.unwrap().into_inner().accepted, 2);
        // The same batch again, as after a lost answer: nothing new.
        assert_eq!(client.ingest(batch(&token)).await.unwrap().into_inner().accepted, 0);

        let all = server.state.audit.store().list(&RecordQuery::default()).await.unwrap();
        assert_eq!(filter_records(&all).len(), 2);
        let rejection = all.iter().find(|r| r.kind == "request_rejected").unwrap();
        assert_eq!(rejection.data["subject"], "alice");
        let stored = serde_json::to_string(&all).unwrap();
        assert!(!stored.contains(&token), "the bearer token must never be stored");
        let response = all.iter().find(|r| r.kind == "response").unwrap();
        assert_eq!(response.data["message"]["result"]["x"], 0.1);
        assert!(response.data.get("conflict").is_none());
        assert_eq!(server.state.metrics.ingest_conflicts.get(), 0);
        server.stop();
    }

    #[tokio::test]
    async fn a_different_record_for_a_stored_part_is_kept_and_flagged() {
        let dir = tempfile::tempdir().unwrap();
        let server = test_support::start(dir.path()).await;
        let id = "a".repeat(32);
        requested(&server, &id).await;
        let mut client = client(&server).await;
        let mut forged = batch("");
        forged.rejections.clear();
        forged.responses[0].message = br#"{"jsonrpc":"2.0","id":1,"result":{"x":"forged"}}"#.to_vec();
        assert_eq!(client.ingest(forged.clone()).await.unwrap().into_inner().accepted, 1);
        let mut genuine = batch("");
        genuine.rejections.clear();
        assert_eq!(client.ingest(genuine.clone()).await.unwrap().into_inner().accepted, 1);
        // Retries of either are still retries.
        assert_eq!(client.ingest(genuine).await.unwrap().into_inner().accepted, 0);
        assert_eq!(client.ingest(forged).await.unwrap().into_inner().accepted, 0);

        let store = server.state.audit.store();
        let responses = store.request_records(&id, 100).await.unwrap();
        let responses: Vec<_> = responses.iter().filter(|r| r.kind == "response").collect();
        assert_eq!(responses.len(), 2);
        assert_eq!(responses[0].data["message"]["result"]["x"], "forged");
        assert!(responses[0].data.get("conflict").is_none());
        assert_eq!(responses[1].data["message"]["result"]["x"], 0.1);
        assert_eq!(responses[1].data["conflict"], true);
        assert_eq!(server.state.metrics.ingest_conflicts.get(), 1);
        let conflicts = store.conflicts(10).await.unwrap();
        assert_eq!(conflicts.len(), 1);
        assert_eq!(conflicts[0].request_id, id);
        assert_eq!(conflicts[0].part, Some(0));
        let seqs: Vec<u64> = conflicts[0].records.iter().map(|(_, seq)| *seq).collect();
        assert_eq!(seqs, vec![responses[0].seq, responses[1].seq]);
        server.stop();
    }

    #[tokio::test]
    async fn a_rejection_retried_after_its_token_expired_is_a_retry() {
        let dir = tempfile::tempdir().unwrap();
        let server = test_support::start(dir.path()).await;
        let token = alice_token(&server);
        let mut client = client(&server).await;
        let mut first = batch(&token);
        first.responses.clear();
        assert_eq!(client.ingest(first.clone()).await.unwrap().into_inner().accepted, 1);
        // The same delivery, now verifying to no one: nothing new, nothing flagged.
        let mut retry = first.clone();
        retry.rejections[0].bearer_token = "expired".into();
        assert_eq!(client.ingest(retry).await.unwrap().into_inner().accepted, 0);
        // A different rejection for the same request is a conflict, subject or not.
        let mut other = first;
        other.rejections[0].bearer_token = String::new();
        other.rejections[0].reason = "something else".into();
        assert_eq!(client.ingest(other).await.unwrap().into_inner().accepted, 1);
        assert_eq!(server.state.metrics.ingest_conflicts.get(), 1);
        server.stop();
    }

    #[tokio::test]
    async fn records_that_cannot_be_the_filters_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let server = test_support::start(dir.path()).await;
        let mut client = client(&server).await;
        // A response to a request with no request record.
        let mut unknown = batch("");
        unknown.rejections.clear();
        assert_eq!(client.ingest(unknown).await.unwrap().into_inner().accepted, 0);
        // A rejection of a request the service decided on.
        let decided = "b".repeat(32);
        requested(&server, &decided).await;
        let mut rejection = batch("");
        rejection.responses.clear();
        assert_eq!(client.ingest(rejection).await.unwrap().into_inner().accepted, 0);

        let all = server.state.audit.store().list(&RecordQuery::default()).await.unwrap();
        assert!(filter_records(&all).is_empty(), "{all:?}");
        assert_eq!(server.state.metrics.ingest_refused.get(), 2);
        server.stop();
    }

    #[tokio::test]
    async fn concurrent_deliveries_of_one_batch_store_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let server = test_support::start(dir.path()).await;
        requested(&server, &"a".repeat(32)).await;
        let client = client(&server).await;
        let mut sends = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let mut client = client.clone();
            sends.spawn(async move { client.ingest(batch("")).await.unwrap().into_inner().accepted });
        }
        let accepted: u32 = sends.join_all().await.into_iter().sum();
        assert_eq!(accepted, 2);
        let all = server.state.audit.store().list(&RecordQuery::default()).await.unwrap();
        assert_eq!(filter_records(&all).len(), 2);
        assert_eq!(server.state.metrics.ingest_conflicts.get(), 0);
        server.stop();
    }

    #[tokio::test]
    async fn a_forged_record_with_clear_values_is_stored_masked() {
        let dir = tempfile::tempdir().unwrap();
        let server = test_support::start(dir.path()).await;
        let mut client = client(&server).await;
        let rows = r#"[{"email":"alice.martin@example.com","card":4111111111111111,"password":"hunter2hunter2"}]"#;
        let forged = |id: &str, message: Vec<u8>| IngestBatch {
            source: "gatehouse/forger/0".into(),
            responses: vec![ResponseObserved {
                request_id: id.to_owned(),
                r#final: true,
                http_status: 200,
                message,
                ..Default::default()
            }],
            ..Default::default()
        };
        let json_answer = json!({"jsonrpc": "2.0", "id": 1, "result": {
            "content": [{"type": "text", "text": rows}],
            "structuredContent": {"result": rows},
            "key": "AKIAIVF3HDRHMIRTO2I2",
        }});
        let ids = ["c".repeat(32), "d".repeat(32)];
        for id in &ids {
            requested(&server, id).await;
        }
        let messages = [
            serde_json::to_vec(&json_answer).unwrap(),
            format!("not json: {rows} AKIAIVF3HDRHMIRTO2I2").into_bytes(),
        ];
        for (id, message) in ids.iter().zip(messages) {
            assert_eq!(
                client.ingest(forged(id, message)).await.unwrap().into_inner().accepted,
                1
            );
        }
        let all = server.state.audit.store().list(&RecordQuery::default()).await.unwrap();
        let stored = serde_json::to_string(&filter_records(&all)).unwrap();
        for clear in [
            "alice.martin@example.com",
            "4111111111111111",
            "hunter2hunter2",
            "AKIAIVF3HDRHMIRTO2I2",
        ] {
            assert!(!stored.contains(clear), "{clear} stored in clear: {stored}");
        }
        let json_record = all
            .iter()
            .find(|r| r.request_id == ids[0] && r.kind == "response")
            .unwrap();
        assert_eq!(json_record.data["masked"]["email"], 2, "{}", json_record.data);
        assert_eq!(json_record.data["masked"]["aws_access_key_id"], 1);
        server.stop();
    }

    #[tokio::test]
    async fn a_rejection_with_a_forged_token_has_no_subject() {
        let dir = tempfile::tempdir().unwrap();
        let server = test_support::start(dir.path()).await;
        let mut client = client(&server).await;
        client
            .ingest(batch("eyJhbGciOiJub25lIn0.eyJzdWIiOiJyb290In0."))
            .await
            .unwrap();
        let q = RecordQuery {
            kind: Some("request_rejected".into()),
            ..Default::default()
        };
        let recs = server.state.audit.store().list(&q).await.unwrap();
        assert_eq!(recs[0].data["subject"], Value::Null);
        server.stop();
    }
}

/// The typed events write what the `json!` builders of earlier builds wrote, for every shape
/// of report (empty strings, errors, text and JSON messages, counts from the filter).
#[cfg(test)]
mod same_bytes {
    use gatehouse_core::mask::MaskConfig;
    use serde_json::json;

    use super::*;

    /// The builder as it was before events (round 11), the reference for the bytes.
    fn legacy_response_data(r: &ResponseObserved, source: &str, masker: &Masker) -> Value {
        let non_empty = |s: &str| if s.is_empty() { Value::Null } else { json!(s) };
        let mut message = message_value(&r.message);
        let mut found = MaskCounts::default();
        match &mut message {
            Value::String(text) => {
                if let Cow::Owned(masked) = masker.mask_text(text, &Reveal::none(), &mut found) {
                    *text = masked;
                }
            }
            Value::Null => {}
            other => {
                masker.mask_message(other, &Reveal::none(), &mut found);
            }
        }
        let mut masked = MaskCounts(r.masked.clone().into_iter().collect());
        masked.merge(&found);
        json!({
            "part": r.part,
            "final": r.r#final,
            "http_status": r.http_status,
            "content_type": non_empty(&r.content_type),
            "message": message,
            "masked": masked,
            "revealed": r.revealed,
            "withheld": non_empty(&r.withheld),
            "truncated": r.truncated,
            "body_bytes": r.body_bytes,
            "observed_at_unix_ms": r.observed_at_unix_ms,
            "sse_event_id": non_empty(&r.sse_event_id),
            "jsonrpc_id": non_empty(&r.jsonrpc_id),
            "is_error": r.is_error,
            "error_code": if r.is_error { json!(r.error_code) } else { Value::Null },
            "end_reason": non_empty(&r.end_reason),
            "source": source,
        })
    }

    fn legacy_rejection_data(r: &RequestRejected, subject: Option<String>, source: &str) -> Value {
        let non_empty = |s: &str| if s.is_empty() { Value::Null } else { json!(s) };
        json!({
            "subject": subject,
            "http_status": r.http_status,
            "jsonrpc_code": r.jsonrpc_code,
            "reason": r.reason,
            "http_method": r.http_method,
            "path": r.path,
            "session_id": non_empty(&r.session_id),
            "protocol_version": non_empty(&r.protocol_version),
            "mcp_method": non_empty(&r.jsonrpc_method),
            "observed_at_unix_ms": r.observed_at_unix_ms,
            "decision": "deny",
            "source": source,
        })
    }

    fn bytes(event: &AuditEvent) -> String {
        serde_json::to_string(&event.to_data().unwrap()).unwrap()
    }

    #[test]
    fn response_parts_write_the_bytes_they_always_did() {
        let masker = Masker::new(&MaskConfig::default()).unwrap();
        let messages: [&[u8]; 5] = [
            b"",
            br#"{"jsonrpc":"2.0","id":1,"result":{"x":0.1,"n":18446744073709551615,"m":-3}}"#,
            br#"[{"jsonrpc":"2.0","id":"a","error":{"code":-32000,"message":"mail bob@example.com"}}]"#,
            b"{cut off mid-w",
            "caf\u{e9} AKIAIVF3HDRHMIRTO2I2".as_bytes(),
        ];
        for (i, message) in messages.into_iter().enumerate() {
            for full in [false, true] {
                let r = ResponseObserved {
                    request_id: "a".repeat(32),
                    part: i as u32,
                    r#final: full,
                    http_status: if full { 502 } else { 200 },
                    content_type: if full {
                        "text/event-stream".into()
                    } else {
                        String::new()
                    },
                    message: message.to_vec(),
                    truncated: full,
                    body_bytes: 12345,
                    observed_at_unix_ms: 1_796_233_104_498,
                    sse_event_id: if full { "ev-9".into() } else { String::new() },
                    jsonrpc_id: if full { "\"a\"".into() } else { String::new() },
                    is_error: full,
                    error_code: -32000,
                    end_reason: if full { "client_gone".into() } else { String::new() },
                    masked: if full {
                        [("email".to_owned(), 2), ("zero".to_owned(), 0)].into()
                    } else {
                        Default::default()
                    },
                    revealed: if full { vec!["phone".into()] } else { Vec::new() },
                    withheld: if full { "too_large".into() } else { String::new() },
                    // Absent from the record when empty (the filter sets it on an answer that opens a session).
                    session_id: String::new(),
                };
                let legacy = serde_json::to_string(&legacy_response_data(&r, "src/1", &masker)).unwrap();
                assert_eq!(
                    bytes(&response_event(&r, "src/1", &masker)),
                    legacy,
                    "message {i}, full {full}"
                );
            }
        }
    }

    #[test]
    fn the_session_an_answer_opens_is_in_its_record() {
        let masker = Masker::new(&MaskConfig::default()).unwrap();
        let r = ResponseObserved {
            request_id: "a".repeat(32),
            r#final: true,
            message: br#"{"jsonrpc":"2.0","id":1,"result":{}}"#.to_vec(),
            session_id: "upstream-session-1".into(),
            ..Default::default()
        };
        let data = response_event(&r, "src/1", &masker).to_data().unwrap();
        assert_eq!(data["session_id"], "upstream-session-1");
    }

    #[test]
    fn rejections_write_the_bytes_they_always_did() {
        let full = RequestRejected {
            request_id: "b".repeat(32),
            http_status: 400,
            jsonrpc_code: -32700,
            reason: "invalid JSON".into(),
            http_method: "POST".into(),
            path: "/mcp".into(),
            session_id: "s".into(),
            protocol_version: "2025-03-26".into(),
            bearer_token: "never stored".into(),
            observed_at_unix_ms: 7,
            jsonrpc_method: "tools/call".into(),
        };
        let empty = RequestRejected::default();
        for (r, subject) in [(&full, Some("alice".to_owned())), (&full, None), (&empty, None)] {
            let legacy = serde_json::to_string(&legacy_rejection_data(r, subject.clone(), "f")).unwrap();
            let event = rejection_event(r, subject, "f");
            assert_eq!(bytes(&event), legacy);
            assert!(!bytes(&event).contains("never stored"));
        }
    }
}
