//! The guard: decides every routed request from the permission table (admin IP
//! allowlist, scrape access, the per-source limiters on enrollment and sign-in, bearer
//! authentication, pending password change or MFA enrolment, role) and audits mutating
//! requests.

use super::*;

/// Decides every API route from the permission table: admin IP allowlist (not for
/// enrollment), per-source rate limits on enrollment and sign-in, bearer authentication, forced password change / MFA enrolment, role;
/// then audits mutating requests.
pub(super) async fn guard(
    State(st): State<AppState>,
    ClientIp(ip): ClientIp,
    matched: Option<MatchedPath>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = matched.as_ref().map(MatchedPath::as_str).unwrap_or("");
    let Some(route) = rbac::route(req.method().as_str(), path) else {
        tracing::error!(method = %req.method(), path, "route missing from the permission table");
        return Problem::forbidden("this route is not permitted").into_response();
    };
    if route.perm == Permission::Scrape && scrape_allowed(&st, ip, req.headers()) {
        return next.run(req).await;
    }
    if route.perm == Permission::Device {
        // Devices connect from anywhere: no admin allowlist, no bearer token, no role.
        let cert = req
            .extensions()
            .get::<https::ClientCert>()
            .and_then(|c| c.0.clone());
        return match device(&st, cert, ip).await {
            Ok(dev) => {
                req.extensions_mut().insert(dev);
                next.run(req).await
            }
            Err(p) => p.into_response(),
        };
    }
    if route.path == "/api/v1/enroll" {
        // Devices enroll from anywhere, so no allowlist; but a token is a secret to guess
        // and every refusal costs a log line, so each source gets a (generous) rate.
        if let Some(p) = rate_limited(&st.enroll_limiter, ip, "enrollment") {
            st.metrics
                .enrollments
                .with_label_values(&["rate_limited"])
                .inc();
            return p.into_response();
        }
    } else {
        let allow = &st.cfg.https.admin_allow;
        if !allow.is_empty() && !allow.iter().any(|n| n.contains(&ip)) {
            tracing::info!(%ip, path, "admin API refused: address not in https.admin_allow");
            return Problem::forbidden("your address may not use the admin API").into_response();
        }
    }
    // Only what can guess a secret: a refresh needs a 256-bit token, and counting it would
    // lock out an office of dashboards behind one address that merely reload.
    if matches!(route.path, "/api/v1/auth/login" | "/api/v1/auth/login/mfa")
        && let Some(p) = rate_limited(&st.auth_limiter, ip, "sign-in")
    {
        return p.into_response();
    }
    if route.perm == Permission::Public {
        return next.run(req).await;
    }
    let principal = match authenticate(&st, req.headers(), ip).await {
        Ok(p) => p,
        Err(p) => return p.into_response(),
    };
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD);
    let target = req.uri().path().to_owned();
    let actor = principal.actor();
    if principal.api_token && route.perm == Permission::Session {
        return Problem::forbidden(
            "an API token has no account of its own: this route is for users",
        )
        .into_response();
    }
    let pending = if route.perm == Permission::Session {
        None
    } else {
        pending_step(&st, &principal)
    };
    let refusal = if pending.is_some() {
        pending
    } else if !principal.role.allows(route.perm) {
        Some(Problem::forbidden(format!(
            "your role ({}) may not do this",
            principal.role
        )))
    } else {
        None
    };
    if let Some(problem) = refusal {
        if mutating {
            let ev = event(&actor, ip, route.action, &target, "denied");
            if let Err(p) = st.audit(ev).await {
                return p.into_response();
            }
        }
        return problem.into_response();
    }
    req.extensions_mut().insert(principal);
    let resp = next.run(req).await;
    if mutating {
        let status = resp.status();
        let outcome = if status.is_success() {
            "ok".to_owned()
        } else if status.is_client_error() {
            format!("refused: {}", status.as_u16())
        } else {
            format!("error: {}", status.as_u16())
        };
        let mut ev = event(&actor, ip, route.action, &target, &outcome);
        if let Some(note) = resp.extensions().get::<AuditNote>() {
            ev.detail = note.0.clone();
        }
        if let Err(p) = st.audit(ev).await {
            return p.into_response();
        }
    }
    resp
}

