//! The admin API under `/api/v1` (plus `/healthz` and `/readyz`): one router, one guard that
//! decides every route from [`crate::auth::rbac::ROUTES`], audit of every mutating request,
//! and the hardening layers (security headers, CORS allowlist, body limit, timeout, admin IP
//! allowlist, trusted proxies). The OpenAPI document is generated from the handlers.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::audit::Event;
use crate::auth::jwt::{JwtKeys, TokenKind};
use crate::auth::password::Passwords;
use crate::auth::{Permission, Role, rbac};
use crate::config::Config;
use crate::datadir::DataDir;
use crate::dispatch::Dispatcher;
use crate::enroll::{self, EnrollState};
use crate::https::PeerAddr;
use crate::metrics::Metrics;
use crate::problem::{Problem, ProblemDoc};
use crate::store::Store;

pub mod audit;
pub mod auth;
pub mod commands;
pub mod devices;
pub mod extract;
pub mod me;
pub mod metrics;
pub mod tokens;
pub mod users;

pub use extract::{AuditNote, ClientIp, Principal};

/// Everything the handlers share.
#[derive(Debug)]
pub struct ApiState {
    pub dd: DataDir,
    pub store: Store,
    pub cfg: Config,
    pub passwords: Passwords,
    pub jwt: JwtKeys,
    pub dispatcher: Arc<Dispatcher>,
    pub enroll: Arc<EnrollState>,
    pub metrics: Metrics,
    /// Per-IP limiter for /api/v1/auth/*.
    pub auth_limiter: DefaultKeyedRateLimiter<IpAddr>,
    /// Roles whose users must have MFA (security settings, cached from the database).
    pub mfa_required: RwLock<Vec<Role>>,
    /// The bearer token Prometheus scrapes with (`scrape.token`).
    pub scrape_token: String,
}

/// Shared state handle.
pub type AppState = Arc<ApiState>;

impl ApiState {
    /// Builds the state; loads the security settings from the database.
    #[allow(clippy::too_many_arguments)]
    pub async fn new(
        dd: DataDir,
        store: Store,
        cfg: Config,
        jwt: JwtKeys,
        scrape_token: String,
        dispatcher: Arc<Dispatcher>,
        enroll: Arc<EnrollState>,
        metrics: Metrics,
    ) -> Result<AppState, crate::serve::ServeError> {
        let passwords = Passwords::new(cfg.auth.argon2_cost())
            .map_err(|e| crate::serve::ServeError::Auth(e.to_string()))?;
        let quota = Quota::per_minute(nonzero(cfg.auth.rate_per_minute))
            .allow_burst(nonzero(cfg.auth.rate_burst));
        let mfa_required = store.mfa_required_roles().await?;
        Ok(Arc::new(Self {
            dd,
            store,
            cfg,
            passwords,
            jwt,
            dispatcher,
            enroll,
            metrics,
            auth_limiter: RateLimiter::keyed(quota),
            mfa_required: RwLock::new(mfa_required),
            scrape_token,
        }))
    }

    /// Whether users of `role` must have MFA before using anything but their own account.
    pub fn mfa_required_for(&self, role: Role) -> bool {
        self.mfa_required
            .read()
            .map(|r| r.contains(&role))
            .unwrap_or(true) // a poisoned lock fails closed
    }

    /// Verifies a password on the blocking pool (argon2 takes tens of milliseconds); `None`
    /// costs the same and fails.
    pub async fn verify_password(
        self: &Arc<Self>,
        stored: Option<String>,
        password: String,
    ) -> bool {
        let st = self.clone();
        tokio::task::spawn_blocking(move || st.passwords.verify(stored.as_deref(), &password))
            .await
            .unwrap_or(false)
    }

    /// Hashes a password on the blocking pool.
    pub async fn hash_password(self: &Arc<Self>, password: String) -> Result<String, Problem> {
        let st = self.clone();
        tokio::task::spawn_blocking(move || st.passwords.hash(&password))
            .await
            .map_err(|e| Problem::internal(&e))?
            .map_err(|e| Problem::internal(&e))
    }

