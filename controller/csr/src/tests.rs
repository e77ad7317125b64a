//! The renewal check; the full matrix of refusals is tested through the controller's CA
//! (controller/src/pki/tests.rs).

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

use super::*;

fn csr(alg: &'static rcgen::SignatureAlgorithm, cn: &str) -> (String, Vec<u8>) {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    let pem = params.serialize_request(&key).unwrap().pem().unwrap();
    (pem, key.public_key_raw().to_vec())
}

fn id(s: &str) -> DeviceId {
    DeviceId::parse(s).unwrap()
}

#[test]
fn a_renewal_csr_must_name_the_connected_device() {
    for (alg, want) in [
        (&rcgen::PKCS_ECDSA_P256_SHA256, DeviceKeyAlg::EcdsaP256),
        (&rcgen::PKCS_ED25519, DeviceKeyAlg::Ed25519),
    ] {
        let (pem, raw) = csr(alg, "pi-01");
        let checked = check_renewal(&id("pi-01"), &pem).unwrap();
        assert_eq!(checked.id, id("pi-01"));
        assert_eq!(checked.key, CsrKey { raw, alg: want });
        let err = check_renewal(&id("pi-02"), &pem).unwrap_err();
        assert!(
            matches!(&err, CsrError::IdMismatch { cn, expected } if cn == "pi-01" && expected == "pi-02"),
            "{err:?}"
        );
    }
}
