//! REST for auditors and MCP clients (axum): audit search, OAuth protected-resource
//! metadata, the dev issuer's discovery and keys, health and metrics.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use gatehouse_core::audit::{Record, RecordKind};
use serde_json::{Value, json};

mod approvals;
mod sessions;
mod ui;

use crate::{
    AppState,
    audit::{RecordQuery, normalize_time},
    identity::{IdentityError, Principal},
};

pub fn router(state: Arc<AppState>) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/.well-known/oauth-protected-resource", get(resource_metadata_root))
        .route("/.well-known/oauth-protected-resource/{*path}", get(resource_metadata))
        .route("/v1/audit/records", get(list_records))
        .route("/v1/audit/requests/{id}", get(get_request));
    if state.dev_issuer.is_some() {
        router = router
            .route("/dev/.well-known/openid-configuration", get(dev_discovery))
            .route("/dev/jwks.json", get(dev_jwks));
    }
    router
        .merge(approvals::routes())
        .merge(sessions::routes())
        .merge(ui::routes())
        .fallback(not_found)
        .with_state(state)
}

/// An error as the REST API shows it: a status and a short, safe message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    challenge: Option<String>,
    /// More fields next to `error`.
    body: Option<Value>,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            challenge: None,
            body: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({"error": self.message});
        if let (Some(Value::Object(more)), Some(obj)) = (self.body, body.as_object_mut()) {
            obj.extend(more);
        }
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(c) = self.challenge.and_then(|c| c.parse().ok()) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, c);
        }
        resp
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "no such endpoint")
}

async fn healthz(State(state): State<Arc<AppState>>) -> Response {
    match state.audit.store().ping().await {
        Ok(()) => {
            // Healthy whatever the exporters do (the trail keeps what they have not sent);
            // it names those that are behind.
            let (export, behind) = state.export.health();
            let mut body = json!({"status": "ok"});
            if !export.as_object().is_none_or(serde_json::Map::is_empty) {
                body["export"] = export;
                body["export_behind"] = json!(behind);
            }
            Json(body).into_response()
        }
        Err(error) => {
            tracing::warn!(%error, "Health check failed: the audit store does not answer.");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"status": "audit store unavailable"})),
            )
                .into_response()
        }
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render() + &state.export.render(),
    )
        .into_response()
}

async fn resource_metadata_root(State(state): State<Arc<AppState>>) -> Json<Value> {
    resource_metadata_for(&state, "")
}

async fn resource_metadata(State(state): State<Arc<AppState>>, Path(path): Path<String>) -> Json<Value> {
    resource_metadata_for(&state, &path)
}

fn resource_metadata_for(state: &AppState, path: &str) -> Json<Value> {
    let base = state.config.service.public_url.as_str().trim_end_matches('/');
    let resource = if path.is_empty() {
        base.to_owned()
    } else {
        format!("{base}/{}", path.trim_start_matches('/'))
    };
    Json(json!({
        "resource": resource,
        "authorization_servers": [state.config.identity.issuer],
        "bearer_methods_supported": ["header"],
        "resource_name": "Gatehouse MCP gateway",
    }))
}

async fn dev_discovery(State(state): State<Arc<AppState>>) -> Response {
    match &state.dev_issuer {
        Some(d) => Json(d.discovery()).into_response(),
        None => not_found().await.into_response(),
    }
}

async fn dev_jwks(State(state): State<Arc<AppState>>) -> Response {
    match &state.dev_issuer {
        Some(d) => Json(d.jwks()).into_response(),
        None => not_found().await.into_response(),
    }
}

/// The caller's principal from a bearer token for `audience` (MCP, approvals or audit: each
/// API takes only its own, so a token for one cannot be used on another).
async fn authenticate_for(state: &AppState, headers: &HeaderMap, audience: &str) -> Result<Principal, ApiError> {
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    match state.identity.verify_header_for(auth, audience).await {
        Ok(p) => Ok(p),
        Err(IdentityError::KeysUnavailable(detail)) => {
            tracing::warn!(detail, "Cannot verify a REST caller's token.");
            Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cannot verify tokens right now",
            ))
        }
        Err(error) => {
            let mut e = ApiError::new(StatusCode::UNAUTHORIZED, error.to_string());
            e.challenge = Some("Bearer".into());
            Err(e)
        }
    }
}

