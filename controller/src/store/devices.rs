//! SQL for the `devices` table: enrollment (which also consumes the token and records the
//! certificate), device rows, revocation, labels and counts. The fleet views (each device
//! with its latest sample) are in `summaries`, the alert rules in `alerts`.

use super::enrollment_requests::{self as requests, RequestRow};
use super::tokens::{TOKEN_BY_SECRET, TokenRow};
use super::{Labels, Store, StoreError, dialect, now_ms};
use crate::model::devices::FleetSummary;
use std::sync::LazyLock;

use pifleet_shared::DeviceId;

mod alerts;
mod summaries;
#[cfg(test)]
mod tests;

pub use alerts::{THROTTLED_NOW, THROTTLED_UNDER_VOLTAGE};

/// A device as stored.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct DeviceRow {
    pub id: String,
    #[sqlx(try_from = "crate::store::db::JsonText<Labels>")]
    pub labels: Labels,
    pub enrolled_at: i64,
    pub revoked_at: Option<i64>,
    pub first_seen: Option<i64>,
    pub last_seen: Option<i64>,
    pub online: bool,
    pub agent_version: Option<String>,
    pub hostname: Option<String>,
    pub os: Option<String>,
    pub kernel: Option<String>,
    pub arch: Option<String>,
    pub model: Option<String>,
    pub last_seq: Option<i64>,
    /// Flagged for an admin's review (re-registered after a restore), and why.
    pub needs_review: bool,
    pub review_reason: Option<String>,
}

/// What a new enrollment writes.
#[derive(Debug, Clone)]
pub struct NewDevice {
    pub id: DeviceId,
    pub labels: Labels,
    pub serial: String,
    pub not_after: i64,
    /// The certificate's public key, for verifying the device's signed receipts.
    pub public_key_alg: &'static str,
    pub public_key: Vec<u8>,
}

/// Why an enrollment was refused by the database state.
/// Who asks to enroll: the key it made and where it asks from.
#[derive(Debug, Clone, Copy)]
pub struct Applicant<'a> {
    /// SHA-256 (hex) of the CSR's public key.
    pub key_fingerprint: &'a str,
    /// The client address.
    pub source: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum EnrollRefusal {
    #[error("unknown enrollment token")]
    UnknownToken,
    #[error("enrollment token already used")]
    UsedToken,
    #[error("enrollment token expired")]
    ExpiredToken,
    #[error("enrollment token revoked")]
    RevokedToken,
    #[error("device id {0} is already enrolled")]
    DeviceExists(String),
    #[error("provisioning token has enrolled its {0} devices")]
    TokenExhausted(i64),
    #[error("an administrator rejected this device's enrollment request")]
    RequestRejected,
}

/// Errors of the enrollment transaction: a refusal by state, or by the issuer callback.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError<E> {
    #[error(transparent)]
    Refused(EnrollRefusal),
    #[error(transparent)]
    Issue(E),
    /// The token requires approval: the device waits as this request (`true`: made now).
    #[error("waiting for an administrator to accept device {}", .0.device_id)]
    Pending(RequestRow, bool),
}

/// What revoking a device did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokeOutcome {
    /// No such device.
    Unknown,
    /// Revoked now, with its certificates.
    Revoked,
    /// It was revoked before.
    AlreadyRevoked,
}

/// Devices by state, for the controller's metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DeviceCounts {
    /// Not revoked.
    pub enrolled: i64,
    pub online: i64,
    /// Enrolled and not online.
    pub offline: i64,
    pub revoked: i64,
}

/// `SELECT <device columns> FROM devices <tail>`: one column list for every device query.
macro_rules! device_select {
    ($tail:literal) => {
        concat!(
            "SELECT id, labels, enrolled_at, revoked_at, first_seen, last_seen, online, ",
            "agent_version, hostname, os, kernel, arch, model, last_seq, needs_review, ",
            "review_reason FROM devices ",
            $tail
        )
    };
}
const DEVICE_SELECT_BY_ID: &str = device_select!("WHERE id = $1");
const DEVICE_SELECT_ALL: &str = device_select!("ORDER BY id");

