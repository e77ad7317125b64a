//! The CA itself: generated or loaded, and what it signs — server certificates for the
//! listeners, device certificates from checked CSRs, and CRLs.
use std::fmt;
use std::net::IpAddr;

use pifleet_shared::DeviceId;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData, RevokedCertParams, SanType, SerialNumber,
};
use rustls_pki_types::ServerName;
use time::{Duration, OffsetDateTime};

use super::csr::{CsrKey, RcgenKey, check_csr};
use super::*;

pub(super) const CA_VALIDITY_DAYS: u32 = 3650;
pub(super) const SERVER_VALIDITY_DAYS: u32 = 730;
/// Back-dating of notBefore so devices with a slightly slow clock accept a fresh certificate.
pub(super) const CLOCK_SKEW: Duration = Duration::minutes(5);

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
    /// Loads the CA certificate and key from the data dir.
    pub fn load(dd: &crate::datadir::DataDir) -> Result<Ca, PkiError> {
        let read = |path: std::path::PathBuf| {
            std::fs::read_to_string(&path).map_err(|source| PkiError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        Ca::from_pem(&read(dd.ca_cert())?, &read(dd.ca_key())?)
    }

    /// The CA a `rotate ca` replaced, while it is still trusted: `None` when there is none.
    pub fn load_previous(dd: &crate::datadir::DataDir) -> Result<Option<Ca>, PkiError> {
        let cert = dd.ca_previous_cert();
        if !cert.exists() {
            return Ok(None);
        }
        let read = |path: std::path::PathBuf| {
            std::fs::read_to_string(&path).map_err(|source| PkiError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        Ok(Some(Ca::from_pem(
            &read(cert)?,
            &read(dd.ca_previous_key())?,
        )?))
    }

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

    /// Loads a CA: `cert_pem` is the issuing CA's certificate followed by its chain up to a
    /// self-signed root (just the one certificate for a CA [`Ca::generate`] made), checked
    /// link by link; `key_pem` must be the issuing CA's key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let der = super::chain::check(cert_pem)?;
        let (_, cert) = x509_parser::parse_x509_certificate(&der)?;
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

    /// Lowercase hex SHA-256 of the root's DER (the last certificate of the chain; the CA
    /// itself when it is its own root): what enrollment tokens carry so agents pin the
    /// controller.
    pub fn fingerprint(&self) -> Result<String, PkiError> {
        super::chain::anchor_fingerprint(&self.cert_pem)
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

    /// A client certificate for something other than a device (a controller's identity at
    /// an external broker): CN = `cn`, no SAN, EKU clientAuth, fresh P-256 key, valid for as
    /// long as a server certificate. The caller picks a `cn` that can never be a device id
    /// (the built-in gateway refuses it, as its CN is no device id and it has no DNS SAN).
    /// Returns (cert_pem, key_pem, serial_hex).
    pub fn issue_client(&self, cn: &str) -> Result<(String, String, String), PkiError> {
        let now = now_seconds()?;
        let (serial, serial_hex) = random_serial();
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(cn);
        params.not_before = sub_skew(now)?;
        params.not_after = add_days(now, SERVER_VALIDITY_DAYS)?;
        params.serial_number = Some(serial);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok((cert.pem(), key.serialize_pem(), serial_hex))
    }

    /// Checks a device CSR (see [`csr_proposed_id`]), requires its CN to equal `device_id`,
    /// and issues a client certificate for the CSR's public key, valid for `validity_days`.
    pub fn sign_device_csr(
        &self,
        csr_pem: &str,
        device_id: &DeviceId,
        validity_days: u32,
    ) -> Result<IssuedCert, CsrError> {
        let lifetime = std::time::Duration::from_secs(u64::from(validity_days) * 86_400);
        self.sign_device_csr_for(csr_pem, device_id, lifetime)
    }

    /// [`Ca::sign_device_csr`] with a lifetime in seconds (tests renew every few seconds).
    pub fn sign_device_csr_for(
        &self,
        csr_pem: &str,
        device_id: &DeviceId,
        lifetime: std::time::Duration,
    ) -> Result<IssuedCert, CsrError> {
        self.sign_device_csr_or_fallback(csr_pem, device_id, None, lifetime)
    }

    /// Like [`Ca::sign_device_csr`] where the controller may give the device the fallback id
    /// it proposed with its CSR (`fallback`, the hostname plus a suffix from the board
    /// serial) instead of the CSR's CN, when another device holds that one already.
    pub fn sign_device_csr_or_fallback(
        &self,
        csr_pem: &str,
        device_id: &DeviceId,
        fallback: Option<&DeviceId>,
        lifetime: std::time::Duration,
    ) -> Result<IssuedCert, CsrError> {
        let csr = check_csr(csr_pem)?;
        if csr.id != *device_id && fallback != Some(device_id) {
            return Err(CsrError::IdMismatch {
                cn: csr.id.to_string(),
                expected: device_id.to_string(),
            });
        }
        self.issue_device(&csr.key, device_id, lifetime)
            .map_err(|e| CsrError::Internal(Box::new(e)))
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

    pub(super) fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let key = KeyPair::from_pem(&self.key_pem)?;
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, key)?)
    }

    fn issue_device(
        &self,
        key: &CsrKey,
        id: &DeviceId,
        lifetime: std::time::Duration,
    ) -> Result<IssuedCert, PkiError> {
        let now = now_seconds()?;
        let out_of_range = PkiError::ValidityOutOfRange {
            days: u32::try_from(lifetime.as_secs() / 86_400).unwrap_or(u32::MAX),
        };
        let not_after = i64::try_from(lifetime.as_secs())
            .ok()
            .and_then(|s| now.checked_add(Duration::seconds(s)))
            .ok_or(out_of_range)?;
        let (serial, serial_hex) = random_serial();
        let mut params = CertificateParams::default();
        params.distinguished_name = common_name_dn(id.as_str());
        params.subject_alt_names = vec![SanType::DnsName(id.as_str().try_into()?)];
        // Short lifetimes (tests) are back-dated by a tenth of themselves at most, so
        // that the renewal point the device computes stays close to the intended one.
        let skew = CLOCK_SKEW.min(Duration::seconds(
            i64::try_from(lifetime.as_secs() / 10).unwrap_or(i64::MAX),
        ));
        params.not_before = now
            .checked_sub(skew)
            .ok_or(PkiError::ValidityOutOfRange { days: 0 })?;
        params.not_after = not_after;
        params.serial_number = Some(serial);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&RcgenKey(key), &self.issuer()?)?;
        Ok(IssuedCert {
            cert_pem: cert.pem(),
            serial_hex,
            not_after_unix: not_after.unix_timestamp(),
        })
    }
}

pub(super) fn server_san(name: &str) -> Result<SanType, PkiError> {
    let checked = ServerName::try_from(name).map_err(|source| PkiError::InvalidHostname {
        name: name.to_owned(),
        source,
    })?;
    Ok(match checked {
        ServerName::IpAddress(ip) => SanType::IpAddress(IpAddr::from(ip)),
        _ => SanType::DnsName(name.try_into()?),
    })
}

pub(super) fn common_name_dn(cn: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    dn
}

/// A random positive 128-bit serial and its canonical hex form.
pub(super) fn random_serial() -> (SerialNumber, String) {
    let bytes: [u8; 16] = rand::random();
    (SerialNumber::from_slice(&bytes), serial_hex(&bytes))
}

/// Canonical serial text: lowercase hex of the big-endian magnitude without leading zero bytes
/// (DER may prepend 0x00 to keep the INTEGER positive; rcgen strips and re-adds it).
pub(super) fn serial_hex(raw: &[u8]) -> String {
    match strip_leading_zeros(raw) {
        [] => "00".to_owned(),
        magnitude => hex::encode(magnitude),
    }
}

pub(super) fn strip_leading_zeros(mut bytes: &[u8]) -> &[u8] {
    while let [0, rest @ ..] = bytes {
        bytes = rest;
    }
    bytes
}

pub(super) fn parse_serial(text: &str) -> Result<Vec<u8>, PkiError> {
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
pub(super) fn now_seconds() -> Result<OffsetDateTime, PkiError> {
    Ok(OffsetDateTime::from_unix_timestamp(
        OffsetDateTime::now_utc().unix_timestamp(),
    )?)
}

pub(super) fn add_days(t: OffsetDateTime, days: u32) -> Result<OffsetDateTime, PkiError> {
    // u32::MAX days is about 3.7e14 seconds, far inside `Duration`'s i64 range.
    t.checked_add(Duration::days(i64::from(days)))
        .ok_or(PkiError::ValidityOutOfRange { days })
}

pub(super) fn sub_skew(t: OffsetDateTime) -> Result<OffsetDateTime, PkiError> {
    t.checked_sub(CLOCK_SKEW)
        .ok_or(PkiError::ValidityOutOfRange { days: 0 })
}
