//! `POST /api/v1/enroll`: the HTTP face of [`crate::enroll`]. Authenticated by the token,
//! not by a user. A success is audited at once; refusals are logged one line each (for
//! fail2ban) and audited as counts per source ([`crate::enroll::refusals`]).

mod schema;

use axum::extract::State;
use pifleet_shared::enroll::v1::{EnrollRequest, EnrollResponse};

use crate::api::extract::Json;
use crate::api::problem::{Problem, ProblemDoc};
use crate::api::{AppState, ClientIp};
use crate::enroll;

/// Enroll a device: a single-use token and a CSR in, a device certificate out. Used by
/// `pifleet-agent enroll`; authenticated by the token, not by a user.
#[utoipa::path(post, path = "/api/v1/enroll", tag = "devices", security(()),
    request_body = schema::EnrollRequestSchema,
    responses(
        (status = 200, body = schema::EnrollResponseSchema),
        (status = "4XX", description = "Refused: the token or CSR is not acceptable (nothing changed); 429 when the source sends too many requests", body = ProblemDoc, content_type = "application/problem+json"),
    ))]
pub async fn enroll(
    State(app): State<AppState>,
    ClientIp(ip): ClientIp,
    Json(req): Json<EnrollRequest>,
) -> Result<axum::Json<EnrollResponse>, Problem> {
    let st = &app.enroll;
    match enroll::enroll(st, &req).await {
        Ok(enroll::Enrolled {
            response: r,
            token_id,
        }) => {
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
            Ok(axum::Json(r))
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
