//! SQL for the `commands` table: creation, dispatch, receipts, cancellation, expiry and the
//! paged listing.

use crate::store::db::Tx;
use pifleet_shared::command::{Action, CommandId};
use serde::Serialize;
use sqlx::QueryBuilder;
use sqlx::error::BoxDynError;

use super::{Store, StoreError, now_ms, sql_int};
use crate::model::commands::CommandSummary;
use crate::model::commands::Status;
use crate::model::lifecycle;

#[cfg(test)]
mod tests;

/// A command to create (queued).
#[derive(Debug, Clone)]
pub struct NewCommand {
    pub id: CommandId,
    pub device: String,
    pub action: Action,
    pub expires_at: i64,
    pub answer_timeout_ms: i64,
}

/// A stored command.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct CommandRow {
    pub id: String,
    pub device_id: String,
    #[sqlx(try_from = "crate::store::db::JsonText<serde_json::Value>")]
    pub action: serde_json::Value,
    pub action_kind: String,
    pub status: Status,
    pub reason: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub issued_at: Option<i64>,
    pub sent_at: Option<i64>,
    pub accepted_at: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub exit_code: Option<i64>,
    pub duration_ms: Option<i64>,
    /// Captured standard output as text; `None` in listings, which do not read the bodies.
    #[sqlx(default, try_from = "OutputText")]
    pub stdout: Option<String>,
    pub stdout_len: Option<i64>,
    pub stdout_sha256: Option<String>,
    #[sqlx(default, try_from = "OutputText")]
    pub stderr: Option<String>,
    pub stderr_len: Option<i64>,
    pub stderr_sha256: Option<String>,
}

impl CommandRow {
    /// The action, as signed and sent.
    pub fn parsed_action(&self) -> Result<Action, StoreError> {
        Ok(serde_json::from_value(self.action.clone())?)
    }
}

/// What cancelling a command did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cancel {
    /// It was queued and is now cancelled.
    Cancelled,
    /// It is in this state, which cannot be cancelled (already sent, finished, or
    /// cancelled before).
    Refused(Status),
    /// No such command.
    Unknown,
}

