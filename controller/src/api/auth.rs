//! Sign-in: password, then TOTP or a recovery code when MFA is on; rotating refresh tokens
//! with reuse detection; logout. Every outcome is audited. Unknown users get the same
//! argon2 work, the same answer and the same lockout as real ones.
//!
//! Every guess is recorded before it is checked (see [`crate::store::attempts`]): at most
//! `auth.lockout_failures` guesses per name are checked within the window, however many
//! arrive at once. Password checks first take a place in the bounded argon2 queue (503 when
//! it is full), before the attempt is recorded, so a refusal for load costs no lockout slot.
//!
//! API clients get the refresh token in the response body. Browsers ask for `cookie: true`
//! and get it only as an HttpOnly, Secure, SameSite=Strict cookie scoped to
//! `/api/v1/auth`; refreshing from the cookie also needs the `X-CSRF-Token` header to equal
//! the `__Host-pifleet_csrf` cookie (double submit), which a cross-site page cannot read.

use std::net::IpAddr;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::extract::{ClientIp, Json, Principal};
use super::{ApiState, AppState, event};
use crate::api::problem::{Problem, ProblemDoc, Refused};
use crate::audit::Event;
use crate::auth::jwt::TokenKind;
use crate::auth::lockout::{self, name_key};
use crate::auth::tokens::{new_refresh_token, random_hex, refresh_hash};
use crate::auth::{Role, totp};
use crate::store::attempts::{Attempt, MfaAcceptance, MfaCode};
use crate::store::now_ms;
use crate::store::sessions::Refresh;
use crate::store::users::UserRow;

/// The refresh token's cookie. Scoped to `Path=/api/v1/auth` so the browser sends it only
/// to sign-in, refresh and logout, not with every request. The `__Host-` prefix would
/// require `Path=/`, so it gets `__Secure-`: the browser accepts it only with `Secure` from
/// an HTTPS origin, so a plain-HTTP page or network attacker cannot plant or overwrite it.
pub const REFRESH_COOKIE: &str = "__Secure-pifleet_refresh";
/// The double-submit CSRF cookie (`Path=/`, readable by the dashboard). `__Host-`: only the
/// controller's own host can set it (no `Domain`, `Secure`, `Path=/`), so a sibling
/// subdomain cannot plant a value of its choosing.
pub const CSRF_COOKIE: &str = "__Host-pifleet_csrf";
pub const CSRF_HEADER: &str = "x-csrf-token";
/// Lifetime of the token that carries a sign-in from the password step to the MFA step.
const MFA_TOKEN_TTL_S: i64 = 300;
const BAD_CREDENTIALS: &str = "invalid user name or password";

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub username: String,
    pub password: String,
    /// Browsers: deliver the refresh token as an HttpOnly cookie instead of in the body.
    #[serde(default)]
    pub cookie: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginMfaRequest {
    /// The `mfa_token` from the password step.
    pub mfa_token: String,
    /// A 6-digit TOTP code ...
    pub code: Option<String>,
    /// ... or one of the recovery codes (each works once).
    pub recovery_code: Option<String>,
    #[serde(default)]
    pub cookie: bool,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    /// The refresh token (API clients). Browsers send no body, or `{}`: the cookie is used.
    pub refresh_token: Option<String>,
}

/// The signed-in user, as returned with tokens.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionUser {
    pub name: String,
    pub role: Role,
    pub must_change_password: bool,
    pub mfa_enabled: bool,
}

/// Result of a sign-in step or a refresh.
#[derive(Debug, Serialize, ToSchema)]
pub struct TokenResponse {
    /// True when a second step is needed: post `mfa_token` with a code to
    /// `/api/v1/auth/login/mfa`.
    pub mfa_required: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub mfa_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub access_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub token_type: Option<String>,
    /// Seconds the access token is valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub expires_in: Option<i64>,
    /// Only for API clients (not with `cookie: true`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub refresh_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub user: Option<SessionUser>,
}

