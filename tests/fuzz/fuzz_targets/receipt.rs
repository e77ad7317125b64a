//! Receipt verification on the controller. Three ways in, chosen by the first byte:
//! 0. any bytes as the `up/result` payload, checked against each device key: never
//!    accepted unless the signature really verifies, and then as exactly the signed body;
//! 1. any bytes as a body a device key signed: accepted by that key exactly when the body
//!    is one whole receipt, refused by another device's key, under the other algorithm,
//!    and after any flipped bit;
//! 2. any receipt (postcard from the input) signed by the agent's own signer: verifies to
//!    that same receipt.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pifleet_shared::codec;
use pifleet_shared::command::{Receipt, SignedReceipt};
use pifleet_shared::signing::{DeviceKeyAlg, DeviceSigner, ReceiptError, verify_receipt};
use pifleet_shared::topic::Kind;
use ring::rand::SystemRandom;
use ring::signature::{
    self as rsig, ECDSA_P256_SHA256_ASN1_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair,
};

/// One device key: its signer and what its certificate says.
struct Device {
    signer: DeviceSigner,
    alg: DeviceKeyAlg,
    public: Vec<u8>,
}

struct Keys {
    devices: Vec<Device>,
    rng: SystemRandom,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let rng = SystemRandom::new();
        let mut devices = Vec::new();
        for _ in 0..2 {
            let der = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
                .expect("key generation");
            let pair =
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der.as_ref(), &rng)
                    .expect("a generated key");
            devices.push(Device {
                public: pair.public_key().as_ref().to_vec(),
                signer: DeviceSigner::from_pkcs8_der(der.as_ref()).expect("a generated key"),
                alg: DeviceKeyAlg::EcdsaP256,
            });
            let der = Ed25519KeyPair::generate_pkcs8(&rng).expect("key generation");
            let pair = Ed25519KeyPair::from_pkcs8(der.as_ref()).expect("a generated key");
            devices.push(Device {
                public: pair.public_key().as_ref().to_vec(),
                signer: DeviceSigner::from_pkcs8_der(der.as_ref()).expect("a generated key"),
                alg: DeviceKeyAlg::Ed25519,
            });
        }
        Keys { devices, rng }
    })
}

fn sign_raw(d: &Device, body: &[u8]) -> Vec<u8> {
    match &d.signer {
        DeviceSigner::EcdsaP256(k) => k
            .sign(&keys().rng, body)
            .expect("ECDSA signing")
            .as_ref()
            .to_vec(),
        DeviceSigner::Ed25519(k) => k.sign(body).as_ref().to_vec(),
    }
}

fn whole_receipt(body: &[u8]) -> Option<Receipt> {
    match postcard::take_from_bytes::<Receipt>(body) {
        Ok((r, [])) => Some(r),
        _ => None,
    }
}

fn raw(payload: &[u8]) {
    let Ok(signed) = codec::decode::<SignedReceipt>(Kind::Result, payload) else {
        return;
    };
    for d in &keys().devices {
        if let Ok(r) = verify_receipt(&signed, d.alg, &d.public) {
            let algorithm: &dyn rsig::VerificationAlgorithm = match d.alg {
                DeviceKeyAlg::EcdsaP256 => &rsig::ECDSA_P256_SHA256_ASN1,
                DeviceKeyAlg::Ed25519 => &rsig::ED25519,
            };
            assert!(
                rsig::UnparsedPublicKey::new(algorithm, &d.public)
                    .verify(&signed.body, &signed.signature)
                    .is_ok(),
                "accepted a receipt whose signature does not verify"
            );
            assert_eq!(Some(r), whole_receipt(&signed.body));
        }
    }
}

fn signed_body(which: usize, flags: u8, at: usize, body: &[u8]) {
    let devices = &keys().devices;
    let d = &devices[which % devices.len()];
    let signed = SignedReceipt {
        body: body.to_vec(),
        signature: sign_raw(d, body),
    };
    match (
        verify_receipt(&signed, d.alg, &d.public),
        whole_receipt(body),
    ) {
        (Ok(got), Some(want)) => assert_eq!(got, want),
        (Err(ReceiptError::Malformed(_)), None) => {}
        (got, want) => panic!("verified {got:?}, the body holds {want:?}"),
    }
    for other in devices.iter().filter(|o| o.public != d.public) {
        assert_eq!(
            verify_receipt(&signed, other.alg, &other.public),
            Err(ReceiptError::BadSignature)
        );
    }
    let swapped = match d.alg {
        DeviceKeyAlg::EcdsaP256 => DeviceKeyAlg::Ed25519,
        DeviceKeyAlg::Ed25519 => DeviceKeyAlg::EcdsaP256,
    };
    assert_eq!(
        verify_receipt(&signed, swapped, &d.public),
        Err(ReceiptError::BadSignature)
    );
    let bit = 1u8 << (flags & 7);
    if !body.is_empty() {
        let mut tampered = signed.clone();
        tampered.body[at % body.len()] ^= bit;
        assert_eq!(
            verify_receipt(&tampered, d.alg, &d.public),
            Err(ReceiptError::BadSignature)
        );
    }
    let mut tampered = signed.clone();
    let n = tampered.signature.len();
    tampered.signature[at % n] ^= bit;
    assert_eq!(
        verify_receipt(&tampered, d.alg, &d.public),
        Err(ReceiptError::BadSignature)
    );
}

fn receipt(which: usize, bytes: &[u8]) {
    let Ok((r, _)) = postcard::take_from_bytes::<Receipt>(bytes) else {
        return;
    };
    let devices = &keys().devices;
    let d = &devices[which % devices.len()];
    let signed = d.signer.sign(&r).expect("a receipt encodes and signs");
    assert_eq!(verify_receipt(&signed, d.alg, &d.public), Ok(r));
}

fuzz_target!(|data: &[u8]| {
    let [mode, flags, at, rest @ ..] = data else {
        return;
    };
    let which = usize::from(*flags >> 3);
    let at = usize::from(*at) * 7919;
    match mode % 3 {
        0 => raw(rest),
        1 => signed_body(which, *flags, at, rest),
        _ => receipt(which, rest),
    }
});
