//! SQL for the `commands` table: creation, dispatch, receipts, cancellation, expiry and the
//! paged listing.

use pifleet_shared::command::{Action, CommandId};
use serde::Serialize;
use sqlx::error::BoxDynError;
use sqlx::sqlite::{SqliteTypeInfo, SqliteValueRef};
use sqlx::{QueryBuilder, Sqlite, ValueRef};

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
    #[sqlx(json)]
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

/// Statuses are stored by name; an unknown name is a decode error.
impl sqlx::Type<Sqlite> for Status {
    fn type_info() -> SqliteTypeInfo {
        <str as sqlx::Type<Sqlite>>::type_info()
    }

    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <str as sqlx::Type<Sqlite>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, Sqlite> for Status {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        let name = <&str as sqlx::Decode<Sqlite>>::decode(value)?;
        Ok(Status::parse(name).ok_or_else(|| UnknownStatus(name.to_owned()))?)
    }
}

/// Captured output as stored (bytes, which the agent may have cut inside a character), read
/// as text with invalid UTF-8 replaced.
struct OutputText(Option<String>);

impl sqlx::Type<Sqlite> for OutputText {
    fn type_info() -> SqliteTypeInfo {
        <Vec<u8> as sqlx::Type<Sqlite>>::type_info()
    }

    fn compatible(ty: &SqliteTypeInfo) -> bool {
        <Vec<u8> as sqlx::Type<Sqlite>>::compatible(ty)
    }
}