    /// Counts an admin sign-in event.
    pub fn metrics_auth(&self, ev: &str) {
        self.metrics.auth_events.with_label_values(&[ev]).inc();
    }

    /// Appends an audit event; a failure to record is logged and reported as an error.
    pub async fn audit(&self, ev: Event) -> Result<(), Problem> {
        self.store.append_audit(&ev).await.map(|_| ()).map_err(|e| {
            tracing::error!(error = %e, action = %ev.action, "cannot append to the audit log");
            Problem::internal(&e)
        })
    }
}

fn nonzero(n: u32) -> std::num::NonZeroU32 {
    std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN)
}

/// An audit event for an API request.
pub fn event(actor: &str, ip: IpAddr, action: &str, target: &str, outcome: &str) -> Event {
    Event {
        actor: actor.to_owned(),
        source: ip.to_string(),
        action: action.to_owned(),
        target: target.to_owned(),
        outcome: outcome.to_owned(),
        detail: String::new(),
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "pifleet admin API",
        description = "Fleet, commands, enrollment, users and audit. Authenticate with `POST /api/v1/auth/login`, then send the access token as `Authorization: Bearer <token>`.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    components(schemas(ProblemDoc)),
    tags(
        (name = "auth", description = "Sign-in, sessions and tokens"),
        (name = "self", description = "The signed-in user's own account"),
        (name = "devices", description = "Enrolled devices and their telemetry"),
        (name = "commands", description = "Signed remote commands"),
        (name = "tokens", description = "Enrollment tokens"),
        (name = "users", description = "User management (admin)"),
        (name = "audit", description = "The hash-chained audit log (admin)"),
        (name = "system", description = "Health and metadata"),
        (name = "metrics", description = "Prometheus: controller metrics, per-device targets, service discovery"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// The API routes and their OpenAPI document.
pub fn api_routes() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(enroll::enroll))
        .routes(routes!(auth::login))
        .routes(routes!(auth::login_mfa))
        .routes(routes!(auth::refresh))
        .routes(routes!(auth::logout))
        .routes(routes!(me::whoami))
        .routes(routes!(me::change_password))
        .routes(routes!(me::mfa_setup))
        .routes(routes!(me::mfa_confirm))
        .routes(routes!(me::sessions))
        .routes(routes!(me::revoke_session))
        .routes(routes!(devices::list))
        .routes(routes!(devices::show))
        .routes(routes!(devices::telemetry))
        .routes(routes!(devices::history))
        .routes(routes!(devices::set_labels))
        .routes(routes!(devices::revoke))
        .routes(routes!(commands::send, commands::list))
        .routes(routes!(commands::show))
        .routes(routes!(commands::cancel))
        .routes(routes!(tokens::create, tokens::list))
        .routes(routes!(tokens::revoke))
        .routes(routes!(users::list, users::create))
        .routes(routes!(users::update, users::delete))
        .routes(routes!(users::reset_mfa))
        .routes(routes!(users::settings, users::set_settings))
        .routes(routes!(audit::list))
        .routes(routes!(audit::verify))
        .routes(routes!(metrics::sd))
        .routes(routes!(metrics::controller))
        .routes(routes!(metrics::device))
        .split_for_parts()
}

/// The whole HTTPS application.
pub fn app(state: AppState) -> Router {
    let (api, doc) = api_routes();
    let doc = Arc::new(doc);
    let https = &state.cfg.https;
    let mut router = api
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move || {
                let doc = doc.clone();
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), guard))
        .route_layer(middleware::from_fn_with_state(state.clone(), http_metrics))
        .route("/healthz", axum::routing::get(healthz))
        .route("/readyz", axum::routing::get(readyz))
        .fallback(|| async { Problem::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            )
        })
        .with_state(state.clone())
        .layer(DefaultBodyLimit::max(https.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), read_body))
        .layer(middleware::from_fn_with_state(state.clone(), client_ip));
    if !https.cors_origins.is_empty() {
        let origins: Vec<HeaderValue> = https
            .cors_origins
            .iter()
            .filter_map(|o| HeaderValue::from_str(o).ok())
            .collect();
        router = router.layer(
            CorsLayer::new()
                .allow_origin(AllowOrigin::list(origins))
                .allow_methods([
                    Method::GET,
                    Method::POST,
                    Method::PUT,
                    Method::PATCH,
                    Method::DELETE,
                ])
                .allow_headers([
                    header::AUTHORIZATION,
                    header::CONTENT_TYPE,
                    HeaderName::from_static("x-csrf-token"),
                ])
                .allow_credentials(true)
                .max_age(Duration::from_secs(600)),
        );
    }
    router = router
        .layer(middleware::from_fn_with_state(state.clone(), deadline))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("a request handler panicked");
            Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }))
        .layer(middleware::from_fn(request_span));
    security_headers(router)
}

