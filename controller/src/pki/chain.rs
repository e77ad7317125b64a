//! The CA certificate file as a chain: the issuing CA first, then whatever certifies it,
//! ending with a self-signed root — one certificate when `init` made the CA, two or more
//! when the controller signs with an intermediate CA whose root is kept offline
//! (`init --ca-cert/--ca-key`). Devices pin the root (the last certificate): its
//! fingerprint is what enrollment tokens carry, so a new intermediate from the same root is
//! trusted by every enrolled device.

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use x509_parser::prelude::{FromDer, KeyUsage, X509Certificate};

use super::PkiError;

/// Most certificates accepted in a CA chain (an issuing CA, intermediates, the root).
const MAX_CHAIN: usize = 4;

/// Why a CA chain is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ChainError {
    #[error("the CA certificate file holds no certificate")]
    Empty,
    #[error("the CA chain holds {0} certificates; at most {MAX_CHAIN} are accepted")]
    TooLong(usize),
    #[error("certificate {index} of the CA chain is not a CA (basicConstraints cA is not set)")]
    NotCa { index: usize },
    #[error(
        "certificate {index} of the CA chain may not sign certificates (keyUsage lacks keyCertSign)"
    )]
    CannotSign { index: usize },
    #[error(
        "the issuing CA may not sign CRLs (keyUsage lacks cRLSign), so revocations could not be published"
    )]
    CannotSignCrl,
    #[error(
        "certificate {index} of the CA chain is not signed by the next one: give the issuing CA first, then each issuer, ending with the root"
    )]
    Broken { index: usize },
    #[error(
        "the last certificate of the CA chain is not a self-signed root: append the root (and any intermediates) to the CA certificate file"
    )]
    NoRoot,
    #[error(
        "certificate {index} of the CA chain is not valid now (notBefore {not_before}, notAfter {not_after})"
    )]
    NotValidNow {
        index: usize,
        not_before: String,
        not_after: String,
    },
    #[error("the root's pathLenConstraint ({0}) does not allow an intermediate CA below it")]
    PathLen(u32),
}

/// The DER of every certificate in `pem`, in order.
pub fn chain_ders(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let ders = CertificateDer::pem_slice_iter(pem.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    Ok(ders)
}

/// Lowercase hex SHA-256 of the trust anchor of a CA chain: its last certificate.
pub fn anchor_fingerprint(pem: &str) -> Result<String, PkiError> {
    Ok(hex::encode(anchor_fingerprint_bytes(pem)?))
}

/// SHA-256 of the DER of the last certificate of a CA chain.
pub fn anchor_fingerprint_bytes(pem: &str) -> Result<[u8; 32], PkiError> {
    let ders = chain_ders(pem)?;
    let anchor = ders.last().ok_or(PkiError::Chain(ChainError::Empty))?;
    Ok(Sha256::digest(anchor).into())
}

/// Checks a CA chain: at most [`MAX_CHAIN`] certificates, each a CA allowed to sign
/// certificates and valid now, each signed by the next, the last self-signed; the first
/// (the issuing CA) may sign CRLs. Returns the issuing CA's DER.
pub fn check(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    let ders = chain_ders(pem)?;
    if ders.len() > MAX_CHAIN {
        return Err(ChainError::TooLong(ders.len()).into());
    }
    let certs = ders
        .iter()
        .map(|der| Ok(X509Certificate::from_der(der)?.1))
        .collect::<Result<Vec<_>, PkiError>>()?;
    let Some(first) = certs.first() else {
        return Err(ChainError::Empty.into());
    };
    for (index, cert) in certs.iter().enumerate() {
        let index = index + 1;
        if !cert.is_ca() {
            return Err(ChainError::NotCa { index }.into());
        }
        let usage = key_usage(cert)?;
        if usage.is_some_and(|u| !u.key_cert_sign()) {
            return Err(ChainError::CannotSign { index }.into());
        }
        if !cert.validity().is_valid() {
            return Err(ChainError::NotValidNow {
                index,
                not_before: cert.validity().not_before.to_string(),
                not_after: cert.validity().not_after.to_string(),
            }
            .into());
        }
    }
    if key_usage(first)?.is_some_and(|u| !u.crl_sign()) {
        return Err(ChainError::CannotSignCrl.into());
    }
    for (index, pair) in certs.windows(2).enumerate() {
        let [child, parent] = pair else { continue };
        if child.issuer() != parent.subject()
            || child.verify_signature(Some(parent.public_key())).is_err()
        {
            return Err(ChainError::Broken { index: index + 1 }.into());
        }
    }
    let root = certs.last().ok_or(ChainError::Empty)?;
    if root.issuer() != root.subject() || root.verify_signature(None).is_err() {
        return Err(ChainError::NoRoot.into());
    }
    // Each CA above the issuing one must allow the CAs below it.
    for (index, cert) in certs.iter().enumerate().skip(1) {
        if let Ok(Some(bc)) = cert.basic_constraints()
            && let Some(len) = bc.value.path_len_constraint
            && (len as usize) < index
        {
            return Err(ChainError::PathLen(len).into());
        }
    }
    Ok(ders[0].clone())
}

fn key_usage<'a>(cert: &'a X509Certificate<'_>) -> Result<Option<&'a KeyUsage>, PkiError> {
    Ok(cert
        .key_usage()
        .map_err(PkiError::Extensions)?
        .map(|ext| ext.value))
}