fn user_agent(headers: &HeaderMap) -> String {
    headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .chars()
        .take(200)
        .collect()
}

/// The log line of every failed or refused sign-in step, one per guess, with the client
/// address (`source`: the TCP peer, or the X-Forwarded-For client of a trusted proxy) for
/// tools like fail2ban (deploy/fail2ban/). The user name is not logged: one typed into the
/// wrong field would be a password; the audit log records the (lowercased) name tried.
const SIGN_IN_FAILED: &str = "sign-in failed";

/// Records an attempt for `key` before its guess is checked; a 423 when the account is
/// locked (audited as `refused` and logged).
async fn reserve_attempt(st: &ApiState, key: &str, refused: Event) -> Result<Attempt, Problem> {
    match lockout::reserve(&st.store, &st.cfg.auth, key).await? {
        Ok(a) => Ok(a),
        Err(locked) => {
            tracing::warn!(
                source = %refused.source,
                action = %refused.action,
                reason = "account locked",
                "{SIGN_IN_FAILED}"
            );
            st.audit(refused).await?;
            Err(locked.into())
        }
    }
}

/// A wrong password or code: audits it, then settles its attempt as a failure.
async fn record_failure(
    st: &ApiState,
    attempt: &Attempt,
    actor: &str,
    ip: IpAddr,
    action: &str,
    why: &str,
) -> Result<(), Problem> {
    st.metrics_auth("failure");
    tracing::warn!(source = %ip, action, reason = why, "{SIGN_IN_FAILED}");
    st.audit(event(
        actor,
        ip,
        action,
        &attempt.name,
        &format!("failed: {why}"),
    ))
    .await?;
    Ok(lockout::failed(&st.store, &st.cfg.auth, &st.metrics, attempt, actor, ip).await?)
}

fn session_user(u: &UserRow) -> SessionUser {
    SessionUser {
        name: u.name.clone(),
        role: u.role,
        must_change_password: u.must_change_password,
        mfa_enabled: u.mfa_enabled_at.is_some(),
    }
}

/// Issues an access token for a session and builds the response, with cookies for
/// browsers.
fn token_response(
    st: &ApiState,
    user: &UserRow,
    session_id: &str,
    refresh: String,
    cookie: bool,
) -> Result<Response, Problem> {
    let now_s = now_ms() / 1000;
    let (access, _) = st
        .jwt()
        .issue(
            TokenKind::Access,
            user.id,
            session_id,
            st.cfg.auth.access_ttl_s,
            now_s,
        )
        .map_err(|e| Problem::internal(&e))?;
    let body = TokenResponse {
        mfa_required: false,
        mfa_token: None,
        access_token: Some(access),
        token_type: Some("Bearer".into()),
        expires_in: Some(st.cfg.auth.access_ttl_s),
        refresh_token: (!cookie).then(|| refresh.clone()),
        user: Some(session_user(user)),
    };
    let mut resp = axum::Json(body).into_response();
    if cookie {
        set_session_cookies(resp.headers_mut(), &refresh, st.cfg.auth.refresh_ttl_s);
    }
    Ok(resp)
}

fn set_session_cookies(h: &mut HeaderMap, refresh: &str, max_age: i64) {
    let csrf = random_hex(16);
    for c in [
        format!(
            "{REFRESH_COOKIE}={refresh}; Path=/api/v1/auth; Max-Age={max_age}; HttpOnly; Secure; SameSite=Strict"
        ),
        format!("{CSRF_COOKIE}={csrf}; Path=/; Max-Age={max_age}; Secure; SameSite=Strict"),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            h.append(header::SET_COOKIE, v);
        }
    }
}

/// Cookies that end a browser session.
pub fn clear_session_cookies(h: &mut HeaderMap) {
    for c in [
        format!(
            "{REFRESH_COOKIE}=; Path=/api/v1/auth; Max-Age=0; HttpOnly; Secure; SameSite=Strict"
        ),
        format!("{CSRF_COOKIE}=; Path=/; Max-Age=0; Secure; SameSite=Strict"),
    ] {
        if let Ok(v) = HeaderValue::from_str(&c) {
            h.append(header::SET_COOKIE, v);
        }
    }
}