/// Headers on every response, errors included.
pub const SECURITY_HEADERS: &[(&str, &str)] = &[
    (
        "content-security-policy",
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
         form-action 'self'; frame-ancestors 'none'",
    ),
    (
        "strict-transport-security",
        "max-age=63072000; includeSubDomains",
    ),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    (
        "permissions-policy",
        "accelerometer=(), camera=(), geolocation=(), gyroscope=(), magnetometer=(), \
         microphone=(), payment=(), usb=()",
    ),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
];

fn security_headers(mut router: Router) -> Router {
    for (name, value) in SECURITY_HEADERS {
        router = router.layer(SetResponseHeaderLayer::overriding(
            HeaderName::from_static(name),
            HeaderValue::from_static(value),
        ));
    }
    router.layer(SetResponseHeaderLayer::if_not_present(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    ))
}

/// The request id header, taken from the client (or a proxy) when it is sane, else made up.
pub const REQUEST_ID: &str = "x-request-id";

/// Runs the request inside a span carrying its request id (so every log line of the request
/// has it), returns the id in `X-Request-Id`, and logs one line per request. Only the method
/// and path are logged: never headers, query strings or bodies, which carry credentials.
async fn request_span(mut req: Request, next: Next) -> Response {
    use tracing::Instrument;
    let id = req
        .headers()
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            (1..=64).contains(&v.len())
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        })
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let mut b = [0u8; 8];
            rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
            pifleet_shared::token::to_hex(&b)
        });
    if let Ok(v) = HeaderValue::from_str(&id) {
        req.headers_mut().insert(REQUEST_ID, v);
    }
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.uri().path()
    );
    let started = std::time::Instant::now();
    let read = matches!(*req.method(), Method::GET | Method::HEAD);
    let mut resp = async move {
        let resp = next.run(req).await;
        let status = resp.status().as_u16();
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        // Successful reads (dashboards, Prometheus scrapes) are many and uneventful: debug.
        if read && status < 400 {
            tracing::debug!(status, duration_ms = ms, "request done");
        } else {
            tracing::info!(status, duration_ms = ms, "request done");
        }
        resp
    }
    .instrument(span)
    .await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    resp
}

/// Answers 408 (as a problem document) when a request takes longer than
/// `https.request_timeout_s`.
async fn deadline(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let limit = Duration::from_secs(st.cfg.https.request_timeout_s);
    match tokio::time::timeout(limit, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => Problem::new(
            StatusCode::REQUEST_TIMEOUT,
            "the request took too long and was abandoned",
        )
        .into_response(),
    }
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(st): State<AppState>) -> Response {
    match st.store.ping().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready: database");
            Problem::new(StatusCode::SERVICE_UNAVAILABLE, "database unavailable").into_response()
        }
    }
}

