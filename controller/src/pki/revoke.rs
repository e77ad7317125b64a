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
    #[error(
        "the device is revoked, but the revocation log {path} could not be written ({source}); \
         run the revocation again"
    )]
    Log {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// One line of the revocation log: which device, when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LoggedRevocation {
    pub device: String,
    pub at: i64,
}

/// Appends a revocation to the log (created 0600 if missing) and syncs it.
fn append_log(path: &std::path::Path, device: &str) -> Result<(), RevokeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let err = |source| RevokeError::Log {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let line = serde_json::to_string(&LoggedRevocation {
        device: device.to_owned(),
        at: crate::store::now_ms(),
    })
    .map_err(|e| err(std::io::Error::other(e)))?;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    writeln!(f, "{line}").map_err(err)?;
    f.sync_data().map_err(err)
}

/// Reads a revocation log (`backup restore --revocations`): every line, in order.
pub fn read_log(path: &std::path::Path) -> std::io::Result<Vec<LoggedRevocation>> {
    let text = std::fs::read_to_string(path)?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{}: line {}: {e}", path.display(), i + 1),
                )
            })
        })
        .collect()
}

/// Revokes a device: marks it and its certificates revoked, appends it to the revocation
/// log (`[backup] revocation_log`, which a restore re-applies), then publishes the CRL, which
/// a running controller reloads within `mqtt.crl_poll_ms`, dropping the device's
/// connection. Revoking an already revoked device publishes the CRL again, so a retry
/// repairs an earlier attempt whose CRL could not be written; the running controller also
/// enforces the database's revocations within `pki.crl_check_s` whatever the CRL says.
pub async fn revoke_device(
    dd: &DataDir,
    store: &Store,
    id: &str,
    crl_next_update_days: u32,
    log: &std::path::Path,
) -> Result<RevokeOutcome, RevokeError> {
    let outcome = store.revoke_device(id).await?;
    if outcome == RevokeOutcome::Unknown {
        return Err(RevokeError::NoDevice(id.to_owned()));
    }
    append_log(log, id)?;
    let ca = Ca::load(dd)?;
    crl::publish(dd, store, &ca, crl_next_update_days).await?;
    Ok(outcome)
}
