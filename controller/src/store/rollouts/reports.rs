//! What devices report about deploys, written by the ingest writer: a deploy's progress,
//! and a rollback by the guard window after a commit.

use super::insert_event;
use crate::store::StoreError;
use crate::store::db::Tx;

/// Records a deploy's progress on the rollout device its command belongs to (the runner
/// turns it into the device's state).
pub(in crate::store) async fn record_progress(
    tx: &mut Tx,
    device: &str,
    p: &pifleet_shared::proto::v1::DeployProgress,
) -> Result<(), StoreError> {
    in_tx!(*tx, |ex| sqlx::query(concat!(
        "UPDATE rollout_devices SET phase = $1, bytes = $2, total = $3 ",
        "WHERE device_id = $4 AND command_id = $5 AND state IN ",
        "('queued', 'downloading', 'installing', 'unreachable', 'untouched', 'timed_out')"
    ))
    .bind(p.phase.as_str())
    .bind(crate::store::sql_int(p.bytes))
    .bind(crate::store::sql_int(p.total))
    .bind(device)
    .bind(p.command.to_string())
    .execute(ex)
    .await
    .map(|r| r.rows_affected()))?;
    Ok(())
}

/// A release the device had committed was rolled back by its guard window: every rollout
/// of that release that saw the device healthy (or still on its way) now counts it as
/// rolled back, or failed unrecoverable when nothing could be restored. This is the
/// engine's `healthy + rolled_back` move, done here because it needs no decision.
pub(in crate::store) async fn record_guard_rollback(
    tx: &mut Tx,
    device: &str,
    g: &pifleet_shared::proto::v1::GuardRollback,
    now: i64,
) -> Result<(), StoreError> {
    let state = if g.restored.is_some() {
        "rolled_back"
    } else {
        "failed_unrecoverable"
    };
    let reason = format!(
        "{state} in the guard window after the commit: {}",
        g.reason.chars().take(2000).collect::<String>()
    );
    let journal: String = g.journal.chars().take(8000).collect();
    let ids: Vec<i64> = in_tx!(*tx, |ex| sqlx::query_scalar(concat!(
        "SELECT d.rollout_id FROM rollout_devices d JOIN rollouts r ON r.id = d.rollout_id ",
        "WHERE d.device_id = $1 AND r.app = $2 AND r.release = $3 AND d.state IN ",
        "('healthy', 'queued', 'downloading', 'installing')"
    ))
    .bind(device)
    .bind(&g.app)
    .bind(crate::store::sql_int(g.release))
    .fetch_all(ex)
    .await)?;
    for id in ids {
        in_tx!(*tx, |ex| sqlx::query(
            "UPDATE rollout_devices SET state = $1, finished_at = $2, reason = $3, journal = $4 \
             WHERE rollout_id = $5 AND device_id = $6",
        )
        .bind(state)
        .bind(now)
        .bind(&reason)
        .bind(&journal)
        .bind(id)
        .bind(device)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        in_tx!(*tx, |ex| sqlx::query(
            "UPDATE rollouts SET version = version + 1, updated_at = $1 WHERE id = $2"
        )
        .bind(now)
        .bind(id)
        .execute(ex)
        .await
        .map(|r| r.rows_affected()))?;
        insert_event(tx, id, now, "device", &format!("{device}: {reason}")).await?;
    }
    Ok(())
}
