//! Signing manifests with a release key and verifying them against pinned release keys.
//! The signature covers a context string and the exact postcard bytes of the manifest, so
//! a signature made for anything else (a command, with a key used for both by mistake)
//! never verifies as a manifest.

use ring::signature::{Ed25519KeyPair, KeyPair};

use super::{InvalidManifest, MAX_MANIFEST_BYTES, Manifest, SignedManifest};
use crate::command::KeyId;
use crate::signing::{KeyError, TrustedKey, key_id};

/// Prefixed to the manifest bytes before signing.
const CONTEXT: &[u8] = b"pifleet release manifest v1\0";

fn signed_bytes(body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(CONTEXT.len() + body.len());
    v.extend_from_slice(CONTEXT);
    v.extend_from_slice(body);
    v
}

/// A release-signing key. `Debug` does not show it.
pub struct ReleaseSigner {
    pair: Ed25519KeyPair,
    public: TrustedKey,
}

impl std::fmt::Debug for ReleaseSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReleaseSigner")
            .field("id", &self.public.id)
            .field("key", &"<redacted>")
            .finish()
    }
}

impl ReleaseSigner {
    fn from_pair(pair: Ed25519KeyPair) -> Result<Self, KeyError> {
        let raw = <[u8; 32]>::try_from(pair.public_key().as_ref()).map_err(|_| KeyError::Key)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&raw).map_err(|_| KeyError::Key)?;
        Ok(Self {
            public: TrustedKey {
                id: key_id(&key),
                key,
            },
            pair,
        })
    }

    /// From a 32-byte Ed25519 seed.
    pub fn from_seed(seed: &[u8; 32]) -> Result<Self, KeyError> {
        Self::from_pair(Ed25519KeyPair::from_seed_unchecked(seed).map_err(|_| KeyError::Key)?)
    }

    /// From a PKCS#8 PEM ("PRIVATE KEY") holding an Ed25519 key.
    pub fn from_pkcs8_pem(pem: &str) -> Result<Self, KeyError> {
        let der = crate::signing::pem_body(pem, "PRIVATE KEY")?;
        Self::from_pair(
            Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|_| KeyError::Key)?,
        )
    }

    pub fn id(&self) -> KeyId {
        self.public.id
    }

    /// The public half, as devices pin it.
    pub fn public(&self) -> &TrustedKey {
        &self.public
    }

    /// Validates and signs a manifest.
    pub fn sign(&self, manifest: &Manifest) -> Result<SignedManifest, ManifestError> {
        manifest.validate()?;
        let body = postcard::to_allocvec(manifest).map_err(KeyError::from)?;
        if body.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge);
        }
        let signature = self.pair.sign(&signed_bytes(&body)).as_ref().to_vec();
        Ok(SignedManifest {
            key_id: self.public.id,
            body,
            signature,
        })
    }
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is larger than {MAX_MANIFEST_BYTES} bytes")]
    TooLarge,
    #[error("manifest signed by a release key this device does not trust")]
    UnknownKey,
    #[error("bad manifest signature")]
    BadSignature,
    #[error("malformed manifest: {0}")]
    Malformed(String),
    #[error("invalid manifest: {0}")]
    Invalid(#[from] InvalidManifest),
    #[error(transparent)]
    Key(#[from] KeyError),
}

/// Verifies a signed manifest against the pinned release keys, then decodes it and checks
/// every rule ([`Manifest::validate`]). Returns the manifest only if all of that passes.
pub fn verify_manifest(
    signed: &SignedManifest,
    keys: &[TrustedKey],
) -> Result<Manifest, ManifestError> {
    if signed.body.len() > MAX_MANIFEST_BYTES {
        return Err(ManifestError::TooLarge);
    }
    let trusted = keys
        .iter()
        .find(|k| k.id == signed.key_id)
        .ok_or(ManifestError::UnknownKey)?;
    if !trusted.verifies(&signed_bytes(&signed.body), &signed.signature) {
        return Err(ManifestError::BadSignature);
    }
    let (manifest, rest): (Manifest, &[u8]) = postcard::take_from_bytes(&signed.body)
        .map_err(|e| ManifestError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(ManifestError::Malformed("trailing bytes".into()));
    }
    manifest.validate()?;
    Ok(manifest)
}
