//! Replacing the issuing CA without re-enrolling anything: a new intermediate CA from the
//! same (offline) root that devices pin. The replaced CA stays trusted for the certificates
//! it issued, and keeps signing its own CRL, until every device holds a certificate of the
//! new one (they renew on their own) or its certificates expired; `finish` then drops it.
//!
//! Offline, like `init`: the running controller holds the CA it started with, so it is
//! stopped first and started again after.

use super::{Ca, PkiError, crl};
use crate::datadir::{DataDir, DataDirError, write_private};
use crate::store::{Store, StoreError, now_ms};

/// Why a rotation was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum RotateCaError {
    #[error("the new CA: {0}")]
    NewCa(#[source] PkiError),
    #[error(
        "the new CA chain ends in another root ({new}) than the one devices pin ({current}): \
         a new root means enrolling every device again; sign the new intermediate with the \
         root that signed the current one"
    )]
    OtherRoot { current: String, new: String },
    #[error("the new CA is the current one")]
    Same,
    #[error(
        "a previous CA rotation is not finished: run `rotate ca --finish` first (it says which \
         devices still use the previous CA)"
    )]
    Unfinished,
    #[error("no CA rotation is under way")]
    NotRotating,
    #[error(
        "{} device(s) still hold only certificates of the previous CA and would be locked \
         out: {}{}; wait until they renew (or revoke them), or use --force",
        .0.len(),
        .0.iter().take(20).cloned().collect::<Vec<_>>().join(", "),
        if .0.len() > 20 { ", …" } else { "" }
    )]
    DevicesLeft(Vec<String>),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Write(#[from] DataDirError),
    #[error("publishing the CRL: {0}")]
    Crl(#[from] crl::CrlError),
    #[error("the new server certificate: {0}")]
    ServerCert(#[from] super::server_cert::RotateCertError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// What a rotation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotated {
    /// The root's fingerprint (unchanged).
    pub root_fingerprint: String,
    /// The names in the new server certificate.
    pub hostnames: Vec<String>,
}

fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> RotateCaError + '_ {
    move |source| RotateCaError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Makes `new` (an intermediate CA with its chain, and its key) the issuing CA: the current
/// one becomes the previous CA, a new server certificate for the same names is issued by
/// the new one, and the CRL is published by both. Refuses another root, an unfinished
/// rotation, and the current CA itself.
pub async fn rotate(
    dd: &DataDir,
    store: &Store,
    new_chain_pem: &str,
    new_key_pem: &str,
    crl_next_update_days: u32,
) -> Result<Rotated, RotateCaError> {
    if dd.ca_previous_cert().exists() || dd.ca_previous_key().exists() {
        return Err(RotateCaError::Unfinished);
    }
    let new = Ca::from_pem(new_chain_pem, new_key_pem).map_err(RotateCaError::NewCa)?;
    let current = Ca::load(dd)?;
    let (current_root, new_root) = (current.fingerprint()?, new.fingerprint()?);
    if current_root != new_root {
        return Err(RotateCaError::OtherRoot {
            current: current_root,
            new: new_root,
        });
    }
    if super::fingerprint_pem(&current.cert_pem)? == super::fingerprint_pem(&new.cert_pem)? {
        return Err(RotateCaError::Same);
    }
    let hostnames = super::server_cert::current_hostnames(dd)?;
    // The previous CA is written first: whatever happens after, nothing it issued stops
    // being trusted.
    write_private(&dd.ca_previous_cert(), current.cert_pem.as_bytes())?;
    write_private(&dd.ca_previous_key(), current.key_pem().as_bytes())?;
    store.set_ca_rotated_at(Some(now_ms())).await?;
    write_private(&dd.ca_key(), new.key_pem().as_bytes())?;
    write_private(&dd.ca_cert(), new.cert_pem.as_bytes())?;
    // Agents verify the server through the root: the new intermediate must issue it.
    let issued = super::server_cert::rotate(dd, &hostnames)?;
    crl::publish(dd, store, &new, crl_next_update_days).await?;
    Ok(Rotated {
        root_fingerprint: new_root,
        hostnames: issued.hostnames,
    })
}

/// The devices still holding only certificates of the previous CA (empty when none, or no
/// rotation is under way).
pub async fn devices_left(store: &Store) -> Result<Vec<String>, RotateCaError> {
    match store.ca_rotated_at().await? {
        Some(at) => Ok(store.devices_on_previous_ca(at, now_ms()).await?),
        None => Ok(Vec::new()),
    }
}

/// Ends a rotation: the previous CA is no longer trusted and its key is deleted. Refused
/// while devices still depend on it, unless `force`. Returns the devices locked out.
pub async fn finish(
    dd: &DataDir,
    store: &Store,
    force: bool,
    crl_next_update_days: u32,
) -> Result<Vec<String>, RotateCaError> {
    if !dd.ca_previous_cert().exists() {
        return Err(RotateCaError::NotRotating);
    }
    let left = devices_left(store).await?;
    if !left.is_empty() && !force {
        return Err(RotateCaError::DevicesLeft(left));
    }
    for path in [dd.ca_previous_key(), dd.ca_previous_cert()] {
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(&path)(e)),
        }
    }
    store.set_ca_rotated_at(None).await?;
    crl::publish(dd, store, &Ca::load(dd)?, crl_next_update_days).await?;
    Ok(left)
}
