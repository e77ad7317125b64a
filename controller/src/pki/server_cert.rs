//! The listeners' server certificate, replaceable while they run: both TLS configs resolve
//! it through one [`ServerCert`], so a certificate `rotate server-cert` wrote is served to
//! every new handshake once [`ServerCert::reload_if_changed`] has seen it. Connections
//! already up keep their session; agents pin the CA, not the leaf, so nothing else changes.

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use x509_parser::extensions::GeneralName;

use super::ca::serial_hex;
use super::tls::{TlsError, load_certs, load_key, provider};
use super::{Ca, PkiError};
use crate::datadir::{DataDir, DataDirError, write_private};

/// What identifies one version of the certificate and key files.
type Stamp = Option<(SystemTime, SystemTime, u64)>;

/// The certificate in use, and where it is read from.
#[derive(Debug)]
pub struct ServerCert {
    dd: DataDir,
    current: ArcSwap<CertifiedKey>,
    seen: std::sync::Mutex<Stamp>,
}

impl ServerCert {
    /// Reads the data dir's server certificate and key.
    pub fn load(dd: &DataDir) -> Result<Arc<Self>, TlsError> {
        let seen = stamp(dd);
        let key = certified_key(dd)?;
        Ok(Arc::new(Self {
            dd: dd.clone(),
            current: ArcSwap::from_pointee(key),
            seen: std::sync::Mutex::new(seen),
        }))
    }

    /// Serves the files again if they changed since they were last read; `Ok(true)` when
    /// a new certificate is in use. A pair that does not load (a key written but not its
    /// certificate yet) leaves the one in use and is tried again at the next call.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.dd);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if now == *seen {
            return Ok(false);
        }
        let key = certified_key(&self.dd)?;
        self.current.store(Arc::new(key));
        *seen = now;
        Ok(true)
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// The leaf followed by the CA (agents pin the CA by fingerprint), with its key; refused
/// when the key is not the certificate's.
fn certified_key(dd: &DataDir) -> Result<CertifiedKey, TlsError> {
    let mut chain = load_certs(&dd.server_cert())?;
    chain.extend(load_certs(&dd.ca_cert())?);
    let key = CertifiedKey::from_der(chain, load_key(&dd.server_key())?, &provider())?;
    Ok(key)
}

/// A server certificate `rotate server-cert` issued.
#[derive(Debug, Clone)]
pub struct Issued {
    /// Lowercase hex.
    pub serial: String,
    /// Unix seconds.
    pub not_after: i64,
    pub hostnames: Vec<String>,
}

/// Why a new server certificate was not put in place.
#[derive(Debug, thiserror::Error)]
pub enum RotateCertError {
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Write(#[from] DataDirError),
    #[error("the current server certificate names no host; give --hostname")]
    NoHostnames,
}

/// Issues a new server certificate from the CA for `hostnames` (those of the certificate
/// in use when empty) and writes it and its key (each atomically, the key first). A running
/// controller serves it from its next reload; until both files are written it keeps the
/// pair it has.
pub fn rotate(dd: &DataDir, hostnames: &[String]) -> Result<Issued, RotateCertError> {
    let hostnames = if hostnames.is_empty() {
        current_hostnames(dd)?
    } else {
        hostnames.to_vec()
    };
    if hostnames.is_empty() {
        return Err(RotateCertError::NoHostnames);
    }
    let ca = Ca::load(dd)?;
    let (cert, key) = ca.issue_server(&hostnames)?;
    let (serial, not_after) = serial_and_expiry(&cert)?;
    write_private(&dd.server_key(), key.as_bytes())?;
    write_private(&dd.server_cert(), cert.as_bytes())?;
    Ok(Issued {
        serial,
        not_after,
        hostnames,
    })
}

/// The names the certificate in use is for: its common name, then its other DNS names and
/// IP addresses.
pub fn current_hostnames(dd: &DataDir) -> Result<Vec<String>, PkiError> {
    let path = dd.server_cert();
    let pem = std::fs::read_to_string(&path).map_err(|source| PkiError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let der = CertificateDer::from_pem_slice(pem.as_bytes())?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
    let mut names: Vec<String> = Vec::new();
    if let Some(cn) = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        names.push(cn.to_owned());
    }
    let san = cert
        .subject_alternative_name()
        .map_err(PkiError::Extensions)?;
    for name in san.iter().flat_map(|ext| ext.value.general_names.iter()) {
        let text = match name {
            GeneralName::DNSName(dns) => (*dns).to_owned(),
            GeneralName::IPAddress(ip) => {
                if let Ok(v4) = <[u8; 4]>::try_from(*ip) {
                    std::net::IpAddr::from(v4).to_string()
                } else if let Ok(v6) = <[u8; 16]>::try_from(*ip) {
                    std::net::IpAddr::from(v6).to_string()
                } else {
                    continue;
                }
            }
            _ => continue,
        };
        if !names.contains(&text) {
            names.push(text);
        }
    }
    Ok(names)
}

/// The serial (lowercase hex) and expiry (Unix seconds) of the first certificate of a PEM.
pub fn serial_and_expiry(pem: &str) -> Result<(String, i64), PkiError> {
    let der = CertificateDer::from_pem_slice(pem.as_bytes())?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
    Ok((
        serial_hex(cert.raw_serial()),
        cert.validity().not_after.timestamp(),
    ))
}

fn stamp(dd: &DataDir) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let ino = std::fs::metadata(dd.server_cert()).ok()?.ino();
    Some((
        modified(&dd.server_cert())?,
        modified(&dd.server_key())?,
        ino,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::Ca;

    #[tokio::test]
    async fn a_new_pair_is_served_and_a_mismatched_one_is_not() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("d");
        crate::setup::init(&root, &["ctl.example".into()], None)
            .await
            .unwrap();
        let dd = DataDir::new(&root);
        let cert = ServerCert::load(&dd).unwrap();
        let before = cert
            .current
            .load_full()
            .end_entity_cert()
            .unwrap()
            .clone()
            .into_owned();
        assert!(!cert.reload_if_changed().unwrap(), "nothing changed");

        let ca = Ca::load(&dd).unwrap();
        let (pem, key) = ca.issue_server(&["ctl.example".into()]).unwrap();
        let (_, other_key) = ca.issue_server(&["ctl.example".into()]).unwrap();
        // The new certificate with a key that is not its own: refused, the old one stays.
        crate::datadir::write_private(&dd.server_cert(), pem.as_bytes()).unwrap();
        crate::datadir::write_private(&dd.server_key(), other_key.as_bytes()).unwrap();
        assert!(cert.reload_if_changed().is_err());
        assert_eq!(cert.current.load_full().end_entity_cert().unwrap(), &before);
        // Its own key: served.
        crate::datadir::write_private(&dd.server_key(), key.as_bytes()).unwrap();
        assert!(cert.reload_if_changed().unwrap());
        assert_ne!(cert.current.load_full().end_entity_cert().unwrap(), &before);
        assert!(!cert.reload_if_changed().unwrap());

        // `rotate` keeps the names of the certificate in use.
        let issued = rotate(&dd, &[]).unwrap();
        assert_eq!(issued.hostnames[0], "ctl.example");
        assert!(issued.hostnames.contains(&"127.0.0.1".to_owned()));
        assert!(cert.reload_if_changed().unwrap());
        let served = cert
            .current
            .load_full()
            .end_entity_cert()
            .unwrap()
            .clone()
            .into_owned();
        let (_, parsed) = x509_parser::parse_x509_certificate(&served).unwrap();
        assert_eq!(serial_hex(parsed.raw_serial()), issued.serial);
    }
}
