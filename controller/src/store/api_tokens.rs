//! SQL for the `api_tokens` table: service accounts for automation. Only the hash of a
//! token's secret is stored.

use super::{Store, StoreError, now_ms};
use crate::model::role::Role;

/// A stored API token (never the secret).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiTokenRow {
    /// Its row id: negated, it stands for the token where a user id is expected.
    pub rowid: i64,
    pub id: String,
    pub name: String,
    pub role: Role,
    pub created_by: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
}

macro_rules! api_token_select {
    ($tail:literal) => {
        concat!(
            "SELECT rowid, id, name, role, created_by, created_at, expires_at, revoked_at, ",
            "last_used_at FROM api_tokens ",
            $tail
        )
    };
}

impl Store {
    /// Stores a new API token; false when the name is taken.
    #[allow(clippy::too_many_arguments)]
    pub async fn insert_api_token(
        &self,
        id: &str,
        name: &str,
        role: Role,
        secret_hash: &str,
        created_by: &str,
        expires_at: i64,
    ) -> Result<bool, StoreError> {
        let r = writing!(self, |ex| sqlx::query(
            "INSERT INTO api_tokens (id, name, role, secret_hash, created_by, created_at, \
             expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO NOTHING",
        )
        .bind(id)
        .bind(name)
        .bind(role.as_str())
        .bind(secret_hash)
        .bind(created_by)
        .bind(now_ms())
        .bind(expires_at)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(r == 1)
    }

    /// Every API token, newest first.
    pub async fn list_api_tokens(&self) -> Result<Vec<ApiTokenRow>, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_as(api_token_select!(
            "ORDER BY created_at DESC, id"
        ))
        .fetch_all(ex)
        .await)?)
    }

    /// The usable (unrevoked, unexpired) token with this secret hash; records its use.
    pub async fn use_api_token(
        &self,
        secret_hash: &str,
    ) -> Result<Option<ApiTokenRow>, StoreError> {
        let now = now_ms();
        let row: Option<ApiTokenRow> = reading!(self, |ex| sqlx::query_as(api_token_select!(
            "WHERE secret_hash = $1 AND revoked_at IS NULL AND expires_at > $2"
        ))
        .bind(secret_hash)
        .bind(now)
        .fetch_optional(ex)
        .await)?;
        if let Some(r) = &row {
            // Coarse on purpose: at most one write a minute per token, not one per request.
            if r.last_used_at.is_none_or(|t| now - t > 60_000) {
                writing!(self, |ex| sqlx::query(
                    "UPDATE api_tokens SET last_used_at = $1 WHERE id = $2"
                )
                .bind(now)
                .bind(&r.id)
                .execute(ex)
                .await
                .map(|r| r.rows_affected()))?;
            }
        }
        Ok(row)
    }

    /// Revokes a token; false when there is no unrevoked token with this id.
    pub async fn revoke_api_token(&self, id: &str) -> Result<bool, StoreError> {
        let r = writing!(self, |ex| sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL"
        )
        .bind(now_ms())
        .bind(id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(r == 1)
    }
}
