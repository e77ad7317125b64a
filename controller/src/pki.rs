//! The controller's certificate authority: the CA itself, server certificates for the MQTT and
//! HTTPS listeners, device certificates from checked CSRs, CRLs, and the device identity read
//! back from a verified client certificate.
//!
//! Untrusted CSRs are parsed and checked with x509-parser directly (not rcgen's
//! `CertificateSigningRequestParams::from_der`, which refuses CSRs carrying unknown requested
//! extensions or uncommon DN string types); the issued certificate is built only from our own
//! parameters, so nothing the CSR requests besides its key and CN reaches the certificate.

use std::fmt;
use std::net::IpAddr;

use pifleet_shared::{DeviceId, InvalidDeviceId};
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData, RevokedCertParams, SanType, SerialNumber, SignatureAlgorithm,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer, ServerName};
use sha2::{Digest, Sha256};
use time::{Duration, OffsetDateTime};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::error::X509Error;
use x509_parser::extensions::GeneralName;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_PKCS1_RSASSAPSS, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use x509_parser::x509::{SubjectPublicKeyInfo, X509Name};

pub mod crl;
#[cfg(test)]
mod tests;

/// Largest CSR (PEM text) we read; a P-256 or Ed25519 CSR is well under 1 KiB.
pub const MAX_CSR_BYTES: usize = 16 * 1024;

const CA_VALIDITY_DAYS: u32 = 3650;
const SERVER_VALIDITY_DAYS: u32 = 730;
/// Back-dating of notBefore so devices with a slightly slow clock accept a fresh certificate.
const CLOCK_SKEW: Duration = Duration::minutes(5);
/// Longest attacker-supplied common name we echo back in an error message.
const MAX_ECHOED_CN: usize = 64;