/// A cookie's value from the request.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Constant-time equality for secrets of equal length.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

async fn start_session(
    st: &ApiState,
    user: &UserRow,
    ip: IpAddr,
    headers: &HeaderMap,
    cookie: bool,
) -> Result<Response, Problem> {
    let session_id = random_hex(16);
    let refresh = new_refresh_token();
    let expires = now_ms() + st.cfg.auth.refresh_ttl_s.saturating_mul(1000);
    st.store
        .create_session(
            &session_id,
            user.id,
            &ip.to_string(),
            &user_agent(headers),
            expires,
            &refresh_hash(&refresh),
        )
        .await?;
    st.metrics_auth("success");
    token_response(st, user, &session_id, refresh, cookie)
}

/// Sign in with a user name and password.
#[utoipa::path(post, path = "/api/v1/auth/login", operation_id = "login", tag = "auth", security(()),
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in, or `mfa_required` with an `mfa_token`", body = TokenResponse),
        (status = 401, description = "Wrong user name or password (the same answer for both)", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 423, description = "Locked after repeated failures; see Retry-After", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 429, description = "Too many requests from this address; see Retry-After", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 503, description = "Too many password checks at once (the argon2 queue is full); see Retry-After. Does not count toward the lockout", body = ProblemDoc, content_type = "application/problem+json"),
        Refused,
    ))]
pub async fn login(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Json(req): Json<LoginRequest>,
) -> Result<Response, Problem> {
    let key = name_key(&req.username);
    let argon2 = st.admit_argon2()?;
    let refused = event("anonymous", ip, "auth.login", &key, "refused: locked");
    let attempt = reserve_attempt(&st, &key, refused).await?;
    let user = st.store.user_by_name(&key).await?;
    let ok = argon2
        .verify(
            user.as_ref().map(|u| u.password_hash.clone()),
            req.password.clone(),
        )
        .await;
    let user = match user {
        Some(u) if ok && u.disabled_at.is_none() => u,
        other => {
            let why = match other {
                None => "unknown user",
                Some(u) if u.disabled_at.is_some() => "user disabled",
                Some(_) => "wrong password",
            };
            record_failure(&st, &attempt, "anonymous", ip, "auth.login", why).await?;
            return Err(Problem::unauthorized(BAD_CREDENTIALS));
        }
    };
    if st.hasher.needs_rehash(&user.password_hash) {
        // The cost was raised since this hash was made: upgrade it now that we know the
        // password.
        if let Ok(h) = argon2.hash(req.password.clone()).await {
            st.store.rehash_password(user.id, &h).await?;
        }
    }
    drop(argon2);
    let actor = format!("user:{}", user.name);
    if user.mfa_enabled_at.is_some() {
        // The password was right, but the sign-in is not complete: earlier failures stay
        // until the second step succeeds.
        st.store.release_attempt(&attempt).await?;
        let (mfa_token, _) = st
            .jwt()
            .issue(
                TokenKind::Mfa,
                user.id,
                "",
                MFA_TOKEN_TTL_S,
                now_ms() / 1000,
            )
            .map_err(|e| Problem::internal(&e))?;
        st.audit(event(
            &actor,
            ip,
            "auth.login",
            &key,
            "password ok; MFA code required",
        ))
        .await?;
        let body = TokenResponse {
            mfa_required: true,
            mfa_token: Some(mfa_token),
            access_token: None,
            token_type: None,
            expires_in: None,
            refresh_token: None,
            user: None,
        };
        return Ok(axum::Json(body).into_response());
    }
    st.store.attempt_succeeded(&attempt).await?;
    let resp = start_session(&st, &user, ip, &headers, req.cookie).await?;
    st.audit(event(&actor, ip, "auth.login", &key, "ok"))
        .await?;
    Ok(resp)
}

