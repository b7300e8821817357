//! REST for approvers: list and read approvals, approve or deny with a reason.
//!
//! Every call is made with the approver's own token, issued for `approvals.audience`
//! (never the MCP audience). A caller sees the approvals their
//! groups may decide on and their own requests (auditors see all); only a member of the
//! rule's approver group who is not the requester may decide.

use std::collections::HashMap;
use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Path, Query, State, rejection::JsonRejection},
    http::{HeaderMap, StatusCode},
    routing::{get, post},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, authenticate_for};
use crate::{
    AppState,
    approvals::{Approval, DecideError, Status},
    identity::Principal,
};

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v1/approvals", get(list))
        .route("/v1/approvals/{id}", get(one))
        .route("/v1/approvals/{id}/approve", post(approve))
        .route("/v1/approvals/{id}/deny", post(deny))
}

/// The most approvals one list answers with.
const LIST_LIMIT: u32 = 200;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionBody {
    reason: Option<String>,
}

/// The caller, by a token for the approvals audience: an MCP token (`identity.audience`)
/// is refused, so an agent can never approve with the token it calls tools with.
async fn approver(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    authenticate_for(state, headers, &state.config.approvals.audience).await
}

fn may_see(state: &AppState, caller: &Principal, a: &Approval) -> bool {
    caller.groups.contains(&a.approver_group)
        || caller.subject == a.subject
        || caller.groups.contains(&state.config.audit.auditor_group)
}

/// Per approval, the calls held on it now (on any replica): see [`crate::approvals::Approvals::waiting`].
type Waiting = HashMap<String, (i64, u32)>;

async fn waiting(state: &AppState) -> Result<Waiting, ApiError> {
    state.approvals.waiting().await.map_err(unavailable)
}

/// The approval as this caller sees it; `waiting` from [`waiting`].
async fn view(state: &AppState, caller: &Principal, a: &Approval, waiting: &Waiting) -> Result<Value, ApiError> {
    let mut v = a.to_json();
    if let Some(obj) = v.as_object_mut() {
        let can_decide = a.refusal_for(caller, crate::approvals::now_ms()).is_none();
        let readable = state.approvals.readable(a).await.map_err(unavailable)?;
        obj.insert("can_decide".into(), json!(can_decide));
        // Approving needs arguments the approver can read; denying does not.
        obj.insert("can_approve".into(), json!(can_decide && readable));
        if a.status == Status::Pending
            && let Some(masked) = obj.get_mut("masked").and_then(Value::as_object_mut)
        {
            masked.insert("clear_available".into(), json!(readable));
        }
        // The clear arguments go to the approver group only (not the requester's other
        // views, not auditors), and only while pending: they are never in the trail.
        if caller.groups.contains(&a.approver_group)
            && a.status == Status::Pending
            && readable
            && a.masking.is_some()
            && let Some(clear) = state.approvals.clear_arguments(&a.id).await.map_err(unavailable)?
        {
            obj.insert("arguments_clear".into(), clear);
        }
        obj.insert("approver_url".into(), json!(state.approvals.approver_url(&a.id)));
        // A caller held on this approval right now: the page says "alice is waiting (12 s)".
        let waiting = waiting
            .get(&a.id)
            .copied()
            .filter(|_| a.status == Status::Pending)
            .map(|(since_ms, calls)| json!({"since": crate::approvals::time_of(since_ms), "calls": calls}));
        obj.insert("waiting".into(), waiting.unwrap_or(Value::Null));
    }
    Ok(v)
}

fn unavailable(error: impl std::fmt::Display) -> ApiError {
    tracing::error!(%error, "Approvals store failed.");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the approvals store is unavailable")
}

async fn list(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let caller = approver(&state, &headers).await?;
    let Query(q) = query.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e.body_text()))?;
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "status must be pending, approved, denied, expired or used",
            )
        })?),
    };
    // Expiry is swept each second; do it now so a list never shows an expired one as pending.
    state.approvals.expire_due().await.map_err(unavailable)?;
    let approvals = state
        .approvals
        .store()
        .list(status, LIST_LIMIT)
        .await
        .map_err(unavailable)?;
    let held = waiting(&state).await?;
    let mut visible = Vec::new();
    for a in approvals.iter().filter(|a| may_see(&state, &caller, a)) {
        visible.push(view(&state, &caller, a, &held).await?);
    }
    Ok(Json(json!({ "approvals": visible })))
}

async fn one(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let caller = approver(&state, &headers).await?;
    state.approvals.expire_due().await.map_err(unavailable)?;
    match state.approvals.store().get(&id).await.map_err(unavailable)? {
        // Someone else's approval is "not found" too: ids are not to be probed.
        Some(a) if may_see(&state, &caller, &a) => Ok(Json(view(&state, &caller, &a, &waiting(&state).await?).await?)),
        _ => Err(ApiError::new(StatusCode::NOT_FOUND, "no such approval")),
    }
}

async fn approve(
    state: State<Arc<AppState>>,
    headers: HeaderMap,
    id: Path<String>,
    body: Result<Json<DecisionBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    decide(state, headers, id, body, true).await
}

async fn deny(
    state: State<Arc<AppState>>,
    headers: HeaderMap,
    id: Path<String>,
    body: Result<Json<DecisionBody>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    decide(state, headers, id, body, false).await
}

async fn decide(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Result<Json<DecisionBody>, JsonRejection>,
    approve: bool,
) -> Result<Json<Value>, ApiError> {
    let caller = approver(&state, &headers).await?;
    let body = match body {
        Ok(Json(b)) => b,
        // An approval may come without a body at all.
        Err(JsonRejection::MissingJsonContentType(_)) if approve => DecisionBody::default(),
        Err(e) => return Err(ApiError::new(StatusCode::BAD_REQUEST, e.body_text())),
    };
    // In its own task: an approver who hangs up must not stop a decision half-way.
    let decided = {
        let (approvals, id, caller) = (state.approvals.clone(), id.clone(), caller.clone());
        tokio::spawn(async move { approvals.decide(&id, &caller, approve, body.reason).await })
            .await
            .map_err(unavailable)?
    };
    match decided {
        Ok(a) => Ok(Json(view(&state, &caller, &a, &Waiting::new()).await?)),
        Err(DecideError::NotFound) => Err(ApiError::new(StatusCode::NOT_FOUND, "no such approval")),
        Err(e @ DecideError::Forbidden(_)) => {
            tracing::info!(approval_id = %id, approver = %caller.subject, error = %e, "Approval decision refused.");
            Err(ApiError::new(StatusCode::FORBIDDEN, e.to_string()))
        }
        Err(e @ DecideError::Invalid(_)) => Err(ApiError::new(StatusCode::BAD_REQUEST, e.to_string())),
        Err(e @ DecideError::Unreadable(_)) => Err(ApiError::new(StatusCode::CONFLICT, e.to_string())),
        Err(DecideError::Conflict(a)) => {
            let mut e = ApiError::new(
                StatusCode::CONFLICT,
                format!("the approval is already {}", a.status.as_str()),
            );
            e.body = Some(json!({"approval": view(&state, &caller, &a, &waiting(&state).await?).await?}));
            Err(e)
        }
        Err(DecideError::Unavailable(error)) => Err(unavailable(error)),
    }
}