/// Errors from CA, server-certificate, CRL and certificate-inspection operations.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate generation or signing failed")]
    Rcgen(#[from] rcgen::Error),
    #[error("PEM decoding failed")]
    Pem(#[from] rustls_pki_types::pem::Error),
    #[error("could not parse the X.509 certificate")]
    X509(#[from] x509_parser::nom::Err<X509Error>),
    #[error("could not read the certificate's extensions")]
    Extensions(#[source] X509Error),
    #[error("the CA certificate is not a CA (basicConstraints cA is not set)")]
    NotCa,
    #[error("the CA private key does not match the CA certificate")]
    KeyMismatch,
    #[error("{name:?} is not a valid DNS name or IP address for the server certificate")]
    InvalidHostname {
        name: String,
        #[source]
        source: rustls_pki_types::InvalidDnsNameError,
    },
    #[error("{serial:?} is not a certificate serial (1 to 20 bytes of hex)")]
    InvalidSerial {
        serial: String,
        #[source]
        source: Option<hex::FromHexError>,
    },
    #[error("timestamp out of range")]
    Time(#[from] time::error::ComponentRange),
    #[error("a validity of {days} days from now is out of range")]
    ValidityOutOfRange { days: u32 },
    #[error("the certificate subject has no common name")]
    NoCommonName,
    #[error("the certificate subject has more than one common name")]
    MultipleCommonNames,
    #[error("the certificate common name is not a text string")]
    CommonNameNotText(#[source] X509Error),
    #[error("the certificate common name is not a valid device id")]
    InvalidDeviceId(#[from] InvalidDeviceId),
    #[error("the certificate's public key is not ECDSA P-256 or Ed25519")]
    UnsupportedKey,
    #[error("the certificate must carry exactly one DNS SAN, equal to its common name {cn:?}")]
    SanMismatch { cn: String },
}

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
    #[error("internal error while issuing the certificate")]
    Internal(#[source] PkiError),
}

impl CsrError {
    /// True when the request itself is at fault (HTTP 400), false for our own failure (500).
    pub fn is_refusal(&self) -> bool {
        !matches!(self, CsrError::Internal(_))
    }
}

/// CA certificate and private key, both PEM. `Debug` redacts the key.
#[derive(Clone)]
pub struct Ca {
    /// The CA certificate (PEM), safe to publish.
    pub cert_pem: String,
    key_pem: String,
}

impl fmt::Debug for Ca {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ca")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"[redacted]")
            .finish()
    }
}

/// A device certificate we just issued, with what the database records about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCert {
    /// The certificate (PEM) to hand back to the device.
    pub cert_pem: String,
    /// Serial number as lowercase hex without leading zero bytes (the form [`device_identity`] returns).
    pub serial_hex: String,
    /// notAfter as Unix seconds, for renewal scheduling.
    pub not_after_unix: i64,
}

/// One revoked certificate, as listed in a CRL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revoked {
    /// Serial number in hex (leading zeros and case are ignored).
    pub serial_hex: String,
    /// When it was revoked, Unix seconds.
    pub revoked_at_unix: i64,
}

impl Ca {
    /// New ECDSA P-256 CA, CN "pifleet CA <name>", 10-year validity, basicConstraints CA
    /// pathlen 0, keyUsage keyCertSign + cRLSign.
    pub fn generate(name: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let now = now_seconds()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(&format!("pifleet CA {name}"));
        params.not_before = now;
        params.not_after = add_days(now, CA_VALIDITY_DAYS)?;
        params.serial_number = Some(random_serial().0);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Loads a CA saved by [`Ca::generate`], checking that the certificate is a CA and that the
    /// key belongs to it.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
        if !cert.is_ca() {
            return Err(PkiError::NotCa);
        }
        let key = KeyPair::from_pem(key_pem)?;
        if key.subject_public_key_info() != cert.public_key().raw {
            return Err(PkiError::KeyMismatch);
        }
        // Make sure rcgen can use it as an issuer now rather than at the first enrollment.
        Issuer::from_ca_cert_der(&der, key)?;
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            key_pem: key_pem.to_owned(),
        })
    }

    /// The CA private key (PKCS#8 PEM), for writing to the 0600 key file.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Lowercase hex SHA-256 of the CA certificate DER: what enrollment tokens carry so agents
    /// pin the controller.
    pub fn fingerprint(&self) -> Result<String, PkiError> {
        fingerprint_pem(&self.cert_pem)
    }

    /// Server certificate for the MQTT and HTTPS listeners: SANs = `hostnames` (DNS names or IP
    /// literals) + localhost + 127.0.0.1 + ::1, EKU serverAuth, 2-year validity, fresh P-256
    /// key. Returns (cert_pem, key_pem).
    pub fn issue_server(&self, hostnames: &[String]) -> Result<(String, String), PkiError> {
        let mut sans: Vec<SanType> = Vec::new();
        let defaults = ["localhost", "127.0.0.1", "::1"];
        for name in hostnames.iter().map(String::as_str).chain(defaults) {
            let san = server_san(name)?;
            if !sans.contains(&san) {
                sans.push(san);
            }
        }
        let cn = hostnames.first().map_or("localhost", String::as_str);
        let now = now_seconds()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(cn);
        params.subject_alt_names = sans;
        params.not_before = sub_skew(now)?;
        params.not_after = add_days(now, SERVER_VALIDITY_DAYS)?;
        params.serial_number = Some(random_serial().0);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok((cert.pem(), key.serialize_pem()))
    }

    /// Checks a device CSR (see [`csr_proposed_id`]), requires its CN to equal `device_id`,
    /// and issues a client certificate for the CSR's public key, valid for `validity_days`.
    pub fn sign_device_csr(
        &self,
        csr_pem: &str,
        device_id: &DeviceId,
        validity_days: u32,
    ) -> Result<IssuedCert, CsrError> {
        let csr = check_csr(csr_pem)?;
        if csr.id != *device_id {
            return Err(CsrError::IdMismatch {
                cn: csr.id.to_string(),
                expected: device_id.to_string(),
            });
        }
        self.issue_device(&csr.key, device_id, validity_days)
            .map_err(CsrError::Internal)
    }

    /// A CRL (PEM) listing `revoked`, signed by the CA, with this CRL number, thisUpdate now
    /// and nextUpdate now + `next_update_days`.
    pub fn crl(
        &self,
        revoked: &[Revoked],
        crl_number: u64,
        next_update_days: u32,
    ) -> Result<String, PkiError> {
        let revoked_certs = revoked
            .iter()
            .map(|r| {
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&parse_serial(&r.serial_hex)?),
                    revocation_time: OffsetDateTime::from_unix_timestamp(r.revoked_at_unix)?,
                    reason_code: None,
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, PkiError>>()?;
        let now = now_seconds()?;
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: add_days(now, next_update_days)?,
            crl_number: SerialNumber::from(crl_number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer()?)?.pem()?)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, key)?)
    }

    fn issue_device(
        &self,
        key: &CsrKey,
        id: &DeviceId,
        validity_days: u32,
    ) -> Result<IssuedCert, PkiError> {
        let now = now_seconds()?;
        let not_after = add_days(now, validity_days)?;
        let (serial, serial_hex) = random_serial();
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(id.as_str());
        params.subject_alt_names = vec![SanType::DnsName(id.as_str().try_into()?)];
        params.not_before = sub_skew(now)?;
        params.not_after = not_after;
        params.serial_number = Some(serial);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(key, &self.issuer()?)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            serial_hex,
            not_after_unix: not_after.unix_timestamp(),
        })
    }
}

