//! Audit ingest (gRPC): response and rejection records reported by the wasm filter.
//!
//! A batch is acknowledged only after its records are committed, so the filter keeps (and
//! retries) anything the store did not take. A rejection's bearer token is verified to name
//! the caller and then dropped: it is never stored or logged.

use std::{borrow::Cow, collections::HashMap, sync::Arc};

use gatehouse_core::audit::RecordKind;
use gatehouse_core::mask::{MaskCounts, Masker, Reveal};
use gatehouse_proto::audit::v1::{
    IngestAck, IngestBatch, RequestRejected, ResponseObserved, audit_ingest_server::AuditIngest,
};
use serde_json::{Value, json};
use tokio::sync::Mutex;

use crate::{AppState, audit::NewRecord};

/// The most filter sources whose drop counters are tracked at once.
const MAX_SOURCES: usize = 4096;

pub struct IngestService {
    state: Arc<AppState>,
    /// The latest `dropped_total` each filter source reported.
    dropped: Mutex<HashMap<String, u64>>,
}

impl IngestService {
    pub fn new(state: Arc<AppState>) -> Self {
        Self {
            state,
            dropped: Mutex::default(),
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

        // A batch whose answer was lost (timeout after the commit) comes again: keep each
        // response part and each rejection once.
        let ids: Vec<&str> = batch
            .responses
            .iter()
            .map(|r| r.request_id.as_str())
            .chain(batch.rejections.iter().map(|r| r.request_id.as_str()))
            .collect();
        let seen = match state.audit.store().already_ingested(&ids).await {
            Ok(seen) => seen,
            Err(error) => {
                tracing::error!(%error, "Could not read the audit store; the filter will retry.");
                return Err(tonic::Status::unavailable("audit store unavailable"));
            }
        };
        let mut records = Vec::with_capacity(batch.responses.len() + batch.rejections.len());
        for r in batch
            .responses
            .iter()
            .filter(|r| !seen.contains(&(r.request_id.clone(), Some(u64::from(r.part)))))
        {
            records.push(NewRecord {
                kind: RecordKind::Response,
                request_id: r.request_id.clone(),
                data: response_data(r, &batch.source, &state.masker),
            });
        }
        for r in batch
            .rejections
            .iter()
            .filter(|r| !seen.contains(&(r.request_id.clone(), None)))
        {
            let subject = match r.bearer_token.as_str() {
                "" => None,
                token => state.identity.verify(token).await.ok().map(|p| p.subject),
            };
            records.push(NewRecord {
                kind: RecordKind::RequestRejected,
                request_id: r.request_id.clone(),
                data: rejection_data(r, subject, &batch.source),
            });
        }
        let accepted = records.len() as u32;
        state.metrics.ingest_records.add(u64::from(accepted));
        if records.is_empty() {
            return Ok(tonic::Response::new(IngestAck { accepted }));
        }
        match state.audit.append(records).await {
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

/// The message as JSON when it parses, else as text (a truncated or non-JSON body).
fn message_value(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return Value::Null;
    }
    serde_json::from_slice(bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(bytes).into_owned()))
}

fn non_empty(s: &str) -> Value {
    if s.is_empty() { Value::Null } else { json!(s) }
}

/// The record of one response part. The filter masked the message already; it is masked
/// again here (nothing revealed) so that a misconfigured or outdated filter cannot put a
/// clear value into the trail. What this second pass finds is counted and logged (kinds
/// only).
fn response_data(r: &ResponseObserved, source: &str, masker: &Masker) -> Value {
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

fn rejection_data(r: &RequestRejected, subject: Option<String>, source: &str) -> Value {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use gatehouse_proto::audit::v1::audit_ingest_client::AuditIngestClient;

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

    #[tokio::test]
    async fn a_retried_batch_is_stored_once_and_rejections_name_the_caller() {
        let dir = tempfile::tempdir().unwrap();
        let server = test_support::start(dir.path()).await;
        let token = server
            .state
            .dev_issuer
            .as_ref()
            .unwrap()
            .mint("alice", &BTreeSet::new(), "gatehouse", 60)
            .unwrap();
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr)).unwrap();
        let mut client = AuditIngestClient::new(channel.connect().await.unwrap());
        assert_eq!(client.ingest(batch(&token)).await.unwrap().into_inner().accepted, 2);
        // The same batch again, as after a lost answer: nothing new.
        assert_eq!(client.ingest(batch(&token)).await.unwrap().into_inner().accepted, 0);

        let all = server.state.audit.store().list(&RecordQuery::default()).await.unwrap();
        assert_eq!(all.len(), 2);
        let rejection = all.iter().find(|r| r.kind == "request_rejected").unwrap();
        assert_eq!(rejection.data["subject"], "alice");
        let stored = serde_json::to_string(&all).unwrap();
        assert!(!stored.contains(&token), "the bearer token must never be stored");
        let response = all.iter().find(|r| r.kind == "response").unwrap();
        assert_eq!(response.data["message"]["result"]["x"], 0.1);
        server.stop();
    }

    #[tokio::test]
    async fn a_rejection_with_a_forged_token_has_no_subject() {
        let dir = tempfile::tempdir().unwrap();
        let server = test_support::start(dir.path()).await;
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", server.grpc_addr)).unwrap();
        let mut client = AuditIngestClient::new(channel.connect().await.unwrap());
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
