//! SQL for the `approvals` table: requests that wait for a second admin, and their decision.
//! A decision is a conditional update from `pending`, so two admins deciding at once cannot
//! both win, and an expired request cannot be approved.

use super::{Store, StoreError, now_ms};
use crate::model::approvals::{ApprovalKind, ApprovalStatus};

/// A stored approval request.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApprovalRow {
    pub id: String,
    #[sqlx(try_from = "String")]
    pub kind: ApprovalKind,
    /// The exact request, JSON.
    pub request: String,
    /// One line for people: what it does, to how many devices.
    pub summary: String,
    pub device_count: i64,
    /// Audit actor of the requester (`user:NAME` or `cli:USER`).
    pub requested_by: String,
    /// The requesting user, when it came through the API.
    pub requester_id: Option<i64>,
    pub created_at: i64,
    pub expires_at: i64,
    #[sqlx(try_from = "String")]
    pub status: ApprovalStatus,
    pub decided_by: Option<String>,
    pub decided_at: Option<i64>,
    /// The device ids bound at approval (JSON array).
    pub targets: Option<String>,
    /// What carrying it out did, or why it failed.
    pub outcome: Option<String>,
}

/// A new approval request.
#[derive(Debug, Clone)]
pub struct NewApproval<'a> {
    pub id: &'a str,
    pub kind: ApprovalKind,
    pub request: &'a str,
    pub summary: &'a str,
    pub device_count: i64,
    pub requested_by: &'a str,
    pub requester_id: Option<i64>,
    pub expires_at: i64,
}

/// `SELECT <approval columns> FROM approvals <tail>`: one column list for every query.
macro_rules! approval_select {
    ($tail:literal) => {
        concat!(
            "SELECT id, kind, request, summary, device_count, requested_by, requester_id, ",
            "created_at, expires_at, status, decided_by, decided_at, targets, outcome ",
            "FROM approvals ",
            $tail
        )
    };
}

impl Store {
    /// Stores a pending request.
    pub async fn insert_approval(&self, a: &NewApproval<'_>) -> Result<(), StoreError> {
        writing!(self, |ex| {
            sqlx::query(
            "INSERT INTO approvals (id, kind, request, summary, device_count, requested_by, \
             requester_id, created_at, expires_at, status) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(a.id)
        .bind(a.kind.as_str())
        .bind(a.request)
        .bind(a.summary)
        .bind(a.device_count)
        .bind(a.requested_by)
        .bind(a.requester_id)
        .bind(now_ms())
        .bind(a.expires_at)
        .bind(ApprovalStatus::Pending.as_str())
        .execute(ex)
        .await
        .map(|r| r.rows_affected())
        })?;
        Ok(())
    }

    /// One request.
    pub async fn approval(&self, id: &str) -> Result<Option<ApprovalRow>, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_as(approval_select!(
            "WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(ex)
        .await)?)
    }

    /// Requests, newest first; only pending ones (not yet expired) with `pending_only`.
    pub async fn list_approvals(
        &self,
        pending_only: bool,
        limit: i64,
    ) -> Result<Vec<ApprovalRow>, StoreError> {
        let now = now_ms();
        Ok(reading!(self, |ex| sqlx::query_as(approval_select!(
            "WHERE ($1 = FALSE OR (status = 'pending' AND expires_at > $2)) \
             ORDER BY created_at DESC, id LIMIT $3"
        ))
        .bind(pending_only)
        .bind(now)
        .bind(limit)
        .fetch_all(ex)
        .await)?)
    }

    /// Moves a pending, unexpired request to `to` (approved or rejected), recording who
    /// decided and, for an approval, the device set it binds. False when it was no longer
    /// pending or had expired: someone else decided first, or it is too late.
    pub async fn decide_approval(
        &self,
        id: &str,
        to: ApprovalStatus,
        decided_by: &str,
        targets: Option<&[String]>,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let targets = targets.map(serde_json::to_string).transpose()?;
        let r = writing!(self, |ex| sqlx::query(
            "UPDATE approvals SET status = $1, decided_by = $2, decided_at = $3, targets = $4 \
             WHERE id = $5 AND status = 'pending' AND expires_at > $6",
        )
        .bind(to.as_str())
        .bind(decided_by)
        .bind(now)
        .bind(targets)
        .bind(id)
        .bind(now)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(r == 1)
    }

    /// Records what carrying out an approved request did (or why it failed).
    pub async fn approval_outcome(
        &self,
        id: &str,
        status: ApprovalStatus,
        outcome: &str,
    ) -> Result<(), StoreError> {
        writing!(self, |ex| sqlx::query(
            "UPDATE approvals SET status = $1, outcome = $2 WHERE id = $3"
        )
        .bind(status.as_str())
        .bind(outcome)
        .bind(id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        Ok(())
    }

    /// How many enabled admins there are (a second approver needs at least two).
    pub async fn enabled_admin_count(&self) -> Result<i64, StoreError> {
        Ok(reading!(self, |ex| sqlx::query_scalar(
            super::users::ENABLED_ADMINS
        )
        .fetch_one(ex)
        .await)?)
    }
}

impl ApprovalRow {
    /// The request as the API shows it at `now_ms` (a pending request past its expiry is
    /// expired).
    pub fn view(&self, now_ms: i64) -> crate::model::approvals::ApprovalView {
        crate::model::approvals::ApprovalView {
            id: self.id.clone(),
            kind: self.kind,
            summary: self.summary.clone(),
            device_count: self.device_count,
            // Written by us as JSON; shown as text if it ever is not.
            request: serde_json::from_str(&self.request)
                .unwrap_or_else(|_| serde_json::Value::String(self.request.clone())),
            requested_by: self.requested_by.clone(),
            created_at: self.created_at,
            expires_at: self.expires_at,
            status: self.status.at(self.expires_at, now_ms),
            decided_by: self.decided_by.clone(),
            decided_at: self.decided_at,
            targets: self
                .targets
                .as_deref()
                .and_then(|t| serde_json::from_str(t).ok()),
            outcome: self.outcome.clone(),
        }
    }
}