impl Store {
    /// Consumes a token (a single-use one is spent; a provisioning token counts one use) and
    /// records the device and its certificate, all or nothing. `candidates` lists the ids
    /// the device may take, best first, from the token; the first one not enrolled yet is
    /// given to `issue`, which signs the certificate. If every candidate is taken, `issue`
    /// fails or any check fails, nothing is written and the token stays usable.
    pub async fn enroll<T, E, C, F>(
        &self,
        secret_hash: &str,
        applicant: &Applicant<'_>,
        candidates: C,
        issue: F,
    ) -> Result<Result<(NewDevice, T), EnrollError<E>>, StoreError>
    where
        C: FnOnce(&TokenRow) -> Result<Vec<DeviceId>, E>,
        F: FnOnce(&TokenRow, DeviceId) -> Result<(NewDevice, T), E>,
    {
        let now = now_ms();
        // An unknown token (what a stranger guessing tokens sends) is refused from a
        // reader, without waiting for the write lock that ingest needs.
        let known: Option<i64> = reading!(self, |ex| sqlx::query_scalar(
            "SELECT CAST(1 AS BIGINT) FROM enrollment_tokens WHERE secret_hash = $1"
        )
        .bind(secret_hash)
        .fetch_optional(ex)
        .await)?;
        if known.is_none() {
            return Ok(Err(EnrollError::Refused(EnrollRefusal::UnknownToken)));
        }
        let mut tx = self.write_tx().await?;
        let token: Option<TokenRow> = in_tx!(tx, |ex| sqlx::query_as(TOKEN_BY_SECRET)
            .bind(secret_hash)
            .fetch_optional(ex)
            .await)?;
        let Some(token) = token else {
            return Ok(Err(EnrollError::Refused(EnrollRefusal::UnknownToken)));
        };
        let refusal = if token.revoked_at.is_some() {
            Some(EnrollRefusal::RevokedToken)
        } else if token.used_at.is_some() {
            Some(EnrollRefusal::UsedToken)
        } else if token.expires_at <= now {
            Some(EnrollRefusal::ExpiredToken)
        } else {
            token
                .max_uses
                .filter(|&max| token.uses >= max)
                .map(EnrollRefusal::TokenExhausted)
        };
        if let Some(r) = refusal {
            return Ok(Err(EnrollError::Refused(r)));
        }
        // A token that requires approval: the device's request decides, and a device
        // without one gets one.
        let mut accepted = None;
        if token.require_approval {
            match requests::find(&mut tx, &token.id, applicant.key_fingerprint).await? {
                Some(r) if r.status == requests::PENDING => {
                    requests::touch(&mut tx, &r.id, applicant.source).await?;
                    tx.commit().await?;
                    return Ok(Err(EnrollError::Pending(r, false)));
                }
                Some(r) if r.status == requests::REJECTED => {
                    return Ok(Err(EnrollError::Refused(EnrollRefusal::RequestRejected)));
                }
                Some(r) => accepted = Some(r),
                None => {}
            }
        }
        let candidates = match &accepted {
            // The id it was accepted under (valid: it was chosen from these same checks).
            Some(r) => DeviceId::parse(&r.device_id).into_iter().collect(),
            None => match candidates(&token) {
                Ok(c) => c,
                Err(e) => return Ok(Err(EnrollError::Issue(e))),
            },
        };
        let mut chosen = None;
        for id in &candidates {
            let exists: Option<String> = in_tx!(tx, |ex| sqlx::query_scalar(
                "SELECT id FROM devices WHERE id = $1"
            )
            .bind(id.as_str())
            .fetch_optional(ex)
            .await)?;
            // An id a waiting device holds is taken too.
            if exists.is_none()
                && !requests::holds_id(&mut tx, id.as_str(), applicant.key_fingerprint).await?
            {
                chosen = Some(id.clone());
                break;
            }
        }
        let Some(chosen) = chosen else {
            let first = candidates
                .first()
                .map(ToString::to_string)
                .unwrap_or_default();
            return Ok(Err(EnrollError::Refused(EnrollRefusal::DeviceExists(
                first,
            ))));
        };
        if token.require_approval && accepted.is_none() {
            // Each open request holds one of the token's uses, so a leaked token cannot
            // queue more devices than it may enroll.
            let limit = token.max_uses.unwrap_or(1);
            if token.uses + requests::open_count(&mut tx, &token.id).await? >= limit {
                return Ok(Err(EnrollError::Refused(EnrollRefusal::TokenExhausted(
                    limit,
                ))));
            }
            let request = requests::insert(
                &mut tx,
                &token.id,
                chosen.as_str(),
                applicant.key_fingerprint,
                applicant.source,
            )
            .await?;
            tx.commit().await?;
            return Ok(Err(EnrollError::Pending(request, true)));
        }
        let (device, extra) = match issue(&token, chosen) {
            Ok(d) => d,
            Err(e) => return Ok(Err(EnrollError::Issue(e))),
        };
        in_tx!(tx, |ex| sqlx::query(
            "INSERT INTO devices (id, labels, enrolled_at, enrolled_by) VALUES ($1, $2, $3, $4)",
        )
        .bind(device.id.as_str())
        .bind(serde_json::to_string(&device.labels)?)
        .bind(now)
        .bind(&token.id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        in_tx!(tx, |ex| sqlx::query(
            "INSERT INTO certificates (serial, device_id, issued_at, not_after, public_key_alg, \
             public_key) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(&device.serial)
        .bind(device.id.as_str())
        .bind(now)
        .bind(device.not_after * 1000)
        .bind(device.public_key_alg)
        .bind(&device.public_key)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        // A single-use token is spent; a provisioning token counts the use, conditionally
        // on the count read, so two enrollments at once cannot both take the last one.
        let used = match token.max_uses {
            None => in_tx!(tx, |ex| sqlx::query(
                "UPDATE enrollment_tokens SET used_at = $1, used_by = $2 WHERE id = $3 \
                 AND used_at IS NULL",
            )
            .bind(now)
            .bind(device.id.as_str())
            .bind(&token.id)
            .execute(ex)
            .await
            .map(|r| r.rows_affected()))?,
            Some(_) => in_tx!(tx, |ex| sqlx::query(
                "UPDATE enrollment_tokens SET uses = uses + 1, used_by = $1 WHERE id = $2 \
                 AND uses = $3",
            )
            .bind(device.id.as_str())
            .bind(&token.id)
            .bind(token.uses)
            .execute(ex)
            .await
            .map(|r| r.rows_affected()))?,
        };
        if used != 1 {
            return Ok(Err(EnrollError::Refused(EnrollRefusal::UsedToken)));
        }
        if let Some(r) = &accepted {
            requests::remove(&mut tx, &r.id).await?;
        }
        tx.commit().await?;
        Ok(Ok((device, extra)))
    }

    /// One device.
    pub async fn device(&self, id: &str) -> Result<Option<DeviceRow>, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_as(DEVICE_SELECT_BY_ID)
            .bind(id)
            .fetch_optional(ex)
            .await)?)
    }

    /// All devices ordered by id.
    pub async fn list_devices(&self) -> Result<Vec<DeviceRow>, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_as(DEVICE_SELECT_ALL)
            .fetch_all(ex)
            .await)?)
    }

    /// Marks the device and all its certificates revoked (certificates of an already
    /// revoked device too, should one have been missed).
    pub async fn revoke_device(&self, id: &str) -> Result<RevokeOutcome, StoreError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let before: Option<Option<i64>> = in_tx!(tx, |ex| sqlx::query_scalar(
            "SELECT revoked_at FROM devices WHERE id = $1"
        )
        .bind(id)
        .fetch_optional(ex)
        .await)?;
        let outcome = match before {
            None => return Ok(RevokeOutcome::Unknown),
            Some(Some(_)) => RevokeOutcome::AlreadyRevoked,
            Some(None) => RevokeOutcome::Revoked,
        };
        in_tx!(tx, |ex| {
            sqlx::query(
            "UPDATE devices SET revoked_at = COALESCE(revoked_at, $1), online = FALSE WHERE id = $2",
        )
        .bind(now)
        .bind(id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected())
        })?;
        in_tx!(tx, |ex| sqlx::query(
            "UPDATE certificates SET revoked_at = $1 WHERE device_id = $2 AND revoked_at IS NULL",
        )
        .bind(now)
        .bind(id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        tx.commit().await?;
        Ok(outcome)
    }

    /// Marks every device offline (at start-up: no connection survives a restart).
    pub async fn set_all_offline(&self) -> Result<(), StoreError> {
        writing!(self, |ex| sqlx::query(
            "UPDATE devices SET online = FALSE WHERE online = TRUE"
        )
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// Replaces a device's labels. Returns false for an unknown device.
    pub async fn set_device_labels(&self, id: &str, labels: &Labels) -> Result<bool, StoreError> {
        let r = writing!(self, |ex| sqlx::query(
            "UPDATE devices SET labels = $1 WHERE id = $2"
        )
        .bind(serde_json::to_string(labels)?)
        .bind(id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(r == 1)
    }

    /// Samples a device's spool has reported dropped, ever.
    pub async fn spool_dropped_total(&self, device: &str) -> Result<i64, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_scalar(
            "SELECT spool_dropped_total FROM devices WHERE id = $1"
        )
        .bind(device)
        .fetch_optional(ex)
        .await)?
        .unwrap_or(0))
    }

    /// Marks offline the online devices heard from before `cutoff_ms` (or never); returns
    /// their ids. Presence when devices connect to an external broker, which does not tell
    /// its subscribers who is connected.
    pub async fn mark_unheard_offline(&self, cutoff_ms: i64) -> Result<Vec<String>, StoreError> {
        let mut tx = self.write_tx().await?;
        let ids: Vec<String> = in_tx!(tx, |ex| sqlx::query_scalar(
            "UPDATE devices SET online = FALSE WHERE online = TRUE \
             AND (last_seen IS NULL OR last_seen < $1) RETURNING id"
        )
        .bind(cutoff_ms)
        .fetch_all(ex)
        .await)?;
        tx.commit().await?;
        Ok(ids)
    }

    /// Devices by state, in one pass.
    pub async fn device_counts(&self) -> Result<DeviceCounts, StoreError> {
        static COUNTS: LazyLock<String> = LazyLock::new(|| {
            format!(
                "SELECT {} AS enrolled, {} AS online, {} AS revoked FROM devices",
                dialect::count_if("revoked_at IS NULL"),
                dialect::count_if("revoked_at IS NULL AND online = TRUE"),
                dialect::count_if("revoked_at IS NOT NULL"),
            )
        });
        let (enrolled, online, revoked): (i64, i64, i64) =
            reading!(self, |ex| sqlx::query_as(COUNTS.as_str())
                .fetch_one(ex)
                .await)?;
        Ok(DeviceCounts {
            enrolled,
            online,
            offline: enrolled - online,
            revoked,
        })
    }

    /// Fleet totals with the number of online devices that have an alert.
    pub async fn fleet_summary(&self) -> Result<FleetSummary, StoreError> {
        let counts = self.device_counts().await?;
        let alerting: i64 = reading!(self, |ex| {
            let sql = format!(
                "SELECT COUNT(*) FROM devices d JOIN telemetry t \
                 ON t.device_id = d.id AND t.seq = d.last_seq WHERE {}",
                alerts::alerting_sql::<DB>()
            );
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(ex)
                .await
        })?;
        Ok(FleetSummary {
            enrolled: counts.enrolled,
            online: counts.online,
            offline: counts.offline,
            alerting,
            revoked: counts.revoked,
        })
    }
}
