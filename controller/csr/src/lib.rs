//! Untrusted CSRs, checked with x509-parser directly (not rcgen's
//! `CertificateSigningRequestParams::from_der`, which refuses CSRs carrying unknown requested
//! extensions or uncommon DN string types): size, PEM, DER, self-signature, key type and a
//! single CN that is a valid device id. Only the key and the CN reach the certificate.
//!
//! Pure (no I/O, no async runtime): the controller signs what passes, and the fuzz targets
//! (tests/fuzz) exercise these checks directly.

use pifleet_shared::signing::DeviceKeyAlg;
use pifleet_shared::{DeviceId, InvalidDeviceId};
use rustls_pki_types::CertificateSigningRequestDer;
use rustls_pki_types::pem::PemObject;
use sha2::Digest as _;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::error::X509Error;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_PKCS1_RSASSAPSS, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::{SubjectPublicKeyInfo, X509Name};

/// Largest CSR (PEM text) we read; a P-256 or Ed25519 CSR is well under 1 KiB.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

/// Longest attacker-supplied common name echoed back in an error message.
const MAX_ECHOED_CN: usize = 64;

/// Why a device CSR was refused. Every variant except [`CsrError::Internal`] is the client's
/// fault and its message is meant to be sent back as an HTTP 400 body.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error("the CSR is empty")]
    Empty,
    #[error("the CSR is {size} bytes; at most {MAX_CSR_BYTES} are accepted")]
    TooLarge { size: usize },
    #[error("the CSR is not valid PEM with a \"CERTIFICATE REQUEST\" block")]
    Pem(#[source] rustls_pki_types::pem::Error),
    #[error("more than one CSR was sent; send exactly one")]
    MultipleCsrs,
    #[error("the CSR is not a valid PKCS#10 certification request")]
    Malformed(#[source] x509_parser::nom::Err<X509Error>),
    #[error("the CSR has trailing data after the certification request")]
    TrailingData,
    #[error("the CSR signature does not verify against the CSR's own public key")]
    BadSignature(#[source] X509Error),
    #[error("weak or unsupported key ({0}); use ECDSA P-256 or Ed25519")]
    WeakKey(String),
    #[error("the CSR subject has no common name (CN)")]
    NoCommonName,
    #[error("the CSR subject has more than one common name (CN)")]
    MultipleCommonNames,
    #[error("the CSR common name is not a text string")]
    CommonNameNotText(#[source] X509Error),
    #[error("the CSR common name {cn:?} is not a valid device id: {source}")]
    InvalidDeviceId {
        cn: String,
        #[source]
        source: InvalidDeviceId,
    },
    #[error("the CSR common name {cn:?} does not match the device id {expected:?} being enrolled")]
    IdMismatch { cn: String, expected: String },
    /// Signing a CSR that passed every check failed (the signer's error, not the client's).
    #[error("internal error while issuing the certificate")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl CsrError {
    /// True when the request itself is at fault (HTTP 400), false for our own failure (500).
    pub fn is_refusal(&self) -> bool {
        !matches!(self, CsrError::Internal(_))
    }
}

/// The CSR's proposed device id: its single subject CN, validated as a [`DeviceId`]. Lets the
/// enrollment handler pick the id before signing. Applies every CSR check (size, PEM, DER,
/// self-signature, key type, CN).
pub fn csr_proposed_id(csr_pem: &str) -> Result<DeviceId, CsrError> {
    Ok(check_csr(csr_pem)?.id)
}

/// Like [`csr_proposed_id`], with the SHA-256 (hex) of the CSR's public key, which tells
/// one device's requests from another's.
pub fn csr_id_and_key(csr_pem: &str) -> Result<(DeviceId, String), CsrError> {
    let csr = check_csr(csr_pem)?;
    let fingerprint = pifleet_shared::token::to_hex(&sha2::Sha256::digest(&csr.key.raw));
    Ok((csr.id, fingerprint))
}

/// The CSR of a device renewing its certificate over its authenticated connection: every
/// check of [`check_csr`], and the CN must be `device`, the id the connection's certificate
/// proved.
pub fn check_renewal(device: &DeviceId, csr_pem: &str) -> Result<CheckedCsr, CsrError> {
    let csr = check_csr(csr_pem)?;
    if csr.id != *device {
        return Err(CsrError::IdMismatch {
            cn: csr.id.to_string(),
            expected: device.to_string(),
        });
    }
    Ok(csr)
}

/// A CSR that passed every check: the proposed id and the public key to certify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedCsr {
    pub id: DeviceId,
    pub key: CsrKey,
}

/// The CSR's public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CsrKey {
    /// Contents of the SPKI BIT STRING: an uncompressed P-256 point (65 bytes) or a raw
    /// Ed25519 key (32 bytes).
    pub raw: Vec<u8>,
    pub alg: DeviceKeyAlg,
}

/// Checks an untrusted CSR (PEM): size, PEM, DER with nothing trailing, key type,
/// self-signature, and a single CN that is a valid device id.
pub fn check_csr(csr_pem: &str) -> Result<CheckedCsr, CsrError> {
    if csr_pem.len() > MAX_CSR_BYTES {
        return Err(CsrError::TooLarge {
            size: csr_pem.len(),
        });
    }
    if csr_pem.trim().is_empty() {
        return Err(CsrError::Empty);
    }
    let mut blocks = CertificateSigningRequestDer::pem_slice_iter(csr_pem.as_bytes());
    let der = match blocks.next() {
        Some(block) => block.map_err(CsrError::Pem)?,
        None => {
            return Err(CsrError::Pem(rustls_pki_types::pem::Error::NoItemsFound));
        }
    };
    if blocks.next().is_some() {
        return Err(CsrError::MultipleCsrs);
    }
    let (rest, csr) = X509CertificationRequest::from_der(&der).map_err(CsrError::Malformed)?;
    if !rest.is_empty() {
        return Err(CsrError::TrailingData);
    }
    let info = &csr.certification_request_info;
    // Key type first, so an unsupported key is reported as such rather than as a signature
    // that x509-parser cannot verify.
    let key = check_key(&info.subject_pki)?;
    csr.verify_signature().map_err(CsrError::BadSignature)?;
    let cn = match single_common_name(&info.subject) {
        Ok(cn) => cn,
        Err(CnProblem::None) => return Err(CsrError::NoCommonName),
        Err(CnProblem::Multiple) => return Err(CsrError::MultipleCommonNames),
        Err(CnProblem::NotText(e)) => return Err(CsrError::CommonNameNotText(e)),
    };
    let id = DeviceId::parse(cn).map_err(|source| CsrError::InvalidDeviceId {
        cn: cn.chars().take(MAX_ECHOED_CN).collect(),
        source,
    })?;
    Ok(CheckedCsr { id, key })
}

/// Accepts ECDSA P-256 (uncompressed point) and Ed25519; names anything else for the refusal.
pub fn check_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<CsrKey, CsrError> {
    let alg = &spki.algorithm.algorithm;
    let raw = spki.subject_public_key.data.as_ref();
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => {
                if raw.len() == 65 && raw.first() == Some(&0x04) {
                    Ok(CsrKey {
                        raw: raw.to_vec(),
                        alg: DeviceKeyAlg::EcdsaP256,
                    })
                } else {
                    Err(CsrError::WeakKey(
                        "P-256 key not an uncompressed point".into(),
                    ))
                }
            }
            Some(c) if c == OID_NIST_EC_P384 => Err(CsrError::WeakKey("ECDSA P-384".into())),
            Some(c) if c == OID_NIST_EC_P521 => Err(CsrError::WeakKey("ECDSA P-521".into())),
            Some(c) => Err(CsrError::WeakKey(format!("ECDSA curve {c}"))),
            None => Err(CsrError::WeakKey("ECDSA without a named curve".into())),
        };
    }
    if *alg == OID_SIG_ED25519 {
        // RFC 8410: parameters MUST be absent.
        if spki.algorithm.parameters.is_none() && raw.len() == 32 {
            return Ok(CsrKey {
                raw: raw.to_vec(),
                alg: DeviceKeyAlg::Ed25519,
            });
        }
        return Err(CsrError::WeakKey("malformed Ed25519 key".into()));
    }
    if *alg == OID_PKCS1_RSAENCRYPTION || *alg == OID_PKCS1_RSASSAPSS {
        let what = match spki.parsed() {
            Ok(PublicKey::RSA(rsa)) => format!("RSA {}-bit", rsa.key_size()),
            _ => "RSA".to_owned(),
        };
        return Err(CsrError::WeakKey(what));
    }
    Err(CsrError::WeakKey(format!("key algorithm {alg}")))
}

/// Why a subject has no usable common name.
#[derive(Debug)]
pub enum CnProblem {
    None,
    Multiple,
    NotText(X509Error),
}

/// The single common name of `name`, as text.
pub fn single_common_name<'a>(name: &X509Name<'a>) -> Result<&'a str, CnProblem> {
    let mut cns = name.iter_common_name();
    let first = cns.next().ok_or(CnProblem::None)?;
    if cns.next().is_some() {
        return Err(CnProblem::Multiple);
    }
    first.as_str().map_err(CnProblem::NotText)
}

#[cfg(test)]
mod tests;
