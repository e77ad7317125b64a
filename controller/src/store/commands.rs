//! SQL for the `commands` table: creation, dispatch, receipts, cancellation, expiry and the
//! paged listing.

use pifleet_shared::command::{Action, CommandId};
use serde::Serialize;
use sqlx::sqlite::SqliteRow;
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{Store, StoreError, now_ms, sql_int};
use crate::commands::lifecycle::{self, Status};

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
#[derive(Debug, Clone, Serialize)]
pub struct CommandRow {
    pub id: String,
    pub device_id: String,
    pub action: serde_json::Value,
    pub action_kind: String,
    pub status: String,
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
    pub stdout: Option<String>,
    pub stdout_len: Option<i64>,
    pub stdout_sha256: Option<String>,
    pub stderr: Option<String>,
    pub stderr_len: Option<i64>,
    pub stderr_sha256: Option<String>,
}

impl CommandRow {
    pub fn status(&self) -> Option<Status> {
        Status::parse(&self.status)
    }
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

const COLUMNS: &str = "id, device_id, action, action_kind, status, reason, created_at, \
    expires_at, issued_at, sent_at, accepted_at, started_at, finished_at, exit_code, \
    duration_ms, stdout, stdout_len, stdout_sha256, stderr, stderr_len, stderr_sha256";

fn row(r: &SqliteRow) -> Result<CommandRow, StoreError> {
    let action: String = r.try_get("action")?;
    let text = |b: Option<Vec<u8>>| b.map(|b| String::from_utf8_lossy(&b).into_owned());
    Ok(CommandRow {
        id: r.try_get("id")?,
        device_id: r.try_get("device_id")?,
        action: serde_json::from_str(&action)?,
        action_kind: r.try_get("action_kind")?,
        status: r.try_get("status")?,
        reason: r.try_get("reason")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        issued_at: r.try_get("issued_at")?,
        sent_at: r.try_get("sent_at")?,
        accepted_at: r.try_get("accepted_at")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        exit_code: r.try_get("exit_code")?,
        duration_ms: r.try_get("duration_ms")?,
        stdout: text(r.try_get("stdout")?),
        stdout_len: r.try_get("stdout_len")?,
        stdout_sha256: r.try_get("stdout_sha256")?,
        stderr: text(r.try_get("stderr")?),
        stderr_len: r.try_get("stderr_len")?,
        stderr_sha256: r.try_get("stderr_sha256")?,
    })
}

/// Command columns without the output bodies.
const COMMAND_COLUMNS: &str = "id, device_id, action, action_kind, status, reason, created_at, \
    expires_at, issued_at, sent_at, accepted_at, started_at, finished_at, exit_code, \
    duration_ms, stdout_len, stdout_sha256, stderr_len, stderr_sha256";

fn command_row(r: &SqliteRow) -> Result<CommandRow, StoreError> {
    let action: String = r.try_get("action")?;
    Ok(CommandRow {
        id: r.try_get("id")?,
        device_id: r.try_get("device_id")?,
        action: serde_json::from_str(&action)?,
        action_kind: r.try_get("action_kind")?,
        status: r.try_get("status")?,
        reason: r.try_get("reason")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        issued_at: r.try_get("issued_at")?,
        sent_at: r.try_get("sent_at")?,
        accepted_at: r.try_get("accepted_at")?,
        started_at: r.try_get("started_at")?,
        finished_at: r.try_get("finished_at")?,
        exit_code: r.try_get("exit_code")?,
        duration_ms: r.try_get("duration_ms")?,
        stdout: None,
        stdout_len: r.try_get("stdout_len")?,
        stdout_sha256: r.try_get("stdout_sha256")?,
        stderr: None,
        stderr_len: r.try_get("stderr_len")?,
        stderr_sha256: r.try_get("stderr_sha256")?,
    })
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
        let now = now_ms();
        let mut tx = self.write_tx().await?;
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
            .execute(&mut *tx)
            .await?;
        }
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
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(resend_before)
            .bind(now_ms())
            .bind(limit)
            .fetch_all(&self.writer)
            .await?;
        rows.iter().map(row).collect()
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
        let r = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        r.as_ref().map(row).transpose()
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
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(device)
            .bind(device)
            .bind(st)
            .bind(st)
            .bind(limit)
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(row).collect()
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
        qb.push(COMMAND_COLUMNS).push(" FROM commands");
        push_command_filter(&mut qb, device, status, action_kind);
        qb.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(limit)
            .push(" OFFSET ")
            .push_bind(offset);
        let rows = qb.build().fetch_all(&self.reader).await?;
        let items = rows.iter().map(command_row).collect::<Result<_, _>>()?;
        Ok((total, items))
    }

    /// Cancels a command that has not been sent yet. Returns its status after the attempt.
    pub async fn cancel_command(&self, id: &str) -> Result<Cancel, StoreError> {
        let mut tx = self.write_tx().await?;
        let cur: Option<String> = sqlx::query_scalar("SELECT status FROM commands WHERE id = ?")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
        let Some(cur) = cur.as_deref().and_then(Status::parse) else {
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
        let cur: Option<String> =
            sqlx::query_scalar("SELECT status FROM commands WHERE id = ? AND device_id = ?")
                .bind(id)
                .bind(device)
                .fetch_optional(&mut *tx)
                .await?;
        let Some(cur) = cur.as_deref().and_then(Status::parse) else {
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
