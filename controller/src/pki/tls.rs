//! TLS configuration for the controller's listeners, built in one place with the one crypto
//! provider (ring) of [`pifleet_io::provider`], TLS 1.2+ only.

use std::collections::HashSet;
use std::sync::Arc;

pub use pifleet_io::{PemError, load_certs, load_crls, load_key, provider};
use rustls::ServerConfig;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::CertificateRevocationListDer;
use x509_parser::prelude::FromDer;

use super::server_cert::ServerCert;
use crate::datadir::DataDir;

/// TLS set-up errors.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(transparent)]
    Pem(#[from] PemError),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("CRL parse: {0}")]
    CrlParse(String),
}

/// Serials (lowercase hex, no leading zeros) listed in the CRLs.
pub fn revoked_serials(
    crls: &[CertificateRevocationListDer<'_>],
) -> Result<HashSet<String>, TlsError> {
    let mut out = HashSet::new();
    for crl in crls {
        let (_, parsed) = x509_parser::revocation_list::CertificateRevocationList::from_der(crl)
            .map_err(|e| TlsError::CrlParse(e.to_string()))?;
        for rc in parsed.iter_revoked_certificates() {
            out.insert(normalize_serial(&rc.raw_serial_as_string()));
        }
    }
    Ok(out)
}

/// Canonical serial form: lowercase hex without separators or leading zeros.
pub fn normalize_serial(s: &str) -> String {
    let hex: String = s
        .chars()
        .filter(char::is_ascii_hexdigit)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let trimmed = hex.trim_start_matches('0');
    if trimmed.is_empty() {
        "0".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Verifies client certificates against the CA and the CRLs. Unknown revocation status
/// is refused, so a broken CRL fails closed.
fn client_verifier(
    dd: &DataDir,
    crls: Vec<CertificateRevocationListDer<'static>>,
    optional: bool,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in load_certs(&dd.ca_cert())? {
        roots.add(ca)?;
    }
    // During a CA rotation, devices still hold certificates of the previous CA.
    let previous = dd.ca_previous_cert();
    if previous.exists() {
        for ca in load_certs(&previous)? {
            roots.add(ca)?;
        }
    }
    let builder =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider()).with_crls(crls);
    let builder = if optional {
        builder.allow_unauthenticated()
    } else {
        builder
    };
    Ok(builder.build()?)
}

/// The HTTPS listener: a client certificate is asked for but not required. Browsers and
/// API clients send none; devices present theirs for the device routes, and one that does
/// not chain to the CA or is on the CRL fails the handshake. Handlers see the identity of a
/// verified certificate only (`api::https::ClientCert`); revocations after start-up are
/// checked against the database on every device request. The server certificate is
/// `cert`'s, whichever is current at each handshake.
pub fn https_config(
    dd: &DataDir,
    crls: Vec<CertificateRevocationListDer<'static>>,
    cert: Arc<ServerCert>,
) -> Result<ServerConfig, TlsError> {
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(client_verifier(dd, crls, true)?)
        .with_cert_resolver(cert);
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The MQTT gateway: a client certificate chained to our CA and absent from the CRL is
/// required. The server certificate is `cert`'s, as for HTTPS.
pub fn mqtt_config(
    dd: &DataDir,
    crls: Vec<CertificateRevocationListDer<'static>>,
    cert: Arc<ServerCert>,
) -> Result<ServerConfig, TlsError> {
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(client_verifier(dd, crls, false)?)
        .with_cert_resolver(cert);
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serial_normalization() {
        assert_eq!(normalize_serial("00:1A:bc"), "1abc");
        assert_eq!(normalize_serial("0x00"), "0");
        assert_eq!(normalize_serial("7f"), "7f");
    }
}
