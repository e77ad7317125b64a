//! Command verification on the device. Three ways in, chosen by the first byte:
//! 0. any bytes as the `down/cmd` payload: never accepted without a valid signature;
//! 1. any bytes as a body the trusted key signed: accepted only as exactly what was signed,
//!    for this device, fresh, within the TTL cap, not replayed and allowed; a flipped bit
//!    in the body or signature, or another key, is refused as such;
//! 2. any envelope (postcard from the input, some fields steered valid by the second byte)
//!    signed by the controller's signer: accepted exactly when every documented check
//!    passes, and then equal to the envelope that was signed;
//! 3. a command key chain (keys from fixed seeds, links signed here, some trusted, maybe a
//!    flipped or missing signature byte): the keys proved are exactly those from the newest
//!    trusted one on, unless a link after it does not verify.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use pifleet_shared::codec;
use pifleet_shared::command::{Action, Envelope, MAX_TTL_MS, SignedCommand};
use pifleet_shared::signing::{
    CommandSigner, Rejection, TrustedKey, VerifyContext, verify_chain, verify_command,
};
use pifleet_shared::topic::Kind;
use ring::signature::Ed25519KeyPair;

const DEVICE: &str = "pi-01";
const NOW_MS: i64 = 1_700_000_000_000;
const SEED: [u8; 32] = [7; 32];
const OTHER_SEED: [u8; 32] = [9; 32];

struct Keys {
    signer: CommandSigner,
    pair: Ed25519KeyPair,
    other: Ed25519KeyPair,
    other_signer: CommandSigner,
    trusted: Vec<TrustedKey>,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let signer = CommandSigner::from_seed(&SEED).expect("fixed seed");
        let trusted =
            vec![TrustedKey::from_raw(signer.verifying_key().as_bytes()).expect("a valid key")];
        Keys {
            pair: Ed25519KeyPair::from_seed_unchecked(&SEED).expect("fixed seed"),
            other: Ed25519KeyPair::from_seed_unchecked(&OTHER_SEED).expect("fixed seed"),
            other_signer: CommandSigner::from_seed(&OTHER_SEED).expect("fixed seed"),
            signer,
            trusted,
        }
    })
}

fn ctx(k: &Keys) -> VerifyContext<'_> {
    VerifyContext {
        keys: &k.trusted,
        device: DEVICE,
        now_ms: NOW_MS,
    }
}

/// Verifies with a replay set that says `seen` and an allowlist that says `allowed`.
fn verify(cmd: &SignedCommand, seen: bool, allowed: bool) -> Result<Envelope, Rejection> {
    verify_command(
        cmd,
        ctx(keys()),
        |_| seen,
        |_: &Action| {
            if allowed {
                Ok(())
            } else {
                Err("not on the allowlist".into())
            }
        },
    )
}

/// What every accepted command satisfies, whatever path it took.
fn assert_acceptable(env: &Envelope, cmd: &SignedCommand, seen: bool, allowed: bool) {
    let k = keys();
    assert!(
        k.trusted[0].verifies(&cmd.body, &cmd.signature),
        "accepted without a valid signature"
    );
    assert_eq!(cmd.key_id, k.signer.id());
    assert_eq!(env.key_id, cmd.key_id);
    assert_eq!(env.device, DEVICE);
    assert!(env.expires_at_ms > NOW_MS, "accepted an expired command");
    assert!(env.expires_at_ms >= env.issued_at_ms);
    assert!(env.expires_at_ms - env.issued_at_ms <= MAX_TTL_MS);
    assert!(!seen, "accepted a replay");
    assert!(allowed, "accepted a command the allowlist refused");
    assert!(env.action.validate().is_ok());
    let signed: Envelope = postcard::from_bytes(&cmd.body).expect("the signed body decodes");
    assert_eq!(&signed, env, "accepted fields differ from the signed ones");
}

fn raw(payload: &[u8], seen: bool, allowed: bool) {
    let Ok(cmd) = codec::decode::<SignedCommand>(Kind::Cmd, payload) else {
        return;
    };
    if let Ok(env) = verify(&cmd, seen, allowed) {
        assert_acceptable(&env, &cmd, seen, allowed);
    }
}

fn signed_body(body: &[u8], flags: u8, at: usize) {
    let k = keys();
    let (seen, allowed) = (flags & 1 != 0, flags & 2 != 0);
    let cmd = SignedCommand {
        key_id: k.signer.id(),
        body: body.to_vec(),
        signature: k.pair.sign(body).as_ref().to_vec(),
    };
    let result = verify(&cmd, seen, allowed);
    if let Ok(env) = &result {
        assert_acceptable(env, &cmd, seen, allowed);
    }
    if body.len() > Kind::Cmd.max_payload() {
        assert!(matches!(result, Err(Rejection::TooLarge(_))));
        return;
    }
    // Any change to what was signed is a bad signature, before anything is decoded.
    if !body.is_empty() {
        let mut tampered = cmd.clone();
        tampered.body[at % body.len()] ^= 1 << (flags >> 5);
        assert_eq!(
            verify(&tampered, seen, allowed),
            Err(Rejection::BadSignature)
        );
    }
    let mut tampered = cmd.clone();
    tampered.signature[at % 64] ^= 1 << (flags >> 5);
    assert_eq!(
        verify(&tampered, seen, allowed),
        Err(Rejection::BadSignature)
    );
    // Signed by another key: unknown under its own id, a bad signature under ours.
    let forged = SignedCommand {
        signature: k.other.sign(body).as_ref().to_vec(),
        ..cmd.clone()
    };
    assert_eq!(verify(&forged, seen, allowed), Err(Rejection::BadSignature));
    let unknown = SignedCommand {
        key_id: k.other_signer.id(),
        ..forged
    };
    assert_eq!(verify(&unknown, seen, allowed), Err(Rejection::UnknownKey));
}

