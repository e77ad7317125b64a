//! Two-person approval: the requests that wait for a second admin, and their decision.
//! Operators and admins see them; only admins decide, never on their own request
//! ([`crate::approvals`]).

use axum::extract::State;
use serde::Deserialize;
use utoipa::IntoParams;

use crate::api::AppState;
use crate::api::extract::{Path, Principal, Query, noted};
use crate::api::params::{bounded, hex_id};
use crate::api::problem::{Problem, ProblemDoc, Refused};
use crate::approvals;
use crate::model::approvals::{ApprovalKind, ApprovalView};
use crate::rollouts::{self, service::Actor};
use crate::store::now_ms;

/// The approval list's filters.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ApprovalQuery {
    /// Only requests still waiting for a decision.
    pub pending: Option<bool>,
    /// At most this many, newest first (1–500, default 100).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<i64>,
}

/// An approval request's id in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ApprovalPath {
    /// 32 lowercase hex.
    pub id: String,
}

/// Two-person approval needs a second person: an API token cannot decide.
pub(crate) fn person(p: &Principal) -> Result<(), Problem> {
    if p.api_token {
        Err(Problem::forbidden(
            "an API token cannot approve or reject: a second admin signs in to decide",
        ))
    } else {
        Ok(())
    }
}

fn approval_id(id: &str) -> Result<&str, Problem> {
    hex_id("an approval id", id, 32)
}

/// Lists approval requests, newest first.
#[utoipa::path(get, operation_id = "list_approvals", path = "/api/v1/approvals", tag = "approvals",
    params(ApprovalQuery),
    responses((status = 200, description = "Approval requests", body = Vec<ApprovalView>), Refused))]
pub async fn list(
    State(st): State<AppState>,
    Query(q): Query<ApprovalQuery>,
) -> Result<axum::Json<Vec<ApprovalView>>, Problem> {
    let limit = bounded("limit", q.limit, 100, 1, 500)?;
    let rows = st
        .store
        .list_approvals(q.pending.unwrap_or(false), limit)
        .await?;
    let now = now_ms();
    Ok(axum::Json(rows.iter().map(|r| r.view(now)).collect()))
}

/// One approval request.
#[utoipa::path(get, operation_id = "show_approval", path = "/api/v1/approvals/{id}", tag = "approvals",
    params(ApprovalPath),
    responses((status = 200, description = "The request", body = ApprovalView),
        (status = "4XX", description = "Invalid id, no such request, or not permitted", body = ProblemDoc, content_type = "application/problem+json")))]
pub async fn show(
    State(st): State<AppState>,
    Path(ApprovalPath { id }): Path<ApprovalPath>,
) -> Result<axum::Json<ApprovalView>, Problem> {
    let id = approval_id(&id)?;
    let row = st
        .store
        .approval(id)
        .await?
        .ok_or_else(|| Problem::not_found(format!("no approval request {id}")))?;
    Ok(axum::Json(row.view(now_ms())))
}

/// Approves a request and carries it out at once: the device set is resolved now and bound
/// to the approval, and the commands are created for exactly those devices.
#[utoipa::path(post, operation_id = "approve", path = "/api/v1/approvals/{id}/approve", tag = "approvals",
    params(ApprovalPath),
    responses((status = 200, description = "Approved and carried out", body = ApprovalView),
        (status = "4XX", description = "Your own request (403), no such request (404), no longer pending or expired (409), or not permitted", body = ProblemDoc, content_type = "application/problem+json")))]
pub async fn approve(
    State(st): State<AppState>,
    p: Principal,
    Path(ApprovalPath { id }): Path<ApprovalPath>,
) -> Result<axum::response::Response, Problem> {
    let id = approval_id(&id)?;
    person(&p)?;
    let actor = p.actor();
    let kind = st.store.approval(id).await?.map(|r| r.kind);
    if kind == Some(ApprovalKind::Rollout) {
        let who = Actor {
            name: &actor,
            user_id: Some(p.user_id),
        };
        let rollout = rollouts::service::approve(&st.store, id, who).await?;
        st.live.rollout_changed(rollout.id);
        let row = st
            .store
            .approval(id)
            .await?
            .ok_or_else(|| Problem::not_found(format!("no approval request {id}")))?;
        let note = format!(
            "{}; {}",
            row.summary,
            row.outcome.as_deref().unwrap_or_default()
        );
        return Ok(noted(note, axum::Json(row.view(now_ms()))));
    }
    let row = approvals::approve(&st.store, &st.dispatcher, id, &actor, Some(p.user_id)).await?;
    let note = format!(
        "{}; {}",
        row.summary,
        row.outcome.as_deref().unwrap_or_default()
    );
    Ok(noted(note, axum::Json(row.view(now_ms()))))
}

/// Rejects a request: nothing is sent.
#[utoipa::path(post, operation_id = "reject", path = "/api/v1/approvals/{id}/reject", tag = "approvals",
    params(ApprovalPath),
    responses((status = 200, description = "Rejected", body = ApprovalView),
        (status = "4XX", description = "Your own request (403), no such request (404), no longer pending or expired (409), or not permitted", body = ProblemDoc, content_type = "application/problem+json")))]
pub async fn reject(
    State(st): State<AppState>,
    p: Principal,
    Path(ApprovalPath { id }): Path<ApprovalPath>,
) -> Result<axum::response::Response, Problem> {
    let id = approval_id(&id)?;
    person(&p)?;
    let actor = p.actor();
    let kind = st.store.approval(id).await?.map(|r| r.kind);
    if kind == Some(ApprovalKind::Rollout) {
        let who = Actor {
            name: &actor,
            user_id: Some(p.user_id),
        };
        rollouts::service::reject(&st.store, id, who).await?;
        let row = st
            .store
            .approval(id)
            .await?
            .ok_or_else(|| Problem::not_found(format!("no approval request {id}")))?;
        return Ok(noted(row.summary.clone(), axum::Json(row.view(now_ms()))));
    }
    let row = approvals::reject(&st.store, id, &actor, Some(p.user_id)).await?;
    Ok(noted(row.summary.clone(), axum::Json(row.view(now_ms()))))
}