/// The CSR's proposed device id: its single subject CN, validated as a [`DeviceId`]. Lets the
/// enrollment handler pick the id before signing. Applies every CSR check (size, PEM, DER,
/// self-signature, key type, CN).
pub fn csr_proposed_id(csr_pem: &str) -> Result<DeviceId, CsrError> {
    Ok(check_csr(csr_pem)?.id)
}

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

/// Lowercase hex SHA-256 of the DER of the first certificate in `cert_pem`.
pub fn fingerprint_pem(cert_pem: &str) -> Result<String, PkiError> {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes())?;
    Ok(hex::encode(Sha256::digest(&der)))
}

/// A CSR that passed every check: the proposed id and the public key to certify.
struct CheckedCsr {
    id: DeviceId,
    key: CsrKey,
}

/// The CSR's public key, in the form rcgen needs to put it into a certificate.
struct CsrKey {
    /// Contents of the SPKI BIT STRING (EC point or raw Ed25519 key).
    raw: Vec<u8>,
    alg: &'static SignatureAlgorithm,
}

impl PublicKeyData for CsrKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

fn check_csr(csr_pem: &str) -> Result<CheckedCsr, CsrError> {
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
fn check_key(spki: &SubjectPublicKeyInfo<'_>) -> Result<CsrKey, CsrError> {
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
                        alg: &rcgen::PKCS_ECDSA_P256_SHA256,
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
                alg: &rcgen::PKCS_ED25519,
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

enum CnProblem {
    None,
    Multiple,
    NotText(X509Error),
}

fn single_common_name<'a>(name: &X509Name<'a>) -> Result<&'a str, CnProblem> {
    let mut cns = name.iter_common_name();
    let first = cns.next().ok_or(CnProblem::None)?;
    if cns.next().is_some() {
        return Err(CnProblem::Multiple);
    }
    first.as_str().map_err(CnProblem::NotText)
}

fn server_san(name: &str) -> Result<SanType, PkiError> {
    let checked = ServerName::try_from(name).map_err(|source| PkiError::InvalidHostname {
        name: name.to_owned(),
        source,
    })?;
    Ok(match checked {
        ServerName::IpAddress(ip) => SanType::IpAddress(IpAddr::from(ip)),
        _ => SanType::DnsName(name.try_into()?),
    })
}

fn common_name_dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// A random positive 128-bit serial and its canonical hex form.
fn random_serial() -> (SerialNumber, String) {
    let bytes: [u8; 16] = rand::random();
    (SerialNumber::from_slice(&bytes), serial_hex(&bytes))
}

/// Canonical serial text: lowercase hex of the big-endian magnitude without leading zero bytes
/// (DER may prepend 0x00 to keep the INTEGER positive; rcgen strips and re-adds it).
fn serial_hex(raw: &[u8]) -> String {
    match strip_leading_zeros(raw) {
        [] => "00".to_owned(),
        magnitude => hex::encode(magnitude),
    }
}

fn strip_leading_zeros(mut bytes: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = bytes {
        bytes = rest;
    }
    bytes
}

fn parse_serial(text: &str) -> Result<Vec<u8>, PkiError> {
    let invalid = |source| PkiError::InvalidSerial {
        serial: text.chars().take(MAX_ECHOED_CN).collect(),
        source,
    };
    let trimmed = text.trim();
    let padded = if trimmed.len() % 2 == 1 {
        format!("0{trimmed}")
    } else {
        trimmed.to_owned()
    };
    let bytes = hex::decode(padded).map_err(|e| invalid(Some(e)))?;
    let magnitude = strip_leading_zeros(&bytes);
    if bytes.is_empty() || magnitude.len() > 20 {
        return Err(invalid(None));
    }
    Ok(magnitude.to_vec())
}

/// Now, truncated to whole seconds so the Unix time we report equals what the certificate says.
fn now_seconds() -> Result<OffsetDateTime, PkiError> {
    Ok(OffsetDateTime::from_unix_timestamp(
        OffsetDateTime::now_utc().unix_timestamp(),
    )?)
}

fn add_days(t: OffsetDateTime, days: u32) -> Result<OffsetDateTime, PkiError> {
    // u32::MAX days is about 3.7e14 seconds, far inside `Duration`'s i64 range.
    t.checked_add(Duration::days(i64::from(days)))
        .ok_or(PkiError::ValidityOutOfRange { days })
}

fn sub_skew(t: OffsetDateTime) -> Result<OffsetDateTime, PkiError> {
    t.checked_sub(CLOCK_SKEW)
        .ok_or(PkiError::ValidityOutOfRange { days: 0 })
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
