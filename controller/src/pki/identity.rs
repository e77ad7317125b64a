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
    use pifleet_shared::signing::DeviceKeyAlg;
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
    let key = check_key(cert.public_key()).map_err(|_| PkiError::UnsupportedKey)?;
    let alg = if std::ptr::eq(key.alg, &rcgen::PKCS_ED25519) {
        DeviceKeyAlg::Ed25519
    } else {
        DeviceKeyAlg::EcdsaP256
    };
    Ok((alg, key.raw))
}

/// The DNS names and IP addresses a server certificate is for, in its order.
pub fn server_names(cert_pem: &str) -> Result<Vec<String>, PkiError> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
    let mut names = Vec::new();
    if let Some(san) = cert
        .subject_alternative_name()
        .map_err(PkiError::Extensions)?
    {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => names.push((*dns).to_owned()),
                GeneralName::IPAddress(ip) => match ip.len() {
                    4 => names.push(
                        std::net::Ipv4Addr::from(<[u8; 4]>::try_from(*ip).unwrap_or_default())
                            .to_string(),
                    ),
                    16 => names.push(
                        std::net::Ipv6Addr::from(<[u8; 16]>::try_from(*ip).unwrap_or_default())
                            .to_string(),
                    ),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    Ok(names)
}
