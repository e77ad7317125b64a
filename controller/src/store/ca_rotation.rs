//! SQL for a CA rotation: when it happened, and which devices still hold only certificates
//! of the previous CA.

use super::{Store, StoreError};

impl Store {
    /// Records when the CA was replaced (Unix ms); `None` clears it when the rotation ends.
    pub async fn set_ca_rotated_at(&self, at: Option<i64>) -> Result<(), StoreError> {
        match at {
            Some(at) => {
                writing!(self, |ex| sqlx::query(
                    "INSERT INTO meta (key, value) VALUES ('ca_rotated_at', $1) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .bind(at.to_string())
                .execute(ex)
                .await
                .map(|r| r.rows_affected()))?;
            }
            None => {
                writing!(self, |ex| sqlx::query(
                    "DELETE FROM meta WHERE key = 'ca_rotated_at'"
                )
                .execute(ex)
                .await
                .map(|r| r.rows_affected()))?;
            }
        }
        Ok(())
    }

    /// When the CA was replaced, if a rotation is under way.
    pub async fn ca_rotated_at(&self) -> Result<Option<i64>, StoreError> {
        let v: Option<String> = reading!(self, |ex| sqlx::query_scalar(
            "SELECT value FROM meta WHERE key = 'ca_rotated_at'"
        )
        .fetch_optional(ex)
        .await)?;
        Ok(v.and_then(|v| v.parse().ok()))
    }

    /// Devices that would be locked out if the previous CA stopped being trusted: not
    /// revoked, holding an unexpired certificate issued before `rotated_at`, and none
    /// issued since.
    pub async fn devices_on_previous_ca(
        &self,
        rotated_at: i64,
        now: i64,
    ) -> Result<Vec<String>, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_scalar(concat!(
            "SELECT d.id FROM devices d WHERE d.revoked_at IS NULL ",
            "AND EXISTS (SELECT 1 FROM certificates c WHERE c.device_id = d.id ",
            "AND c.revoked_at IS NULL AND c.not_after > $1 AND c.issued_at < $2) ",
            "AND NOT EXISTS (SELECT 1 FROM certificates c WHERE c.device_id = d.id ",
            "AND c.revoked_at IS NULL AND c.issued_at >= $3) ORDER BY d.id"
        ))
        .bind(now)
        .bind(rotated_at)
        .bind(rotated_at)
        .fetch_all(ex)
        .await)?)
    }
}