/// Second sign-in step: a TOTP code or a recovery code.
#[utoipa::path(post, path = "/api/v1/auth/login/mfa", operation_id = "login_mfa", tag = "auth", security(()),
    request_body = LoginMfaRequest,
    responses(
        (status = 200, description = "Signed in", body = TokenResponse),
        (status = 401, description = "Invalid or expired MFA token, or wrong code", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 423, description = "Locked after repeated failures; see Retry-After", body = ProblemDoc, content_type = "application/problem+json"),
        Refused,
    ))]
pub async fn login_mfa(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    Json(req): Json<LoginMfaRequest>,
) -> Result<Response, Problem> {
    let expired =
        || Problem::unauthorized("the sign-in has expired; start again").with_code("mfa_expired");
    let claims = st
        .jwt()
        .verify(&req.mfa_token, TokenKind::Mfa, now_ms() / 1000)
        .map_err(|_| expired())?;
    // A step token works once: a used one is refused before its code is looked at, so a
    // copy of it is no oracle for codes.
    if st.store.mfa_token_used(&claims.jti).await? {
        return Err(expired());
    }
    let user = st
        .store
        .user_by_id(claims.sub)
        .await?
        .filter(|u| u.disabled_at.is_none())
        .ok_or_else(expired)?;
    let Some(secret) = user.mfa_secret.as_deref() else {
        return Err(expired());
    };
    if req.code.is_some() == req.recovery_code.is_some() {
        return Err(Problem::bad_request(
            "send either `code` or `recovery_code`",
        ));
    }
    let key = name_key(&user.name);
    let actor = format!("user:{}", user.name);
    let refused = event(&actor, ip, "auth.mfa", &key, "refused: locked");
    let attempt = reserve_attempt(&st, &key, refused).await?;
    let code = match (req.code.as_deref(), req.recovery_code.as_deref()) {
        (Some(code), _) => {
            let now = u64::try_from(now_ms() / 1000).unwrap_or(0);
            totp::verify(secret, code, now, user.mfa_last_step).map(MfaCode::Totp)
        }
        (None, Some(code)) => Some(MfaCode::Recovery(totp::hash_recovery_code(code))),
        (None, None) => None, // refused above
    };
    let acceptance = match &code {
        Some(c) => {
            let token_expires_ms = claims.exp.saturating_mul(1000);
            st.store
                .accept_mfa(user.id, &claims.jti, token_expires_ms, c, &attempt)
                .await?
        }
        None => MfaAcceptance::CodeRefused,
    };
    match acceptance {
        MfaAcceptance::Accepted => {}
        MfaAcceptance::TokenUsed => {
            // A concurrent request completed the sign-in with this token first.
            st.store.release_attempt(&attempt).await?;
            return Err(expired());
        }
        MfaAcceptance::CodeRefused => {
            // The step token stays usable: a mistyped code costs a lockout slot, not the
            // password step.
            st.metrics_auth("mfa_failure");
            record_failure(&st, &attempt, &actor, ip, "auth.mfa", "wrong code").await?;
            return Err(Problem::unauthorized("invalid code"));
        }
    }
    let how = match code {
        Some(MfaCode::Recovery(_)) => "recovery code",
        _ => "totp",
    };
    let resp = start_session(&st, &user, ip, &headers, req.cookie).await?;
    st.audit(event(
        &actor,
        ip,
        "auth.login",
        &key,
        &format!("ok ({how})"),
    ))
    .await?;
    Ok(resp)
}

