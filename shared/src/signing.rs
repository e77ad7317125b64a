//! All signing and verification in one place: commands (Ed25519, controller key) and
//! receipts (the device's own key: ECDSA P-256 or Ed25519). Key types redact their `Debug`.

use base64::Engine;
use ed25519_dalek::VerifyingKey;
use ring::rand::SystemRandom;
use ring::signature::{self as rsig, EcdsaKeyPair, Ed25519KeyPair, KeyPair};
use sha2::{Digest, Sha256};

use crate::command::{
    Action, CommandId, Envelope, KeyId, MAX_TTL_MS, Receipt, SignedCommand, SignedReceipt,
};
use crate::topic::Kind;

/// DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32 key bytes follow.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// Key handling errors.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("not a PEM {0} block")]
    Pem(&'static str),
    #[error("unsupported or malformed key")]
    Key,
    #[error("encoding: {0}")]
    Encode(#[from] postcard::Error),
    #[error("signing failed")]
    Sign,
}

pub(crate) fn pem_body(pem: &str, label: &'static str) -> Result<Vec<u8>, KeyError> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = pem.find(&begin).ok_or(KeyError::Pem(label))? + begin.len();
    let stop = pem[start..].find(&end).ok_or(KeyError::Pem(label))? + start;
    let b64: String = pem[start..stop].split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| KeyError::Pem(label))
}

/// The key id of an Ed25519 public key.
pub fn key_id(key: &VerifyingKey) -> KeyId {
    let d = Sha256::digest(key.as_bytes());
    let mut id = [0u8; 8];
    id.copy_from_slice(&d[..8]);
    KeyId(id)
}

/// A command-verification key pinned by a device, with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustedKey {
    pub id: KeyId,
    pub key: VerifyingKey,
}

impl TrustedKey {
    /// From an Ed25519 SPKI PEM ("PUBLIC KEY"), as written by the controller's `init`.
    pub fn from_pem(pem: &str) -> Result<Self, KeyError> {
        let der = pem_body(pem, "PUBLIC KEY")?;
        let raw = der
            .strip_prefix(&ED25519_SPKI_PREFIX[..])
            .and_then(|k| <[u8; 32]>::try_from(k).ok())
            .ok_or(KeyError::Key)?;
        Self::from_raw(&raw)
    }

    /// From the 32 bytes of an Ed25519 public key.
    pub fn from_raw(raw: &[u8; 32]) -> Result<Self, KeyError> {
        let key = VerifyingKey::from_bytes(raw).map_err(|_| KeyError::Key)?;
        Ok(Self {
            id: key_id(&key),
            key,
        })
    }

    /// Every "PUBLIC KEY" block of a PEM text, in order (a file of pinned release keys
    /// holds one block per key). Text outside the blocks is ignored.
    pub fn all_from_pem(pem: &str) -> Result<Vec<Self>, KeyError> {
        const BEGIN: &str = "-----BEGIN PUBLIC KEY-----";
        const END: &str = "-----END PUBLIC KEY-----";
        let mut keys = Vec::new();
        let mut rest = pem;
        while let Some(start) = rest.find(BEGIN) {
            let stop =
                rest[start..].find(END).ok_or(KeyError::Pem("PUBLIC KEY"))? + start + END.len();
            keys.push(Self::from_pem(&rest[start..stop])?);
            rest = &rest[stop..];
        }
        Ok(keys)
    }

    /// Whether `signature` is this key's Ed25519 signature of `message` (RFC 8032). Checked
    /// with ring, which the binaries link for TLS anyway, so a device carries one Ed25519
    /// verifier rather than two.
    pub fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        rsig::UnparsedPublicKey::new(&rsig::ED25519, self.key.as_bytes())
            .verify(message, signature)
            .is_ok()
    }

    /// The key as an SPKI PEM block ("PUBLIC KEY"), as [`TrustedKey::from_pem`] reads it.
    pub fn to_pem(&self) -> String {
        let mut der = ED25519_SPKI_PREFIX.to_vec();
        der.extend_from_slice(self.key.as_bytes());
        let b64 = base64_encode(&der);
        format!("-----BEGIN PUBLIC KEY-----\n{b64}\n-----END PUBLIC KEY-----\n")
    }
}

/// Standard base64 with padding (RFC 4648 §4) of a few bytes. The base64 crate's encoder
/// would cost the agent 2.5 KB for the one 44-byte key it writes; `pem_keys_roundtrip`
/// checks this against a PEM writer.
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            out.push(if i <= chunk.len() {
                char::from(ALPHABET[((n >> (18 - 6 * i)) & 0x3f) as usize])
            } else {
                '='
            });
        }
    }
    out
}

/// The controller's command-signing key. `Debug` does not show it.
pub struct CommandSigner {
    pair: Ed25519KeyPair,
    public: VerifyingKey,
    id: KeyId,
}

