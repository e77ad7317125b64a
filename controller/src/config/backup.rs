//! `[backup]`: scheduled backups written by `serve`, and the defaults of `backup create`.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::Deserialize;

/// Scheduled backups.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackupConfig {
    /// Whether `serve` writes backups on its own.
    pub enabled: bool,
    /// Daily local time of the backup, `HH:MM`.
    pub schedule: String,
    /// When set, a backup every this many seconds instead of the daily one.
    pub interval_s: Option<u64>,
    /// Backups kept; older ones are deleted after each new one.
    pub keep: usize,
    /// Where backups go; relative to the data dir unless absolute.
    pub dir: PathBuf,
    /// age recipient (`age1…`) the backups are encrypted to; plain tar when unset. The admin
    /// API makes and serves encrypted backups only, so it needs one.
    pub recipient: Option<String>,
    /// How often `serve` looks at `dir` for backups made by hand, for its gauge.
    pub rescan_s: u64,
    /// Every device revocation is also appended here (relative to the data dir unless
    /// absolute), so a restore can re-apply revocations made after its backup. Put it on
    /// another disk, or copy it off the host, with the backups.
    pub revocation_log: PathBuf,
}

impl Default for BackupConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            schedule: "02:00".into(),
            interval_s: None,
            keep: 7,
            dir: PathBuf::from("backups"),
            recipient: None,
            rescan_s: 60,
            revocation_log: PathBuf::from("backups/revocations.log"),
        }
    }
}

/// When scheduled backups run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackupSchedule {
    /// Every day at this local time (hour, minute).
    Daily(u8, u8),
    Every(Duration),
}

impl BackupConfig {
    /// The backup directory of the data dir `root`.
    pub fn dir_in(&self, root: &Path) -> PathBuf {
        root.join(&self.dir)
    }

    /// The revocation log of the data dir `root`.
    pub fn revocation_log_in(&self, root: &Path) -> PathBuf {
        root.join(&self.revocation_log)
    }

    pub fn rescan(&self) -> Duration {
        Duration::from_secs(self.rescan_s)
    }

    /// The schedule, or `None` when `schedule` is not a valid `HH:MM`.
    pub fn schedule(&self) -> Option<BackupSchedule> {
        if let Some(s) = self.interval_s {
            return Some(BackupSchedule::Every(Duration::from_secs(s)));
        }
        let (h, m) = parse_hhmm(&self.schedule)?;
        Some(BackupSchedule::Daily(h, m))
    }

    pub(super) fn problems(&self, check: &mut impl FnMut(bool, &str)) {
        check(
            parse_hhmm(&self.schedule).is_some(),
            "backup.schedule must be a time of day HH:MM (00:00..=23:59)",
        );
        check(
            self.interval_s
                .is_none_or(|s| (1..=7 * 86_400).contains(&s)),
            "backup.interval_s must be 1..=604800",
        );
        check(
            (1..=86_400).contains(&self.rescan_s),
            "backup.rescan_s must be 1..=86400",
        );
        check(
            (1..=1000).contains(&self.keep),
            "backup.keep must be 1..=1000",
        );
        check(
            !self.dir.as_os_str().is_empty(),
            "backup.dir must not be empty",
        );
        check(
            self.recipient
                .as_deref()
                .is_none_or(|r| age::x25519::Recipient::from_str(r.trim()).is_ok()),
            "backup.recipient must be an age X25519 recipient (age1…)",
        );
    }
}

/// `HH:MM` as (hour, minute).
fn parse_hhmm(s: &str) -> Option<(u8, u8)> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let (h, m) = (h.parse::<u8>().ok()?, m.parse::<u8>().ok()?);
    (h < 24 && m < 60).then_some((h, m))
}
