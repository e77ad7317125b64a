//! Scheduled backups in `serve`: one at the configured time (or interval), then the oldest
//! pruned down to `backup.keep`. A failed backup is logged and tried again at the next
//! time (a broken database stops the controller, as in every task that uses it);
//! `pifleet_backup_last_success_timestamp_seconds` tells Prometheus how old the newest
//! good one is.

use std::time::{Duration, UNIX_EPOCH};

use chrono::Timelike;
use tokio_util::sync::CancellationToken;

use super::{BackupError, list, manage};
use crate::config::{BackupConfig, BackupSchedule};
use crate::datadir::DataDir;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::supervise::{Fatal, TaskResult};

/// Runs scheduled backups until `shutdown`.
pub async fn run(
    dd: DataDir,
    store: Store,
    cfg: BackupConfig,
    metrics: Metrics,
    shutdown: CancellationToken,
) -> TaskResult {
    let Some(schedule) = cfg.schedule() else {
        // Refused by the configuration check before `serve` starts.
        return Ok(());
    };
    let dir = cfg.dir_in(dd.root());
    metrics
        .backup_last_success
        .set(newest_backup_time(&dir).unwrap_or(0));
    loop {
        let wait = match schedule {
            BackupSchedule::Every(every) => every,
            BackupSchedule::Daily(h, m) => {
                let now = chrono::Local::now();
                until_daily(now.num_seconds_from_midnight(), h, m)
            }
        };
        let due = tokio::time::sleep(wait);
        tokio::pin!(due);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = &mut due => break,
                // A backup made by hand (`backup create`) counts too.
                _ = tokio::time::sleep(cfg.rescan()) => {
                    if let Some(t) = newest_backup_time(&dir)
                        && t > metrics.backup_last_success.get()
                    {
                        metrics.backup_last_success.set(t);
                    }
                }
            }
        }
        // A backup asked for through the API may be running: this one waits for it.
        let turn = manage::turn().await;
        let made =
            manage::create_and_prune(&turn, &dd, &store, &cfg, cfg.recipient.as_deref(), &metrics)
                .await;
        drop(turn);
        match made {
            Ok(_) => {}
            Err(BackupError::Store(e)) if e.is_fatal() => {
                return Err(Fatal::new("the database is broken", e));
            }
            Err(e) => tracing::error!(error = %e, dir = %dir.display(), "backup failed"),
        }
    }
}

/// Time from `now` (seconds since local midnight) to the next `hh:mm`; a full day when
/// it is that time now. (A day with a clock change is an hour off, once.)
pub fn until_daily(now: u32, hh: u8, mm: u8) -> Duration {
    let target = u32::from(hh) * 3600 + u32::from(mm) * 60;
    let wait = (target + 86_400 - now % 86_400) % 86_400;
    Duration::from_secs(u64::from(if wait == 0 { 86_400 } else { wait }))
}

/// The modification time (Unix seconds) of the newest backup in `dir`, so a restarted
/// controller does not report its backups as missing.
fn newest_backup_time(dir: &std::path::Path) -> Option<i64> {
    let newest = list(dir).ok()?.pop()?;
    let modified = std::fs::metadata(&newest.path).ok()?.modified().ok()?;
    let secs = modified.duration_since(UNIX_EPOCH).ok()?.as_secs();
    i64::try_from(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn daily_waits_until_the_next_time_of_day() {
        let cases = [
            // (now, hh, mm, wait seconds)
            (0, 2, 0, 7200),
            (7199, 2, 0, 1),
            (7200, 2, 0, 86_400),
            (7201, 2, 0, 86_399),
            (86_399, 0, 0, 1),
            (23 * 3600, 23, 59, 59 * 60),
        ];
        for (now, hh, mm, wait) in cases {
            assert_eq!(
                until_daily(now, hh, mm),
                Duration::from_secs(wait),
                "{now} {hh}:{mm}"
            );
        }
    }
}