/// Exchange a refresh token for a new access token and a new refresh token. A refresh
/// token works once: presenting a used one ends its whole session.
#[utoipa::path(post, path = "/api/v1/auth/refresh", operation_id = "refresh", tag = "auth", security(()),
    request_body(content = Option<RefreshRequest>, description = "API clients send the token; browsers send no body and the `__Secure-pifleet_refresh` cookie plus the `X-CSRF-Token` header"),
    responses(
        (status = 200, description = "New tokens", body = TokenResponse),
        (status = 401, description = "Invalid, expired, revoked or reused refresh token", body = ProblemDoc, content_type = "application/problem+json"),
        (status = 403, description = "Cookie refresh without a matching CSRF header", body = ProblemDoc, content_type = "application/problem+json"),
        Refused,
    ))]
pub async fn refresh(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Problem> {
    // API clients send the token in the body; browsers send no body, or an empty object,
    // and the cookie.
    let sent = if body.iter().any(|b| !b.is_ascii_whitespace()) {
        let req: RefreshRequest = serde_json::from_slice(&body)
            .map_err(|e| Problem::bad_request(format!("invalid JSON body: {e}")))?;
        req.refresh_token
    } else {
        None
    };
    let (token, from_cookie) = if let Some(token) = sent {
        (token, false)
    } else {
        let Some(token) = cookie(&headers, REFRESH_COOKIE).filter(|t| !t.is_empty()) else {
            return Err(Problem::unauthorized("no refresh token"));
        };
        let csrf_ok = match (
            cookie(&headers, CSRF_COOKIE),
            headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok()),
        ) {
            (Some(c), Some(h)) => !c.is_empty() && same_secret(c, h),
            _ => false,
        };
        if !csrf_ok {
            return Err(Problem::forbidden(
                "refreshing from the cookie needs the X-CSRF-Token header",
            ));
        }
        (token.to_owned(), true)
    };
    let new_token = new_refresh_token();
    let outcome = st
        .store
        .rotate_refresh(
            &refresh_hash(&token),
            &refresh_hash(&new_token),
            &ip.to_string(),
        )
        .await?;
    let (session_id, user_id) = match outcome {
        Refresh::Invalid => {
            return Err(Problem::unauthorized(
                "the refresh token is invalid or expired; sign in again",
            ));
        }
        Refresh::Reused {
            session_id,
            user_id,
            revoked_now,
        } => {
            let actor = match st.store.user_by_id(user_id).await? {
                Some(u) => format!("user:{}", u.name),
                None => "anonymous".to_owned(),
            };
            st.metrics_auth("refresh_reuse");
            tracing::warn!(%ip, session = %session_id, "refresh token reused: session revoked");
            st.audit(event(
                &actor,
                ip,
                "auth.refresh_reuse",
                &format!("session {session_id}"),
                if revoked_now {
                    "session revoked"
                } else {
                    "session already ended"
                },
            ))
            .await?;
            let mut resp = Problem::unauthorized(
                "this refresh token was already used, so the session has been ended; sign in again",
            )
            .into_response();
            clear_session_cookies(resp.headers_mut());
            return Ok(resp);
        }
        Refresh::Rotated {
            session_id,
            user_id,
        } => (session_id, user_id),
    };
    let user = st
        .store
        .user_by_id(user_id)
        .await?
        .ok_or_else(|| Problem::unauthorized("the session has ended; sign in again"))?;
    token_response(&st, &user, &session_id, new_token, from_cookie)
}

/// Sign out: ends this session (its refresh tokens stop working, and so do its access
/// tokens, at once).
#[utoipa::path(post, path = "/api/v1/auth/logout", operation_id = "logout", tag = "auth",
    responses(
        (status = 204, description = "Signed out"),
        Refused,
    ))]
pub async fn logout(State(st): State<AppState>, p: Principal) -> Result<Response, Problem> {
    st.store
        .revoke_session(p.user_id, &p.session_id, "logout")
        .await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    clear_session_cookies(resp.headers_mut());
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static(
                "a=1; __Secure-pifleet_refresh_x=no; pifleet_refresh=old; __Secure-pifleet_refresh=yes",
            ),
        );
        assert_eq!(cookie(&h, REFRESH_COOKIE), Some("yes"));
        assert_eq!(cookie(&h, CSRF_COOKIE), None);
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
    }
}
