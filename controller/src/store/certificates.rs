//! SQL for the `certificates` table: the certificates issued to devices, what the CRL lists,
//! and the public keys that device receipts are verified with. Enrollment inserts a
//! certificate and revocation revokes them, in the `devices` transactions of `devices.rs`;
//! renewal adds one here.

use std::collections::HashSet;

use super::{Store, StoreError, now_ms};
use crate::audit::Event;
use crate::model::devices::Certificate;

/// A renewed certificate to record.
#[derive(Debug, Clone)]
pub struct RenewedCert {
    /// Normalized lowercase hex.
    pub serial: String,
    /// notAfter, Unix seconds.
    pub not_after: i64,
    pub public_key_alg: &'static str,
    pub public_key: Vec<u8>,
}

/// Why the database state refuses a renewal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenewRefusal {
    #[error("unknown device")]
    UnknownDevice,
    #[error("the device is revoked")]
    Revoked,
    #[error("a certificate was issued less than the renewal interval ago")]
    TooSoon {
        /// When the next renewal is allowed, in seconds from now.
        retry_after_s: u64,
    },
    #[error("the CSR's key was certified for this device before; make a new key")]
    KeyReused,
}

/// Errors of the renewal transaction: a refusal by state, or by the signing callback.
#[derive(Debug, thiserror::Error)]
pub enum RenewError<E> {
    #[error(transparent)]
    Refused(RenewRefusal),
    #[error(transparent)]
    Issue(E),
}

