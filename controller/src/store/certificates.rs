//! SQL for the `certificates` table: the certificates issued to devices, what the CRL lists,
//! and the public keys that device receipts are verified with. Enrollment inserts a
//! certificate and revocation revokes them, in the `devices` transactions of `devices.rs`.

use std::collections::HashSet;

use super::{Store, StoreError};
use crate::model::devices::Certificate;

/// A certificate issued to a device.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CertRow {
    pub serial: String,
    pub device_id: String,
    pub revoked_at: Option<i64>,
}

impl Store {
    /// The next CRL number and every revoked certificate, taken in one write transaction
    /// so that a CRL with a higher number never lists fewer certificates.
    pub async fn crl_snapshot(&self) -> Result<(u64, Vec<CertRow>), StoreError> {
        let mut tx = self.write_tx().await?;
        let cur: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'crl_number'")
                .fetch_optional(&mut *tx)
                .await?;
        let next = cur.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + 1;
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('crl_number', ?) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(next.to_string())
        .execute(&mut *tx)
        .await?;
        let certs = sqlx::query_as(
            "SELECT serial, device_id, revoked_at FROM certificates \
             WHERE revoked_at IS NOT NULL ORDER BY revoked_at, serial",
        )
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok((next, certs))
    }

    /// Serials of every revoked certificate.
    pub async fn revoked_serials(&self) -> Result<HashSet<String>, StoreError> {
        let serials: Vec<String> =
            sqlx::query_scalar("SELECT serial FROM certificates WHERE revoked_at IS NOT NULL")
                .fetch_all(&self.reader)
                .await?;
        Ok(serials.into_iter().collect())
    }

    /// Whether `serial` (normalized lowercase hex) is an unrevoked certificate of `device`,
    /// and the device is enrolled and not revoked.
    pub async fn device_cert_valid(&self, device: &str, serial: &str) -> Result<bool, StoreError> {
        let found: Option<i64> = sqlx::query_scalar(
            "SELECT 1 FROM certificates c JOIN devices d ON d.id = c.device_id \
             WHERE c.serial = ? AND c.device_id = ? AND c.revoked_at IS NULL \
             AND d.revoked_at IS NULL",
        )
        .bind(serial)
        .bind(device)
        .fetch_optional(&self.reader)
        .await?;
        Ok(found.is_some())
    }

    /// The public key of the device's newest unrevoked certificate.
    pub async fn device_key(&self, device: &str) -> Result<Option<(String, Vec<u8>)>, StoreError> {
        Ok(sqlx::query_as(
            "SELECT public_key_alg, public_key FROM certificates WHERE device_id = ? \
             AND revoked_at IS NULL AND public_key IS NOT NULL ORDER BY issued_at DESC LIMIT 1",
        )
        .bind(device)
        .fetch_optional(&self.reader)
        .await?)
    }

    /// The device's certificates, newest first (for its detail view).
    pub(super) async fn device_certificates(
        &self,
        device: &str,
    ) -> Result<Vec<Certificate>, StoreError> {
        let certs: Vec<(String, i64, i64, Option<i64>)> = sqlx::query_as(
            "SELECT serial, issued_at, not_after, revoked_at FROM certificates \
             WHERE device_id = ? ORDER BY issued_at DESC, serial",
        )
        .bind(device)
        .fetch_all(&self.reader)
        .await?;
        Ok(certs
            .into_iter()
            .map(|(serial, issued_at, not_after, revoked_at)| Certificate {
                serial,
                issued_at,
                not_after,
                revoked_at,
            })
            .collect())
    }
}
