//! Putting a backup back, offline, into a new data dir: unpack and check it in a private
//! staging directory beside the target, revoke the enrollment tokens it holds, move it
//! into place, then open the store once to run any pending migrations.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::read::unpack;
use super::{BackupError, io_err, sync_dir};
use crate::datadir::DataDir;
use crate::store::Store;
use crate::store::snapshot::{expire_waiting_commands, revoke_unused_tokens};

/// A restored data dir.
#[derive(Debug, Clone)]
pub struct Restored {
    pub data_dir: PathBuf,
    pub metadata: super::Metadata,
    /// Enrollment tokens still unused in the backup, now revoked.
    pub tokens_revoked: u64,
    /// Devices revoked after the backup (from the revocation log), revoked again.
    pub devices_revoked: u64,
    /// Commands that were waiting to go out, expired rather than sent again blindly.
    pub commands_expired: u64,
}

/// Restores `file` into `target`, which must be missing or an empty directory. Refuses a
/// damaged backup, one whose database is newer than this binary, and a non-empty target;
/// on any failure `target` is left as it was.
pub async fn restore(
    file: &Path,
    identity: Option<&Path>,
    target: &Path,
    revocations: &Revocations,
) -> Result<Restored, BackupError> {
    // Read before anything is written: a log that cannot be read stops the restore.
    let logged = match revocations {
        Revocations::From(path) => {
            let log = if path.is_dir() {
                crate::config::BackupConfig::default().revocation_log_in(path)
            } else {
                path.clone()
            };
            crate::pki::read_log(&log).map_err(io_err(&log))?
        }
        Revocations::AcceptLost => Vec::new(),
    };
    let target_existed = check_target(target)?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let staging = tempfile::Builder::new()
        .prefix(".pifleet-restore-")
        .tempdir_in(&parent)
        .map_err(io_err(&parent))?;
    fs::set_permissions(staging.path(), fs::Permissions::from_mode(0o700))
        .map_err(io_err(staging.path()))?;
    let verified = unpack(file, identity, staging.path()).await?;
    let staged = DataDir::new(staging.path());
    // Migrations first (a backup of an older version), so the tokens are read as this
    // version knows them.
    let store = Store::open(&staged.database(), false).await?;
    // Revocations made after the backup must not come back to life.
    let mut devices_revoked = 0;
    let mut crl_changed = false;
    for r in &logged {
        match store.revoke_device(&r.device).await? {
            crate::store::RevokeOutcome::Revoked => {
                devices_revoked += 1;
                crl_changed = true;
            }
            // Enrolled after the backup: no serial to put on the CRL, but a revoked row
            // keeps its certificate from being re-registered when it connects.
            crate::store::RevokeOutcome::Unknown => {
                if store.revoke_unknown_device(&r.device, r.at).await? {
                    devices_revoked += 1;
                }
            }
            crate::store::RevokeOutcome::AlreadyRevoked => {}
        }
    }
    if crl_changed {
        let ca =
            crate::pki::Ca::load(&staged).map_err(|e| BackupError::Revocations(e.to_string()))?;
        // The restored configuration says how long a CRL is valid.
        let days = crate::config::Config::load(&staged.config())
            .map(|c| c.pki.crl_next_update_days)
            .unwrap_or(crate::config::PkiConfig::default().crl_next_update_days);
        crate::pki::crl::publish(&staged, &store, &ca, days)
            .await
            .map_err(|e| BackupError::Revocations(e.to_string()))?;
    }
    store.close().await;
    let tokens_revoked = revoke_unused_tokens(&staged.database()).await?;
    let commands_expired = expire_waiting_commands(&staged.database()).await?;
    staged.check()?;
    // Nothing may have appeared in the target meanwhile.
    check_target(target)?;
    if target_existed {
        fs::remove_dir(target).map_err(io_err(target))?;
    }
    let staging = staging.keep();
    if let Err(e) = fs::rename(&staging, target) {
        let _ = fs::remove_dir_all(&staging);
        return Err(io_err(target)(e));
    }
    sync_dir(&parent)?;
    let dd = DataDir::new(target);
    // Pending migrations run here, while nothing else uses the database.
    let store = Store::open(&dd.database(), false).await?;
    store.close().await;
    dd.check()?;
    Ok(Restored {
        data_dir: target.to_owned(),
        metadata: verified.metadata,
        tokens_revoked,
        devices_revoked,
        commands_expired,
    })
}

/// Where the revocations made after the backup come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocations {
    /// A revocation log, or the old data dir holding it at its default place.
    From(PathBuf),
    /// None: devices revoked after the backup are valid again (`--accept-lost-revocations`).
    AcceptLost,
}

/// Whether `target` exists (as an empty directory); an error if it is anything else.
fn check_target(target: &Path) -> Result<bool, BackupError> {
    match fs::read_dir(target) {
        Ok(mut entries) => match entries.next() {
            None => Ok(true),
            Some(_) => Err(BackupError::TargetNotEmpty(target.to_owned())),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotADirectory => {
            Err(BackupError::TargetNotEmpty(target.to_owned()))
        }
        Err(e) => Err(io_err(target)(e)),
    }
}
