//! The CSR checks that face the network (enrollment over HTTPS, renewal over MQTT). The
//! first byte chooses how the rest is used:
//! 0. PEM text as sent; 1. DER, wrapped in a PEM block here (so the DER parser is reached);
//! 2. a common name, put into a CSR signed here with a P-256 or Ed25519 key.
//!
//! Properties: an accepted CSR names the connected device and carries a P-256 point or an
//! Ed25519 key; the renewal check agrees with the plain check; a CSR signed for a valid id
//! is accepted with exactly that id and key, refused for any other device, and a CSR
//! whose name is not a valid device id is refused.
#![no_main]

use base64::Engine as _;
use libfuzzer_sys::fuzz_target;
use pifleet_csr::{CsrError, MAX_CSR_BYTES, check_csr, check_renewal, csr_proposed_id};
use pifleet_shared::DeviceId;
use pifleet_shared::signing::DeviceKeyAlg;
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

const DEVICE: &str = "pi-01";

thread_local! {
    static KEYS: [(KeyPair, DeviceKeyAlg); 2] = [
        (
            KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key generation"),
            DeviceKeyAlg::EcdsaP256,
        ),
        (
            KeyPair::generate_for(&rcgen::PKCS_ED25519).expect("key generation"),
            DeviceKeyAlg::Ed25519,
        ),
    ];
}

fn device() -> DeviceId {
    DeviceId::parse(DEVICE).expect("a valid id")
}

/// What holds for any input.
fn check_any(pem: &str) {
    let plain = check_csr(pem);
    let renewal = check_renewal(&device(), pem);
    if pem.len() > MAX_CSR_BYTES {
        assert!(matches!(plain, Err(CsrError::TooLarge { .. })));
    }
    match (&plain, &renewal) {
        (Ok(p), Ok(r)) => {
            assert_eq!(p, r);
            assert_eq!(r.id, device(), "accepted a CSR for another device");
        }
        (Ok(p), Err(CsrError::IdMismatch { cn, expected })) => {
            assert_ne!(p.id, device());
            assert_eq!((cn.as_str(), expected.as_str()), (p.id.as_str(), DEVICE));
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        (a, b) => panic!("plain check {a:?}, renewal check {b:?}"),
    }
    if let Ok(c) = &plain {
        match c.key.alg {
            DeviceKeyAlg::EcdsaP256 => {
                assert!(
                    c.key.raw.len() == 65 && c.key.raw[0] == 4,
                    "not an uncompressed point"
                )
            }
            DeviceKeyAlg::Ed25519 => assert_eq!(c.key.raw.len(), 32),
        }
        assert_eq!(csr_proposed_id(pem).ok().as_ref(), Some(&c.id));
    }
    if let Err(e) = &plain {
        assert!(e.is_refusal());
    }
}

fn signed_for(cn: &str, which: usize) {
    KEYS.with(|keys| {
        let (key, alg) = &keys[which % keys.len()];
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        let Ok(pem) = params.serialize_request(key).and_then(|r| r.pem()) else {
            return;
        };
        check_any(&pem);
        let result = check_csr(&pem);
        if pem.len() > MAX_CSR_BYTES {
            // A name long enough to push the CSR over the size limit.
            assert!(
                matches!(result, Err(CsrError::TooLarge { .. })),
                "{result:?}"
            );
            return;
        }
        match DeviceId::parse(cn) {
            Ok(id) => {
                let c = result.unwrap_or_else(|e| panic!("refused a CSR for {cn:?}: {e}"));
                assert_eq!(c.id, id);
                assert_eq!(c.key.alg, *alg);
                assert_eq!(c.key.raw, key.public_key_raw());
                assert!(check_renewal(&id, &pem).is_ok());
                let other = DeviceId::parse(if cn == DEVICE { "pi-02" } else { DEVICE })
                    .expect("a valid id");
                assert!(matches!(
                    check_renewal(&other, &pem),
                    Err(CsrError::IdMismatch { .. })
                ));
            }
            Err(_) => assert!(
                matches!(result, Err(CsrError::InvalidDeviceId { .. })),
                "{cn:?}: {result:?}"
            ),
        }
    });
}

fuzz_target!(|data: &[u8]| {
    let [mode, rest @ ..] = data else {
        return;
    };
    match mode % 3 {
        0 => {
            if let Ok(pem) = std::str::from_utf8(rest) {
                check_any(pem);
            }
        }
        1 => {
            let b64 = base64::engine::general_purpose::STANDARD.encode(rest);
            check_any(&format!(
                "-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n"
            ));
        }
        _ => signed_for(&String::from_utf8_lossy(rest), usize::from(*mode / 3)),
    }
});
