//! rustls set-up for the agent, with the one ring provider of [`pifleet_io::provider`]: the
//! mutual-TLS client configs for MQTT and for downloads over HTTPS, and the enrollment-time
//! verifier that pins the controller's CA by fingerprint.

use std::path::Path;

use pifleet_io::{load_certs, load_key, provider};
use rustls::{ClientConfig, RootCertStore};

/// TLS set-up errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pem(#[from] pifleet_io::PemError),
    #[error("TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The MQTT client config: trusts only our CA, presents the device certificate.
pub fn mqtt_client(ca: &Path, cert: &Path, key: &Path) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in load_certs(ca)? {
        roots.add(c)?;
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(load_certs(cert)?, load_key(key)?)?)
}

/// The HTTPS client config for downloads from the controller: like [`mqtt_client`], over
/// HTTP/1.1.
pub fn https_client(ca: &Path, cert: &Path, key: &Path) -> Result<ClientConfig, TlsError> {
    let mut cfg = mqtt_client(ca, cert, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

pub use pifleet_io::pinned::{PinnedCa, fingerprint};
