//! `POST /api/v1/enroll`: the HTTP face of [`crate::enroll`]. Authenticated by the token,
//! not by a user. A success is audited at once; refusals are logged one line each (for
//! fail2ban) and audited as counts per source ([`crate::enroll::refusals`]).

mod schema;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use pifleet_shared::enroll::v1::{EnrollRequest, EnrollResponse};

use crate::api::extract::Json;
use crate::api::problem::{Problem, ProblemDoc};
use crate::api::{AppState, ClientIp};
use crate::enroll;
use crate::store::enrollment_requests::RequestRow;

/// Enroll a device: a single-use token and a CSR in, a device certificate out. Used by
/// `pifleet-agent enroll`; authenticated by the token, not by a user. A token that requires
/// approval answers 202 until an admin accepts the device.
#[utoipa::path(post, path = "/api/v1/enroll", tag = "devices", security(()),
    request_body = schema::EnrollRequestSchema,
    responses(
        (status = 200, body = schema::EnrollResponseSchema),
        (status = 202, description = "Waiting for an admin to accept the device: ask again with the same key after Retry-After seconds", body = schema::EnrollPending,
            headers(("Retry-After" = u64, description = "Seconds to wait before asking again"))),
        (status = "4XX", description = "Refused: the token or CSR is not acceptable (nothing changed); 429 when the source sends too many requests", body = ProblemDoc, content_type = "application/problem+json"),
    ))]
pub async fn enroll(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<EnrollRequest>,
) -> Result<Response, Problem> {
    let st = &app.enroll;
    match enroll::enroll(st, &req, &ip.to_string()).await {
        Ok(enroll::Outcome::Pending { request, new }) => {
            Ok(pending(&app, &ip.to_string(), request, new).await)
        }
        Ok(enroll::Outcome::Enrolled(enrolled)) => {
            let enroll::Enrolled {
                response: r,
                token_id,
            } = *enrolled;
            // A success is rare and worth its own entry, at once; it names the token, so
            // every use of a provisioning token is in the log.
            let event = crate::audit::Event {
                actor: format!("device:{}", r.device_id),
                source: ip.to_string(),
                action: "device.enroll".into(),
                target: r.device_id.clone(),
                outcome: "ok".into(),
                detail: format!("token={token_id}"),
            };
            if let Err(e) = st.store.append_audit(&event).await {
                tracing::error!(error = %e, "audit append failed");
            }
            st.metrics
                .enrollments
                .with_label_values(&["enrolled"])
                .inc();
            app.live.devices_changed(vec![r.device_id.clone()]);
            tracing::info!(device = %r.device_id, source = %ip, "device enrolled");
            Ok(axum::Json::<EnrollResponse>(r).into_response())
        }
        Err(refusal) => {
            // Refusals are cheap to send: one log line each, but only a count in the
            // audit log until the next flush.
            let reason = refusal.reason();
            app.enroll_refusals
                .record(ip, reason, crate::store::now_ms());
            let outcome = if refusal.is_callers() {
                "refused"
            } else {
                "error"
            };
            st.metrics.enrollments.with_label_values(&[outcome]).inc();
            let problem = Problem::from(refusal);
            tracing::warn!(
                source = %ip,
                status = problem.status.as_u16(),
                reason,
                detail = %problem.detail,
                "enrollment refused"
            );
            Err(problem)
        }
    }
}

/// The 202 for a device waiting for approval; a new request is audited and logged once.
async fn pending(app: &AppState, source: &str, request: RequestRow, new: bool) -> Response {
    let st = &app.enroll;
    if new {
        let event = crate::audit::Event {
            actor: format!("device:{}", request.device_id),
            source: source.to_owned(),
            action: "device.enroll_request".into(),
            target: request.device_id.clone(),
            outcome: "pending".into(),
            detail: format!("token={}; request={}", request.token_id, request.id),
        };
        if let Err(e) = st.store.append_audit(&event).await {
            tracing::error!(error = %e, "audit append failed");
        }
        st.metrics.enrollments.with_label_values(&["pending"]).inc();
        tracing::info!(device = %request.device_id, request = %request.id, source, "device waits for approval");
    }
    let retry = app.cfg.enrollment.pending_retry_s;
    let body = schema::EnrollPending {
        status: "pending",
        detail: format!(
            "device {} waits for an administrator to accept it (request {}); asking again in {retry} s",
            request.device_id, request.id
        ),
        request_id: request.id,
        device_id: request.device_id,
    };
    (
        StatusCode::ACCEPTED,
        [(header::RETRY_AFTER, retry.to_string())],
        axum::Json(body),
    )
        .into_response()
}