/// The device of a device route: the connection's verified client certificate, of an
/// enrolled device, the certificate not revoked in the database (which may be newer than
/// the CRL the listener loaded at start).
async fn device(
    st: &ApiState,
    cert: Option<https::DeviceCert>,
    ip: IpAddr,
) -> Result<DevicePrincipal, Problem> {
    let cert = cert.ok_or_else(|| {
        Problem::unauthorized(
            "this route is for devices: present the device certificate (mutual TLS)",
        )
    })?;
    if !st
        .store
        .device_cert_valid(cert.device.as_str(), &cert.serial)
        .await?
    {
        tracing::warn!(source = %ip, device = %cert.device, serial = %cert.serial, "device route refused: certificate or device revoked");
        return Err(Problem::forbidden(
            "this device certificate is revoked or not known",
        ));
    }
    Ok(DevicePrincipal(cert.device))
}

/// The 429 for a client over its source's rate (IPv6 clients share their /64's), if it is.
fn rate_limited(
    limiter: &DefaultKeyedRateLimiter<IpAddr>,
    ip: IpAddr,
    what: &str,
) -> Option<Problem> {
    let not_until = limiter.check_key(&source_key(ip)).err()?;
    let wait = not_until.wait_time_from(DefaultClock::default().now());
    Some(
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!("too many {what} requests from your address; wait and try again"),
        )
        .with_retry_after(wait.as_secs_f64().ceil() as u64),
    )
}

/// A Prometheus scrape: the scrape token, or a client address in `metrics.scrape_allow`.
pub(super) fn scrape_allowed(st: &ApiState, ip: IpAddr, headers: &axum::http::HeaderMap) -> bool {
    if st.cfg.metrics.scrape_allow.iter().any(|n| n.contains(&ip)) {
        return true;
    }
    bearer(headers).is_some_and(|t| auth::same_secret(t, &st.scrape_token))
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Resolves the bearer access token to a principal; the user and session are read from the
/// database on every request, so disabling, deleting, demoting and logging out take effect
/// at once.
pub(super) async fn authenticate(
    st: &ApiState,
    headers: &axum::http::HeaderMap,
    ip: IpAddr,
) -> Result<Principal, Problem> {
    let token = bearer(headers).ok_or_else(|| {
        Problem::unauthorized("sign in: send an access token as `Authorization: Bearer <token>`")
    })?;
    if token.starts_with(crate::auth::api_tokens::PREFIX) {
        return match crate::auth::api_tokens::resolve(&st.store, token).await? {
            Some(t) => Ok(Principal {
                user: crate::model::session::SessionUser {
                    user_id: -t.rowid,
                    name: t.name,
                    role: t.role,
                    session_id: String::new(),
                    mfa_enabled: true,
                    must_change_password: false,
                },
                token_expires_at: t.expires_at / 1000,
                api_token: true,
            }),
            None => {
                // A wrong token is a guess at a secret: it counts like a sign-in.
                if let Some(p) = rate_limited(&st.auth_limiter, ip, "sign-in") {
                    return Err(p);
                }
                tracing::warn!(source = %ip, "API token refused: unknown, expired or revoked");
                Err(Problem::unauthorized(
                    "the API token is unknown, expired or revoked",
                ))
            }
        };
    }
    let now = crate::store::now_ms() / 1000;
    let claims = st
        .jwt()
        .verify(token, TokenKind::Access, now)
        .map_err(|_| Problem::unauthorized("the access token is invalid or expired"))?;
    let user = st
        .store
        .session_user(&claims.sid, claims.sub, crate::store::now_ms())
        .await?
        .ok_or_else(|| Problem::unauthorized("the session has ended; sign in again"))?;
    Ok(Principal {
        user,
        token_expires_at: claims.exp,
        api_token: false,
    })
}

/// Why a signed-in user may use nothing but their own account yet, if so.
pub(super) fn pending_step(st: &ApiState, p: &Principal) -> Option<Problem> {
    if p.must_change_password {
        Some(
            Problem::forbidden("change your password first (POST /api/v1/me/password)")
                .with_code("password_change_required"),
        )
    } else if !p.mfa_enabled && st.mfa_required_for(p.role) {
        Some(
            Problem::forbidden(format!(
                "your role ({}) requires MFA: set it up first (POST /api/v1/me/mfa)",
                p.role
            ))
            .with_code("mfa_setup_required"),
        )
    } else {
        None
    }
}