/// Reads the whole request body (at most `https.max_body_bytes`) before the guard or a
/// handler sees the request. An answer sent while part of the body is still unread (a 401
/// from the guard, say) makes hyper close the connection without `Connection: close`, so a
/// keep-alive client that reuses it gets a reset instead of its next answer, and a client
/// still sending gets a broken connection instead of the answer. A body over the limit is
/// refused here with 413 and `Connection: close`, without reading the rest.
async fn read_body(State(st): State<AppState>, req: Request, next: Next) -> Response {
    use futures_util::StreamExt;
    let limit = st.cfg.https.max_body_bytes;
    let too_large = || {
        let mut resp = Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the request body is larger than {limit} bytes"),
        )
        .into_response();
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        resp
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large();
    }
    let (parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    let mut buf: Vec<u8> = Vec::new();
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(data) if buf.len().saturating_add(data.len()) > limit => return too_large(),
            Ok(data) => buf.extend_from_slice(&data),
            Err(e) => {
                tracing::debug!(error = %e, "request body unreadable");
                let mut resp =
                    Problem::bad_request("the request body could not be read").into_response();
                resp.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                return resp;
            }
        }
    }
    next.run(Request::from_parts(parts, axum::body::Body::from(buf)))
        .await
}

/// Works out the client address (trusted proxies only) and puts it in the request.
async fn client_ip(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let peer = req
        .extensions()
        .get::<PeerAddr>()
        .map(|p| p.0.ip())
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let ip = resolve_client(peer, req.headers(), &st.cfg.https.trusted_proxies);
    req.extensions_mut().insert(ClientIp(ip));
    next.run(req).await
}

/// The client address: the peer, unless the peer is a trusted proxy, in which case the
/// right-most X-Forwarded-For entry that is not itself a trusted proxy.
pub fn resolve_client(
    peer: IpAddr,
    headers: &axum::http::HeaderMap,
    trusted: &[ipnet::IpNet],
) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut hops: Vec<IpAddr> = Vec::new();
    for v in headers.get_all("x-forwarded-for") {
        let Ok(s) = v.to_str() else { return peer };
        for part in s.split(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => hops.push(ip),
                Err(_) => return peer, // a malformed chain is not believed at all
            }
        }
    }
    hops.into_iter()
        .rev()
        .find(|ip| !is_trusted(ip))
        .unwrap_or(peer)
}

/// Decides every API route from the permission table: admin IP allowlist, per-IP rate
/// limit on /auth/*, bearer authentication, forced password change / MFA enrolment, role;
/// then audits mutating requests.
async fn guard(
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
    if route.path != "/api/v1/enroll" {
        let allow = &st.cfg.https.admin_allow;
        if !allow.is_empty() && !allow.iter().any(|n| n.contains(&ip)) {
            tracing::info!(%ip, path, "admin API refused: address not in https.admin_allow");
            return Problem::forbidden("your address may not use the admin API").into_response();
        }
    }
    if route.path.starts_with("/api/v1/auth/")
        && let Err(not_until) = st.auth_limiter.check_key(&ip)
    {
        {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            return Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too many sign-in requests from your address; wait and try again",
            )
            .with_retry_after(wait.as_secs_f64().ceil() as u64)
            .into_response();
        }
    }
    if route.perm == Permission::Public {
        return next.run(req).await;
    }
    let principal = match authenticate(&st, req.headers()).await {
        Ok(p) => p,
        Err(p) => return p.into_response(),
    };
    let mutating = !matches!(*req.method(), Method::GET | Method::HEAD);
    let target = req.uri().path().to_owned();
    let actor = format!("user:{}", principal.name);
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

/// A Prometheus scrape: the scrape token, or a client address in `metrics.scrape_allow`.
fn scrape_allowed(st: &ApiState, ip: IpAddr, headers: &axum::http::HeaderMap) -> bool {
    if st.cfg.metrics.scrape_allow.iter().any(|n| n.contains(&ip)) {
        return true;
    }
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| auth::same_secret(t.trim(), &st.scrape_token))
}

/// Counts every routed request by method, route template and status, with its duration.
async fn http_metrics(
    State(st): State<AppState>,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let method = req.method().as_str().to_owned();
    let route = matched
        .as_ref()
        .map(MatchedPath::as_str)
        .unwrap_or("unmatched")
        .to_owned();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    st.metrics
        .http_request_seconds
        .with_label_values(&[&method, &route])
        .observe(started.elapsed().as_secs_f64());
    st.metrics
        .http_requests
        .with_label_values(&[&method, &route, resp.status().as_str()])
        .inc();
    resp
}

