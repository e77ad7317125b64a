//! SQL for the `audit_log` table: appending to the hash chain, streaming and verifying it,
//! and the filtered pages. Appends go through the single writer connection, so the chain is
//! extended by one entry at a time.

use futures_util::{Stream, StreamExt};
use sqlx::QueryBuilder;

use super::db::{Db, Tx};

use super::{Store, StoreError, now_ms};
use crate::audit::{Break, ChainVerifier, Entry, Event, GENESIS, entry_hash};
use crate::model::audit::AuditFilter;

/// `SELECT <entry columns> FROM audit_log <tail>`: one column list for every entry query.
macro_rules! entry_select {
    ($tail:literal) => {
        concat!(
            "SELECT seq, at, actor, source, action, target, outcome, detail, prev_hash, hash ",
            "FROM audit_log ",
            $tail
        )
    };
}
const ENTRY_SELECT_ALL: &str = entry_select!("ORDER BY seq");
/// The start of a filtered query: conditions follow as `AND ...`.
const ENTRY_SELECT_FILTERED: &str = entry_select!("WHERE 1 = 1");

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

    /// Every audit entry in sequence order, read row by row (never the whole table at
    /// once).
    pub fn audit_stream(&self) -> impl Stream<Item = Result<Entry, StoreError>> + Send + '_ {
        // A stream borrows its pool for as long as it runs, so each database gives its own;
        // both yield the same entries.
        match &self.db {
            Db::Sqlite { reader, .. } => sqlx::query_as(ENTRY_SELECT_ALL)
                .fetch(reader)
                .map(|entry| entry.map_err(StoreError::from))
                .left_stream(),
            Db::Postgres { pool } => sqlx::query_as(ENTRY_SELECT_ALL)
                .fetch(pool)
                .map(|entry| entry.map_err(StoreError::from))
                .right_stream(),
        }
    }

    /// Audit entries matching the filter, newest first.
    pub async fn audit_page(&self, f: &AuditFilter) -> Result<Vec<Entry>, StoreError> {
        reading!(self, |ex| {
            let mut qb: QueryBuilder<DB> = QueryBuilder::new(ENTRY_SELECT_FILTERED);
            if let Some(actor) = &f.actor {
                qb.push(" AND actor = ").push_bind(actor.clone());
            }
            if let Some(action) = &f.action {
                qb.push(" AND action = ").push_bind(action.clone());
            }
            if let Some(since) = f.since {
                qb.push(" AND at >= ").push_bind(since);
            }
            if let Some(until) = f.until {
                qb.push(" AND at <= ").push_bind(until);
            }
            if let Some(before) = f.before {
                qb.push(" AND seq < ").push_bind(before);
            }
            qb.push(" ORDER BY seq DESC LIMIT ").push_bind(f.limit);
            Ok(qb.build_query_as().fetch_all(ex).await?)
        })
    }

    /// The sequence number of the newest audit entry, as recorded at the last append.
    pub async fn audit_head(&self) -> Result<Option<i64>, StoreError> {
        let head: Option<String> = reading!(self, |ex| sqlx::query_scalar(
            "SELECT value FROM meta WHERE key = 'audit_head'"
        )
        .fetch_optional(ex)
        .await)?;
        Ok(head.and_then(|h| h.parse().ok()))
    }

    /// Verifies the whole chain against the recorded head, streaming: rows are read in
    /// order and hashed on the blocking pool, a few hundred at a time.
    pub async fn verify_audit(&self) -> Result<AuditCheck, StoreError> {
        // A batch is sent to the hasher at this many entries or bytes, whichever comes
        // first; with the channel's two slots, at most a few batches are in memory.
        const BATCH: usize = 256;
        const BATCH_BYTES: usize = 256 * 1024;
        // The head first: entries appended while the log is read lie past it, so they
        // cannot make an intact log look cut off.
        let head = self.audit_head().await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<Entry>>(2);
        let hasher = tokio::task::spawn_blocking(move || {
            let mut v = ChainVerifier::new();
            while let Some(batch) = rx.blocking_recv() {
                for e in &batch {
                    v.push(e);
                }
            }
            v
        });
        let read = async {
            let mut rows = std::pin::pin!(self.audit_stream());
            let mut batch = Vec::with_capacity(BATCH);
            let mut bytes = 0;
            while let Some(e) = rows.next().await {
                let e = e?;
                bytes += e.detail.len() + e.target.len() + e.actor.len() + 256;
                batch.push(e);
                if batch.len() == BATCH || bytes >= BATCH_BYTES {
                    bytes = 0;
                    let full = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
                    if tx.send(full).await.is_err() {
                        break; // the hasher is gone; its join reports why
                    }
                }
            }
            if !batch.is_empty() {
                let _ = tx.send(batch).await;
            }
            Ok::<_, StoreError>(())
        }
        .await;
        drop(tx);
        let v = hasher.await.map_err(StoreError::Task)?;
        read?;
        Ok(AuditCheck {
            entries: v.seen(),
            result: v.finish(head),
        })
    }
}

/// The result of verifying the stored audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCheck {
    /// Entries read, intact or not.
    pub entries: i64,
    /// The number of entries verified, or where the chain breaks.
    pub result: Result<i64, Break>,
}

