//! SQL for the `enrollment_tokens` table: creating, listing and revoking enrollment tokens.
//! Only the hash of a token's secret is stored; [`Store::enroll`] consumes a token.

use super::{Labels, Store, StoreError, now_ms};
use pifleet_shared::DeviceId;

/// A stored enrollment token (never the secret itself).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TokenRow {
    pub id: String,
    pub name: Option<String>,
    #[sqlx(json)]
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
}

/// `SELECT <token columns> FROM enrollment_tokens <tail>`: one column list for every token
/// query.
macro_rules! token_select {
    ($tail:literal) => {
        concat!(
            "SELECT id, name, labels, created_at, expires_at, used_at, used_by, revoked_at, ",
            "max_uses, uses ",
            "FROM enrollment_tokens ",
            $tail
        )
    };
}
/// The token with this secret hash.
pub(super) const TOKEN_BY_SECRET: &str = token_select!("WHERE secret_hash = ?");
const TOKENS_NEWEST_FIRST: &str = token_select!("ORDER BY created_at DESC");

impl Store {
    /// Stores a new token by the hash of its secret.
    pub async fn insert_token(
        &self,
        id: &str,
        secret_hash: &str,
        name: Option<&DeviceId>,
        labels: &Labels,
        expires_at: i64,
        max_uses: Option<u32>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO enrollment_tokens (id, secret_hash, name, labels, created_at, expires_at, \
             max_uses) VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(id)
        .bind(secret_hash)
        .bind(name.map(DeviceId::as_str))
        .bind(serde_json::to_string(labels)?)
        .bind(now_ms())
        .bind(expires_at)
        .bind(max_uses.map(i64::from))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// All tokens, newest first.
    pub async fn list_tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        Ok(sqlx::query_as(TOKENS_NEWEST_FIRST)
            .fetch_all(&self.reader)
            .await?)
    }

    /// Revokes a token that can still enroll (an unused one, or a provisioning token: the
    /// devices it enrolled stay); returns false if there was no such token.
    pub async fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let r = sqlx::query(
            "UPDATE enrollment_tokens SET revoked_at = ? \
             WHERE id = ? AND used_at IS NULL AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected() == 1)
    }
}
