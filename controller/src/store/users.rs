//! SQL for the `users` and `recovery_codes` tables: admin users, MFA enrolment and the
//! security settings (sessions and refresh tokens are in `sessions`, the lockout and the MFA
//! step's acceptance in `attempts`).

use crate::store::db::Tx;

use super::sessions::revoke_sessions_where;
use super::{Store, StoreError, now_ms};
use crate::model::role::Role;

/// A user as stored (the TOTP secrets stay in here; API views are built from it).
#[derive(Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub password_hash: String,
    pub must_change_password: bool,
    pub created_at: i64,
    pub password_changed_at: i64,
    pub disabled_at: Option<i64>,
    pub mfa_enabled_at: Option<i64>,
    pub mfa_secret: Option<Vec<u8>>,
    pub mfa_pending_secret: Option<Vec<u8>>,
    pub mfa_last_step: Option<i64>,
}

impl std::fmt::Debug for UserRow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRow")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("role", &self.role)
            .field("disabled_at", &self.disabled_at)
            .field("mfa_enabled_at", &self.mfa_enabled_at)
            .finish_non_exhaustive()
    }
}

/// Why a user change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UserChange {
    #[error("a user named {0} already exists")]
    Exists(String),
    #[error("no user {0}")]
    NoUser(String),
    #[error("this would leave no enabled admin")]
    LastAdmin,
}

/// `SELECT <user columns> FROM users` followed by the rest of a query.
macro_rules! select_user {
    ($rest:literal) => {
        concat!(
            "SELECT id, name, role, password_hash, must_change_password, created_at, ",
            "password_changed_at, disabled_at, mfa_enabled_at, mfa_secret, mfa_pending_secret, ",
            "mfa_last_step FROM users ",
            $rest
        )
    };
}

// Roles are stored by name; a name this version does not know gets the least rights.
super::db::stored_by_name!(Role, |name| Ok(name.parse().unwrap_or(Role::Viewer)));

impl Store {
    /// Creates a user; refuses a taken name.
    pub async fn create_user(
        &self,
        name: &str,
        role: Role,
        password_hash: &str,
        must_change_password: bool,
    ) -> Result<Result<i64, UserChange>, StoreError> {
        let now = now_ms();
        let id: Option<i64> = writing!(self, |ex| sqlx::query_scalar(
            "INSERT INTO users (name, role, password_hash, must_change_password, created_at, \
             password_changed_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING \
             RETURNING id",
        )
        .bind(name)
        .bind(role.as_str())
        .bind(password_hash)
        .bind(must_change_password)
        .bind(now)
        .bind(now)
        .fetch_optional(ex)
        .await)?;
        Ok(id.ok_or_else(|| UserChange::Exists(name.to_owned())))
    }

