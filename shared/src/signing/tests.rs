use super::*;
use crate::command::{Outcome, Output, ServiceOp};
use proptest::prelude::*;

const NOW: i64 = 1_800_000_000_000;

fn signer(seed: u8) -> CommandSigner {
    CommandSigner::from_seed(&[seed; 32]).unwrap()
}

fn trusted(s: &CommandSigner) -> TrustedKey {
    TrustedKey {
        id: s.id(),
        key: s.verifying_key(),
    }
}

fn env(s: &CommandSigner, action: Action) -> Envelope {
    Envelope {
        id: CommandId([7; 16]),
        device: "pi-a".into(),
        issued_at_ms: NOW - 1_000,
        expires_at_ms: NOW + 60_000,
        key_id: s.id(),
        action,
    }
}

fn ctx(keys: &[TrustedKey]) -> VerifyContext<'_> {
    VerifyContext {
        keys,
        device: "pi-a",
        now_ms: NOW,
    }
}

fn allow_all(_: &Action) -> Result<(), String> {
    Ok(())
}

#[test]
fn good_command_verifies() {
    let s = signer(1);
    let keys = [trusted(&s)];
    let e = env(&s, Action::Ping);
    let signed = s.sign(&e).unwrap();
    assert_eq!(
        verify_command(&signed, ctx(&keys), |_| false, allow_all),
        Ok(e)
    );
}

#[test]
fn each_failure_is_reported_as_itself() {
    let s = signer(1);
    let other = signer(2);
    let keys = [trusted(&s)];
    let good = s.sign(&env(&s, Action::Ping)).unwrap();

    let mut forged = good.clone();
    forged.signature = other.sign(&env(&s, Action::Ping)).unwrap().signature;

    let unknown = other.sign(&env(&other, Action::Ping)).unwrap();

    let mut altered = good.clone();
    let last = altered.body.len() - 1;
    altered.body[last] ^= 1;

    let mut wrong_dev = env(&s, Action::Ping);
    wrong_dev.device = "pi-b".into();
    let mut expired = env(&s, Action::Ping);
    expired.expires_at_ms = NOW - 1;
    let mut too_long = env(&s, Action::Ping);
    too_long.expires_at_ms = too_long.issued_at_ms + MAX_TTL_MS + 1;
    let mut inner_key = env(&s, Action::Ping);
    inner_key.key_id = KeyId([9; 8]);
    let mut short_sig = good.clone();
    short_sig.signature.truncate(10);
    let bad_name = s
        .sign(&env(
            &s,
            Action::Service {
                unit: "a;b".into(),
                op: ServiceOp::Start,
            },
        ))
        .unwrap();
    let mut huge = good.clone();
    huge.body = vec![0; Kind::Cmd.max_payload() + 1];
    // A signed body that is not an envelope.
    let garbage = SignedCommand {
        key_id: s.id(),
        body: vec![1, 2, 3],
        signature: s.sign_raw(&[1, 2, 3]),
    };

    let cases: Vec<(&str, SignedCommand, Rejection)> = vec![
        ("forged", forged, Rejection::BadSignature),
        ("unknown key", unknown, Rejection::UnknownKey),
        ("altered body", altered, Rejection::BadSignature),
        ("short signature", short_sig, Rejection::BadSignature),
        (
            "wrong device",
            s.sign(&wrong_dev).unwrap(),
            Rejection::WrongDevice,
        ),
        ("expired", s.sign(&expired).unwrap(), Rejection::Expired),
        ("ttl", s.sign(&too_long).unwrap(), Rejection::TtlTooLong),
        (
            "inner key id",
            s.sign(&inner_key).unwrap(),
            Rejection::BadSignature,
        ),
        (
            "oversize",
            huge,
            Rejection::TooLarge(Kind::Cmd.max_payload()),
        ),
    ];
    for (name, cmd, want) in cases {
        assert_eq!(
            verify_command(&cmd, ctx(&keys), |_| false, allow_all),
            Err(want),
            "{name}"
        );
    }
    assert!(matches!(
        verify_command(&garbage, ctx(&keys), |_| false, allow_all),
        Err(Rejection::Malformed(_))
    ));
    assert!(matches!(
        verify_command(&bad_name, ctx(&keys), |_| false, allow_all),
        Err(Rejection::NotAllowed(_))
    ));
    assert_eq!(
        verify_command(&good, ctx(&keys), |_| true, allow_all),
        Err(Rejection::Replayed)
    );
    assert_eq!(
        verify_command(
            &good,
            ctx(&keys),
            |_| false,
            |_| Err("ping disabled".into())
        ),
        Err(Rejection::NotAllowed("ping disabled".into()))
    );
}

