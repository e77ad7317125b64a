//! The admin API under `/api/v1` (plus `/healthz` and `/readyz`): one router, one guard that
//! decides every route from [`crate::auth::rbac::ROUTES`], audit of every mutating request,
//! and the hardening layers (security headers, CORS allowlist, body limit, timeout, admin IP
//! allowlist, trusted proxies). The OpenAPI document is generated from the handlers.
//!
//! The dashboard's TypeScript types are generated from that document, so it says exactly what
//! the JSON holds: an `Option` field of a response is `#[schema(required)]` when it is always
//! sent (`null` when empty), and `#[schema(nullable = false)]` when `skip_serializing_if`
//! leaves it out instead.

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

use crate::api::problem::{Problem, ProblemDoc};
use crate::audit::Event;
use crate::auth::hasher::{Admission, Hasher};
use crate::auth::jwt::{CurrentKeys, JwtKeys, TokenKind};
use crate::auth::password::Passwords;
use crate::auth::{Permission, Role, rbac};
use crate::commands::dispatch::Dispatcher;
use crate::config::Config;
use crate::datadir::DataDir;
use crate::enroll::EnrollState;
use crate::enroll::refusals::RefusalTally;
use crate::live::Hub;
use crate::metrics::Metrics;
use crate::source::source_key;
use crate::store::Store;
use crate::supervise::Health;
use https::PeerAddr;

pub mod api_tokens;
pub mod approvals;
pub mod audit;
pub mod auth;
pub mod backups;
pub mod commands;
pub mod device_releases;
pub mod devices;
pub mod enroll;
pub mod enrollment_requests;
pub mod events;
pub mod extract;
mod guard;
pub mod https;
mod layers;
pub mod me;
pub mod metrics;
pub mod params;
pub mod problem;
pub mod releases;
pub mod rollouts;
pub mod rotation;
pub mod tokens;
pub mod users;
pub mod web;

pub use extract::{AuditNote, ClientIp, DevicePrincipal, Principal};
use guard::guard;
pub use layers::{ForwardedError, REQUEST_ID, SECURITY_HEADERS, resolve_client};
use layers::{client_ip, deadline, http_metrics, read_body, request_span, security_headers};

/// Everything the handlers share.
#[derive(Debug)]
pub struct ApiState {
    pub dd: DataDir,
    pub store: Store,
    pub cfg: Config,
    /// Password checks and hashes, bounded (`auth.argon2_concurrency`, `auth.argon2_queue`).
    pub hasher: Hasher,
    /// The keys that sign and verify access tokens; replaced when `jwt.key` changes
    /// (`rotate jwt-key`), without a restart.
    pub jwt: Arc<CurrentKeys>,
    pub dispatcher: Arc<Dispatcher>,
    pub enroll: Arc<EnrollState>,
    pub metrics: Metrics,
    /// Limiter for sign-in (login and its MFA step), keyed by [`source_key`].
    pub auth_limiter: DefaultKeyedRateLimiter<IpAddr>,
    /// Limiter for device enrollment, keyed by [`source_key`].
    pub enroll_limiter: DefaultKeyedRateLimiter<IpAddr>,
    /// Refused enrollments since the last audit flush.
    pub enroll_refusals: RefusalTally,
    /// Roles whose users must have MFA (security settings, cached from the database).
    pub mfa_required: RwLock<Vec<Role>>,
    /// The bearer token Prometheus scrapes with (`scrape.token`).
    pub scrape_token: String,
    /// Live updates for the dashboard's event streams.
    pub live: Hub,
    /// What keeps the controller from being ready (`/readyz`).
    pub health: Arc<Health>,
}

impl ApiState {
    /// The access-token keys in use now.
    pub fn jwt(&self) -> Arc<JwtKeys> {
        self.jwt.get()
    }
}

/// Shared state handle.
pub type AppState = Arc<ApiState>;