impl std::fmt::Debug for CommandSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandSigner")
            .field("id", &self.id)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl CommandSigner {
    fn from_pair(pair: Ed25519KeyPair) -> Result<Self, KeyError> {
        let raw = <[u8; 32]>::try_from(pair.public_key().as_ref()).map_err(|_| KeyError::Key)?;
        let public = VerifyingKey::from_bytes(&raw).map_err(|_| KeyError::Key)?;
        Ok(Self {
            id: key_id(&public),
            public,
            pair,
        })
    }

    /// From a 32-byte Ed25519 seed.
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, KeyError> {
        Self::from_pair(Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| KeyError::Key)?)
    }

    /// From a PKCS#8 PEM ("PRIVATE KEY") holding an Ed25519 key.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        let der = pem_body(pem, "PRIVATE KEY")?;
        Self::from_pair(
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|_| KeyError::Key)?,
        )
    }

    pub fn id(&self) -> KeyId {
        self.id
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.public
    }

    /// Signs the exact postcard bytes of `env`.
    pub fn sign(&self, env: &Envelope) -> Result<SignedCommand, KeyError> {
        let body = postcard::to_allocvec(env)?;
        let signature = self.pair.sign(&body).as_ref().to_vec();
        Ok(SignedCommand {
            key_id: self.id,
            body,
            signature,
        })
    }

    /// Signs `next` as the command key that follows this one (a link of the history
    /// devices follow, [`verify_chain`]).
    pub fn sign_link(&self, next: &VerifyingKey) -> Vec<u8> {
        self.pair
            .sign(&link_message(next.as_bytes()))
            .as_ref()
            .to_vec()
    }

    /// Signs arbitrary bytes (tests build malformed-but-signed commands with it).
    #[cfg(test)]
    fn sign_raw(&self, bytes: &[u8]) -> Vec<u8> {
        self.pair.sign(bytes).as_ref().to_vec()
    }
}

/// What a command key signs to name its successor: a fixed context, so the signature can
/// never be mistaken for one over a command, and the new key.
pub fn link_message(key: &[u8; 32]) -> Vec<u8> {
    let mut m = b"pifleet command key link v1\0".to_vec();
    m.extend_from_slice(key);
    m
}

/// The keys of a command key chain (`chain`, oldest first; `signatures`, 64 bytes per key
/// after the first, each by the key before it) that `trusted` reaches: from the newest
/// chain key it already trusts, every following key must be signed by the one before.
/// Returns that key and those after it, oldest first. A chain with no trusted key is
/// [`Rejection::UnknownKey`], a link that does not verify [`Rejection::BadSignature`]
/// (nothing of it is trusted then).
pub fn verify_chain(
    chain: &[[u8; 32]],
    signatures: &[u8],
    trusted: &[TrustedKey],
) -> Result<Vec<TrustedKey>, Rejection> {
    let anchor = chain
        .iter()
        .rposition(|k| trusted.iter().any(|t| t.key.as_bytes() == k))
        .ok_or(Rejection::UnknownKey)?;
    let mut keys = vec![TrustedKey::from_raw(&chain[anchor]).map_err(|_| Rejection::UnknownKey)?];
    for (i, raw) in chain.iter().enumerate().skip(anchor + 1) {
        let next = TrustedKey::from_raw(raw).map_err(|_| Rejection::BadSignature)?;
        let signature = signatures
            .get((i - 1) * 64..i * 64)
            .ok_or(Rejection::BadSignature)?;
        let signer = keys.last().ok_or(Rejection::UnknownKey)?;
        if !signer.verifies(&link_message(raw), signature) {
            return Err(Rejection::BadSignature);
        }
        keys.push(next);
    }
    Ok(keys)
}

/// Why a device refused a command. Each failure is reported as itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("command is larger than {0} bytes")]
    TooLarge(usize),
    #[error("signed by an unknown key")]
    UnknownKey,
    #[error("bad signature")]
    BadSignature,
    #[error("malformed command: {0}")]
    Malformed(String),
    #[error("command is for another device")]
    WrongDevice,
    #[error("command expired")]
    Expired,
    #[error("command lifetime exceeds the 7-day cap")]
    TtlTooLong,
    #[error("command already accepted before (replay)")]
    Replayed,
    #[error("{0}")]
    NotAllowed(String),
}

impl Rejection {
    /// A short stable label for metrics, logs and the database.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::TooLarge(_) => "oversize",
            Self::UnknownKey => "unknown_key",
            Self::BadSignature => "bad_signature",
            Self::Malformed(_) => "malformed",
            Self::WrongDevice => "wrong_device",
            Self::Expired => "expired",
            Self::TtlTooLong => "ttl_too_long",
            Self::Replayed => "replayed",
            Self::NotAllowed(_) => "not_allowed",
        }
    }
}

/// What the device knows when it checks a command.
#[derive(Debug, Clone, Copy)]
pub struct VerifyContext<'a> {
    /// Keys pinned at enrollment.
    pub keys: &'a [TrustedKey],
    /// This device's id.
    pub device: &'a str,
    /// max(local clock, trusted floor), Unix ms.
    pub now_ms: i64,
}

