//! REST for auditors: sessions and their timelines (`sessions/`). Same access as the audit
//! records: a token for `audit.audience` from a member of the auditor group; anyone else gets
//! 403 for every session id, known or not.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, require_auditor, store_error};
use crate::AppState;
use crate::sessions::export::ExportError;
use crate::sessions::{QueryError, SessionQuery, exchange_view};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/sessions", get(list))
        .route("/v1/sessions/{id}", get(one))
        .route("/v1/sessions/{id}/export", get(export))
}

/// The most exchanges one timeline page holds.
const EXCHANGES_MAX: u32 = 200;
/// The most records read for one exchange (a long stream has a record per event).
const RECORDS_PER_EXCHANGE: u32 = 2_000;

fn query_error(error: QueryError) -> ApiError {
    match error {
        QueryError::Invalid(message) => ApiError::new(StatusCode::BAD_REQUEST, message),
        QueryError::Store(error) => store_error(error),
    }
}

async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<SessionQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    require_auditor(&state, &headers).await?;
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let (sessions, next) = state.session_index.list(&q).await.map_err(query_error)?;
    Ok(Json(json!({"sessions": sessions, "next": next})))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Page {
    /// The first exchange to show (0-based).
    from: Option<u64>,
    limit: Option<u32>,
}

async fn one(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    require_auditor(&state, &headers).await?;
    let Query(page) = page.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let index = &state.session_index;
    let Some(session) = index.get(&id).await.map_err(store_error)? else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "no such session"));
    };
    let (from, limit) = (
        page.from.unwrap_or(0),
        page.limit.unwrap_or(100).clamp(1, EXCHANGES_MAX),
    );
    let filed = index.exchanges(&id, from, limit).await.map_err(store_error)?;
    let mut exchanges = Vec::with_capacity(filed.len());
    for (i, f) in filed.iter().enumerate() {
        let records = state
            .audit
            .store()
            .request_records(&f.request_id, RECORDS_PER_EXCHANGE)
            .await
            .map_err(store_error)?;
        exchanges.push(exchange_view(from + i as u64, f, &session.started_at, &records));
    }
    let next_from = (filed.len() == limit as usize).then(|| from + u64::from(limit));
    Ok(Json(
        json!({"session": session, "exchanges": exchanges, "next_from": next_from}),
    ))
}

/// A session's verifiable export as a tar archive (`gatehouse audit verify-export` reads it
/// as is). This service's own writer signs a checkpoint first, so its records are vouched for;
/// another replica's newest records are vouched for once that replica signs its next one.
async fn export(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    require_auditor(&state, &headers).await?;
    let Some(policy) = &state.config.audit.checkpoint else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "exports are signed with the checkpoint key, and audit.checkpoint is not configured",
        ));
    };
    let unavailable = |error: anyhow::Error| {
        tracing::error!(error = %error, "Cannot read the checkpoint key or log for an export.");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the export cannot be signed now")
    };
    let signer = crate::audit::checkpoint::CheckpointSigner::load(&policy.key_file).map_err(unavailable)?;
    let external = match &policy.log_file {
        Some(path) if path.exists() => crate::audit::checkpoint::read_log(path).map_err(unavailable)?,
        _ => Vec::new(),
    };
    state.audit.checkpoint_now().await;
    let made =
        crate::sessions::export::export(state.audit.store(), &state.session_index, &id, &signer, &external).await;
    let done = match made {
        Ok(done) => done,
        Err(ExportError::NotFound(_)) => return Err(ApiError::new(StatusCode::NOT_FOUND, "no such session")),
        Err(ExportError::Refused(problem)) => {
            tracing::error!(session = %id, %problem, "A session export was refused.");
            return Err(ApiError::new(StatusCode::CONFLICT, problem));
        }
        Err(ExportError::Store(error)) => return Err(store_error(error)),
        Err(ExportError::Other(error)) => return Err(unavailable(error)),
    };
    // The id came from the index; only its safe characters name the file.
    let name: String = done
        .session
        .id
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        .collect();
    let top = format!("session-{name}");
    let tar = done.bundle.tar(&top).map_err(unavailable)?;
    let disposition = HeaderValue::from_str(&format!("attachment; filename=\"{top}.tar\""))
        .map_err(|e| unavailable(anyhow::anyhow!(e)))?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/x-tar")),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        tar,
    )
        .into_response())
}
