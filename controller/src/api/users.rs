//! User management and security settings (admin). The same code as `pifleet-controller
//! user …` on the command line.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::AppState;
use super::extract::{Json, Path, Principal, noted};
use crate::api::problem::{Problem, ProblemDoc, Refused};
use crate::auth::Role;
use crate::auth::users;
use crate::store::users::{UserChange, UserRow};

/// A user as the API shows it (never a hash or secret).
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub name: String,
    pub role: Role,
    pub created_at: i64,
    pub password_changed_at: i64,
    pub disabled: bool,
    pub mfa_enabled: bool,
    pub must_change_password: bool,
}

impl From<&UserRow> for UserView {
    fn from(u: &UserRow) -> Self {
        Self {
            name: u.name.clone(),
            role: u.role,
            created_at: u.created_at,
            password_changed_at: u.password_changed_at,
            disabled: u.disabled_at.is_some(),
            mfa_enabled: u.mfa_enabled_at.is_some(),
            must_change_password: u.must_change_password,
        }
    }
}

/// All users.
#[utoipa::path(get, path = "/api/v1/users", operation_id = "list_users", tag = "users",
    responses(
        (status = 200, body = Vec<UserView>),
        Refused,
    ))]
pub async fn list(State(st): State<AppState>) -> Result<axum::Json<Vec<UserView>>, Problem> {
    let users = st.store.list_users().await?;
    Ok(axum::Json(users.iter().map(UserView::from).collect()))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// 1-64 of a-z 0-9 . _ - starting with a letter or digit.
    pub name: String,
    pub role: Role,
    /// Optional initial password (must meet the policy). Without one, a one-time password
    /// is generated and returned. Either way the user must change it at first sign-in.
    pub password: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedUser {
    pub user: UserView,
    /// The generated one-time password, shown only here.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub one_time_password: Option<String>,
}

/// Create a user.
#[utoipa::path(post, path = "/api/v1/users", operation_id = "create_user", tag = "users",
    request_body = NewUser,
    responses(
        (status = 201, body = CreatedUser),
        (status = 400, description = "Invalid name or weak password", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "The name is taken", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "Too many password hashes at once (the argon2 queue is full); see Retry-After", body = ProblemDoc, content_type = "application/problem+json"),
        Refused,
    ))]
pub async fn create(
    State(st): State<AppState>,
    Json(req): Json<NewUser>,
) -> Result<Response, Problem> {
    users::validate_user_name(&req.name)?;
    if st.store.user_by_name(&req.name).await?.is_some() {
        return Err(UserChange::Exists(req.name).into());
    }
    let argon2 = st.admit_argon2()?;
    let created = users::create_user(
        &st.store,
        move |password| async move { users::hash_error(argon2.hash(password).await) },
        &req.name,
        req.role,
        req.password.as_deref(),
        true,
    )
    .await?;
    let user = st
        .store
        .user_by_id(created.id)
        .await?
        .ok_or_else(|| Problem::internal(&"created user vanished"))?;
    let body = CreatedUser {
        user: UserView::from(&user),
        one_time_password: created.one_time_password,
    };
    Ok(noted(
        format!("role={}", req.role),
        (StatusCode::CREATED, axum::Json(body)),
    ))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserUpdate {
    pub role: Option<Role>,
    /// Disabling signs the user out everywhere at once.
    pub disabled: Option<bool>,
}

/// Change a user's role or disable/enable them. Takes effect on their next request. You
/// cannot change your own role or disable yourself, and the last enabled admin stays.
#[utoipa::path(patch, path = "/api/v1/users/{name}", operation_id = "update_user", tag = "users",
    params(("name" = String, Path, description = "User name")),
    request_body = UserUpdate,
    responses(
        (status = 200, body = UserView),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "Would leave no enabled admin, or targets yourself", body = ProblemDoc, content_type = "application/problem+json"),
        Refused,
    ))]
pub async fn update(
    State(st): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
    Json(req): Json<UserUpdate>,
) -> Result<Response, Problem> {
    if name == p.name {
        return Err(Problem::conflict(
            "you cannot change your own role or disable yourself",
        ));
    }
    let user = st
        .store
        .update_user(&name, req.role, req.disabled)
        .await??;
    let note = format!(
        "{}{}",
        req.role.map(|r| format!("role={r} ")).unwrap_or_default(),
        req.disabled
            .map(|d| format!("disabled={d}"))
            .unwrap_or_default()
    );
    Ok(noted(
        note.trim().to_owned(),
        axum::Json(UserView::from(&user)),
    ))
}

/// Delete a user (their sessions end at once). Not yourself, not the last enabled admin.
#[utoipa::path(delete, path = "/api/v1/users/{name}", operation_id = "delete_user", tag = "users",
    params(("name" = String, Path, description = "User name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, body = ProblemDoc, content_type = "application/problem+json"),
        Refused,
    ))]
pub async fn delete(
    State(st): State<AppState>,
    p: Principal,
    Path(name): Path<String>,
) -> Result<StatusCode, Problem> {
    if name == p.name {
        return Err(Problem::conflict("you cannot delete yourself"));
    }
    st.store.delete_user(&name).await??;
    Ok(StatusCode::NO_CONTENT)
}

/// Turn a user's MFA off (lost authenticator); they can set it up again.
#[utoipa::path(post, path = "/api/v1/users/{name}/reset-mfa", operation_id = "reset_user_mfa", tag = "users",
    params(("name" = String, Path, description = "User name")),
    responses(
        (status = 204, description = "MFA reset"),
        (status = 404, body = ProblemDoc, content_type = "application/problem+json"),
        Refused,
    ))]
pub async fn reset_mfa(
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, Problem> {
    if st.store.reset_mfa(&name).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("no user {name}")))
    }
}

/// Security settings.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    /// Users of these roles must set up MFA before they can use anything but their own
    /// account.
    pub mfa_required_roles: Vec<Role>,
}

/// The security settings.
#[utoipa::path(get, path = "/api/v1/settings/security", operation_id = "show_settings", tag = "users",
    responses(
        (status = 200, body = SecuritySettings),
        Refused,
    ))]
pub async fn settings(State(st): State<AppState>) -> Result<axum::Json<SecuritySettings>, Problem> {
    Ok(axum::Json(SecuritySettings {
        mfa_required_roles: st.store.mfa_required_roles().await?,
    }))
}

/// Change the security settings.
#[utoipa::path(put, path = "/api/v1/settings/security", operation_id = "set_settings", tag = "users",
    request_body = SecuritySettings,
    responses(
        (status = 200, body = SecuritySettings),
        Refused,
    ))]
pub async fn set_settings(
    State(st): State<AppState>,
    Json(mut req): Json<SecuritySettings>,
) -> Result<Response, Problem> {
    req.mfa_required_roles.sort();
    req.mfa_required_roles.dedup();
    st.store
        .set_mfa_required_roles(&req.mfa_required_roles)
        .await?;
    if let Ok(mut cached) = st.mfa_required.write() {
        cached.clone_from(&req.mfa_required_roles);
    }
    let note = format!(
        "mfa_required_roles={}",
        req.mfa_required_roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(",")
    );
    Ok(noted(note, axum::Json(req)))
}
