//! CSR checks live in the pure `pifleet-csr` crate (so they can be fuzzed on their own); this
//! is the controller's side: the checked key as rcgen's input for the certificate.

pub use pifleet_csr::{
    CnProblem, CsrError, CsrKey, MAX_CSR_BYTES, check_csr, check_key, check_renewal,
    csr_id_and_key, csr_proposed_id, single_common_name,
};
use pifleet_shared::signing::DeviceKeyAlg;
use rcgen::{PublicKeyData, SignatureAlgorithm};

/// A checked CSR key, as the public key rcgen puts into a certificate.
pub(super) struct RcgenKey<'a>(pub(super) &'a CsrKey);

impl PublicKeyData for RcgenKey<'_> {
    fn der_bytes(&self) -> &[u8] {
        &self.0.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        match self.0.alg {
            DeviceKeyAlg::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            DeviceKeyAlg::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}
