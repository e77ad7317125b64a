//! What a certificate says about its device: the identity of a verified client certificate,
//! its public key, and fingerprints.

use pifleet_shared::DeviceId;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};
use x509_parser::extensions::GeneralName;

use super::ca::serial_hex;
use super::csr::{CnProblem, check_key, single_common_name};
use super::*;

/// Device identity from a client certificate DER that rustls has already verified against the
/// CA and CRL: the [`DeviceId`] from its CN (which must equal its single DNS SAN) and its
/// serial as lowercase hex. Used by the MQTT gateway.
pub fn device_identity(cert_der: &[u8]) -> Result<(DeviceId, String), PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)?;
    let cn = match single_common_name(cert.subject()) {
        Ok(cn) => cn,
        Err(CnProblem::None) => return Err(PkiError::NoCommonName),
        Err(CnProblem::Multiple) => return Err(PkiError::MultipleCommonNames),
        Err(CnProblem::NotText(e)) => return Err(PkiError::CommonNameNotText(e)),
    };
    let id = DeviceId::parse(cn)?;
    let san = cert
        .subject_alternative_name()
        .map_err(PkiError::Extensions)?;
    let names = san.map(|ext| ext.value.general_names.as_slice());
    match names {
        Some([GeneralName::DNSName(dns)]) if *dns == cn => {}
        _ => return Err(PkiError::SanMismatch { cn: cn.to_owned() }),
    }
    Ok((id, serial_hex(cert.raw_serial())))
}

/// SHA-256 of the DER of the first certificate in `cert_pem`.
pub fn fingerprint_bytes(cert_pem: &str) -> Result<[u8; 32], PkiError> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())?;
    Ok(Sha256::digest(&der).into())
}

/// Lowercase hex SHA-256 of the DER of the first certificate in `cert_pem`.
pub fn fingerprint_pem(cert_pem: &str) -> Result<String, PkiError> {
    Ok(hex::encode(fingerprint_bytes(cert_pem)?))
}

/// The public key of a device certificate, for verifying the device's signed receipts.
pub fn device_public_key(
    cert_pem: &str,
) -> Result<(pifleet_shared::signing::DeviceKeyAlg, Vec<u8>), PkiError> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
    let key = check_key(cert.public_key()).map_err(|_| PkiError::UnsupportedKey)?;
    Ok((key.alg, key.raw))
}

/// The facts of a verified device certificate (DER) that the database records for it: the
/// serial (normalized, as given), expiry and public key.
pub fn presented_certificate(
    cert_der: &[u8],
    serial: &str,
) -> Result<crate::store::review::Presented, PkiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)?;
    let key = check_key(cert.public_key()).map_err(|_| PkiError::UnsupportedKey)?;
    Ok(crate::store::review::Presented {
        serial: serial.to_owned(),
        not_after: cert.validity().not_after.timestamp(),
        public_key_alg: key.alg.as_str(),
        public_key: key.raw,
    })
}
