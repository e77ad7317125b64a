//! SQL for the `sessions` and `refresh_tokens` tables: sign-in sessions, each with its family
//! of refresh tokens (a reused token ends the session), and the session check of every
//! request.

use crate::store::db::Tx;
use std::sync::LazyLock;

use super::{Store, StoreError, dialect, now_ms};
use crate::model::role::Role;
use crate::model::session::SessionUser;

/// A sign-in session.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionRow {
    pub id: String,
    pub created_at: i64,
    pub last_used_at: i64,
    pub expires_at: i64,
    pub ip: String,
    pub user_agent: String,
}

/// What presenting a refresh token led to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refresh {
    /// Unknown token, or its session ended or expired.
    Invalid,
    /// The token had already been rotated: its whole session is now revoked
    /// (`revoked_now` is false when an earlier reuse or a logout had already ended it).
    Reused {
        session_id: String,
        user_id: i64,
        revoked_now: bool,
    },
    /// Rotated: the new token replaces it.
    Rotated { session_id: String, user_id: i64 },
}

/// A refresh token as presented, with its session and user.
#[derive(sqlx::FromRow)]
struct PresentedToken {
    used_at: Option<i64>,
    sid: String,
    user_id: i64,
    revoked_at: Option<i64>,
    expires_at: i64,
    disabled_at: Option<i64>,
}

/// The user of a live session.
#[derive(sqlx::FromRow)]
struct LiveUser {
    name: String,
    role: Role,
    must_change_password: bool,
    mfa_enabled_at: Option<i64>,
}

impl Store {
    /// Starts a session with its first refresh token.
    pub async fn create_session(
        &self,
        session_id: &str,
        user_id: i64,
        ip: &str,
        user_agent: &str,
        expires_at: i64,
        refresh_hash: &str,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        in_tx!(tx, |ex| sqlx::query(
            "INSERT INTO sessions (id, user_id, created_at, last_used_at, expires_at, ip, \
             user_agent) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(session_id)
        .bind(user_id)
        .bind(now)
        .bind(now)
        .bind(expires_at)
        .bind(ip)
        .bind(user_agent)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        in_tx!(tx, |ex| sqlx::query(
            "INSERT INTO refresh_tokens (hash, session_id, issued_at) VALUES ($1, $2, $3)"
        )
        .bind(refresh_hash)
        .bind(session_id)
        .bind(now)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        tx.commit().await?;
        Ok(())
    }

    /// Rotates a refresh token: an unused token of a live session is marked used and
    /// `new_hash` issued in its place; a token that was already used revokes its session
    /// (the family) — someone else holds a copy.
    pub async fn rotate_refresh(
        &self,
        old_hash: &str,
        new_hash: &str,
        ip: &str,
    ) -> Result<Refresh, StoreError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let token: Option<PresentedToken> = in_tx!(tx, |ex| {
            sqlx::query_as(
            "SELECT t.used_at, s.id AS sid, s.user_id, s.revoked_at, s.expires_at, u.disabled_at \
             FROM refresh_tokens t JOIN sessions s ON s.id = t.session_id \
             JOIN users u ON u.id = s.user_id WHERE t.hash = $1",
        )
        .bind(old_hash)
        .fetch_optional(ex)
        .await
        })?;
        let Some(PresentedToken {
            used_at: used,
            sid: session_id,
            user_id,
            revoked_at: revoked,
            expires_at: expires,
            disabled_at: disabled,
        }) = token
        else {
            return Ok(Refresh::Invalid);
        };
        if used.is_some() {
            if revoked.is_none() {
                in_tx!(tx, |ex| sqlx::query(
                    "UPDATE sessions SET revoked_at = $1, revoke_reason = 'refresh token reuse' \
                     WHERE id = $2",
                )
                .bind(now)
                .bind(&session_id)
                .execute(ex)
                .await
                .map(|r| r.rows_affected()))?;
                tx.commit().await?;
            }
            return Ok(Refresh::Reused {
                session_id,
                user_id,
                revoked_now: revoked.is_none(),
            });
        }
        if revoked.is_some() || expires <= now || disabled.is_some() {
            return Ok(Refresh::Invalid);
        }
        in_tx!(tx, |ex| sqlx::query(
            "UPDATE refresh_tokens SET used_at = $1 WHERE hash = $2"
        )
        .bind(now)
        .bind(old_hash)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        in_tx!(tx, |ex| sqlx::query(
            "INSERT INTO refresh_tokens (hash, session_id, issued_at) VALUES ($1, $2, $3)"
        )
        .bind(new_hash)
        .bind(&session_id)
        .bind(now)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        in_tx!(tx, |ex| sqlx::query(
            "UPDATE sessions SET last_used_at = $1, ip = $2 WHERE id = $3"
        )
        .bind(now)
        .bind(ip)
        .bind(&session_id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        tx.commit().await?;
        Ok(Refresh::Rotated {
            session_id,
            user_id,
        })
    }

    /// The user of a live session of an enabled user, read fresh on every request.
    pub async fn session_user(
        &self,
        session_id: &str,
        user_id: i64,
        now: i64,
    ) -> Result<Option<SessionUser>, StoreError> {
        let user: Option<LiveUser> = reading!(self, |ex| sqlx::query_as(
            "SELECT u.name, u.role, u.must_change_password, u.mfa_enabled_at FROM sessions s \
             JOIN users u ON u.id = s.user_id WHERE s.id = $1 AND s.user_id = $2 \
             AND s.revoked_at IS NULL AND s.expires_at > $3 AND u.disabled_at IS NULL",
        )
        .bind(session_id)
        .bind(user_id)
        .bind(now)
        .fetch_optional(ex)
        .await)?;
        Ok(user.map(|u| SessionUser {
            user_id,
            name: u.name,
            role: u.role,
            session_id: session_id.to_owned(),
            mfa_enabled: u.mfa_enabled_at.is_some(),
            must_change_password: u.must_change_password,
        }))
    }

    /// Ends one session of a user. False if there is no such live session.
    pub async fn revoke_session(
        &self,
        user_id: i64,
        session_id: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let r = writing!(self, |ex| sqlx::query(
            "UPDATE sessions SET revoked_at = $1, revoke_reason = $2 \
             WHERE id = $3 AND user_id = $4 AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(reason)
        .bind(session_id)
        .bind(user_id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(r == 1)
    }

    /// The user's live sessions, newest first.
    pub async fn list_sessions(&self, user_id: i64) -> Result<Vec<SessionRow>, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_as(
            "SELECT id, created_at, last_used_at, expires_at, ip, user_agent FROM sessions \
             WHERE user_id = $1 AND revoked_at IS NULL AND expires_at > $2 \
             ORDER BY created_at DESC",
        )
        .bind(user_id)
        .bind(now_ms())
        .fetch_all(ex)
        .await)?)
    }
}

/// Ends the user's live sessions, all but `keep`, inside a write transaction.
pub(super) async fn revoke_sessions_where(
    tx: &mut Tx,
    user_id: i64,
    keep: Option<&str>,
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    static REVOKE: LazyLock<String> = LazyLock::new(|| {
        format!(
            "UPDATE sessions SET revoked_at = $1, revoke_reason = $2 \
             WHERE user_id = $3 AND revoked_at IS NULL AND id {} $4",
            dialect::IS_DISTINCT_FROM
        )
    });
    in_tx!(*tx, |ex| sqlx::query(REVOKE.as_str())
        .bind(now)
        .bind(reason)
        .bind(user_id)
        .bind(keep)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
    Ok(())
}
