//! SQL for `enrollment_requests`: devices enrolled by a token that requires approval wait
//! here until an admin accepts or rejects them. [`Store::enroll`] records and reads them
//! inside its transaction; admins list and decide them here.

use crate::store::db::Tx;

use super::{Store, StoreError, now_ms};

/// A device waiting for (or given) an admin's decision.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow, serde::Serialize)]
pub struct RequestRow {
    pub id: String,
    /// The token it enrolls with.
    pub token_id: String,
    /// The id it gets once accepted, held for it meanwhile.
    pub device_id: String,
    /// SHA-256 (hex) of the public key the device made: what finds the request again.
    pub key_fingerprint: String,
    /// Where it asked from, last time.
    pub source: String,
    pub created_at: i64,
    pub last_seen_at: i64,
    /// `pending`, `accepted` or `rejected`.
    pub status: String,
    pub decided_by: Option<String>,
    pub decided_at: Option<i64>,
}

pub const PENDING: &str = "pending";
pub const ACCEPTED: &str = "accepted";
pub const REJECTED: &str = "rejected";

macro_rules! request_select {
    ($tail:literal) => {
        concat!(
            "SELECT id, token_id, device_id, key_fingerprint, source, created_at, last_seen_at, ",
            "status, decided_by, decided_at FROM enrollment_requests ",
            $tail
        )
    };
}

/// The answer to an admin's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decided {
    /// The request, as it is now.
    Done(RequestRow),
    /// No request with that id (or device id).
    Unknown,
    /// It was decided already: the request as it is.
    AlreadyDecided(RequestRow),
}

/// The request of the device with this key for this token.
pub(super) async fn find(
    tx: &mut Tx,
    token_id: &str,
    key_fingerprint: &str,
) -> Result<Option<RequestRow>, StoreError> {
    Ok(in_tx!(*tx, |ex| sqlx::query_as(request_select!(
        "WHERE token_id = $1 AND key_fingerprint = $2"
    ))
    .bind(token_id)
    .bind(key_fingerprint)
    .fetch_optional(ex)
    .await)?)
}

/// Notes that the device asked again (from `source`).
pub(super) async fn touch(tx: &mut Tx, id: &str, source: &str) -> Result<(), StoreError> {
    in_tx!(*tx, |ex| sqlx::query(
        "UPDATE enrollment_requests SET last_seen_at = $1, source = $2 WHERE id = $3"
    )
    .bind(now_ms())
    .bind(source)
    .bind(id)
    .execute(ex)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// Requests of this token still open (pending or accepted but not enrolled yet): each
/// holds one of the token's uses.
pub(super) async fn open_count(tx: &mut Tx, token_id: &str) -> Result<i64, StoreError> {
    Ok(in_tx!(*tx, |ex| sqlx::query_scalar(
        "SELECT COUNT(*) FROM enrollment_requests WHERE token_id = $1 AND status <> 'rejected'",
    )
    .bind(token_id)
    .fetch_one(ex)
    .await)?)
}

/// True when a request other than this key's holds `device_id`.
pub(super) async fn holds_id(
    tx: &mut Tx,
    device_id: &str,
    key_fingerprint: &str,
) -> Result<bool, StoreError> {
    let held: Option<i64> = in_tx!(*tx, |ex| {
        sqlx::query_scalar(
        "SELECT CAST(1 AS BIGINT) FROM enrollment_requests WHERE device_id = $1 AND key_fingerprint <> $2 \
         AND status <> 'rejected' LIMIT 1",
    )
    .bind(device_id)
    .bind(key_fingerprint)
    .fetch_optional(ex)
    .await
    })?;
    Ok(held.is_some())
}

/// Records a new pending request.
pub(super) async fn insert(
    tx: &mut Tx,
    token_id: &str,
    device_id: &str,
    key_fingerprint: &str,
    source: &str,
) -> Result<RequestRow, StoreError> {
    let now = now_ms();
    let row = RequestRow {
        id: new_id(),
        token_id: token_id.to_owned(),
        device_id: device_id.to_owned(),
        key_fingerprint: key_fingerprint.to_owned(),
        source: source.to_owned(),
        created_at: now,
        last_seen_at: now,
        status: PENDING.to_owned(),
        decided_by: None,
        decided_at: None,
    };
    in_tx!(*tx, |ex| sqlx::query(
        "INSERT INTO enrollment_requests (id, token_id, device_id, key_fingerprint, source, \
         created_at, last_seen_at, status) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(&row.id)
    .bind(&row.token_id)
    .bind(&row.device_id)
    .bind(&row.key_fingerprint)
    .bind(&row.source)
    .bind(row.created_at)
    .bind(row.last_seen_at)
    .bind(&row.status)
    .execute(ex)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(row)
}

/// Removes an accepted request once its device is enrolled.
pub(super) async fn remove(tx: &mut Tx, id: &str) -> Result<(), StoreError> {
    in_tx!(*tx, |ex| sqlx::query(
        "DELETE FROM enrollment_requests WHERE id = $1"
    )
    .bind(id)
    .execute(ex)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// 16 random hex characters.
fn new_id() -> String {
    let bytes: [u8; 8] = rand::random();
    hex::encode(bytes)
}

impl Store {
    /// Enrollment requests, newest first: pending and accepted ones (waiting for their
    /// device to ask again), and with `all` the rejected ones too.
    pub async fn enrollment_requests(&self, all: bool) -> Result<Vec<RequestRow>, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_as(request_select!(
            "WHERE status <> 'rejected' OR $1 ORDER BY created_at DESC, id"
        ))
        .bind(all)
        .fetch_all(ex)
        .await)?)
    }

    /// Accepts (`accept`) or rejects a pending request, named by its id or its device id;
    /// conditional on it still being pending, so two admins deciding at once cannot both
    /// win.
    pub async fn decide_enrollment_request(
        &self,
        id_or_device: &str,
        accept: bool,
        by: &str,
    ) -> Result<Decided, StoreError> {
        let mut tx = self.write_tx().await?;
        let found: Option<RequestRow> = in_tx!(tx, |ex| sqlx::query_as(request_select!(
            "WHERE id = $1 OR (device_id = $2 AND status <> 'rejected') \
             ORDER BY status = 'pending' DESC LIMIT 1"
        ))
        .bind(id_or_device)
        .bind(id_or_device)
        .fetch_optional(ex)
        .await)?;
        let Some(mut row) = found else {
            return Ok(Decided::Unknown);
        };
        if row.status != PENDING {
            return Ok(Decided::AlreadyDecided(row));
        }
        let status = if accept { ACCEPTED } else { REJECTED };
        let now = now_ms();
        let changed = in_tx!(tx, |ex| sqlx::query(
            "UPDATE enrollment_requests SET status = $1, decided_by = $2, decided_at = $3 \
             WHERE id = $4 AND status = 'pending'",
        )
        .bind(status)
        .bind(by)
        .bind(now)
        .bind(&row.id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        if changed != 1 {
            return Ok(Decided::AlreadyDecided(row));
        }
        tx.commit().await?;
        row.status = status.to_owned();
        row.decided_by = Some(by.to_owned());
        row.decided_at = Some(now);
        Ok(Decided::Done(row))
    }
}
