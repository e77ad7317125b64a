//! SQL for the audit log. Appends go through the single writer connection, so the chain
//! is extended by one entry at a time.

use sqlx::Row;

use super::{Store, StoreError, now_ms};
use crate::audit::{Entry, Event, GENESIS, entry_hash};

impl Store {
    /// Appends an event to the chain; returns its sequence number.
    pub async fn append_audit(&self, ev: &Event) -> Result<i64, StoreError> {
        let mut tx = self.write_tx().await?;
        let seq = append(&mut tx, ev).await?;
        tx.commit().await?;
        Ok(seq)
    }

    /// Appends events to the chain in one transaction (one fsync); returns the sequence
    /// number of the last, if any.
    pub async fn append_audits(&self, events: &[Event]) -> Result<Option<i64>, StoreError> {
        if events.is_empty() {
            return Ok(None);
        }
        let mut tx = self.write_tx().await?;
        let mut last = None;
        for ev in events {
            last = Some(append(&mut tx, ev).await?);
        }
        tx.commit().await?;
        Ok(last)
    }

    /// Every audit entry in sequence order, and the head recorded at the last append.
    pub async fn audit_entries(&self) -> Result<(Vec<Entry>, Option<i64>), StoreError> {
        let rows = sqlx::query(
            "SELECT seq, at, actor, source, action, target, outcome, detail, prev_hash, hash \
             FROM audit_log ORDER BY seq",
        )
        .fetch_all(&self.reader)
        .await?;
        let entries = rows
            .iter()
            .map(|r| {
                Ok(Entry {
                    seq: r.try_get("seq")?,
                    at: r.try_get("at")?,
                    actor: r.try_get("actor")?,
                    source: r.try_get("source")?,
                    action: r.try_get("action")?,
                    target: r.try_get("target")?,
                    outcome: r.try_get("outcome")?,
                    detail: r.try_get("detail")?,
                    prev_hash: r.try_get("prev_hash")?,
                    hash: r.try_get("hash")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        let head: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'audit_head'")
                .fetch_optional(&self.reader)
                .await?;
        Ok((entries, head.and_then(|h| h.parse().ok())))
    }
}

/// Appends one event inside a write transaction; returns its sequence number.
async fn append(conn: &mut sqlx::SqliteConnection, ev: &Event) -> Result<i64, StoreError> {
    let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *conn)
        .await?;
    let (seq, prev) = match last {
        Some(r) => (
            r.try_get::<i64, _>("seq")? + 1,
            r.try_get::<String, _>("hash")?,
        ),
        None => (1, GENESIS.to_owned()),
    };
    let at = now_ms();
    let hash = entry_hash(&prev, seq, at, ev);
    sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, source, action, target, outcome, detail, \
         prev_hash, hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(seq)
    .bind(at)
    .bind(&ev.actor)
    .bind(&ev.source)
    .bind(&ev.action)
    .bind(&ev.target)
    .bind(&ev.outcome)
    .bind(&ev.detail)
    .bind(&prev)
    .bind(&hash)
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO meta (key, value) VALUES ('audit_head', ?) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(seq.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(seq)
}