/// Appends one event inside a write transaction; returns its sequence number.
pub(super) async fn append(tx: &mut Tx, ev: &Event) -> Result<i64, StoreError> {
    let last: Option<(i64, String)> = in_tx!(*tx, |ex| sqlx::query_as(
        "SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1"
    )
    .fetch_optional(ex)
    .await)?;
    let (seq, prev) = match last {
        Some((seq, hash)) => (seq + 1, hash),
        None => (1, GENESIS.to_owned()),
    };
    let at = now_ms();
    let hash = entry_hash(&prev, seq, at, ev);
    in_tx!(*tx, |ex| sqlx::query(
        "INSERT INTO audit_log (seq, at, actor, source, action, target, outcome, detail, \
         prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
    .execute(ex)
    .await
    .map(|r| r.rows_affected()))?;
    in_tx!(*tx, |ex| sqlx::query(
        "INSERT INTO meta (key, value) VALUES ('audit_head', $1) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(seq.to_string())
    .execute(ex)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(seq)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testkit::{plan, sqlite_store, store};

    fn event(i: usize) -> Event {
        Event {
            actor: "anonymous".into(),
            source: format!("192.0.2.{}", i % 250),
            action: "device.enroll".into(),
            target: String::new(),
            outcome: "refused".into(),
            detail: format!("{i} refused attempts"),
        }
    }

    /// More entries than one batch of the streaming verifier, appended one by one and in
    /// a batch; then an edit deep in the log and a cut at its end are found.
    #[tokio::test]
    async fn a_streamed_log_verifies_and_breaks_where_it_was_changed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("db"), true).await.unwrap();
        assert_eq!(
            s.verify_audit().await.unwrap(),
            AuditCheck {
                entries: 0,
                result: Ok(0)
            }
        );
        for i in 0..10 {
            s.append_audit(&event(i)).await.unwrap();
        }
        let batch: Vec<Event> = (10..600).map(event).collect();
        assert_eq!(s.append_audits(&batch).await.unwrap(), Some(600));
        assert_eq!(s.append_audits(&[]).await.unwrap(), None);
        assert_eq!(
            s.verify_audit().await.unwrap(),
            AuditCheck {
                entries: 600,
                result: Ok(600)
            }
        );
        let listed: Vec<i64> = s
            .audit_stream()
            .map(|e| e.unwrap().seq)
            .collect::<Vec<_>>()
            .await;
        assert_eq!(listed, (1..=600).collect::<Vec<_>>());

        writing!(s, |ex| sqlx::query(
            "UPDATE audit_log SET detail = 'edited' WHERE seq = 300"
        )
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
        assert_eq!(
            s.verify_audit().await.unwrap(),
            AuditCheck {
                entries: 600,
                result: Err(Break::Modified(300))
            }
        );
        writing!(s, |ex| sqlx::query(
            "UPDATE audit_log SET detail = '299 refused attempts' WHERE seq = 300"
        )
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))
        .unwrap();
        writing!(s, |ex| sqlx::query("DELETE FROM audit_log WHERE seq > 598")
            .execute(ex)
            .await
            .map(|r| r.rows_affected()))
        .unwrap();
        assert_eq!(
            s.verify_audit().await.unwrap().result,
            Err(Break::Truncated {
                last: 598,
                head: 600
            })
        );
    }

    #[tokio::test]
    async fn audit_pages() {
        let (_d, s) = store().await;
        assert_eq!(s.audit_head().await.unwrap(), None);
        for i in 0..6 {
            let ev = Event {
                actor: if i % 2 == 0 { "user:alice" } else { "cli:root" }.into(),
                source: "local".into(),
                action: if i < 3 {
                    "device.revoke"
                } else {
                    "token.create"
                }
                .into(),
                target: format!("t{i}"),
                outcome: "ok".into(),
                detail: String::new(),
            };
            s.append_audit(&ev).await.unwrap();
        }
        assert_eq!(s.audit_head().await.unwrap(), Some(6));
        let page = |f: AuditFilter| {
            let s = s.clone();
            async move {
                s.audit_page(&f)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|e| e.seq)
                    .collect::<Vec<_>>()
            }
        };
        let all = AuditFilter {
            limit: 100,
            ..AuditFilter::default()
        };
        assert_eq!(page(all.clone()).await, [6, 5, 4, 3, 2, 1]);
        assert_eq!(
            page(AuditFilter {
                limit: 2,
                ..all.clone()
            })
            .await,
            [6, 5]
        );
        assert_eq!(
            page(AuditFilter {
                before: Some(5),
                limit: 2,
                ..all.clone()
            })
            .await,
            [4, 3]
        );
        assert_eq!(
            page(AuditFilter {
                actor: Some("user:alice".into()),
                ..all.clone()
            })
            .await,
            [5, 3, 1]
        );
        assert_eq!(
            page(AuditFilter {
                action: Some("token.create".into()),
                actor: Some("cli:root".into()),
                ..all.clone()
            })
            .await,
            [6, 4]
        );
        assert!(
            page(AuditFilter {
                since: Some(i64::MAX),
                ..all.clone()
            })
            .await
            .is_empty()
        );
        assert_eq!(
            page(AuditFilter {
                until: Some(i64::MAX),
                since: Some(0),
                ..all
            })
            .await
            .len(),
            6
        );
    }

    /// Audit pages read through the primary key, newest first, without sorting.
    #[tokio::test]
    async fn the_audit_page_plan_uses_the_key() {
        let (_d, s) = sqlite_store().await;
        let qb: QueryBuilder<sqlx::Sqlite> = QueryBuilder::new(
            "EXPLAIN QUERY PLAN SELECT seq FROM audit_log WHERE 1 = 1 AND seq < 10 \
             ORDER BY seq DESC LIMIT 10",
        );
        let p = plan(&s, qb).await;
        assert!(!p.iter().any(|l| l.contains("TEMP B-TREE")), "{p:?}");
    }
}
