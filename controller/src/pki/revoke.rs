//! Revoking a device: the database first, then the CRL derived from it.

use crate::datadir::DataDir;
use crate::store::{RevokeOutcome, Store, StoreError};

use super::crl::{self, CrlError};
use super::{Ca, PkiError};

/// Why a revocation failed.
#[derive(Debug, thiserror::Error)]
pub enum RevokeError {
    /// The caller named a device that does not exist.
    #[error("no device {0}")]
    NoDevice(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Ca(#[from] PkiError),
    #[error(
        "the device is revoked in the database, but its CRL could not be published: {0}; run the revocation again"
    )]
    Crl(#[from] CrlError),
}

/// Revokes a device: marks it and its certificates revoked, then publishes the CRL, which
/// a running controller reloads within `mqtt.crl_poll_ms`, dropping the device's
/// connection. Revoking an already revoked device publishes the CRL again, so a retry
/// repairs an earlier attempt whose CRL could not be written; the running controller also
/// enforces the database's revocations within `pki.crl_check_s` whatever the CRL says.
pub async fn revoke_device(
    dd: &DataDir,
    store: &Store,
    id: &str,
    crl_next_update_days: u32,
) -> Result<RevokeOutcome, RevokeError> {
    let outcome = store.revoke_device(id).await?;
    if outcome == RevokeOutcome::Unknown {
        return Err(RevokeError::NoDevice(id.to_owned()));
    }
    let ca = Ca::load(dd)?;
    crl::publish(dd, store, &ca, crl_next_update_days).await?;
    Ok(outcome)
}
