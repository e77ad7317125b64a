//! SQL for the `enrollment_tokens` table: creating, listing and revoking enrollment tokens.
//! Only the hash of a token's secret is stored; [`Store::enroll`] consumes a token.

use super::{Labels, Store, StoreError, now_ms};
use pifleet_shared::DeviceId;

/// A stored enrollment token (never the secret itself).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenRow {
    pub id: String,
    pub name: Option<String>,
    #[sqlx(try_from = "crate::store::db::JsonText<Labels>")]
    pub labels: Labels,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
    pub used_by: Option<String>,
    pub revoked_at: Option<i64>,
    /// A provisioning token enrolls up to this many devices; `None`: single use.
    pub max_uses: Option<i64>,
    /// Devices enrolled with it so far.
    pub uses: i64,
    /// Devices it enrolls wait for an admin's approval.
    pub require_approval: bool,
}

/// `SELECT <token columns> FROM enrollment_tokens <tail>`: one column list for every token
/// query.
macro_rules! token_select {
    ($tail:literal) => {
        concat!(
            "SELECT id, name, labels, created_at, expires_at, used_at, used_by, revoked_at, ",
            "max_uses, uses, require_approval ",
            "FROM enrollment_tokens ",
            $tail
        )
    };
}
/// The token with this secret hash.
pub(super) const TOKEN_BY_SECRET: &str = token_select!("WHERE secret_hash = $1");
const TOKENS_NEWEST_FIRST: &str = token_select!("ORDER BY created_at DESC");

/// A token to store.
#[derive(Debug, Clone, Copy)]
pub struct NewToken<'a> {
    /// Short public id.
    pub id: &'a str,
    /// SHA-256 of the secret, hex.
    pub secret_hash: &'a str,
    /// The one device it enrolls.
    pub name: Option<&'a DeviceId>,
    pub labels: &'a Labels,
    /// Unix ms.
    pub expires_at: i64,
    /// A provisioning token's count.
    pub max_uses: Option<u32>,
    pub require_approval: bool,
}

impl Store {
    /// Stores a new token by the hash of its secret.
    pub async fn insert_token(&self, t: &NewToken<'_>) -> Result<(), StoreError> {
        writing!(self, |ex| sqlx::query(
            "INSERT INTO enrollment_tokens (id, secret_hash, name, labels, created_at, expires_at, \
             max_uses, require_approval) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(t.id)
        .bind(t.secret_hash)
        .bind(t.name.map(DeviceId::as_str))
        .bind(serde_json::to_string(t.labels)?)
        .bind(now_ms())
        .bind(t.expires_at)
        .bind(t.max_uses.map(i64::from))
        .bind(t.require_approval)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// All tokens, newest first.
    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_as(TOKENS_NEWEST_FIRST)
            .fetch_all(ex)
            .await)?)
    }

    /// Revokes a token that can still enroll (an unused one, or a provisioning token: the
    /// devices it enrolled stay); returns false if there was no such token.
    pub async fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let r = writing!(self, |ex| sqlx::query(
            "UPDATE enrollment_tokens SET revoked_at = $1 \
             WHERE id = $2 AND used_at IS NULL AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(r == 1)
    }
}
