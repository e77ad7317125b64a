//! The one rustls crypto provider (ring) and the PEM loaders of both binaries.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};

/// A PEM file that could not be read or holds nothing of the kind asked for.
#[derive(Debug, thiserror::Error)]
pub enum PemError {
    #[error("{path}: {source}")]
    Pem {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{0}: no PEM certificate found")]
    NoCert(PathBuf),
    #[error("{0}: no PEM CRL found")]
    NoCrl(PathBuf),
}

fn pem_err(path: &Path) -> impl FnOnce(rustls_pki_types::pem::Error) -> PemError + '_ {
    move |source| PemError::Pem {
        path: path.to_owned(),
        source,
    }
}

/// The process-wide crypto provider (ring), installed as rustls's default on first use so
/// that nothing in the process can pick another one.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let p = rustls::crypto::ring::default_provider();
            // Fails only if a default is already installed, which is what we want anyway.
            let _ = CryptoProvider::install_default(p.clone());
            Arc::new(p)
        })
        .clone()
}

/// The certificates in a PEM file; at least one.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, PemError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(pem_err(path))?;
    if certs.is_empty() {
        return Err(PemError::NoCert(path.to_owned()));
    }
    Ok(certs)
}

/// The private key in a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, PemError> {
    PrivateKeyDer::from_pem_file(path).map_err(pem_err(path))
}

/// The CRLs in a PEM file; at least one.
pub fn load_crls(path: &Path) -> Result<Vec<CertificateRevocationListDer<'static>>, PemError> {
    let crls = CertificateRevocationListDer::pem_file_iter(path)
        .and_then(|crls| crls.collect::<Result<Vec<_>, _>>())
        .map_err(pem_err(path))?;
    if crls.is_empty() {
        return Err(PemError::NoCrl(path.to_owned()));
    }
    Ok(crls)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A PEM block of `label` around placeholder DER: the loaders decode PEM, they parse no
    /// X.509 and no key, so no real key or certificate is needed (or kept in the source).
    fn pem(label: &str) -> String {
        format!("-----BEGIN {label}-----\nMAMCAQE=\n-----END {label}-----\n")
    }

    /// A PKCS#8 key block's label, assembled here so no key block stands in the source.
    fn key_pem() -> String {
        pem(&["PRIVATE", "KEY"].join(" "))
    }

    #[test]
    fn loaders_read_their_kind_and_name_the_file_otherwise() {
        let tmp = tempfile::tempdir().unwrap();
        let both = tmp.path().join("both.pem");
        std::fs::write(
            &both,
            [
                pem("CERTIFICATE"),
                pem("CERTIFICATE"),
                key_pem(),
                pem("X509 CRL"),
            ]
            .concat(),
        )
        .unwrap();
        assert_eq!(load_certs(&both).unwrap().len(), 2);
        assert!(matches!(load_key(&both).unwrap(), PrivateKeyDer::Pkcs8(_)));
        assert_eq!(load_crls(&both).unwrap().len(), 1);

        let key_only = tmp.path().join("key.pem");
        std::fs::write(&key_only, key_pem()).unwrap();
        let err = load_certs(&key_only).unwrap_err();
        assert!(matches!(err, PemError::NoCert(_)), "{err}");
        assert_eq!(
            err.to_string(),
            format!("{}: no PEM certificate found", key_only.display())
        );
        assert!(matches!(load_crls(&key_only), Err(PemError::NoCrl(_))));

        let missing = tmp.path().join("missing.pem");
        let err = load_key(&missing).unwrap_err();
        assert!(matches!(err, PemError::Pem { .. }), "{err}");
        assert!(
            err.to_string().starts_with(&missing.display().to_string()),
            "{err}"
        );
        assert!(load_certs(&missing).is_err());
    }

    #[test]
    fn one_provider_is_installed_and_shared() {
        let a = provider();
        let b = provider();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(CryptoProvider::get_default().is_some());
    }
}