/// Retry-After of a 503 for a full argon2 queue: a run takes tens of milliseconds, so the
/// queue drains within a second.
const ARGON2_BUSY_RETRY_S: u64 = 1;

/// Why the API's state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("admin sign-in: {0}")]
    Passwords(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

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
        health: Arc<Health>,
    ) -> Result<AppState, StateError> {
        let passwords = Passwords::new(cfg.auth.argon2_cost())
            .map_err(|e| StateError::Passwords(e.to_string()))?;
        let hasher = Hasher::new(
            passwords,
            cfg.auth.argon2_concurrency(),
            usize::try_from(cfg.auth.argon2_queue).unwrap_or(usize::MAX),
        );
        let quota = Quota::per_minute(nonzero(cfg.auth.rate_per_minute))
            .allow_burst(nonzero(cfg.auth.rate_burst));
        let enroll_quota = Quota::per_minute(nonzero(cfg.enrollment.rate_per_minute))
            .allow_burst(nonzero(cfg.enrollment.rate_burst));
        let mfa_required = store.mfa_required_roles().await?;
        let live = dispatcher.live().clone();
        Ok(Arc::new(Self {
            dd,
            store,
            cfg,
            hasher,
            jwt: Arc::new(CurrentKeys::new(jwt)),
            dispatcher,
            enroll,
            metrics,
            auth_limiter: RateLimiter::keyed(quota),
            enroll_limiter: RateLimiter::keyed(enroll_quota),
            enroll_refusals: RefusalTally::default(),
            mfa_required: RwLock::new(mfa_required),
            scrape_token,
            live,
            health,
        }))
    }

    /// Whether users of `role` must have MFA before using anything but their own account.
    /// Reads the settings kept in memory again (another controller sharing the database
    /// changed them).
    pub async fn reload_settings(&self) -> Result<(), crate::store::StoreError> {
        let roles = self.store.mfa_required_roles().await?;
        if let Ok(mut cached) = self.mfa_required.write() {
            *cached = roles;
        }
        Ok(())
    }

    pub fn mfa_required_for(&self, role: Role) -> bool {
        self.mfa_required
            .read()
            .map(|r| r.contains(&role))
            .unwrap_or(true) // a poisoned lock fails closed
    }

    /// A place in the argon2 queue for a request that checks or hashes a password; a 503
    /// problem (counted) when the queue is full. Take it before recording anything else.
    pub fn admit_argon2(&self) -> Result<Admission, Problem> {
        self.hasher.admit().map_err(|_| {
            self.metrics.auth_busy.inc();
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many sign-ins and password changes at once; try again in a moment",
            )
            .with_retry_after(ARGON2_BUSY_RETRY_S)
        })
    }

    /// Forgets the rate-limit state of sources that have been quiet long enough to be back
    /// at a full burst (so the limiters' maps do not grow with every address ever seen).
    pub fn forget_quiet_limits(&self) {
        self.auth_limiter.retain_recent();
        self.enroll_limiter.retain_recent();
    }

    /// Audits the refused enrollments counted so far every
    /// `enrollment.refusal_audit_interval_s`, and once more at shutdown.
    pub async fn audit_enroll_refusals(
        self: Arc<Self>,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> crate::supervise::TaskResult {
        let every = Duration::from_secs(self.cfg.enrollment.refusal_audit_interval_s);
        self.enroll_refusals
            .run(self.store.clone(), every, shutdown)
            .await;
        Ok(())
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
        (name = "approvals", description = "Two-person approval of fleet-wide actions"),
        (name = "releases", description = "Application releases"),
        (name = "rollouts", description = "Taking a release to the fleet in batches"),
        (name = "tokens", description = "Enrollment tokens"),
        (name = "users", description = "User management (admin)"),
        (name = "audit", description = "The hash-chained audit log (admin)"),
        (name = "backups", description = "Encrypted backups of the controller (admin)"),
        (name = "system", description = "Health and metadata"),
        (name = "metrics", description = "Prometheus: controller metrics, per-device targets, service discovery"),
        (name = "device", description = "For devices, with their certificate (mutual TLS): release downloads"),
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
        components.add_security_scheme(
            "device_certificate",
            SecurityScheme::MutualTls {
                description: Some(
                    "The device's own certificate, issued by the controller's CA at \
                     enrollment, presented in the TLS handshake with the controller itself \
                     (not through a TLS-terminating proxy)."
                        .to_owned(),
                ),
                extensions: None,
            },
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
        .routes(routes!(devices::fleet_summary))
        .routes(routes!(events::events))
        .routes(routes!(devices::show))
        .routes(routes!(devices::telemetry))
        .routes(routes!(devices::history))
        .routes(routes!(devices::unit_events))
        .routes(routes!(devices::set_labels))
        .routes(routes!(devices::revoke))
        .routes(routes!(devices::review))
        .routes(routes!(commands::send, commands::list))
        .routes(routes!(commands::show))
        .routes(routes!(commands::cancel))
        .routes(routes!(releases::upload, releases::list))
        .routes(routes!(releases::from_git))
        .routes(routes!(releases::show, releases::delete))
        .routes(routes!(rollouts::create, rollouts::list))
        .routes(routes!(rollouts::show))
        .routes(routes!(rollouts::pause))
        .routes(routes!(rollouts::resume))
        .routes(routes!(rollouts::abort))
        .routes(routes!(rollouts::approve))
        .routes(routes!(rollouts::device_apps))
        .routes(routes!(approvals::list))
        .routes(routes!(approvals::show))
        .routes(routes!(approvals::approve))
        .routes(routes!(approvals::reject))
        .routes(routes!(tokens::create, tokens::list))
        .routes(routes!(tokens::revoke))
        .routes(routes!(enrollment_requests::list))
        .routes(routes!(enrollment_requests::accept))
        .routes(routes!(enrollment_requests::reject))
        .routes(routes!(users::list, users::create))
        .routes(routes!(users::update, users::delete))
        .routes(routes!(users::reset_mfa))
        .routes(routes!(api_tokens::create, api_tokens::list))
        .routes(routes!(api_tokens::revoke))
        .routes(routes!(users::settings, users::set_settings))
        .routes(routes!(audit::list))
        .routes(routes!(audit::verify))
        .routes(routes!(backups::list, backups::create))
        .routes(routes!(backups::download, backups::delete))
        .routes(routes!(rotation::status))
        .routes(routes!(metrics::sd))
        .routes(routes!(metrics::controller))
        .routes(routes!(metrics::device))
        .routes(routes!(device_releases::manifest))
        .routes(routes!(device_releases::archive))
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
        .fallback(web::fallback)
        .method_not_allowed_fallback(|| async {
            Problem::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed on this route",
            )
        })
        .with_state(state.clone())
        .layer(DefaultBodyLimit::max(https.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), client_ip))
        // Outside the client address: its 400 comes after the body was read, so the
        // connection stays usable.
        .layer(middleware::from_fn_with_state(state.clone(), read_body));
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

async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the database answers and no component is retrying a failing dependency.
async fn readyz(State(st): State<AppState>) -> Response {
    if let Err(e) = st.store.ping().await {
        tracing::warn!(error = %e, "not ready: database");
        return Problem::new(StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
            .into_response();
    }
    let problems = st.health.problems();
    if problems.is_empty() {
        return (StatusCode::OK, "ready").into_response();
    }
    let detail = problems
        .iter()
        .map(|(component, why)| format!("{component}: {why}"))
        .collect::<Vec<_>>()
        .join("; ");
    Problem::new(
        StatusCode::SERVICE_UNAVAILABLE,
        format!("not ready: {detail}"),
    )
    .into_response()
}

#[cfg(test)]
mod tests;