/// Resolves the bearer access token to a principal; the user and session are read from the
/// database on every request, so disabling, deleting, demoting and logging out take effect
/// at once.
async fn authenticate(
    st: &ApiState,
    headers: &axum::http::HeaderMap,
) -> Result<Principal, Problem> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(|| {
            Problem::unauthorized(
                "sign in: send an access token as `Authorization: Bearer <token>`",
            )
        })?;
    let now = crate::store::now_ms() / 1000;
    let claims = st
        .jwt
        .verify(token.trim(), TokenKind::Access, now)
        .map_err(|_| Problem::unauthorized("the access token is invalid or expired"))?;
    let p = st
        .store
        .session_principal(&claims.sid, claims.sub, crate::store::now_ms())
        .await?
        .ok_or_else(|| Problem::unauthorized("the session has ended; sign in again"))?;
    Ok(p)
}

/// Why a signed-in user may use nothing but their own account yet, if so.
fn pending_step(st: &ApiState, p: &Principal) -> Option<Problem> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// The router (through its OpenAPI document) and the permission table list exactly the
    /// same routes, so no route escapes the guard's table and no entry is stale.
    #[test]
    fn every_route_is_in_the_permission_table_and_back() {
        let (_, doc) = api_routes();
        let mut documented = BTreeSet::new();
        for (path, item) in &doc.paths.paths {
            for (method, op) in [
                ("GET", &item.get),
                ("POST", &item.post),
                ("PUT", &item.put),
                ("PATCH", &item.patch),
                ("DELETE", &item.delete),
            ] {
                if op.is_some() {
                    documented.insert((method.to_owned(), path.clone()));
                }
            }
        }
        documented.insert(("GET".to_owned(), "/api/v1/openapi.json".to_owned()));
        let table: BTreeSet<(String, String)> = rbac::ROUTES
            .iter()
            .map(|r| (r.method.to_owned(), r.path.to_owned()))
            .collect();
        assert_eq!(documented, table);
    }

    #[test]
    fn operation_ids_are_unique() {
        let (_, doc) = api_routes();
        let mut seen = BTreeSet::new();
        for item in doc.paths.paths.values() {
            for op in [&item.get, &item.post, &item.put, &item.patch, &item.delete]
                .into_iter()
                .flatten()
            {
                let id = op.operation_id.clone().unwrap_or_default();
                assert!(
                    !id.is_empty() && seen.insert(id.clone()),
                    "operation id {id:?}"
                );
            }
        }
    }

    #[test]
    fn public_operations_declare_no_security() {
        let (_, doc) = api_routes();
        for r in rbac::ROUTES.iter().filter(|r| r.perm == Permission::Public) {
            if r.path == "/api/v1/openapi.json" {
                continue;
            }
            let item = &doc.paths.paths[r.path];
            let op = match r.method {
                "POST" => item.post.as_ref(),
                _ => item.get.as_ref(),
            };
            let op = op.unwrap_or_else(|| panic!("{} {} documented", r.method, r.path));
            let sec = op.security.as_ref().map(|s| s.len());
            assert_eq!(
                sec,
                Some(1),
                "{} {} must say security(())",
                r.method,
                r.path
            );
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/24".parse().unwrap()];
        let mut h = axum::http::HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9, 10.0.0.7".parse().unwrap());
        // Right-most untrusted hop is the client.
        assert_eq!(
            resolve_client(proxy, &h, &trusted),
            "203.0.113.9".parse::<IpAddr>().unwrap()
        );
        // Not from a trusted proxy: the header is ignored.
        let stranger: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(resolve_client(stranger, &h, &trusted), stranger);
        // Trust off by default.
        assert_eq!(resolve_client(proxy, &h, &[]), proxy);
        // A client cannot hide behind a spoofed left-most entry.
        h.insert("x-forwarded-for", "1.2.3.4, 198.51.100.77".parse().unwrap());
        assert_eq!(
            resolve_client(proxy, &h, &trusted),
            "198.51.100.77".parse::<IpAddr>().unwrap()
        );
        // Garbage: the peer.
        h.insert("x-forwarded-for", "not-an-ip".parse().unwrap());
        assert_eq!(resolve_client(proxy, &h, &trusted), proxy);
    }
}