#[test]
fn checks_run_in_order_and_stop_early() {
    // A replayed command with a bad signature is reported as a bad signature, and the
    // replay journal is never consulted for it.
    let s = signer(1);
    let keys = [trusted(&s)];
    let mut cmd = s.sign(&env(&s, Action::Reboot)).unwrap();
    cmd.signature[0] ^= 1;
    let r = verify_command(
        &cmd,
        ctx(&keys),
        |_| panic!("journal consulted"),
        |_| panic!("allowlist consulted"),
    );
    assert_eq!(r, Err(Rejection::BadSignature));
}

#[test]
fn pem_keys_roundtrip() {
    use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
    use ed25519_dalek::pkcs8::{EncodePrivateKey, EncodePublicKey};
    let sk = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let priv_pem = sk.to_pkcs8_pem(LineEnding::LF).unwrap();
    let pub_pem = sk
        .verifying_key()
        .to_public_key_pem(LineEnding::LF)
        .unwrap();
    let signer = CommandSigner::from_pkcs8_pem(&priv_pem).unwrap();
    let trusted = TrustedKey::from_pem(&pub_pem).unwrap();
    assert_eq!(signer.id(), trusted.id);
    assert_eq!(trusted.to_pem(), pub_pem);
    assert!(!format!("{signer:?}").contains("05050505"));
    assert!(TrustedKey::from_pem("garbage").is_err());
}

fn receipt() -> Receipt {
    Receipt {
        command: CommandId([1; 16]),
        device: "pi-a".into(),
        outcome: Outcome::Succeeded,
        exit_code: Some(0),
        duration_ms: 12,
        stdout: Output {
            data: b"ok".to_vec(),
            len: 2,
            sha256: Sha256::digest(b"ok").to_vec(),
        },
        stderr: Output::default(),
        at_ms: NOW,
    }
}

#[test]
fn receipts_verify_only_with_the_device_key() {
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&rsig::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let dev = DeviceSigner::from_pkcs8_der(pkcs8.as_ref()).unwrap();
    let DeviceSigner::EcdsaP256(kp) = &dev else {
        panic!("expected P-256")
    };
    let public = kp.public_key().as_ref().to_vec();
    let signed = dev.sign(&receipt()).unwrap();
    assert_eq!(
        verify_receipt(&signed, DeviceKeyAlg::EcdsaP256, &public),
        Ok(receipt())
    );
    let mut tampered = signed.clone();
    tampered.body[3] ^= 1;
    assert_eq!(
        verify_receipt(&tampered, DeviceKeyAlg::EcdsaP256, &public),
        Err(ReceiptError::BadSignature)
    );
    let other = EcdsaKeyPair::generate_pkcs8(&rsig::ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let other =
        EcdsaKeyPair::from_pkcs8(&rsig::ECDSA_P256_SHA256_ASN1_SIGNING, other.as_ref(), &rng)
            .unwrap();
    assert_eq!(
        verify_receipt(
            &signed,
            DeviceKeyAlg::EcdsaP256,
            other.public_key().as_ref()
        ),
        Err(ReceiptError::BadSignature)
    );

    let ed = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let dev = DeviceSigner::from_pkcs8_der(ed.as_ref()).unwrap();
    let DeviceSigner::Ed25519(kp) = &dev else {
        panic!("expected Ed25519")
    };
    let public = kp.public_key().as_ref().to_vec();
    let signed = dev.sign(&receipt()).unwrap();
    assert_eq!(
        verify_receipt(&signed, DeviceKeyAlg::Ed25519, &public),
        Ok(receipt())
    );
}

proptest! {
    /// Any change to a signed envelope's bytes (body or signature) fails verification.
    #[test]
    fn modified_envelope_never_verifies(
        pos in any::<prop::sample::Index>(),
        flip in 1u8..=255,
        in_sig in any::<bool>(),
        seconds in 1u32..100_000,
    ) {
        let s = signer(3);
        let keys = [trusted(&s)];
        let good = s.sign(&env(&s, Action::SetInterval { seconds })).unwrap();
        let mut bad = good.clone();
        if in_sig {
            let i = pos.index(bad.signature.len());
            bad.signature[i] ^= flip;
        } else {
            let i = pos.index(bad.body.len());
            bad.body[i] ^= flip;
        }
        prop_assert!(verify_command(&bad, ctx(&keys), |_| false, allow_all).is_err());
        prop_assert!(verify_command(&good, ctx(&keys), |_| false, allow_all).is_ok());
    }

    /// Garbage never panics the verifier.
    #[test]
    fn garbage_never_panics(body in prop::collection::vec(any::<u8>(), 0..512), sig in prop::collection::vec(any::<u8>(), 0..80)) {
        let s = signer(4);
        let keys = [trusted(&s)];
        let cmd = SignedCommand { key_id: s.id(), body, signature: sig };
        prop_assert!(verify_command(&cmd, ctx(&keys), |_| false, allow_all).is_err());
    }
}

#[test]
fn base64_matches_the_rfc_vectors() {
    let table = [
        ("", ""),
        ("f", "Zg=="),
        ("fo", "Zm8="),
        ("foo", "Zm9v"),
        ("foob", "Zm9vYg=="),
        ("fooba", "Zm9vYmE="),
        ("foobar", "Zm9vYmFy"),
    ];
    for (plain, encoded) in table {
        assert_eq!(base64_encode(plain.as_bytes()), encoded, "{plain}");
    }
    let all: Vec<u8> = (0..=255).collect();
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(base64_encode(&all))
            .unwrap(),
        all
    );
}