    pub async fn user_by_name(&self, name: &str) -> Result<Option<UserRow>, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_as(select_user!(
            "WHERE name = $1"
        ))
        .bind(name)
        .fetch_optional(ex)
        .await)?)
    }

    pub async fn user_by_id(&self, id: i64) -> Result<Option<UserRow>, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_as(select_user!(
            "WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(ex)
        .await)?)
    }

    pub async fn list_users(&self) -> Result<Vec<UserRow>, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_as(select_user!(
            "ORDER BY name"
        ))
        .fetch_all(ex)
        .await)?)
    }

    /// Changes role and/or disabled state in one transaction, refusing to leave no enabled
    /// admin. Disabling ends all the user's sessions.
    pub async fn update_user(
        &self,
        name: &str,
        role: Option<Role>,
        disabled: Option<bool>,
    ) -> Result<Result<UserRow, UserChange>, StoreError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let user: Option<UserRow> =
            in_tx!(tx, |ex| sqlx::query_as(select_user!("WHERE name = $1"))
                .bind(name)
                .fetch_optional(ex)
                .await)?;
        let Some(user) = user else {
            return Ok(Err(UserChange::NoUser(name.to_owned())));
        };
        if let Some(role) = role {
            in_tx!(tx, |ex| sqlx::query(
                "UPDATE users SET role = $1 WHERE id = $2"
            )
            .bind(role.as_str())
            .bind(user.id)
            .execute(ex)
            .await
            .map(|r| r.rows_affected()))?;
        }
        match disabled {
            Some(true) => {
                in_tx!(tx, |ex| sqlx::query(
                    "UPDATE users SET disabled_at = COALESCE(disabled_at, $1) WHERE id = $2"
                )
                .bind(now)
                .bind(user.id)
                .execute(ex)
                .await
                .map(|r| r.rows_affected()))?;
                revoke_sessions_where(&mut tx, user.id, None, "user disabled", now).await?;
            }
            Some(false) => {
                in_tx!(tx, |ex| sqlx::query(
                    "UPDATE users SET disabled_at = NULL WHERE id = $1"
                )
                .bind(user.id)
                .execute(ex)
                .await
                .map(|r| r.rows_affected()))?;
            }
            None => {}
        }
        if user.role == Role::Admin && enabled_admins(&mut tx).await? == 0 {
            return Ok(Err(UserChange::LastAdmin)); // dropped: rolled back
        }
        let updated: UserRow = in_tx!(tx, |ex| sqlx::query_as(select_user!("WHERE id = $1"))
            .bind(user.id)
            .fetch_one(ex)
            .await)?;
        tx.commit().await?;
        Ok(Ok(updated))
    }

    /// Deletes a user (sessions, refresh tokens and recovery codes go with it), refusing to
    /// leave no enabled admin.
    pub async fn delete_user(&self, name: &str) -> Result<Result<(), UserChange>, StoreError> {
        let mut tx = self.write_tx().await?;
        let role: Option<String> = in_tx!(tx, |ex| sqlx::query_scalar(
            "DELETE FROM users WHERE name = $1 RETURNING role"
        )
        .bind(name)
        .fetch_optional(ex)
        .await)?;
        let Some(role) = role else {
            return Ok(Err(UserChange::NoUser(name.to_owned())));
        };
        if role == Role::Admin.as_str() && enabled_admins(&mut tx).await? == 0 {
            return Ok(Err(UserChange::LastAdmin));
        }
        tx.commit().await?;
        Ok(Ok(()))
    }

    /// Sets a new password hash. `keep_session` survives; every other session of the user
    /// ends (a password change signs out everywhere else).
    pub async fn set_password(
        &self,
        user_id: i64,
        hash: &str,
        must_change: bool,
        keep_session: Option<&str>,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        in_tx!(tx, |ex| sqlx::query(
            "UPDATE users SET password_hash = $1, must_change_password = $2, \
             password_changed_at = $3 WHERE id = $4",
        )
        .bind(hash)
        .bind(must_change)
        .bind(now)
        .bind(user_id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        revoke_sessions_where(&mut tx, user_id, keep_session, "password changed", now).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Replaces the stored hash after a sign-in with outdated argon2 parameters.
    pub async fn rehash_password(&self, user_id: i64, hash: &str) -> Result<(), StoreError> {
        writing!(self, |ex| sqlx::query(
            "UPDATE users SET password_hash = $1 WHERE id = $2"
        )
        .bind(hash)
        .bind(user_id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    // ---- MFA ---------------------------------------------------------------------------

    /// Starts TOTP enrolment with a secret that is not active until confirmed.
    pub async fn set_mfa_pending(&self, user_id: i64, secret: &[u8]) -> Result<(), StoreError> {
        writing!(self, |ex| sqlx::query(
            "UPDATE users SET mfa_pending_secret = $1 WHERE id = $2"
        )
        .bind(secret)
        .bind(user_id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Activates the pending secret, records the step used, and replaces the recovery codes.
    pub async fn confirm_mfa(
        &self,
        user_id: i64,
        step: i64,
        recovery_hashes: &[String],
    ) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let r = in_tx!(tx, |ex| sqlx::query(
            "UPDATE users SET mfa_secret = mfa_pending_secret, mfa_pending_secret = NULL, \
             mfa_enabled_at = $1, mfa_last_step = $2 \
             WHERE id = $3 AND mfa_pending_secret IS NOT NULL AND mfa_enabled_at IS NULL",
        )
        .bind(now_ms())
        .bind(step)
        .bind(user_id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        if r != 1 {
            return Ok(false);
        }
        in_tx!(tx, |ex| sqlx::query(
            "DELETE FROM recovery_codes WHERE user_id = $1"
        )
        .bind(user_id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        for h in recovery_hashes {
            in_tx!(tx, |ex| sqlx::query(
                "INSERT INTO recovery_codes (user_id, code_hash) VALUES ($1, $2)"
            )
            .bind(user_id)
            .bind(h)
            .execute(ex)
            .await
            .map(|r| r.rows_affected()))?;
        }
        tx.commit().await?;
        Ok(true)
    }

    /// Unused recovery codes left.
    pub async fn recovery_codes_left(&self, user_id: i64) -> Result<i64, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_scalar(
            "SELECT COUNT(*) FROM recovery_codes WHERE user_id = $1 AND used_at IS NULL",
        )
        .bind(user_id)
        .fetch_one(ex)
        .await)?)
    }

    /// Turns MFA off for a user (admin reset). False for an unknown user.
    pub async fn reset_mfa(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.write_tx().await?;
        let r = in_tx!(tx, |ex| {
            sqlx::query(
            "UPDATE users SET mfa_secret = NULL, mfa_pending_secret = NULL, mfa_enabled_at = NULL, \
             mfa_last_step = NULL WHERE name = $1",
        )
        .bind(name)
        .execute(ex)
        .await
        .map(|r| r.rows_affected())
        })?;
        in_tx!(tx, |ex| sqlx::query(
            "DELETE FROM recovery_codes WHERE user_id = (SELECT id FROM users WHERE name = $1)",
        )
        .bind(name)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        tx.commit().await?;
        Ok(r == 1)
    }

    // ---- settings ----------------------------------------------------------------------

    /// Roles whose users must use MFA.
    pub async fn mfa_required_roles(&self) -> Result<Vec<Role>, StoreError> {
        let v: Option<String> = reading!(self, |ex| sqlx::query_scalar(
            "SELECT value FROM meta WHERE key = 'mfa_required_roles'"
        )
        .fetch_optional(ex)
        .await)?;
        Ok(match v {
            Some(v) => serde_json::from_str(&v)?,
            None => Vec::new(),
        })
    }

    pub async fn set_mfa_required_roles(&self, roles: &[Role]) -> Result<(), StoreError> {
        writing!(self, |ex| sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('mfa_required_roles', $1) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(serde_json::to_string(roles)?)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        // The other controllers keep the setting in memory.
        self.announce(super::changes::Change::Settings).await
    }
}

/// How many enabled admins there are.
pub(super) const ENABLED_ADMINS: &str =
    "SELECT COUNT(*) FROM users WHERE role = 'admin' AND disabled_at IS NULL";

async fn enabled_admins(tx: &mut Tx) -> Result<i64, StoreError> {
    Ok(in_tx!(*tx, |ex| sqlx::query_scalar(ENABLED_ADMINS)
        .fetch_one(ex)
        .await)?)
}

#[cfg(test)]
mod tests {
    use crate::model::role::Role;
    use crate::store::testkit::store;

    /// A role name this version does not know reads as the least rights.
    #[tokio::test]
    async fn an_unknown_stored_role_is_a_viewer() {
        let (_d, s) = store().await;
        s.create_user("olga", Role::Admin, "x", false)
            .await
            .unwrap()
            .unwrap();
        writing!(s, |ex| sqlx::query(
            "UPDATE users SET role = 'superuser' WHERE name = 'olga'"
        )
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
        let user = s.user_by_name("olga").await.unwrap().unwrap();
        assert_eq!(user.role, Role::Viewer);
    }
}
