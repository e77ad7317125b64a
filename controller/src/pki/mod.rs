//! The controller's certificate authority: the CA and what it signs ([`ca`]), checks of the
//! CSRs devices send ([`csr`]), the identity read back from a verified client certificate
//! ([`identity`]), the listeners' TLS configuration ([`tls`]), revocation ([`revoke_device`])
//! the CRL derived from the database ([`crl`]) and renewal over MQTT ([`renew`]). Enrollment, which uses all of this, is
//! `crate::enroll`.

use pifleet_shared::InvalidDeviceId;
use x509_parser::error::X509Error;

mod ca;
mod chain;
#[cfg(test)]
mod chain_tests;
pub mod crl;
mod csr;
mod identity;
pub mod renew;
#[cfg(test)]
mod renew_tests;
mod revoke;
pub mod rotate_ca;
pub mod server_cert;
#[cfg(test)]
mod tests;
pub mod tls;

pub use ca::{Ca, IssuedCert, Revoked};
pub use chain::{ChainError, anchor_fingerprint, anchor_fingerprint_bytes};
pub use csr::{CsrError, MAX_CSR_BYTES, csr_id_and_key, csr_proposed_id};
pub use identity::{
    device_identity, device_public_key, fingerprint_bytes, fingerprint_pem, presented_certificate,
};
pub use revoke::{LoggedRevocation, RevokeError, read_log, revoke_device};
pub use server_cert::ServerCert;

/// Longest attacker-supplied text (a common name, a serial) we echo back in an error message.
const MAX_ECHOED_CN: usize = 64;

/// Errors from CA, server-certificate, CRL and certificate-inspection operations.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation or signing failed")]
    Rcgen(#[from] rcgen::Error),
    #[error("PEM decoding failed")]
    Pem(#[from] rustls_pki_types::pem::Error),
    #[error("could not parse the X.509 certificate")]
    X509(#[from] x509_parser::nom::Err<X509Error>),
    #[error("could not read the certificate's extensions")]
    Extensions(#[source] X509Error),
    #[error(transparent)]
    Chain(#[from] ChainError),
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