/// What a verified receipt writes.
#[derive(Debug, Clone)]
pub struct ReceiptUpdate {
    pub outcome: pifleet_shared::command::Outcome,
    pub exit_code: Option<i32>,
    pub duration_ms: u64,
    pub stdout: pifleet_shared::command::Output,
    pub stderr: pifleet_shared::command::Output,
    pub body: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Every column of a [`CommandRow`].
const COLUMNS: &str = "id, device_id, action, action_kind, status, reason, created_at, \
    expires_at, issued_at, sent_at, accepted_at, started_at, finished_at, exit_code, \
    duration_ms, stdout, stdout_len, stdout_sha256, stderr, stderr_len, stderr_sha256";

/// The columns of a [`CommandRow`] without the output bodies (their lengths are there).
const LISTING_COLUMNS: &str = "id, device_id, action, action_kind, status, reason, \
    created_at, expires_at, issued_at, sent_at, accepted_at, started_at, finished_at, \
    exit_code, duration_ms, stdout_len, stdout_sha256, stderr_len, stderr_sha256";

/// A stored command status this version does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown command status {0:?}")]
struct UnknownStatus(String);

// Statuses are stored by name; an unknown name is a decode error.
super::db::stored_by_name!(Status, |name| Ok(
    Status::parse(name).ok_or_else(|| UnknownStatus(name.to_owned()))?
));

/// Captured output as stored (bytes, which the agent may have cut inside a character), read
/// as text with invalid UTF-8 replaced.
struct OutputText(Option<String>);

impl<DB: sqlx::Database> sqlx::Type<DB> for OutputText
where
    Vec<u8>: sqlx::Type<DB>,
{
    fn type_info() -> DB::TypeInfo {
        <Vec<u8> as sqlx::Type<DB>>::type_info()
    }

    fn compatible(ty: &DB::TypeInfo) -> bool {
        <Vec<u8> as sqlx::Type<DB>>::compatible(ty)
    }
}

impl<'r, DB: sqlx::Database> sqlx::Decode<'r, DB> for OutputText
where
    Option<&'r [u8]>: sqlx::Decode<'r, DB>,
{
    fn decode(value: DB::ValueRef<'r>) -> Result<Self, BoxDynError> {
        let bytes = <Option<&[u8]> as sqlx::Decode<DB>>::decode(value)?;
        Ok(Self(bytes.map(|b| String::from_utf8_lossy(b).into_owned())))
    }
}

impl From<OutputText> for Option<String> {
    fn from(text: OutputText) -> Self {
        text.0
    }
}

/// Inserts queued commands inside the caller's transaction (a rollout creates its deploy
/// commands together with its devices' new states).
pub(super) async fn insert_command_rows(
    tx: &mut Tx,
    cmds: &[NewCommand],
    now: i64,
) -> Result<(), StoreError> {
    for c in cmds {
        in_tx!(*tx, |ex| sqlx::query(
            "INSERT INTO commands (id, device_id, action, action_kind, status, created_at, \
             expires_at, answer_timeout_ms) VALUES ($1, $2, $3, $4, 'queued', $5, $6, $7)",
        )
        .bind(c.id.to_string())
        .bind(&c.device)
        .bind(serde_json::to_string(&c.action)?)
        .bind(c.action.kind())
        .bind(now)
        .bind(c.expires_at)
        .bind(c.answer_timeout_ms)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
    }
    Ok(())
}

/// Cancels a command inside the caller's transaction if it has not been sent yet.
pub(super) async fn cancel_if_queued(
    tx: &mut Tx,
    id: &str,
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    in_tx!(*tx, |ex| sqlx::query(
        "UPDATE commands SET status = 'cancelled', reason = $1, finished_at = $2 \
         WHERE id = $3 AND status = 'queued'",
    )
    .bind(reason)
    .bind(now)
    .bind(id)
    .execute(ex)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

fn push_command_filter<DB: sqlx::Database>(
    qb: &mut QueryBuilder<DB>,
    device: Option<&str>,
    status: Option<Status>,
    action_kind: Option<&str>,
) where
    for<'t> String: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
    for<'t> &'static str: sqlx::Encode<'t, DB> + sqlx::Type<DB>,
{
    qb.push(" WHERE 1 = 1");
    if let Some(kind) = action_kind {
        qb.push(" AND action_kind = ").push_bind(kind.to_owned());
    }
    if let Some(device) = device {
        qb.push(" AND device_id = ").push_bind(device.to_owned());
    }
    if let Some(status) = status {
        qb.push(" AND status = ").push_bind(status.as_str());
    }
}

impl Store {
    /// Creates queued commands, all or nothing.
    pub async fn insert_commands(&self, cmds: &[NewCommand]) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        insert_command_rows(&mut tx, cmds, now_ms()).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Claims up to `limit` commands to send, marking them sent (again) and signed now, and
    /// returns them as claimed, oldest first: unexpired commands of online devices, queued
    /// ones and sent ones the device has not acknowledged since `resend_before` (a delivery
    /// can be lost, e.g. published before the device subscribed; the device's journal makes
    /// a re-delivery harmless).
    ///
    /// The commands table is the outbox of every controller sharing the database: one
    /// statement picks and marks the rows, and on PostgreSQL the pick skips rows another
    /// controller's claim holds (`FOR UPDATE … SKIP LOCKED`), so controllers claiming at
    /// once take different commands, without waiting, and no command is claimed twice. A
    /// controller that dies between its claim and its send leaves the command sent, and
    /// it is claimed again after `resend_before`.
    pub async fn claim_dispatchable(
        &self,
        resend_before: i64,
        limit: i64,
    ) -> Result<Vec<CommandRow>, StoreError> {
        let now = now_ms();
        let mut rows: Vec<CommandRow> = writing!(self, |ex| {
            let sql = format!(
                "UPDATE commands SET issued_at = $1, sent_at = COALESCE(sent_at, $2), \
                 resent_at = CASE WHEN status = 'sent' THEN $3 ELSE resent_at END, \
                 status = 'sent' WHERE id IN (SELECT c.id FROM commands c \
                 JOIN devices d ON d.id = c.device_id \
                 WHERE (c.status = 'queued' OR (c.status = 'sent' \
                 AND COALESCE(c.resent_at, c.sent_at) <= $4)) AND c.expires_at > $5 \
                 AND d.online = TRUE AND d.revoked_at IS NULL \
                 ORDER BY c.created_at LIMIT $6{}) RETURNING {COLUMNS}",
                <DB as crate::store::dialect::Dialect>::CLAIM_ROWS_OF_C
            );
            sqlx::query_as(sqlx::AssertSqlSafe(sql))
                .bind(now)
                .bind(now)
                .bind(now)
                .bind(resend_before)
                .bind(now)
                .bind(limit)
                .fetch_all(ex)
                .await
        })?;
        rows.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(rows)
    }

    /// The actions of `device`'s deploy and rollback commands that are on their way or
    /// running there (sent, accepted or running): what the device may download.
    pub async fn release_actions_in_flight(&self, device: &str) -> Result<Vec<Action>, StoreError> {
        let actions: Vec<String> = reading!(self, |ex| sqlx::query_scalar(
            "SELECT action FROM commands WHERE device_id = $1 \
             AND action_kind IN ('deploy', 'rollback') \
             AND status IN ('sent', 'accepted', 'running')",
        )
        .bind(device)
        .fetch_all(ex)
        .await)?;
        actions
            .iter()
            .map(|a| Ok(serde_json::from_str(a)?))
            .collect()
    }

    /// One command.
    pub async fn command(&self, id: &str) -> Result<Option<CommandRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM commands WHERE id = $1");
        Ok(reading!(self, |ex| sqlx::query_as(sqlx::AssertSqlSafe(
            sql
        ))
        .bind(id)
        .fetch_optional(ex)
        .await)?)
    }

    /// Commands, newest first, optionally for one device and/or in one status.
    pub async fn list_commands(
        &self,
        device: Option<&str>,
        status: Option<Status>,
        limit: i64,
    ) -> Result<Vec<CommandRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM commands WHERE ($1 IS NULL OR device_id = $2) \
             AND ($3 IS NULL OR status = $4) ORDER BY created_at DESC, id LIMIT $5"
        );
        let st = status.map(Status::as_str);
        Ok(reading!(self, |ex| sqlx::query_as(sqlx::AssertSqlSafe(
            sql
        ))
        .bind(device)
        .bind(device)
        .bind(st)
        .bind(st)
        .bind(limit)
        .fetch_all(ex)
        .await)?)
    }

    /// Commands newest first, without their output bodies (the lengths are there), and the
    /// number of matching commands.
    pub async fn command_page(
        &self,
        device: Option<&str>,
        status: Option<Status>,
        action_kind: Option<&str>,
        limit: i64,
        offset: i64,
    ) -> Result<(i64, Vec<CommandRow>), StoreError> {
        reading!(self, |ex| {
            let mut count: QueryBuilder<DB> = QueryBuilder::new("SELECT COUNT(*) FROM commands");
            push_command_filter(&mut count, device, status, action_kind);
            let total: i64 = count.build_query_scalar().fetch_one(ex).await?;
            let mut qb: QueryBuilder<DB> = QueryBuilder::new("SELECT ");
            qb.push(LISTING_COLUMNS).push(" FROM commands");
            push_command_filter(&mut qb, device, status, action_kind);
            qb.push(" ORDER BY created_at DESC, id DESC LIMIT ")
                .push_bind(limit)
                .push(" OFFSET ")
                .push_bind(offset);
            let items = qb.build_query_as().fetch_all(ex).await?;
            Ok((total, items))
        })
    }

    /// Cancels a command that has not been sent yet. Returns its status after the attempt.
    pub async fn cancel_command(&self, id: &str) -> Result<Cancel, StoreError> {
        let mut tx = self.write_tx().await?;
        let cur: Option<Status> = in_tx!(tx, |ex| sqlx::query_scalar(
            "SELECT status FROM commands WHERE id = $1"
        )
        .bind(id)
        .fetch_optional(ex)
        .await)?;
        let Some(cur) = cur else {
            return Ok(Cancel::Unknown);
        };
        if !lifecycle::cancellable(cur) {
            return Ok(Cancel::Refused(cur));
        }
        in_tx!(tx, |ex| sqlx::query(
            "UPDATE commands SET status = 'cancelled', reason = 'cancelled by operator', \
             finished_at = $1 WHERE id = $2",
        )
        .bind(now_ms())
        .bind(id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        tx.commit().await?;
        Ok(Cancel::Cancelled)
    }

    /// Applies a verified receipt of `device` through the lifecycle table. Returns the new
    /// status, or None when the receipt was ignored (unknown command, other device's
    /// command, or a transition the table refuses).
    pub async fn apply_receipt(
        &self,
        id: &str,
        device: &str,
        u: &ReceiptUpdate,
    ) -> Result<Option<Status>, StoreError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let cur: Option<Status> = in_tx!(tx, |ex| sqlx::query_scalar(
            "SELECT status FROM commands WHERE id = $1 AND device_id = $2"
        )
        .bind(id)
        .bind(device)
        .fetch_optional(ex)
        .await)?;
        let Some(cur) = cur else {
            return Ok(None);
        };
        let Some(next) = lifecycle::on_receipt(cur, &u.outcome) else {
            return Ok(None);
        };
        let reason = match &u.outcome {
            pifleet_shared::command::Outcome::Failed(r)
            | pifleet_shared::command::Outcome::Rejected(r) => Some(r.clone()),
            _ => None,
        };
        let (accepted, started, finished) = match next {
            Status::Accepted => (Some(now), None, None),
            Status::Running => (None, Some(now), None),
            _ => (None, None, Some(now)),
        };
        in_tx!(tx, |ex| sqlx::query(
            "UPDATE commands SET status = $1, reason = COALESCE($2, reason), \
             accepted_at = COALESCE(accepted_at, $3), started_at = COALESCE(started_at, $4), \
             finished_at = COALESCE(finished_at, $5), receipt = $6, receipt_signature = $7 \
             WHERE id = $8",
        )
        .bind(next.as_str())
        .bind(reason)
        .bind(accepted)
        .bind(started)
        .bind(finished)
        .bind(&u.body)
        .bind(&u.signature)
        .bind(id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        if next.is_final() {
            let hex = |b: &[u8]| (!b.is_empty()).then(|| pifleet_shared::token::to_hex(b));
            in_tx!(tx, |ex| {
                sqlx::query(
                "UPDATE commands SET exit_code = $1, duration_ms = $2, stdout = $3, stdout_len = $4, \
                 stdout_sha256 = $5, stderr = $6, stderr_len = $7, stderr_sha256 = $8 WHERE id = $9",
            )
            .bind(u.exit_code)
            .bind(sql_int(u.duration_ms))
            .bind(&u.stdout.data)
            .bind(sql_int(u.stdout.len))
            .bind(hex(&u.stdout.sha256))
            .bind(&u.stderr.data)
            .bind(sql_int(u.stderr.len))
            .bind(hex(&u.stderr.sha256))
            .bind(id)
            .execute(ex)
            .await
            .map(|r| r.rows_affected())
            })?;
        }
        tx.commit().await?;
        Ok(Some(next))
    }

    /// Expires commands past their expiry that never got going, and fails commands that
    /// were sent but never finished within their answer timeout. Returns (expired, timed out).
    pub async fn expire_commands(&self) -> Result<(u64, u64), StoreError> {
        let now = now_ms();
        let expired = writing!(self, |ex| {
            sqlx::query(
            "UPDATE commands SET status = 'expired', reason = 'expired before the device accepted it', \
             finished_at = $1 WHERE status IN ('queued', 'sent') AND expires_at <= $2",
        )
        .bind(now)
        .bind(now)
        .execute(ex)
        .await
        .map(|r| r.rows_affected())
        })?;
        let timed_out = writing!(self, |ex| {
            sqlx::query(
            "UPDATE commands SET status = 'failed', reason = 'timeout: no result from the device', \
             finished_at = $1 WHERE status IN ('sent', 'accepted', 'running') \
             AND sent_at + answer_timeout_ms <= $2",
        )
        .bind(now)
        .bind(now)
        .execute(ex)
        .await
        .map(|r| r.rows_affected())
        })?;
        Ok((expired, timed_out))
    }
}

/// A stored command as the API and the live stream show it (without its output).
impl TryFrom<&CommandRow> for CommandSummary {
    type Error = StoreError;

    fn try_from(c: &CommandRow) -> Result<Self, StoreError> {
        Ok(CommandSummary {
            id: c.id.clone(),
            device: c.device_id.clone(),
            action: c.parsed_action()?.into(),
            status: c.status,
            reason: c.reason.clone(),
            created_at: c.created_at,
            expires_at: c.expires_at,
            sent_at: c.sent_at,
            accepted_at: c.accepted_at,
            started_at: c.started_at,
            finished_at: c.finished_at,
            exit_code: c.exit_code,
            duration_ms: c.duration_ms,
            stdout_len: c.stdout_len,
            stderr_len: c.stderr_len,
        })
    }
}