/// Verifies a command, in this order, before anything runs: size, key, signature over the
/// exact bytes, decoding, key id inside the body, target device, expiry (and TTL cap),
/// replay (`seen`), and the local allowlist (`allow`). Returns the envelope only if every
/// check passes.
pub fn verify_command(
    cmd: &SignedCommand,
    ctx: VerifyContext<'_>,
    seen: impl FnOnce(&CommandId) -> bool,
    allow: impl FnOnce(&Action) -> Result<(), String>,
) -> Result<Envelope, Rejection> {
    let limit = Kind::Cmd.max_payload();
    if cmd.body.len() > limit {
        return Err(Rejection::TooLarge(limit));
    }
    let trusted = ctx
        .keys
        .iter()
        .find(|k| k.id == cmd.key_id)
        .ok_or(Rejection::UnknownKey)?;
    if !trusted.verifies(&cmd.body, &cmd.signature) {
        return Err(Rejection::BadSignature);
    }
    let (env, rest): (Envelope, &[u8]) =
        postcard::take_from_bytes(&cmd.body).map_err(|e| Rejection::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(Rejection::Malformed("trailing bytes".into()));
    }
    if env.key_id != cmd.key_id {
        return Err(Rejection::BadSignature);
    }
    if env.device != ctx.device {
        return Err(Rejection::WrongDevice);
    }
    if env.expires_at_ms.saturating_sub(env.issued_at_ms) > MAX_TTL_MS
        || env.expires_at_ms < env.issued_at_ms
    {
        return Err(Rejection::TtlTooLong);
    }
    if env.expires_at_ms <= ctx.now_ms {
        return Err(Rejection::Expired);
    }
    if seen(&env.id) {
        return Err(Rejection::Replayed);
    }
    env.action
        .validate()
        .map_err(|e| Rejection::NotAllowed(e.to_string()))?;
    allow(&env.action).map_err(Rejection::NotAllowed)?;
    Ok(env)
}

/// A device's own key, for signing receipts. `Debug` does not show it.
pub enum DeviceSigner {
    EcdsaP256(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

impl std::fmt::Debug for DeviceSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let alg = match self {
            Self::EcdsaP256(_) => "ecdsa-p256",
            Self::Ed25519(_) => "ed25519",
        };
        write!(f, "DeviceSigner({alg}, <redacted>)")
    }
}

impl DeviceSigner {
    /// From the device's PKCS#8 PEM key (as `pifleet-agent enroll` writes it).
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        Self::from_pkcs8_der(&pem_body(pem, "PRIVATE KEY")?)
    }

    /// From a PKCS#8 DER key: ECDSA P-256 or Ed25519.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, KeyError> {
        let rng = SystemRandom::new();
        if let Ok(k) = EcdsaKeyPair::from_pkcs8(&rsig::ECDSA_P256_SHA256_ASN1_SIGNING, der, &rng) {
            return Ok(Self::EcdsaP256(k));
        }
        Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map(Self::Ed25519)
            .map_err(|_| KeyError::Key)
    }

    /// Signs the exact postcard bytes of a receipt.
    pub fn sign(&self, receipt: &Receipt) -> Result<SignedReceipt, KeyError> {
        let body = postcard::to_allocvec(receipt)?;
        let signature = match self {
            Self::EcdsaP256(k) => k
                .sign(&SystemRandom::new(), &body)
                .map_err(|_| KeyError::Sign)?
                .as_ref()
                .to_vec(),
            Self::Ed25519(k) => k.sign(&body).as_ref().to_vec(),
        };
        Ok(SignedReceipt { body, signature })
    }
}

/// Algorithm of a device public key (from its certificate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKeyAlg {
    /// Uncompressed SEC1 point, 65 bytes.
    EcdsaP256,
    /// 32 bytes.
    Ed25519,
}

impl DeviceKeyAlg {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::EcdsaP256 => "ecdsa-p256",
            Self::Ed25519 => "ed25519",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "ecdsa-p256" => Some(Self::EcdsaP256),
            "ed25519" => Some(Self::Ed25519),
            _ => None,
        }
    }
}

/// Why a receipt was refused by the controller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReceiptError {
    #[error("receipt signature does not verify against the device certificate")]
    BadSignature,
    #[error("malformed receipt: {0}")]
    Malformed(String),
}

/// Verifies a receipt against the device's public key and decodes it.
pub fn verify_receipt(
    signed: &SignedReceipt,
    alg: DeviceKeyAlg,
    public_key: &[u8],
) -> Result<Receipt, ReceiptError> {
    let algorithm: &dyn rsig::VerificationAlgorithm = match alg {
        DeviceKeyAlg::EcdsaP256 => &rsig::ECDSA_P256_SHA256_ASN1,
        DeviceKeyAlg::Ed25519 => &rsig::ED25519,
    };
    rsig::UnparsedPublicKey::new(algorithm, public_key)
        .verify(&signed.body, &signed.signature)
        .map_err(|_| ReceiptError::BadSignature)?;
    let (r, rest): (Receipt, &[u8]) = postcard::take_from_bytes(&signed.body)
        .map_err(|e| ReceiptError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ReceiptError::Malformed("trailing bytes".into()));
    }
    Ok(r)
}

#[cfg(test)]
mod tests;
