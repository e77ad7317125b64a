//! API tokens for automation (a build pipeline publishing releases and starting rollouts):
//! a named service account bound to a role, `pfa1.` followed by 256 random bits in hex,
//! shown once, stored as its SHA-256, with an expiry, revocable. A token acts with its
//! role like a signed-in user, every mutation it makes is audited as `token:NAME`, and
//! wrong tokens count against the sender's sign-in rate. It cannot approve or reject a
//! two-person request: the second person is a person.

use std::time::Duration;

use rand::RngCore;
use sha2::{Digest, Sha256};

use crate::model::role::Role;
use crate::store::api_tokens::ApiTokenRow;
use crate::store::{Store, StoreError, now_ms};

/// What every API token starts with.
pub const PREFIX: &str = "pfa1.";
/// Longest lifetime of a token: one year.
pub const MAX_TTL: Duration = Duration::from_secs(366 * 86_400);

/// Why a token was not created.
#[derive(Debug, thiserror::Error)]
pub enum ApiTokenError {
    /// A bad name or lifetime, or a name already taken: the caller's mistake.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A created token: the only time its secret is seen.
#[derive(Debug)]
pub struct CreatedApiToken {
    pub id: String,
    pub token: String,
    pub expires_at: i64,
}

/// SHA-256 of a token's text, hex: what the database keeps.
pub fn secret_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Token names: 1-64 of a-z 0-9 . _ - starting with a letter or digit.
fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && name.bytes().all(|b| {
            b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-')
        })
}

/// Creates a token named `name` with `role`, valid for `ttl`.
pub async fn create(
    store: &Store,
    name: &str,
    role: Role,
    ttl: Duration,
    created_by: &str,
) -> Result<CreatedApiToken, ApiTokenError> {
    if !valid_name(name) {
        return Err(ApiTokenError::Invalid(format!(
            "token name {name:?} must be 1-64 of a-z 0-9 . _ - starting with a letter or digit"
        )));
    }
    if ttl < Duration::from_secs(1) || ttl > MAX_TTL {
        return Err(ApiTokenError::Invalid(format!(
            "ttl_s must be between 1 and {}",
            MAX_TTL.as_secs()
        )));
    }
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut secret);
    let token = format!("{PREFIX}{}", hex::encode(secret));
    secret.fill(0);
    let hash = secret_hash(&token);
    let id = hash[..12].to_owned();
    let expires_at = now_ms().saturating_add(i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX));
    if !store
        .insert_api_token(&id, name, role, &hash, created_by, expires_at)
        .await?
    {
        return Err(ApiTokenError::Invalid(format!(
            "an API token named {name} already exists"
        )));
    }
    Ok(CreatedApiToken {
        id,
        token,
        expires_at,
    })
}

/// The usable token `presented` stands for, if any.
pub async fn resolve(store: &Store, presented: &str) -> Result<Option<ApiTokenRow>, StoreError> {
    if !presented.starts_with(PREFIX) || presented.len() != PREFIX.len() + 64 {
        return Ok(None);
    }
    store.use_api_token(&secret_hash(presented)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_rules() {
        assert!(valid_name("ci"));
        assert!(valid_name("build-pipeline.2"));
        assert!(!valid_name(""));
        assert!(!valid_name("-x"));
        assert!(!valid_name("CI"));
        assert!(!valid_name(&"a".repeat(65)));
        assert_eq!(secret_hash("x").len(), 64);
    }
}