impl<'r> sqlx::Decode<'r, Sqlite> for OutputText {
    fn decode(value: SqliteValueRef<'r>) -> Result<Self, BoxDynError> {
        if value.is_null() {
            return Ok(Self(None));
        }
        let bytes = <&[u8] as sqlx::Decode<Sqlite>>::decode(value)?;
        Ok(Self(Some(String::from_utf8_lossy(bytes).into_owned())))
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
    tx: &mut sqlx::Transaction<'static, Sqlite>,
    cmds: &[NewCommand],
    now: i64,
) -> Result<(), StoreError> {
    for c in cmds {
        sqlx::query(
            "INSERT INTO commands (id, device_id, action, action_kind, status, created_at, \
             expires_at, answer_timeout_ms) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?)",
        )
        .bind(c.id.to_string())
        .bind(&c.device)
        .bind(serde_json::to_string(&c.action)?)
        .bind(c.action.kind())
        .bind(now)
        .bind(c.expires_at)
        .bind(c.answer_timeout_ms)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Cancels a command inside the caller's transaction if it has not been sent yet.
pub(super) async fn cancel_if_queued(
    tx: &mut sqlx::Transaction<'static, Sqlite>,
    id: &str,
    reason: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE commands SET status = 'cancelled', reason = ?, finished_at = ? \
         WHERE id = ? AND status = 'queued'",
    )
    .bind(reason)
    .bind(now)
    .bind(id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn push_command_filter(
    qb: &mut QueryBuilder<Sqlite>,
    device: Option<&str>,
    status: Option<Status>,
    action_kind: Option<&str>,
) {
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

    /// Unexpired commands of online devices to send: queued ones, and sent ones the device
    /// has not acknowledged since `resend_before` (a delivery can be lost, e.g. published
    /// before the device subscribed; the device's journal makes a re-delivery harmless).
    pub async fn dispatchable(
        &self,
        resend_before: i64,
        limit: i64,
    ) -> Result<Vec<CommandRow>, StoreError> {
        let sql = format!(
            "SELECT {} FROM commands c JOIN devices d ON d.id = c.device_id \
             WHERE (c.status = 'queued' OR (c.status = 'sent' \
             AND COALESCE(c.resent_at, c.sent_at) <= ?)) AND c.expires_at > ? \
             AND d.online = 1 AND d.revoked_at IS NULL ORDER BY c.created_at LIMIT ?",
            COLUMNS
                .split(", ")
                .map(|c| format!("c.{c}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(resend_before)
            .bind(now_ms())
            .bind(limit)
            .fetch_all(&self.writer)
            .await?)
    }

    /// The actions of `device`'s deploy and rollback commands that are on their way or
    /// running there (sent, accepted or running): what the device may download.
    pub async fn release_actions_in_flight(&self, device: &str) -> Result<Vec<Action>, StoreError> {
        let actions: Vec<String> = sqlx::query_scalar(
            "SELECT action FROM commands WHERE device_id = ? \
             AND action_kind IN ('deploy', 'rollback') \
             AND status IN ('sent', 'accepted', 'running')",
        )
        .bind(device)
        .fetch_all(&self.reader)
        .await?;
        actions
            .iter()
            .map(|a| Ok(serde_json::from_str(a)?))
            .collect()
    }

    /// Records that a command was signed and sent (again); false if it moved on meanwhile.
    pub async fn mark_sent(&self, id: &str, issued_at: i64) -> Result<bool, StoreError> {
        let now = now_ms();
        let r = sqlx::query(
            "UPDATE commands SET issued_at = ?, sent_at = COALESCE(sent_at, ?), \
             resent_at = CASE WHEN status = 'sent' THEN ? ELSE resent_at END, status = 'sent' \
             WHERE id = ? AND status IN ('queued', 'sent')",
        )
        .bind(issued_at)
        .bind(now)
        .bind(now)
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// One command.
    pub async fn command(&self, id: &str) -> Result<Option<CommandRow>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM commands WHERE id = ?");
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.reader)
            .await?)
    }

    /// Commands, newest first, optionally for one device and/or in one status.
    pub async fn list_commands(
        &self,
        device: Option<&str>,
        status: Option<Status>,
        limit: i64,
    ) -> Result<Vec<CommandRow>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM commands WHERE (? IS NULL OR device_id = ?) \
             AND (? IS NULL OR status = ?) ORDER BY created_at DESC, id LIMIT ?"
        );
        let st = status.map(Status::as_str);
        Ok(sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(device)
            .bind(device)
            .bind(st)
            .bind(st)
            .bind(limit)
            .fetch_all(&self.reader)
            .await?)
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
        let mut count: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT COUNT(*) FROM commands");
        push_command_filter(&mut count, device, status, action_kind);
        let total: i64 = count.build_query_scalar().fetch_one(&self.reader).await?;
        let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT ");
        qb.push(LISTING_COLUMNS).push(" FROM commands");
        push_command_filter(&mut qb, device, status, action_kind);
        qb.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(limit)
            .push(" OFFSET ")
            .push_bind(offset);
        let items = qb.build_query_as().fetch_all(&self.reader).await?;
        Ok((total, items))
    }

    /// Cancels a command that has not been sent yet. Returns its status after the attempt.
    pub async fn cancel_command(&self, id: &str) -> Result<Cancel, StoreError> {
        let mut tx = self.write_tx().await?;
        let cur: Option<Status> = sqlx::query_scalar("SELECT status FROM commands WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(cur) = cur else {
            return Ok(Cancel::Unknown);
        };
        if !lifecycle::cancellable(cur) {
            return Ok(Cancel::Refused(cur));
        }
        sqlx::query(
            "UPDATE commands SET status = 'cancelled', reason = 'cancelled by operator', \
             finished_at = ? WHERE id = ?",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await?;
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
        let cur: Option<Status> =
            sqlx::query_scalar("SELECT status FROM commands WHERE id = ? AND device_id = ?")
                .bind(id)
                .bind(device)
                .fetch_optional(&mut *tx)
                .await?;
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
        sqlx::query(
            "UPDATE commands SET status = ?, reason = COALESCE(?, reason), \
             accepted_at = COALESCE(accepted_at, ?), started_at = COALESCE(started_at, ?), \
             finished_at = COALESCE(finished_at, ?), receipt = ?, receipt_signature = ? \
             WHERE id = ?",
        )
        .bind(next.as_str())
        .bind(reason)
        .bind(accepted)
        .bind(started)
        .bind(finished)
        .bind(&u.body)
        .bind(&u.signature)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        if next.is_final() {
            let hex = |b: &[u8]| (!b.is_empty()).then(|| pifleet_shared::token::to_hex(b));
            sqlx::query(
                "UPDATE commands SET exit_code = ?, duration_ms = ?, stdout = ?, stdout_len = ?, \
                 stdout_sha256 = ?, stderr = ?, stderr_len = ?, stderr_sha256 = ? WHERE id = ?",
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
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Some(next))
    }

    /// Expires commands past their expiry that never got going, and fails commands that
    /// were sent but never finished within their answer timeout. Returns (expired, timed out).
    pub async fn expire_commands(&self) -> Result<(u64, u64), StoreError> {
        let now = now_ms();
        let expired = sqlx::query(
            "UPDATE commands SET status = 'expired', reason = 'expired before the device accepted it', \
             finished_at = ? WHERE status IN ('queued', 'sent') AND expires_at <= ?",
        )
        .bind(now)
        .bind(now)
        .execute(&self.writer)
        .await?
        .rows_affected();
        let timed_out = sqlx::query(
            "UPDATE commands SET status = 'failed', reason = 'timeout: no result from the device', \
             finished_at = ? WHERE status IN ('sent', 'accepted', 'running') \
             AND sent_at + answer_timeout_ms <= ?",
        )
        .bind(now)
        .bind(now)
        .execute(&self.writer)
        .await?
        .rows_affected();
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
