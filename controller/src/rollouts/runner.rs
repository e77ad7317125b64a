//! The rollout runner: one supervised task that decides every active rollout again
//! whenever a device reports (a command's receipt, deploy progress, a guard-window
//! rollback), an operator acts, a deadline or bake time falls due, and at least every
//! `rollouts.poll_ms` (which picks up what the command line, a separate process, did).
//! Everything it knows is in the store, so a restarted controller carries on where it was.

use std::sync::Arc;

use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::service::RolloutError;
use super::step::step;
use crate::commands::dispatch::Dispatcher;
use crate::config::RolloutsConfig;
use crate::live::{Change, Hub};
use crate::metrics::Metrics;
use crate::rollouts::state::{PauseCause, RolloutStatus};
use crate::store::{Store, now_ms};
use crate::supervise::{Fatal, Health, TaskResult};

/// The runner's component name in readiness reports.
const RUNNER: &str = "rollout-runner";

/// Runs until `shutdown`.
pub async fn run(
    store: Store,
    dispatcher: Arc<Dispatcher>,
    live: Hub,
    health: Arc<Health>,
    metrics: Metrics,
    cfg: RolloutsConfig,
    shutdown: CancellationToken,
) -> TaskResult {
    let mut changes = live.subscribe();
    loop {
        let passed = pass(&store, &dispatcher).await;
        if let Err(e) = count(&store, &metrics).await {
            tracing::warn!(error = %e, "counting rollouts failed");
        }
        let next = match passed {
            Ok(next) => {
                health.recovered(RUNNER);
                next
            }
            Err(RolloutError::Store(e)) if e.is_fatal() => {
                return Err(Fatal::new("the database is broken", e));
            }
            Err(e) => {
                health.degraded(RUNNER, &e);
                tracing::warn!(error = %e, "rollout pass failed; retrying");
                None
            }
        };
        let now = now_ms();
        let poll = cfg.poll();
        let wait = next.map_or(poll, |at| {
            let ms = u64::try_from(at.saturating_sub(now)).unwrap_or(0);
            std::time::Duration::from_millis(ms).min(poll)
        });
        if wait.is_zero() {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(wait) => {}
            woke = wake(&mut changes) => {
                if !woke {
                    return Ok(());
                }
                // Let a burst of reports arrive, then decide once.
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(cfg.settle()) => {}
                }
            }
        }
    }
}

/// Sets the `pifleet_rollouts` gauge: every status (and pause cause) is served, at 0 when
/// no rollout has it, so alerts see it go back to 0.
async fn count(store: &Store, metrics: &Metrics) -> Result<(), RolloutError> {
    let counts = store.rollout_status_counts().await?;
    for status in RolloutStatus::ALL {
        let causes: Vec<&str> = if status == RolloutStatus::Paused {
            PauseCause::ALL.iter().map(|c| c.as_str()).collect()
        } else {
            vec![""]
        };
        for cause in causes {
            let n = counts
                .iter()
                .filter(|(s, c, _)| s == status.as_str() && c == cause)
                .map(|(_, _, n)| *n)
                .sum();
            metrics
                .rollouts
                .with_label_values(&[status.as_str(), cause])
                .set(n);
        }
    }
    Ok(())
}

/// Waits for a change a rollout may care about; false when the hub is gone.
async fn wake(changes: &mut tokio::sync::broadcast::Receiver<Change>) -> bool {
    loop {
        match changes.recv().await {
            Ok(Change::Command { .. } | Change::Details(_) | Change::Rollout(_)) => return true,
            Ok(Change::Devices(_)) => {}
            Err(RecvError::Lagged(_)) => return true,
            Err(RecvError::Closed) => return false,
        }
    }
}

/// Decides every active rollout once; returns the earliest time one wants to be decided
/// again. A rollout that cannot be decided (unreadable) is logged and skipped, so one bad
/// row does not stop the others.
async fn pass(store: &Store, dispatcher: &Dispatcher) -> Result<Option<i64>, RolloutError> {
    // Controllers sharing a PostgreSQL database pass one at a time, each deciding on what
    // the one before left.
    let _job = store.job(crate::store::changes::Job::Rollouts).await?;
    let mut next: Option<i64> = None;
    let mut created = false;
    for id in store.active_rollouts().await? {
        match step(store, id, now_ms()).await {
            Ok(stepped) => {
                next = match (next, stepped.next) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                created |= stepped.sent;
            }
            Err(RolloutError::Store(e)) => return Err(RolloutError::Store(e)),
            Err(e) => tracing::error!(rollout = id, error = %e, "rollout cannot be decided"),
        }
    }
    if created {
        // New deploy or revert commands go out now, not at the dispatcher's next poll.
        dispatcher.wake();
    }
    Ok(next)
}