/// `(alg, public key, notAfter in Unix ms)` of a device certificate.
pub type DeviceKey = (String, Vec<u8>, i64);

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
        let cur: Option<String> = in_tx!(tx, |ex| sqlx::query_scalar(
            "SELECT value FROM meta WHERE key = 'crl_number'"
        )
        .fetch_optional(ex)
        .await)?;
        let next = cur.and_then(|v| v.parse::<u64>().ok()).unwrap_or(0) + 1;
        in_tx!(tx, |ex| sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('crl_number', $1) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(next.to_string())
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        let certs = in_tx!(tx, |ex| sqlx::query_as(
            "SELECT serial, device_id, revoked_at FROM certificates \
             WHERE revoked_at IS NOT NULL ORDER BY revoked_at, serial",
        )
        .fetch_all(ex)
        .await)?;
        tx.commit().await?;
        Ok((next, certs))
    }

    /// Serials of every revoked certificate.
    pub async fn revoked_serials(&self) -> Result<HashSet<String>, StoreError> {
        let serials: Vec<String> = reading!(self, |ex| sqlx::query_scalar(
            "SELECT serial FROM certificates WHERE revoked_at IS NOT NULL"
        )
        .fetch_all(ex)
        .await)?;
        Ok(serials.into_iter().collect())
    }

    /// The ids of revoked devices.
    pub async fn revoked_devices(&self) -> Result<HashSet<String>, StoreError> {
        let ids: Vec<String> = reading!(self, |ex| sqlx::query_scalar(
            "SELECT id FROM devices WHERE revoked_at IS NOT NULL"
        )
        .fetch_all(ex)
        .await)?;
        Ok(ids.into_iter().collect())
    }

    /// Whether `serial` (normalized lowercase hex) is an unrevoked certificate of `device`,
    /// and the device is enrolled and not revoked.
    pub async fn device_cert_valid(&self, device: &str, serial: &str) -> Result<bool, StoreError> {
        let found: Option<i64> = reading!(self, |ex| sqlx::query_scalar(
            "SELECT CAST(1 AS BIGINT) FROM certificates c JOIN devices d ON d.id = c.device_id \
             WHERE c.serial = $1 AND c.device_id = $2 AND c.revoked_at IS NULL \
             AND d.revoked_at IS NULL",
        )
        .bind(serial)
        .bind(device)
        .fetch_optional(ex)
        .await)?;
        Ok(found.is_some())
    }

    /// The public keys of every unrevoked, unexpired certificate of the device, newest
    /// first, with their notAfter (Unix ms): a receipt signed with any of them verifies,
    /// since a device that just renewed may still sign with its previous key.
    pub async fn device_keys(&self, device: &str) -> Result<Vec<DeviceKey>, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_as(concat!(
            "SELECT public_key_alg, public_key, not_after FROM certificates WHERE device_id = $1 ",
            "AND revoked_at IS NULL AND public_key IS NOT NULL AND not_after > $2 ",
            "ORDER BY issued_at DESC"
        ))
        .bind(device)
        .bind(now_ms())
        .fetch_all(ex)
        .await)?)
    }

    /// Renews a device certificate, all or nothing: the device must exist and not be
    /// revoked, and its newest certificate must be at least `min_interval_ms` old (the rate
    /// limit lives in the table itself, so it survives restarts); then `issue` signs, the
    /// new key must be one the device never had, and the certificate and the audit entry
    /// `issue` returns are written in one transaction.
    pub async fn renew_certificate<T, E, F>(
        &self,
        device: &str,
        min_interval_ms: i64,
        issue: F,
    ) -> Result<Result<T, RenewError<E>>, StoreError>
    where
        F: FnOnce() -> Result<(RenewedCert, Event, T), E>,
    {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let revoked: Option<Option<i64>> = in_tx!(tx, |ex| sqlx::query_scalar(
            "SELECT revoked_at FROM devices WHERE id = $1"
        )
        .bind(device)
        .fetch_optional(ex)
        .await)?;
        match revoked {
            None => return Ok(Err(RenewError::Refused(RenewRefusal::UnknownDevice))),
            Some(Some(_)) => return Ok(Err(RenewError::Refused(RenewRefusal::Revoked))),
            Some(None) => {}
        }
        let newest: Option<i64> = in_tx!(tx, |ex| sqlx::query_scalar(
            "SELECT MAX(issued_at) FROM certificates WHERE device_id = $1"
        )
        .bind(device)
        .fetch_one(ex)
        .await)?;
        if let Some(newest) = newest
            && now - newest < min_interval_ms
        {
            let wait_ms = min_interval_ms - (now - newest);
            let retry_after_s = u64::try_from(wait_ms).unwrap_or(1000).div_ceil(1000).max(1);
            return Ok(Err(RenewError::Refused(RenewRefusal::TooSoon {
                retry_after_s,
            })));
        }
        let (cert, audit, extra) = match issue() {
            Ok(v) => v,
            Err(e) => return Ok(Err(RenewError::Issue(e))),
        };
        let reused: Option<i64> = in_tx!(tx, |ex| {
            sqlx::query_scalar(
            "SELECT CAST(1 AS BIGINT) FROM certificates WHERE device_id = $1 AND public_key = $2 LIMIT 1",
        )
        .bind(device)
        .bind(&cert.public_key)
        .fetch_optional(ex)
        .await
        })?;
        if reused.is_some() {
            return Ok(Err(RenewError::Refused(RenewRefusal::KeyReused)));
        }
        in_tx!(tx, |ex| sqlx::query(concat!(
            "INSERT INTO certificates (serial, device_id, issued_at, not_after, public_key_alg, ",
            "public_key) VALUES ($1, $2, $3, $4, $5, $6)"
        ))
        .bind(&cert.serial)
        .bind(device)
        .bind(now)
        .bind(cert.not_after * 1000)
        .bind(cert.public_key_alg)
        .bind(&cert.public_key)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        super::audit::append(&mut tx, &audit).await?;
        tx.commit().await?;
        Ok(Ok(extra))
    }

    /// Unrevoked devices whose newest unrevoked certificate has less than a sixth of its
    /// lifetime left (or has expired): renewal, due at a third, keeps failing for them.
    pub async fn renewal_overdue_count(&self) -> Result<i64, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_scalar(concat!(
            "SELECT COUNT(DISTINCT d.id) FROM devices d JOIN certificates c ON c.device_id = d.id ",
            "WHERE d.revoked_at IS NULL AND c.revoked_at IS NULL AND c.issued_at = ",
            "(SELECT MAX(c2.issued_at) FROM certificates c2 WHERE c2.device_id = d.id ",
            "AND c2.revoked_at IS NULL) AND (c.not_after - $1) * 6 < c.not_after - c.issued_at"
        ))
        .bind(now_ms())
        .fetch_one(ex)
        .await)?)
    }

    /// The device's certificates, newest first (for its detail view).
    pub(super) async fn device_certificates(
        &self,
        device: &str,
    ) -> Result<Vec<Certificate>, StoreError> {
        let certs: Vec<(String, i64, i64, Option<i64>)> = reading!(self, |ex| sqlx::query_as(
            "SELECT serial, issued_at, not_after, revoked_at FROM certificates \
             WHERE device_id = $1 ORDER BY issued_at DESC, serial",
        )
        .bind(device)
        .fetch_all(ex)
        .await)?;
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