/// Only members of the auditor group may read the trail, with a token for `audit.audience`:
/// an agent holding an auditor's MCP token cannot.
async fn require_auditor(state: &AppState, headers: &HeaderMap) -> Result<String, ApiError> {
    let p = authenticate_for(state, headers, &state.config.audit.audience).await?;
    if p.groups.contains(&state.config.audit.auditor_group) {
        return Ok(p.subject);
    }
    tracing::info!(subject = %p.subject, "Audit access refused: not in the auditor group.");
    Err(ApiError::new(
        StatusCode::FORBIDDEN,
        "the audit trail is for the auditor group only",
    ))
}

fn store_error(error: sqlx::Error) -> ApiError {
    tracing::error!(%error, "Audit query failed.");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the audit store is unavailable")
}

/// Validates a query: a known kind, and times in any RFC 3339 form (normalized to the
/// stored form so the comparison is in time order).
fn normalize(mut q: RecordQuery) -> Result<RecordQuery, ApiError> {
    if let Some(kind) = &q.kind
        && RecordKind::parse(kind).is_none()
    {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "kind must be request, response, request_rejected or approval",
        ));
    }
    for (name, value) in [("since", &mut q.since), ("until", &mut q.until)] {
        if let Some(v) = value {
            *v = normalize_time(v)
                .ok_or_else(|| ApiError::new(StatusCode::BAD_REQUEST, format!("{name} must be an RFC 3339 time")))?;
        }
    }
    Ok(q)
}

async fn list_records(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<RecordQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    require_auditor(&state, &headers).await?;
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let records = state.audit.store().list(&normalize(q)?).await.map_err(store_error)?;
    Ok(Json(json!({ "records": records })))
}

/// The most records one request's answer lists (a long SSE stream can have more).
const REQUEST_RECORDS_LIMIT: u32 = 10_000;

async fn get_request(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_auditor(&state, &headers).await?;
    let store = state.audit.store();
    let records = store
        .request_records(&id, REQUEST_RECORDS_LIMIT)
        .await
        .map_err(store_error)?;
    if records.is_empty() {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no records for this request id"));
    }
    let truncated = records.len() as u32 == REQUEST_RECORDS_LIMIT;
    let (responses, others): (Vec<Record>, Vec<Record>) = records.into_iter().partition(|r| r.kind == "response");
    // From the records returned, so `complete` never claims a final part the answer lacks
    // (a second query could see a record committed after the first one ran).
    let complete = if responses
        .iter()
        .any(|r| r.data.get("final") == Some(&Value::Bool(true)))
    {
        true
    } else if truncated {
        store.has_final_response(&id).await.map_err(store_error)?
    } else {
        false
    };
    let request = others.iter().find(|r| r.kind == RecordKind::Request.as_str());
    let conflicts = conflicts(&responses, &others);
    Ok(Json(json!({
        "request_id": id,
        "request": request,
        "records": others,
        "responses": responses,
        "complete": complete,
        "truncated": truncated,
        "conflicts": conflicts,
    })))
}

/// The filter records that disagree: several responses with one part number, or several
/// rejections. Only one of each can be the filter's, and the trail cannot tell which.
fn conflicts(responses: &[Record], others: &[Record]) -> Vec<Value> {
    let mut parts: std::collections::BTreeMap<Option<u64>, Vec<(&str, u64)>> = Default::default();
    for r in responses {
        let part = r.data.get("part").and_then(Value::as_u64);
        parts.entry(part).or_default().push((&r.writer, r.seq));
    }
    let mut out: Vec<Value> = parts
        .into_iter()
        .filter(|(_, records)| records.len() > 1)
        .map(|(part, records)| json!({"kind": "response", "part": part, "records": records}))
        .collect();
    let rejections: Vec<(&str, u64)> = others
        .iter()
        .filter(|r| r.kind == RecordKind::RequestRejected.as_str())
        .map(|r| (r.writer.as_str(), r.seq))
        .collect();
    if rejections.len() > 1 {
        out.push(json!({"kind": "request_rejected", "part": null, "records": rejections}));
    }
    out
}
