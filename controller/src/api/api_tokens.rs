//! API tokens for automation (admin): create (the token is shown once), list, revoke
//! ([`crate::auth::api_tokens`]).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::AppState;
use crate::api::extract::{Json, Path, Principal, noted};
use crate::api::params::hex_id;
use crate::api::problem::{Problem, ProblemDoc, Refused};
use crate::auth::api_tokens;
use crate::model::role::Role;

/// Default lifetime of a new API token: 90 days.
const DEFAULT_TTL_S: u64 = 90 * 86_400;

/// A new API token.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiToken {
    /// 1-64 of a-z 0-9 . _ - starting with a letter or digit; unique.
    pub name: String,
    /// What it may do, like a user of this role.
    pub role: Role,
    /// Seconds until it expires (1 to one year; default 90 days).
    pub ttl_s: Option<u64>,
}

/// A created API token: `token` is shown only now.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CreatedApiToken {
    pub id: String,
    pub name: String,
    pub role: Role,
    /// Send as `Authorization: Bearer <token>`. Keep it in the pipeline's secret store.
    pub token: String,
    pub expires_at: i64,
}

/// An API token as listed (never its secret).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ApiTokenView {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    #[schema(required)]
    pub revoked_at: Option<i64>,
    /// Last use, to the minute.
    #[schema(required)]
    pub last_used_at: Option<i64>,
}

/// An API token's id in the path.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ApiTokenPath {
    /// 12 lowercase hex.
    pub id: String,
}

/// Creates an API token for automation.
#[utoipa::path(post, operation_id = "create_api_token", path = "/api/v1/api-tokens", tag = "users",
    request_body = NewApiToken,
    responses((status = 201, description = "Created; the token is shown only now", body = CreatedApiToken),
        (status = "4XX", description = "Invalid or taken name, lifetime out of bounds, or not permitted", body = ProblemDoc, content_type = "application/problem+json")))]
pub async fn create(
    State(st): State<AppState>,
    p: Principal,
    Json(req): Json<NewApiToken>,
) -> Result<axum::response::Response, Problem> {
    let ttl = Duration::from_secs(req.ttl_s.unwrap_or(DEFAULT_TTL_S));
    let created = api_tokens::create(&st.store, &req.name, req.role, ttl, &p.actor()).await?;
    let body = CreatedApiToken {
        id: created.id,
        name: req.name.clone(),
        role: req.role,
        token: created.token,
        expires_at: created.expires_at,
    };
    Ok(noted(
        format!("name={}; role={}", req.name, req.role),
        (StatusCode::CREATED, axum::Json(body)),
    ))
}

/// Lists API tokens, newest first.
#[utoipa::path(get, operation_id = "list_api_tokens", path = "/api/v1/api-tokens", tag = "users",
    responses((status = 200, description = "API tokens", body = Vec<ApiTokenView>), Refused))]
pub async fn list(State(st): State<AppState>) -> Result<axum::Json<Vec<ApiTokenView>>, Problem> {
    let rows = st.store.list_api_tokens().await?;
    Ok(axum::Json(
        rows.into_iter()
            .map(|r| ApiTokenView {
                id: r.id,
                name: r.name,
                role: r.role,
                created_by: r.created_by,
                created_at: r.created_at,
                expires_at: r.expires_at,
                revoked_at: r.revoked_at,
                last_used_at: r.last_used_at,
            })
            .collect(),
    ))
}

/// Revokes an API token: it stops working on its next request.
#[utoipa::path(delete, operation_id = "revoke_api_token", path = "/api/v1/api-tokens/{id}", tag = "users",
    params(ApiTokenPath),
    responses((status = 204, description = "Revoked"),
        (status = "4XX", description = "No such unrevoked token, or not permitted", body = ProblemDoc, content_type = "application/problem+json")))]
pub async fn revoke(
    State(st): State<AppState>,
    Path(ApiTokenPath { id }): Path<ApiTokenPath>,
) -> Result<StatusCode, Problem> {
    hex_id("an API token id", &id, 12)?;
    if st.store.revoke_api_token(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("no unrevoked API token {id}")))
    }
}