#[test]
fn release_key_files_hold_several_pem_blocks() {
    let a = trusted(&signer(1));
    let b = trusted(&signer(2));
    let file = format!("# pinned release keys\n{}{}", a.to_pem(), b.to_pem());
    assert_eq!(TrustedKey::all_from_pem(&file).unwrap(), [a.clone(), b]);
    assert_eq!(TrustedKey::all_from_pem("").unwrap(), []);
    assert_eq!(
        TrustedKey::from_raw(a.key.as_bytes()).unwrap(),
        TrustedKey::from_pem(&a.to_pem()).unwrap()
    );
    let cut = a.to_pem().replace("-----END PUBLIC KEY-----", "");
    assert!(TrustedKey::all_from_pem(&cut).is_err());
    let damaged = a.to_pem().replacen("MCow", "MCox", 1);
    assert!(TrustedKey::all_from_pem(&damaged).is_err());
}

#[test]
fn a_key_chain_is_followed_from_the_newest_trusted_key_only() {
    let (k0, k1, k2) = (signer(10), signer(11), signer(12));
    let chain = [
        k0.verifying_key().to_bytes(),
        k1.verifying_key().to_bytes(),
        k2.verifying_key().to_bytes(),
    ];
    let mut sigs = k0.sign_link(&k1.verifying_key());
    sigs.extend(k1.sign_link(&k2.verifying_key()));
    let all = [trusted(&k0), trusted(&k1), trusted(&k2)];
    // A device offline for two rotations follows both links; one that learned k1 only
    // the second; one that trusts k2 already has nothing to follow.
    assert_eq!(verify_chain(&chain, &sigs, &all[..1]), Ok(all.to_vec()));
    assert_eq!(
        verify_chain(&chain, &sigs, &all[1..2]),
        Ok(all[1..].to_vec())
    );
    assert_eq!(
        verify_chain(&chain, &sigs, &all[2..]),
        Ok(all[2..].to_vec())
    );

    // No key the device trusts: refused.
    let stranger = signer(13);
    assert_eq!(
        verify_chain(&chain, &sigs, &[trusted(&stranger)]),
        Err(Rejection::UnknownKey)
    );
    // A forged link (signed by a key the device does not trust) breaks the chain.
    let mut forged = sigs.clone();
    forged[64..].copy_from_slice(&stranger.sign_link(&k2.verifying_key()));
    assert_eq!(
        verify_chain(&chain, &forged, &all[..1]),
        Err(Rejection::BadSignature)
    );
    // So does a key swapped after signing, and a missing signature.
    let mut swapped = chain;
    swapped[1] = stranger.verifying_key().to_bytes();
    assert_eq!(
        verify_chain(&swapped, &sigs, &all[..1]),
        Err(Rejection::BadSignature)
    );
    assert_eq!(
        verify_chain(&chain, &sigs[..64], &all[..1]),
        Err(Rejection::BadSignature)
    );
    // A command's signature is not a link signature: same key, other message.
    let cmd = k0.sign(&env(&k0, Action::Ping)).unwrap();
    let mut relabeled = sigs.clone();
    relabeled[..64].copy_from_slice(&cmd.signature);
    assert_eq!(
        verify_chain(&chain, &relabeled, &all[..1]),
        Err(Rejection::BadSignature)
    );
}

#[test]
fn a_key_chain_announcement_is_bounded() {
    let (k0, k1) = (signer(10), signer(11));
    let keys = vec![k0.verifying_key().to_bytes(), k1.verifying_key().to_bytes()];
    let sig = k0.sign_link(&k1.verifying_key());
    let action = |keys: Vec<[u8; 32]>, signatures: Vec<u8>, keep: u8| Action::TrustCommandKeys {
        keys,
        signatures,
        keep,
    };
    assert!(action(keys.clone(), sig.clone(), 2).validate().is_ok());
    assert!(action(keys.clone(), sig.clone(), 1).validate().is_ok());
    assert!(action(keys[..1].to_vec(), vec![], 1).validate().is_err());
    assert!(action(keys.clone(), sig.clone(), 0).validate().is_err());
    assert!(action(keys.clone(), sig.clone(), 3).validate().is_err());
    assert!(
        action(keys.clone(), sig[..63].to_vec(), 1)
            .validate()
            .is_err()
    );
    let n = crate::command::MAX_KEY_LINKS + 2;
    assert!(
        action(vec![keys[0]; n], sig.repeat(n - 1), 1)
            .validate()
            .is_err()
    );
}
