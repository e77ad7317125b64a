//! Enrollment: a single-use token and a CSR in, a device certificate out.
//!
//! The device makes its own key; only the CSR travels. Every refusal (unknown, used,
//! expired or revoked token; a CSR with a bad signature, a weak key or a malformed subject;
//! an id already enrolled) is a 4xx with a clear message, and changes nothing: the token
//! stays usable and no device row is written. A success is audited at once; refusals are
//! logged one line each and audited as counts per source ([`refusals`]).

pub mod refusals;
mod schema;

use axum::extract::State;
use pifleet_shared::enroll::v1::{EnrollRequest, EnrollResponse};
use pifleet_shared::token::EnrollToken;
use pifleet_shared::{DeviceId, token::to_hex};
use sha2::{Digest, Sha256};

use crate::api::extract::Json;
use crate::api::problem::{Problem, ProblemDoc};
use crate::metrics::Metrics;
use crate::pki::{self, Ca};
use crate::store::{EnrollError, EnrollRefusal, NewDevice, Store};
use crate::tls::normalize_serial;

/// Shared state of the enrollment endpoint.
#[derive(Debug)]
pub struct EnrollState {
    pub store: Store,
    pub ca: Ca,
    pub ca_fingerprint: String,
    pub command_public_key: String,
    pub mqtt_port: u16,
    pub cert_days: u32,
    pub metrics: Metrics,
}

/// SHA-256 of a token secret, hex: what the database stores.
pub fn secret_hash(secret: &[u8; 32]) -> String {
    to_hex(&Sha256::digest(secret))
}

/// Enroll a device: a single-use token and a CSR in, a device certificate out. Used by
/// `pifleet-agent enroll`; authenticated by the token, not by a user.
#[utoipa::path(post, path = "/api/v1/enroll", tag = "devices", security(()),
    request_body = schema::EnrollRequestSchema,
    responses(
        (status = 200, body = schema::EnrollResponseSchema),
        (status = "4XX", description = "Refused: the token or CSR is not acceptable (nothing changed); 429 when the source sends too many requests", body = ProblemDoc, content_type = "application/problem+json"),
    ))]
pub async fn enroll(
    State(app): State<crate::api::AppState>,
    crate::api::ClientIp(ip): crate::api::ClientIp,
    Json(req): Json<EnrollRequest>,
) -> Result<axum::Json<EnrollResponse>, Problem> {
    let st = &app.enroll;
    match do_enroll(st, &req).await {
        Ok(r) => {
            // A success is rare and worth its own entry, at once.
            let event = crate::audit::Event {
                actor: format!("device:{}", r.device_id),
                source: ip.to_string(),
                action: "device.enroll".into(),
                target: r.device_id.clone(),
                outcome: "ok".into(),
                detail: String::new(),
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
        Err(Refused { reason, problem }) => {
            // Refusals are cheap to send: one log line each (for fail2ban), but only a
            // count in the audit log until the next flush.
            app.enroll_refusals
                .record(ip, reason, crate::store::now_ms());
            let outcome = if problem.status.is_client_error() {
                "refused"
            } else {
                "error"
            };
            st.metrics.enrollments.with_label_values(&[outcome]).inc();
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

/// A refused enrollment: the answer, and a short fixed reason to count it under.
#[derive(Debug)]
struct Refused {
    reason: &'static str,
    problem: Problem,
}

fn refused(reason: &'static str, problem: Problem) -> Refused {
    Refused { reason, problem }
}

async fn do_enroll(st: &EnrollState, req: &EnrollRequest) -> Result<EnrollResponse, Refused> {
    let token = EnrollToken::parse(&req.token)
        .map_err(|e| refused("malformed token", Problem::bad_request(e.to_string())))?;
    if token.ca_fingerprint_hex() != st.ca_fingerprint {
        return Err(refused(
            "token of another controller",
            Problem::forbidden("token was issued by another controller (CA fingerprint differs)"),
        ));
    }
    // Validate the CSR before touching the database, so a bad one costs nothing.
    let proposed = pki::csr_proposed_id(&req.csr).map_err(csr_refusal)?;
    let outcome = st
        .store
        .enroll(&secret_hash(token.secret()), |t| {
            let id = match &t.name {
                Some(name) => DeviceId::parse(name).map_err(|e| {
                    refused("invalid device id", Problem::bad_request(e.to_string()))
                })?,
                None => proposed.clone(),
            };
            let issued = st
                .ca
                .sign_device_csr(&req.csr, &id, st.cert_days)
                .map_err(csr_refusal)?;
            let (alg, public_key) = pki::device_public_key(&issued.cert_pem)
                .map_err(|e| refused("internal error", Problem::internal(&e)))?;
            Ok::<_, Refused>((
                NewDevice {
                    id,
                    labels: t.labels.clone(),
                    serial: normalize_serial(&issued.serial_hex),
                    not_after: issued.not_after_unix,
                    public_key_alg: alg.as_str(),
                    public_key,
                },
                issued.cert_pem,
            ))
        })
        .await
        .map_err(|e| refused("internal error", Problem::internal(&e)))?;
    let (device, cert_pem) = match outcome {
        Ok(v) => v,
        Err(EnrollError::Issue(r)) => return Err(r),
        Err(EnrollError::Refused(r)) => {
            let reason = match r {
                EnrollRefusal::UnknownToken => "unknown enrollment token",
                EnrollRefusal::UsedToken => "enrollment token already used",
                EnrollRefusal::ExpiredToken => "enrollment token expired",
                EnrollRefusal::RevokedToken => "enrollment token revoked",
                EnrollRefusal::DeviceExists(_) => "device already enrolled",
            };
            return Err(refused(
                reason,
                match r {
                    EnrollRefusal::DeviceExists(_) => Problem::conflict(r.to_string()),
                    _ => Problem::forbidden(r.to_string()),
                },
            ));
        }
    };
    Ok(EnrollResponse {
        device_id: device.id.to_string(),
        certificate: cert_pem,
        ca: st.ca.cert_pem.clone(),
        command_public_key: st.command_public_key.clone(),
        mqtt_port: st.mqtt_port,
    })
}

/// A refused CSR is the client's fault (400); anything else is ours (500, details logged).
fn csr_refusal(e: pki::CsrError) -> Refused {
    if e.is_refusal() {
        refused("CSR refused", Problem::bad_request(e.to_string()))
    } else {
        refused("internal error", Problem::internal(&e))
    }
}
