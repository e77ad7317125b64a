//! Backups as `serve` manages them: one backup at a time (the schedule waits its turn, the
//! API is told one is running), each followed by pruning to `backup.keep`; and the backups
//! the admin API may hand out: encrypted ones only, named exactly as the directory lists
//! them.

use std::fs;
use std::io;
use std::path::Path;

use tokio::sync::{Mutex, MutexGuard};

use super::{
    BackupError, Listed, checksum_path, create, io_err, list, prune, read_checksum, verified_path,
    write::Created,
};
use crate::config::BackupConfig;
use crate::datadir::DataDir;
use crate::metrics::Metrics;
use crate::store::Store;

/// Held while `serve` writes a backup: a controller writes one at a time.
static CREATING: Mutex<()> = Mutex::const_new(());

/// The right to write a backup now.
#[derive(Debug)]
pub struct Turn(#[allow(dead_code)] MutexGuard<'static, ()>);

/// The turn to write a backup, if no backup is being written now.
pub fn try_turn() -> Option<Turn> {
    CREATING.try_lock().ok().map(Turn)
}

/// The turn to write a backup, once the one being written (if any) is done.
pub async fn turn() -> Turn {
    Turn(CREATING.lock().await)
}

/// Writes one backup into the configured directory, encrypted to `recipient`, records it
/// in the last-success gauge, then prunes old ones to `cfg.keep` (a failed prune is logged:
/// the new backup stands). The caller holds the [`Turn`].
pub async fn create_and_prune(
    _turn: &Turn,
    dd: &DataDir,
    store: &Store,
    cfg: &BackupConfig,
    recipient: Option<&str>,
    metrics: &Metrics,
) -> Result<Created, BackupError> {
    let dir = cfg.dir_in(dd.root());
    let made = create(dd, store, &dir, recipient).await?;
    metrics
        .backup_last_success
        .set(made.metadata.created_at_ms / 1000);
    tracing::info!(file = %made.path.display(), bytes = made.size, "backup written");
    let keep = cfg.keep;
    match tokio::task::spawn_blocking(move || prune(&dir, keep)).await {
        Ok(Ok(removed)) => {
            for path in removed {
                tracing::info!(file = %path.display(), "old backup deleted");
            }
        }
        Ok(Err(e)) => tracing::error!(error = %e, "pruning old backups failed"),
        Err(e) => tracing::error!(error = %e, "pruning old backups failed"),
    }
    Ok(made)
}

/// A backup the API may serve, with the checksum written beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offered {
    /// The file name, as listed.
    pub name: String,
    pub listed: Listed,
    /// SHA-256 of the file, from its checksum file; `None` when that file is missing or
    /// unreadable (such a backup is listed, never served).
    pub sha256: Option<String>,
}

/// The encrypted backups in `dir`, oldest first. Plain ones are left out: they hold the
/// CA and command keys in the clear, and no API session may carry those off.
pub fn offered(dir: &Path) -> Result<Vec<Offered>, BackupError> {
    Ok(list(dir)?
        .into_iter()
        .filter(|b| b.encrypted)
        .filter_map(|b| {
            let name = b.path.file_name()?.to_str()?.to_owned();
            Some(Offered {
                sha256: read_checksum(&b.path).ok(),
                name,
                listed: b,
            })
        })
        .collect())
}

/// The offered backup called `name`, if any: a name is only ever compared with what the
/// directory lists, never joined onto a path.
pub fn find(dir: &Path, name: &str) -> Result<Option<Offered>, BackupError> {
    Ok(offered(dir)?.into_iter().find(|b| b.name == name))
}

/// Deletes an offered backup with its checksum and verified files (the backup first, so a
/// failure half-way never leaves a backup without its checksum).
pub fn delete(b: &Offered) -> Result<(), BackupError> {
    let path = &b.listed.path;
    fs::remove_file(path).map_err(io_err(path))?;
    for extra in [checksum_path(path), verified_path(path)] {
        match fs::remove_file(&extra) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&extra)(e)),
        }
    }
    if let Some(parent) = path.parent() {
        super::sync_dir(parent)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(dir: &Path, name: &str, body: &str) {
        fs::write(dir.join(name), body).unwrap();
    }

    #[test]
    fn only_encrypted_backups_are_offered_and_found_by_exact_name() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let sum = "a".repeat(64);
        touch(d, "pifleet-backup-20261206T020000Z.tar", "plain");
        touch(
            d,
            "pifleet-backup-20261206T020000Z.tar.sha256",
            &format!("{sum}  x\n"),
        );
        touch(d, "pifleet-backup-20261207T020000Z.tar.age", "secret");
        touch(
            d,
            "pifleet-backup-20261207T020000Z.tar.age.sha256",
            &format!("{sum}  x\n"),
        );
        touch(d, "pifleet-backup-20261208T020000Z.tar.age", "no checksum");
        touch(d, "notes.txt", "not a backup");
        let names: Vec<_> = offered(d).unwrap().into_iter().map(|b| b.name).collect();
        assert_eq!(
            names,
            [
                "pifleet-backup-20261207T020000Z.tar.age",
                "pifleet-backup-20261208T020000Z.tar.age"
            ]
        );
        let found = find(d, "pifleet-backup-20261207T020000Z.tar.age")
            .unwrap()
            .unwrap();
        assert_eq!(found.sha256.as_deref(), Some(sum.as_str()));
        assert!(
            find(d, "pifleet-backup-20261208T020000Z.tar.age")
                .unwrap()
                .unwrap()
                .sha256
                .is_none()
        );
        for refused in [
            "pifleet-backup-20261206T020000Z.tar",
            "pifleet-backup-20261207T020000Z.tar.age.sha256",
            "../pifleet-backup-20261207T020000Z.tar.age",
            "./pifleet-backup-20261207T020000Z.tar.age",
            "notes.txt",
            "",
        ] {
            assert!(find(d, refused).unwrap().is_none(), "{refused}");
        }
        delete(&found).unwrap();
        assert!(!d.join("pifleet-backup-20261207T020000Z.tar.age").exists());
        assert!(
            !d.join("pifleet-backup-20261207T020000Z.tar.age.sha256")
                .exists()
        );
        assert!(d.join("pifleet-backup-20261206T020000Z.tar").exists());
    }

    #[tokio::test]
    async fn one_backup_at_a_time() {
        let first = try_turn().expect("free");
        assert!(try_turn().is_none());
        drop(first);
        assert!(try_turn().is_some());
    }
}
