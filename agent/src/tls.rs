//! rustls set-up for the agent, with the one ring provider of [`pifleet_io::provider`]: the
//! mutual-TLS client configs for MQTT and for downloads over HTTPS, and the enrollment-time
//! verifier that pins the controller's CA by fingerprint.

use std::path::Path;
use std::sync::{Arc, Mutex};

use pifleet_io::{load_certs, load_key, provider};
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, UnixTime};

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

/// A client config that certificate renewal replaces while others keep using it.
#[derive(Debug, Clone)]
pub struct Shared(Arc<Mutex<Arc<ClientConfig>>>);

impl Shared {
    pub fn new(cfg: ClientConfig) -> Self {
        Self(Arc::new(Mutex::new(Arc::new(cfg))))
    }

    /// The current config.
    pub fn get(&self) -> Arc<ClientConfig> {
        // Poisoning cannot leave a half-replaced Arc behind.
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, cfg: ClientConfig) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Arc::new(cfg);
    }
}

/// Why a renewed certificate is not installed.
#[derive(Debug, thiserror::Error)]
pub enum IssuedError {
    #[error(transparent)]
    Pem(#[from] pifleet_io::PemError),
    #[error("PEM: {0}")]
    PemText(#[from] std::io::Error),
    #[error("no certificate in the answer")]
    Empty,
    #[error("{0}")]
    Webpki(#[from] webpki::Error),
    #[error("the certificate names another device")]
    OtherName,
    #[error("the certificate is for another key")]
    OtherKey,
}

/// Checks a certificate the controller issued on renewal before it is installed: it
/// chains to the pinned CA (for client authentication, valid now), names `device`, and
/// certifies the key whose public key (the SubjectPublicKeyInfo's BIT STRING) is `key_raw`.
pub fn check_issued(
    ca: &Path,
    cert_pem: &str,
    key_raw: &[u8],
    device: &str,
) -> Result<(), IssuedError> {
    let certs = pem_certs(cert_pem.as_bytes())?;
    let (leaf, rest) = certs.split_first().ok_or(IssuedError::Empty)?;
    let cas = load_certs(ca)?;
    let anchors = cas
        .iter()
        .map(webpki::anchor_from_trusted_cert)
        .collect::<Result<Vec<_>, _>>()?;
    let ee = webpki::EndEntityCert::try_from(leaf)?;
    ee.verify_for_usage(
        provider().signature_verification_algorithms.all,
        &anchors,
        rest,
        UnixTime::now(),
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )?;
    // Names the device: its subjectAltName holds dNSName ([2] IMPLICIT IA5String) = the id.
    // A byte search of the CA-verified certificate, rather than webpki's name matcher,
    // which the agent does not otherwise link.
    let id = device.as_bytes();
    let mut san = vec![
        0x82,
        u8::try_from(id.len()).map_err(|_| IssuedError::OtherName)?,
    ];
    san.extend_from_slice(id);
    if !leaf.windows(san.len()).any(|w| w == san.as_slice()) {
        return Err(IssuedError::OtherName);
    }
    // The BIT STRING closes the SubjectPublicKeyInfo: its last bytes are the key itself.
    if !ee.subject_public_key_info().as_ref().ends_with(key_raw) {
        return Err(IssuedError::OtherKey);
    }
    Ok(())
}

/// The certificates of a PEM text (the parser enrollment uses too).
pub fn pem_certs(mut pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, std::io::Error> {
    rustls_pemfile::certs(&mut pem).collect()
}
