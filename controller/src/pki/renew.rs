//! Certificate renewal over the device's authenticated MQTT connection: `up/csr` in,
//! `down/cert` out. The gateway has already bound the topic's device id to the connected
//! certificate, so the CSR must name that id; the device must exist and not be revoked;
//! one certificate per `pki.renew_min_interval_s` (kept in the `certificates` table, so a
//! restart does not reset it); and the new key must be one the device never had — a reused
//! key is either a broken key generator or a replay, and refusing it keeps one key per
//! certificate. Each renewal is audited with the device as the actor.

use std::time::Duration;

use pifleet_shared::proto::v1::{RenewAnswer, RenewRequest};
use pifleet_shared::topic::Kind;
use pifleet_shared::{DeviceId, Topic, codec};
use tokio::sync::mpsc;

use super::{Ca, CsrError, device_public_key, tls::normalize_serial};
use crate::audit::Event;
use crate::metrics::Metrics;
use crate::mqtt::ingest::Outgoing;
use crate::store::{RenewError, RenewRefusal, RenewedCert, Store, StoreError};
use crate::supervise::TaskResult;

/// What renewal needs.
#[derive(Debug, Clone)]
pub struct Renewer {
    pub store: Store,
    pub ca: Ca,
    /// Lifetime of the certificates it issues.
    pub lifetime: Duration,
    /// At most one certificate per device per this long.
    pub min_interval: Duration,
    pub metrics: Metrics,
}

/// Why a renewal was refused; every variant but `Internal` is the device's doing.
#[derive(Debug, thiserror::Error)]
pub enum RenewFailure {
    #[error(transparent)]
    Csr(CsrError),
    #[error(transparent)]
    Refused(RenewRefusal),
    #[error("internal error: {0}")]
    Internal(String),
}

impl RenewFailure {
    /// A short stable label for the outcome metric and logs.
    pub fn outcome(&self) -> &'static str {
        match self {
            Self::Csr(CsrError::IdMismatch { .. }) => "refused_other_id",
            Self::Csr(e) if e.is_refusal() => "refused_csr",
            Self::Refused(RenewRefusal::UnknownDevice) => "refused_unknown",
            Self::Refused(RenewRefusal::Revoked) => "refused_revoked",
            Self::Refused(RenewRefusal::TooSoon { .. }) => "refused_rate",
            Self::Refused(RenewRefusal::KeyReused) => "refused_key_reused",
            Self::Csr(_) | Self::Internal(_) => "error",
        }
    }

    /// How long the device should wait before asking again.
    fn retry_after_s(&self, min_interval: Duration) -> u32 {
        let s = match self {
            Self::Refused(RenewRefusal::TooSoon { retry_after_s }) => *retry_after_s,
            Self::Internal(_) => 60,
            _ => min_interval.as_secs(),
        };
        u32::try_from(s.max(1)).unwrap_or(u32::MAX)
    }
}

/// Every outcome label, served at 0 from the start.
pub const OUTCOMES: [&str; 8] = [
    "issued",
    "refused_other_id",
    "refused_csr",
    "refused_unknown",
    "refused_revoked",
    "refused_rate",
    "refused_key_reused",
    "error",
];

impl Renewer {
    /// Checks and signs `csr_pem` for `device` and records the certificate (and its audit
    /// entry) in one transaction. Returns the certificate PEM.
    pub async fn renew(&self, device: &DeviceId, csr_pem: &str) -> Result<String, RenewFailure> {
        // The CSR is checked before the database is touched: a bad one costs nothing and
        // is refused as what it is, whatever the rate limit says.
        super::csr::check_renewal(device, csr_pem).map_err(RenewFailure::Csr)?;
        let min_ms = i64::try_from(self.min_interval.as_millis()).unwrap_or(i64::MAX);
        let outcome = self
            .store
            .renew_certificate(device.as_str(), min_ms, || {
                let issued = self
                    .ca
                    .sign_device_csr_for(csr_pem, device, self.lifetime)
                    .map_err(RenewFailure::Csr)?;
                let (alg, public_key) = device_public_key(&issued.cert_pem)
                    .map_err(|e| RenewFailure::Internal(e.to_string()))?;
                let serial = normalize_serial(&issued.serial_hex);
                let audit = Event {
                    actor: format!("device:{device}"),
                    source: "mqtt".to_owned(),
                    action: "device.renew_certificate".to_owned(),
                    target: device.to_string(),
                    outcome: "ok".to_owned(),
                    detail: format!("serial {serial}, not after {}", issued.not_after_unix),
                };
                let cert = RenewedCert {
                    serial,
                    not_after: issued.not_after_unix,
                    public_key_alg: alg.as_str(),
                    public_key,
                };
                Ok((cert, audit, issued.cert_pem))
            })
            .await
            .map_err(|e: StoreError| RenewFailure::Internal(e.to_string()))?;
        match outcome {
            Ok(pem) => Ok(pem),
            Err(RenewError::Refused(r)) => Err(RenewFailure::Refused(r)),
            Err(RenewError::Issue(e)) => Err(e),
        }
    }

    /// Answers one request: the certificate, or the refusal with a retry delay. Counted
    /// and logged either way.
    pub async fn answer(&self, device: &DeviceId, req: &RenewRequest) -> RenewAnswer {
        match self.renew(device, &req.csr_pem).await {
            Ok(cert_pem) => {
                self.metrics.renewals.with_label_values(&["issued"]).inc();
                tracing::info!(device = %device, "device certificate renewed");
                RenewAnswer::Issued { cert_pem }
            }
            Err(e) => {
                let outcome = e.outcome();
                self.metrics.renewals.with_label_values(&[outcome]).inc();
                if outcome == "error" {
                    tracing::error!(device = %device, error = %e, "certificate renewal failed");
                } else {
                    tracing::warn!(device = %device, outcome, reason = %e, "certificate renewal refused");
                }
                RenewAnswer::Refused {
                    reason: e.to_string(),
                    retry_after_s: e.retry_after_s(self.min_interval),
                }
            }
        }
    }
}

/// Answers the renewal requests ingest routes here, one at a time (each is one signature
/// and one short transaction), on `down/cert`. Ends when ingest stops sending.
pub async fn serve(
    renewer: Renewer,
    mut rx: mpsc::Receiver<(DeviceId, RenewRequest)>,
    out: crate::mqtt::downlink::Downlink,
) -> TaskResult {
    while let Some((device, req)) = rx.recv().await {
        let answer = renewer.answer(&device, &req).await;
        match codec::encode(Kind::Cert, &answer) {
            Ok(payload) => {
                out.send(Outgoing {
                    topic: Topic::new(device, Kind::Cert),
                    payload,
                });
            }
            Err(e) => {
                tracing::error!(device = %device, error = %e, "cannot encode the renewal answer")
            }
        }
    }
    Ok(())
}
