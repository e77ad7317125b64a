//! Enrollment: a token (single-use, or a provisioning token that enrolls up to a count of
//! devices) and a CSR in, a device certificate out.
//!
//! The device makes its own key; only the CSR travels. Every refusal (unknown, used,
//! expired or revoked token; a CSR with a bad signature, a weak key or a malformed subject;
//! an id already enrolled) is a [`Refusal`] the caller can act on, and changes nothing: the
//! token stays usable and no device row is written. Tokens are made by [`tokens`]; refusals
//! are counted per source by [`refusals`]. The HTTP endpoint is `api::enroll`.

pub mod refusals;
#[cfg(test)]
mod tests;
pub mod tokens;

use pifleet_shared::enroll::v1::{EnrollRequest, EnrollResponse};
use pifleet_shared::token::{EnrollToken, InvalidToken};
use pifleet_shared::{DeviceId, InvalidDeviceId, token::to_hex};
use sha2::{Digest, Sha256};

use crate::metrics::Metrics;
use crate::pki::tls::normalize_serial;
use crate::pki::{self, Ca, CsrError};
use crate::store::enrollment_requests::RequestRow;
use crate::store::{Applicant, EnrollError, EnrollRefusal, NewDevice, Store};

/// Shared state of enrollment.
#[derive(Debug)]
pub struct EnrollState {
    pub store: Store,
    pub ca: Ca,
    pub ca_fingerprint: String,
    /// The keys a new device pins; replaced when a rotation is put in use.
    pub pinned: arc_swap::ArcSwap<Pinned>,
    pub mqtt_port: u16,
    /// The MQTT host devices are told when it is not the enrollment host
    /// (`mqtt.public_host`).
    pub mqtt_host: Option<String>,
    /// Lifetime of the device certificates it issues.
    pub cert_lifetime: std::time::Duration,
    pub metrics: Metrics,
}

/// The keys sent with every enrollment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pinned {
    /// The command key (PEM, SPKI) that signs this device's commands.
    pub command_public_key: String,
    /// Its id, recorded as trusted by the device.
    pub command_key_id: String,
    /// The release keys devices are to trust (PEM, SPKI).
    pub release_public_keys: Vec<String>,
}

/// SHA-256 of a token secret, hex: what the database stores.
pub fn secret_hash(secret: &[u8; 32]) -> String {
    to_hex(&Sha256::digest(secret))
}

