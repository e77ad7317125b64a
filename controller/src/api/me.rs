//! The signed-in user's own account: who am I, password change, MFA enrolment, sessions.
//! These routes stay open while a password change or MFA setup is pending.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{ClientIp, Json, Path, Principal};
use super::{AppState, event};
use crate::api::problem::{Problem, ProblemDoc, Refused};
use crate::auth::lockout::{self, name_key};
use crate::auth::{Role, password, totp};
use crate::store::now_ms;

/// The signed-in user and what they may do.
#[derive(Debug, Serialize, ToSchema)]
pub struct Whoami {
    pub name: String,
    pub role: Role,
    pub session_id: String,
    pub mfa_enabled: bool,
    /// The user's role requires MFA (and it is not set up yet if `mfa_enabled` is false).
    pub mfa_required: bool,
    pub must_change_password: bool,
    /// Rights of the role: `read`, `operate` (send commands), `admin`.
    pub permissions: Vec<String>,
}

/// Who is signed in.
#[utoipa::path(get, path = "/api/v1/whoami", operation_id = "whoami", tag = "self",
    responses(
        (status = 200, body = Whoami),
        Refused,
    ))]
pub async fn whoami(State(st): State<AppState>, p: Principal) -> axum::Json<Whoami> {
    use crate::auth::Permission;
    let permissions = [
        (Permission::Read, "read"),
        (Permission::Operate, "operate"),
        (Permission::Admin, "admin"),
    ]
    .into_iter()
    .filter(|(perm, _)| p.role.allows(*perm))
    .map(|(_, n)| n.to_owned())
    .collect();
    let u = p.user;
    axum::Json(Whoami {
        mfa_required: st.mfa_required_for(u.role),
        name: u.name,
        role: u.role,
        session_id: u.session_id,
        mfa_enabled: u.mfa_enabled,
        must_change_password: u.must_change_password,
        permissions,
    })
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    pub current_password: String,
    /// At least 12 characters and not easily guessed (zxcvbn score 3 or more).
    pub new_password: String,
}

/// Change your password. Every other session of yours is signed out.
#[utoipa::path(post, path = "/api/v1/me/password", operation_id = "change_password", tag = "self",
    request_body = PasswordChange,
    responses(
        (status = 204, description = "Changed"),
        (status = 400, description = "The new password does not meet the policy", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "The current password is wrong", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 423, description = "Locked after repeated wrong passwords (here or at sign-in); see Retry-After", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "Too many password checks at once (the argon2 queue is full); see Retry-After", body = ProblemDoc, content_type = "application/problem+json"),
        Refused,
    ))]
pub async fn change_password(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    p: Principal,
    Json(req): Json<PasswordChange>,
) -> Result<Response, Problem> {
    let user = st
        .store
        .user_by_id(p.user_id)
        .await?
        .ok_or_else(|| Problem::unauthorized("the session has ended; sign in again"))?;
    // Guesses of the current password count like failed sign-ins, so a stolen access token
    // cannot be used to try passwords without limit.
    let argon2 = st.admit_argon2()?;
    let attempt = lockout::reserve(&st.store, &st.cfg.auth, &name_key(&user.name)).await??;
    let ok = argon2
        .verify(
            Some(user.password_hash.clone()),
            req.current_password.clone(),
        )
        .await;
    if !ok {
        let actor = format!("user:{}", user.name);
        lockout::failed(&st.store, &st.cfg.auth, &st.metrics, &attempt, &actor, ip).await?;
        return Err(Problem::forbidden("the current password is wrong"));
    }
    st.store.release_attempt(&attempt).await?;
    if req.new_password == req.current_password {
        return Err(Problem::bad_request(
            "the new password must differ from the current one",
        ));
    }
    password::check_policy(&req.new_password, &[&user.name, "pifleet"])
        .map_err(|e| Problem::bad_request(e.to_string()))?;
    let hash = argon2
        .hash(req.new_password)
        .await
        .map_err(|e| Problem::internal(&e))?;
    st.store
        .set_password(user.id, &hash, false, Some(&p.session_id))
        .await?;
    tracing::info!(user = %user.name, %ip, "password changed");
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// What an authenticator app needs.
#[derive(Debug, Serialize, ToSchema)]
pub struct MfaSetup {
    /// `otpauth://totp/...` URI.
    pub otpauth_uri: String,
    /// The same URI as a PNG QR code, base64.
    pub qr_png_base64: String,
}

/// Start TOTP enrolment. MFA becomes active only after confirming a code.
#[utoipa::path(post, path = "/api/v1/me/mfa", operation_id = "start_mfa_setup", tag = "self",
    responses(
        (status = 200, body = MfaSetup),
        (status = 409, description = "MFA is already on", body = ProblemDoc, content_type = "application/problem+json"),
        Refused,
    ))]