fn envelope(bytes: &[u8], flags: u8, at: usize) {
    let Ok((mut env, _)) = postcard::take_from_bytes::<Envelope>(bytes) else {
        return;
    };
    let k = keys();
    let (seen, allowed) = (flags & 1 != 0, flags & 2 != 0);
    // Steer towards acceptance, so the checks after the signature get exercised.
    if flags & 4 != 0 {
        env.device = DEVICE.into();
    }
    if flags & 8 != 0 {
        env.key_id = k.signer.id();
    }
    if flags & 16 != 0 {
        env.issued_at_ms = NOW_MS - (at as i64 % 1000);
        env.expires_at_ms = NOW_MS + (at as i64 % (MAX_TTL_MS / 1000)) * 1000 - 500;
    }
    let signer = if flags & 32 != 0 {
        &k.other_signer
    } else {
        &k.signer
    };
    let cmd = signer.sign(&env).expect("an envelope encodes");
    let result = verify(&cmd, seen, allowed);
    let expected = cmd.body.len() <= Kind::Cmd.max_payload()
        && cmd.key_id == k.signer.id()
        && env.key_id == cmd.key_id
        && env.device == DEVICE
        && env.expires_at_ms >= env.issued_at_ms
        && env.expires_at_ms.saturating_sub(env.issued_at_ms) <= MAX_TTL_MS
        && env.expires_at_ms > NOW_MS
        && !seen
        && env.action.validate().is_ok()
        && allowed;
    match result {
        Ok(got) => {
            assert!(expected, "accepted {env:?}");
            assert_eq!(got, env, "verified fields differ from what was signed");
            assert_acceptable(&got, &cmd, seen, allowed);
        }
        Err(e) => assert!(!expected, "refused a valid command ({e}): {env:?}"),
    }
}

fn chain(data: &[u8]) {
    let [len, trust, tamper, at, cut, ..] = data else {
        return;
    };
    let n = 1 + usize::from(*len % 6);
    let signers: Vec<CommandSigner> = (0..n)
        .map(|i| CommandSigner::from_seed(&[10 + i as u8; 32]).expect("fixed seed"))
        .collect();
    let keys: Vec<[u8; 32]> = signers
        .iter()
        .map(|s| s.verifying_key().to_bytes())
        .collect();
    let mut signatures: Vec<u8> = signers
        .windows(2)
        .flat_map(|w| w[0].sign_link(&w[1].verifying_key()))
        .collect();
    let trusted: Vec<TrustedKey> = (0..n)
        .filter(|i| trust & (1 << i) != 0)
        .map(|i| TrustedKey::from_raw(&keys[i]).expect("a valid key"))
        .collect();
    // Link i (key i signed by key i - 1) is signature bytes (i - 1) * 64 .. i * 64: it is
    // broken when one of its bytes is flipped or missing.
    let mut flipped = None;
    if tamper & 1 != 0 && !signatures.is_empty() {
        let p = usize::from(*at) % signatures.len();
        signatures[p] ^= 1 << (tamper >> 5);
        flipped = Some(p / 64 + 1);
    }
    if tamper & 2 != 0 && !signatures.is_empty() {
        signatures.truncate(usize::from(*cut) % signatures.len());
    }
    let broken = |i: usize| flipped == Some(i) || i * 64 > signatures.len();
    let anchor = (0..n).rev().find(|i| trust & (1 << i) != 0);
    let result = verify_chain(&keys, &signatures, &trusted);
    match anchor {
        None => assert_eq!(result, Err(Rejection::UnknownKey)),
        Some(a) if (a + 1..n).any(broken) => {
            assert_eq!(result, Err(Rejection::BadSignature))
        }
        Some(a) => {
            let proved: Vec<[u8; 32]> = result
                .expect("an intact chain from a trusted key")
                .iter()
                .map(|k| k.key.to_bytes())
                .collect();
            assert_eq!(proved, keys[a..].to_vec());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [mode, flags, at, rest @ ..] = data else {
        return;
    };
    let at = usize::from(*at) * 7919;
    match mode % 4 {
        0 => raw(rest, flags & 1 != 0, flags & 2 != 0),
        1 => signed_body(rest, *flags, at),
        2 => envelope(rest, *flags, at),
        _ => chain(&data[1..]),
    }
});
