//! The controller's periodic upkeep: telemetry retention and partitions, and following what
//! other controllers sharing a PostgreSQL database announce.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::store::changes::Change;
use crate::store::{Store, now_ms};
use crate::supervise::{Fatal, TaskResult};

/// Reads again what another controller sharing the PostgreSQL database announced it changed.
/// `reload` reads again what is kept in memory (the API's settings); `keys` wakes the key
/// reload, which checks this controller's key files against the fleet's record.
pub async fn follow_changes<F, Fut>(
    mut changes: crate::store::changes::Changes,
    reload: F,
    keys: std::sync::Arc<tokio::sync::Notify>,
    shutdown: CancellationToken,
) -> TaskResult
where
    F: Fn() -> Fut + Send,
    Fut: std::future::Future<Output = Result<(), crate::store::StoreError>> + Send,
{
    loop {
        let change = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            c = changes.next() => c,
        };
        let result = match change {
            Ok(Change::Keys) => {
                keys.notify_one();
                Ok(())
            }
            Ok(Change::Settings) => reload().await,
            Ok(Change::Missed) => {
                keys.notify_one();
                reload().await
            }
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "could not follow the other controllers' changes");
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Days of telemetry partitions made ahead on PostgreSQL (at start and at each retention
/// pass, which runs at least daily): samples always find their day's partition.
pub const PARTITION_DAYS_AHEAD: i32 = 3;

/// Deletes telemetry past `telemetry.retention_days`; a failure is retried at the next
/// interval, a broken database ends the task.
pub async fn retention(store: Store, cfg: Config, shutdown: CancellationToken) -> TaskResult {
    let mut tick = tokio::time::interval(Duration::from_secs(cfg.telemetry.retention_interval_s));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        // One controller of those sharing a database does it; the others skip this pass.
        let _job = match store.try_job(crate::store::changes::Job::Retention).await {
            Ok(Some(job)) => job,
            Ok(None) => continue,
            Err(e) if e.is_fatal() => return Err(Fatal::new("the database is broken", e)),
            Err(e) => {
                tracing::error!(error = %e, "telemetry retention could not start");
                continue;
            }
        };
        if let Err(e) = store
            .prepare_telemetry_partitions(PARTITION_DAYS_AHEAD)
            .await
        {
            tracing::error!(error = %e, "telemetry partitions could not be prepared");
        }
        let keep_ms = i64::from(cfg.telemetry.retention_days) * 86_400_000;
        match store.apply_retention(now_ms() - keep_ms).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "telemetry retention applied"),
            Err(e) if e.is_fatal() => return Err(Fatal::new("the database is broken", e)),
            Err(e) => tracing::error!(error = %e, "telemetry retention failed"),
        }
    }
}
