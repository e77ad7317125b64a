//! Enrollment tokens, single-use or provisioning (multi-use, to bake into an SD-card image):
//! made the same way by the command line and the admin API.
//! The database keeps only the secret's hash; the token text carries the secret and the
//! CA fingerprint, so an agent can check it talks to the controller that made it.

use std::time::Duration;

use pifleet_shared::DeviceId;
use pifleet_shared::token::EnrollToken;
use rand::RngCore;

use crate::datadir::DataDir;
use crate::model::labels::Labels;
use crate::pki::{self, PkiError};
use crate::store::{NewToken, Store, StoreError, now_ms};

use super::secret_hash;

/// Why a token was not created.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A lifetime out of bounds or a bad device name: the caller's mistake.
    #[error("{0}")]
    Invalid(String),
    #[error("cannot read the CA certificate {path}: {source}")]
    Ca {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A created enrollment token.
#[derive(Debug)]
pub struct CreatedToken {
    pub id: String,
    pub token: EnrollToken,
    pub expires_at_ms: i64,
}

/// Most devices one provisioning token may enroll.
pub const MAX_PROVISIONING_USES: u32 = 100_000;

/// What a new token is to be.
#[derive(Debug, Clone, Default)]
pub struct TokenSpec {
    /// How long it may be used (at most `enrollment.max_token_ttl_s`).
    pub ttl: Duration,
    /// The one device it enrolls, by id (single-use tokens only).
    pub name: Option<String>,
    /// Labels every device it enrolls gets.
    pub labels: Labels,
    /// A provisioning token: enrolls up to this many devices.
    pub max_uses: Option<u32>,
    /// Devices it enrolls wait for an admin to accept them.
    pub require_approval: bool,
}

/// Creates an enrollment token: single-use, for the device `name` if given; or, with
/// `max_uses`, a provisioning token that enrolls up to that many devices (no name: each
/// device proposes its own id).
pub async fn create_token(
    dd: &DataDir,
    store: &Store,
    max_ttl_s: u64,
    spec: &TokenSpec,
) -> Result<CreatedToken, TokenError> {
    let TokenSpec {
        ttl,
        name,
        labels,
        max_uses,
        require_approval,
    } = spec;
    let (ttl, max_uses) = (*ttl, *max_uses);
    if let Some(n) = max_uses {
        if name.is_some() {
            return Err(TokenError::Invalid(
                "a provisioning token (--max-uses) enrolls many devices: it cannot name one".into(),
            ));
        }
        if !(1..=MAX_PROVISIONING_USES).contains(&n) {
            return Err(TokenError::Invalid(format!(
                "--max-uses must be between 1 and {MAX_PROVISIONING_USES}"
            )));
        }
    }
    if ttl.as_secs() < 1 || ttl.as_secs() > max_ttl_s {
        return Err(TokenError::Invalid(format!(
            "--ttl must be between 1s and {max_ttl_s}s (enrollment.max_token_ttl_s)"
        )));
    }
    let name = name
        .as_deref()
        .map(DeviceId::parse)
        .transpose()
        .map_err(|e| TokenError::Invalid(format!("--name: {e}")))?;
    let path = dd.ca_cert();
    let ca_pem = std::fs::read_to_string(&path).map_err(|source| TokenError::Ca {
        path: path.display().to_string(),
        source,
    })?;
    let fpr = pki::anchor_fingerprint_bytes(&ca_pem)?;
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let hash = secret_hash(&secret);
    let id = hash[..12].to_owned();
    let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    let expires_at_ms = now_ms().saturating_add(ttl_ms);
    store
        .insert_token(&NewToken {
            id: &id,
            secret_hash: &hash,
            name: name.as_ref(),
            labels,
            expires_at: expires_at_ms,
            max_uses,
            require_approval: *require_approval,
        })
        .await?;
    Ok(CreatedToken {
        id,
        token: EnrollToken::new(secret, fpr),
        expires_at_ms,
    })
}