pub async fn mfa_setup(
    State(st): State<AppState>,
    p: Principal,
) -> Result<axum::Json<MfaSetup>, Problem> {
    if p.mfa_enabled {
        return Err(Problem::conflict(
            "MFA is already on; an admin can reset it if you lost your authenticator",
        ));
    }
    let secret = totp::new_secret();
    let otpauth_uri = totp::otpauth_uri(&secret, &p.name).map_err(|e| Problem::internal(&e))?;
    let qr_png_base64 = totp::qr_png_base64(&secret, &p.name).map_err(|e| Problem::internal(&e))?;
    st.store.set_mfa_pending(p.user_id, &secret).await?;
    Ok(axum::Json(MfaSetup {
        otpauth_uri,
        qr_png_base64,
    }))
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MfaConfirm {
    /// The 6-digit code the authenticator shows now.
    pub code: String,
}

/// Recovery codes, shown once.
#[derive(Debug, Serialize, ToSchema)]
pub struct RecoveryCodes {
    /// Ten one-time codes for when the authenticator is lost. Store them safely.
    pub recovery_codes: Vec<String>,
}

/// Confirm TOTP enrolment with a current code; MFA is on from now and ten recovery codes
/// are returned (only this once).
#[utoipa::path(post, path = "/api/v1/me/mfa/confirm", operation_id = "confirm_mfa_setup", tag = "self",
    request_body = MfaConfirm,
    responses(
        (status = 200, body = RecoveryCodes),
        (status = 400, description = "Wrong code", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 409, description = "No enrolment in progress, or MFA already on", body = ProblemDoc, content_type = "application/problem+json"),
        Refused,
    ))]
pub async fn mfa_confirm(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    p: Principal,
    Json(req): Json<MfaConfirm>,
) -> Result<axum::Json<RecoveryCodes>, Problem> {
    let user = st
        .store
        .user_by_id(p.user_id)
        .await?
        .ok_or_else(|| Problem::unauthorized("the session has ended; sign in again"))?;
    let Some(pending) = user
        .mfa_pending_secret
        .as_deref()
        .filter(|_| user.mfa_enabled_at.is_none())
    else {
        return Err(Problem::conflict(
            "no MFA enrolment in progress: start one with POST /api/v1/me/mfa",
        ));
    };
    let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
    let Some(step) = totp::verify(pending, &req.code, now, None) else {
        st.metrics_auth("mfa_failure");
        return Err(Problem::bad_request(
            "that code is not valid: check the authenticator's clock and try the current code",
        ));
    };
    let codes = totp::recovery_codes();
    let hashes: Vec<String> = codes.iter().map(|c| totp::hash_recovery_code(c)).collect();
    if !st.store.confirm_mfa(p.user_id, step, &hashes).await? {
        return Err(Problem::conflict(
            "MFA enrolment changed meanwhile; start again",
        ));
    }
    st.audit(event(
        &format!("user:{}", p.name),
        ip,
        "auth.mfa_enabled",
        &p.name,
        "ok",
    ))
    .await?;
    Ok(axum::Json(RecoveryCodes {
        recovery_codes: codes,
    }))
}

/// A sign-in session.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionView {
    pub id: String,
    pub created_at: i64,
    pub last_used_at: i64,
    pub expires_at: i64,
    pub ip: String,
    pub user_agent: String,
    /// The session this request belongs to.
    pub current: bool,
}

/// Your live sessions, newest first.
#[utoipa::path(get, path = "/api/v1/me/sessions", operation_id = "list_sessions", tag = "self",
    responses(
        (status = 200, body = Vec<SessionView>),
        Refused,
    ))]
pub async fn sessions(
    State(st): State<AppState>,
    p: Principal,
) -> Result<axum::Json<Vec<SessionView>>, Problem> {
    let rows = st.store.list_sessions(p.user_id).await?;
    Ok(axum::Json(
        rows.into_iter()
            .map(|s| SessionView {
                current: s.id == p.session_id,
                id: s.id,
                created_at: s.created_at,
                last_used_at: s.last_used_at,
                expires_at: s.expires_at,
                ip: s.ip,
                user_agent: s.user_agent,
            })
            .collect(),
    ))
}

/// End one of your sessions (sign out that browser or client).
#[utoipa::path(delete, path = "/api/v1/me/sessions/{id}", operation_id = "revoke_session", tag = "self",
    params(("id" = String, Path, description = "Session id")),
    responses(
        (status = 204, description = "Ended"),
        (status = 404, description = "No such live session of yours", body = ProblemDoc, content_type = "application/problem+json"),
        Refused,
    ))]
pub async fn revoke_session(
    State(st): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    if st
        .store
        .revoke_session(p.user_id, &id, "revoked by user")
        .await?
    {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found("no such live session of yours"))
    }
}
