//! REST for auditors: sessions and their timelines (`sessions/`). Same access as the audit
//! records: a token for `audit.audience` from a member of the auditor group; anyone else gets
//! 403 for every session id, known or not.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    routing::get,
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, require_auditor, store_error};
use crate::AppState;
use crate::sessions::{QueryError, SessionQuery, exchange_view};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/sessions", get(list))
        .route("/v1/sessions/{id}", get(one))
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
