//! Devices waiting for approval: enrolled by a token that requires it, they ask again until
//! an admin accepts or rejects them. Admins only, like enrollment tokens; decisions are
//! audited by the mutation log with the device named.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::AppState;
use crate::api::extract::{Path, Principal, Query, noted};
use crate::api::params::hex_id;
use crate::api::problem::{Problem, ProblemDoc, Refused};
use crate::store::enrollment_requests::{Decided, RequestRow};

/// A device waiting for (or given) an admin's decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct EnrollmentRequestView {
    /// 16 lowercase hex.
    pub id: String,
    /// The enrollment token it uses.
    pub token_id: String,
    /// The id it gets once accepted (held for it meanwhile).
    pub device_id: String,
    /// SHA-256 of the public key the device made: compare it with what the device shows
    /// (`pifleet-agent` logs it) before accepting.
    pub key_fingerprint: String,
    /// The address it last asked from.
    pub source: String,
    pub created_at: i64,
    /// When it last asked.
    pub last_seen_at: i64,
    /// `pending`; `accepted` (it enrolls when it next asks); `rejected`.
    pub status: String,
    #[schema(required)]
    pub decided_by: Option<String>,
    #[schema(required)]
    pub decided_at: Option<i64>,
}

impl From<RequestRow> for EnrollmentRequestView {
    fn from(r: RequestRow) -> Self {
        Self {
            id: r.id,
            token_id: r.token_id,
            device_id: r.device_id,
            key_fingerprint: r.key_fingerprint,
            source: r.source,
            created_at: r.created_at,
            last_seen_at: r.last_seen_at,
            status: r.status,
            decided_by: r.decided_by,
            decided_at: r.decided_at,
        }
    }
}

/// The list's filter.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RequestQuery {
    /// Rejected requests too (default: pending and accepted ones).
    pub all: Option<bool>,
}

/// A request's id in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct RequestPath {
    /// 16 lowercase hex.
    pub id: String,
}

/// Lists enrollment requests, newest first.
#[utoipa::path(get, operation_id = "list_enrollment_requests", path = "/api/v1/enrollment-requests", tag = "devices",
    params(RequestQuery),
    responses((status = 200, description = "Enrollment requests", body = Vec<EnrollmentRequestView>), Refused))]
pub async fn list(
    State(st): State<AppState>,
    Query(q): Query<RequestQuery>,
) -> Result<axum::Json<Vec<EnrollmentRequestView>>, Problem> {
    let rows = st.store.enrollment_requests(q.all.unwrap_or(false)).await?;
    Ok(axum::Json(rows.into_iter().map(Into::into).collect()))
}

/// Accepts a waiting device: it enrolls when it next asks (within
/// `enrollment.pending_retry_s`).
#[utoipa::path(post, operation_id = "accept_enrollment_request", path = "/api/v1/enrollment-requests/{id}/accept", tag = "devices",
    params(RequestPath),
    responses((status = 200, description = "Accepted", body = EnrollmentRequestView),
        (status = "4XX", description = "Invalid id (400), no such request (404), already decided (409), or not permitted", body = ProblemDoc, content_type = "application/problem+json")))]
pub async fn accept(
    State(st): State<AppState>,
    p: Principal,
    Path(RequestPath { id }): Path<RequestPath>,
) -> Result<axum::response::Response, Problem> {
    decide(&st, &p, &id, true).await
}

/// Rejects a waiting device: it is told so when it next asks, and never enrolls with this
/// key and token.
#[utoipa::path(post, operation_id = "reject_enrollment_request", path = "/api/v1/enrollment-requests/{id}/reject", tag = "devices",
    params(RequestPath),
    responses((status = 200, description = "Rejected", body = EnrollmentRequestView),
        (status = "4XX", description = "Invalid id (400), no such request (404), already decided (409), or not permitted", body = ProblemDoc, content_type = "application/problem+json")))]
pub async fn reject(
    State(st): State<AppState>,
    p: Principal,
    Path(RequestPath { id }): Path<RequestPath>,
) -> Result<axum::response::Response, Problem> {
    decide(&st, &p, &id, false).await
}

async fn decide(
    st: &AppState,
    p: &Principal,
    id: &str,
    accept: bool,
) -> Result<axum::response::Response, Problem> {
    let id = hex_id("an enrollment request id", id, 16)?;
    match st
        .store
        .decide_enrollment_request(id, accept, &p.actor())
        .await?
    {
        Decided::Done(row) => {
            let note = format!("{} {}", row.status, row.device_id);
            Ok(noted(note, axum::Json(EnrollmentRequestView::from(row))))
        }
        Decided::Unknown => Err(Problem::not_found(format!("no enrollment request {id}"))),
        Decided::AlreadyDecided(row) => Err(Problem::conflict(format!(
            "enrollment request {id} ({}) is {} already",
            row.device_id, row.status
        ))),
    }
}