/// Why an enrollment was refused. Every variant but [`Refusal::Internal`] is the caller's
/// doing; none of them changed anything.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error(transparent)]
    MalformedToken(#[from] InvalidToken),
    #[error("token was issued by another controller (CA fingerprint differs)")]
    OtherController,
    #[error(transparent)]
    InvalidDeviceId(#[from] InvalidDeviceId),
    /// The CSR failed a check, or (when [`CsrError::is_refusal`] is false) signing failed.
    #[error(transparent)]
    Csr(#[from] CsrError),
    /// The token is unknown, used, expired or revoked, or the id is taken.
    #[error(transparent)]
    Token(#[from] EnrollRefusal),
    /// Our own failure (database, certificate inspection): logged, not the caller's fault.
    #[error("{0}")]
    Internal(String),
}

impl Refusal {
    /// True when the request is at fault, false for our own failure.
    pub fn is_callers(&self) -> bool {
        match self {
            Self::Csr(e) => e.is_refusal(),
            Self::Internal(_) => false,
            _ => true,
        }
    }

    /// A short fixed reason, to count refusals under and to log.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MalformedToken(_) => "malformed token",
            Self::OtherController => "token of another controller",
            Self::InvalidDeviceId(_) => "invalid device id",
            Self::Csr(e) if e.is_refusal() => "CSR refused",
            Self::Csr(_) | Self::Internal(_) => "internal error",
            Self::Token(EnrollRefusal::UnknownToken) => "unknown enrollment token",
            Self::Token(EnrollRefusal::UsedToken) => "enrollment token already used",
            Self::Token(EnrollRefusal::ExpiredToken) => "enrollment token expired",
            Self::Token(EnrollRefusal::RevokedToken) => "enrollment token revoked",
            Self::Token(EnrollRefusal::DeviceExists(_)) => "device already enrolled",
            Self::Token(EnrollRefusal::TokenExhausted(_)) => "provisioning token exhausted",
            Self::Token(EnrollRefusal::RequestRejected) => "enrollment request rejected",
        }
    }
}

fn internal(e: impl std::fmt::Display) -> Refusal {
    Refusal::Internal(e.to_string())
}

/// A device enrolled: the answer for it, and the token it used (for the audit log).
#[derive(Debug)]
pub struct Enrolled {
    pub response: EnrollResponse,
    pub token_id: String,
}

/// What became of an enrollment that was not refused.
#[derive(Debug)]
pub enum Outcome {
    Enrolled(Box<Enrolled>),
    /// The token requires approval and no admin has accepted the device yet: it waits as
    /// this request and asks again later.
    Pending {
        request: RequestRow,
        /// The request was made now (not found again).
        new: bool,
    },
}

/// Enrolls a device: checks the token and the CSR, signs the device certificate and
/// records the device, consuming the token (or one use of it), in one transaction. With
/// a token that requires approval, a device not accepted yet is recorded as a request
/// instead, and nothing is signed. `source` is the client address.
pub async fn enroll(
    st: &EnrollState,
    req: &EnrollRequest,
    source: &str,
) -> Result<Outcome, Refusal> {
    let token = EnrollToken::parse(&req.token)?;
    if token.ca_fingerprint_hex() != st.ca_fingerprint {
        return Err(Refusal::OtherController);
    }
    // Validate the CSR before touching the database, so a bad one costs nothing.
    let (proposed, key_fingerprint) = pki::csr_id_and_key(&req.csr)?;
    let applicant = Applicant {
        key_fingerprint: &key_fingerprint,
        source,
    };
    let fallback = req
        .fallback_id
        .as_deref()
        .map(DeviceId::parse)
        .transpose()?;
    let outcome = st
        .store
        .enroll(
            &secret_hash(token.secret()),
            &applicant,
            |t| {
                // A token made for one device names it; otherwise the device's proposal,
                // then its fallback when the proposal is taken (Pis flashed from one image
                // share a hostname).
                Ok::<_, Refusal>(match &t.name {
                    Some(name) => vec![DeviceId::parse(name)?],
                    None => std::iter::once(proposed.clone())
                        .chain(fallback.clone().filter(|f| f != &proposed))
                        .collect(),
                })
            },
            |t, id| {
                let issued = st.ca.sign_device_csr_or_fallback(
                    &req.csr,
                    &id,
                    fallback.as_ref(),
                    st.cert_lifetime,
                )?;
                let (alg, public_key) =
                    pki::device_public_key(&issued.cert_pem).map_err(internal)?;
                Ok::<_, Refusal>((
                    NewDevice {
                        id,
                        labels: t.labels.clone(),
                        serial: normalize_serial(&issued.serial_hex),
                        not_after: issued.not_after_unix,
                        public_key_alg: alg.as_str(),
                        public_key,
                    },
                    (issued.cert_pem, t.id.clone()),
                ))
            },
        )
        .await
        .map_err(internal)?;
    let pinned = st.pinned.load_full();
    let (device, (cert_pem, token_id)) = match outcome {
        Ok(v) => v,
        Err(EnrollError::Issue(r)) => return Err(r),
        Err(EnrollError::Refused(r)) => return Err(r.into()),
        Err(EnrollError::Pending(request, new)) => return Ok(Outcome::Pending { request, new }),
    };
    // Commands for this device are signed with the key it pins from now on, even during
    // a rotation's overlap. Not recorded, the device gets the key chain announced instead.
    if let Err(e) = st
        .store
        .ack_command_keys(
            device.id.as_str(),
            std::slice::from_ref(&pinned.command_key_id),
            None,
        )
        .await
    {
        tracing::warn!(device = %device.id, error = %e, "cannot record the command key a new device pins");
    }
    // Likewise the release keys (not recorded, they are announced at the next start).
    let release_ids: Vec<String> = pinned
        .release_public_keys
        .iter()
        .filter_map(|pem| pifleet_shared::signing::TrustedKey::from_pem(pem).ok())
        .map(|k| k.id.to_string())
        .collect();
    if let Err(e) = st
        .store
        .ack_release_keys(device.id.as_str(), &release_ids, "enrollment")
        .await
    {
        tracing::warn!(device = %device.id, error = %e, "cannot record the release keys a new device pins");
    }
    let response = EnrollResponse {
        device_id: device.id.to_string(),
        certificate: cert_pem,
        ca: st.ca.cert_pem.clone(),
        command_public_key: pinned.command_public_key.clone(),
        mqtt_port: st.mqtt_port,
        mqtt_host: st.mqtt_host.clone(),
        release_public_keys: pinned.release_public_keys.clone(),
    };
    Ok(Outcome::Enrolled(Box::new(Enrolled { response, token_id })))
}
