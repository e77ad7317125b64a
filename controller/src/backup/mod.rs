//! Backups of the controller: one file per backup holding a consistent copy of the
//! database, the data dir's keys and certificates, `config.toml`, the stored releases and a
//! `metadata.json`; optionally encrypted to an age recipient.
//!
//! ```text
//! BACKUPS/                                      0700
//!   pifleet-backup-20261206T020000Z.tar         0600  (or .tar.age when encrypted)
//!   pifleet-backup-20261206T020000Z.tar.sha256  0600  `sha256sum` line of the file as written
//!   pifleet-backup-20261206T020000Z.tar.verified 0600 the SHA-256 a `verify` found sound
//! ```
//!
//! The checksum covers the file's bytes (the ciphertext when encrypted), so a copy can be
//! checked with `sha256sum -c` and by `verify` without the age identity. `create` writes
//! the archive under a temporary name, fsyncs it, writes the checksum, then links the
//! archive under its final name (never replacing one): a backup is listed only once it is
//! whole. `create` is here, reading one back is in `read`, putting one back in `restore`.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::datadir::DataDir;
use crate::store::snapshot::{self, Corrupt};
use crate::store::{Store, StoreError};

pub mod manage;
mod read;
mod restore;
pub mod schedule;
mod write;

pub use read::{Verified, verify};
pub use restore::{Restored, Revocations, restore};
pub use write::{Created, create};

/// Version of the archive layout and of `metadata.json`.
pub const FORMAT_VERSION: u32 = 1;
/// Every backup file's name starts with this.
pub const PREFIX: &str = "pifleet-backup-";
const METADATA: &str = "metadata.json";
const DATABASE: &str = "pifleet.db";
const RELEASES: &str = "releases";

/// Why a backup could not be made, read or restored.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the database copy is not sound: {0}")]
    Corrupt(#[from] Corrupt),
    #[error("re-applying the logged revocations: {0}")]
    Revocations(String),
    #[error("not an age recipient ({0}); expected an X25519 public key `age1…`")]
    Recipient(String),
    #[error("{path}: no usable age identity: {reason}")]
    Identity { path: PathBuf, reason: String },
    #[error("{0} is encrypted; pass --identity with the age identity file that decrypts it")]
    NeedsIdentity(PathBuf),
    #[error("{path}: cannot decrypt: {source}")]
    Decrypt {
        path: PathBuf,
        #[source]
        source: age::DecryptError,
    },
    #[error("{0}: the checksum file is missing; the backup cannot be trusted")]
    NoChecksum(PathBuf),
    #[error(
        "{path}: checksum mismatch (expected {expected}, the file has {actual}); the backup is damaged"
    )]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
    #[error("{path}: not a pifleet backup: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error(
        "the backup's database is at schema version {backup}, newer than this controller's \
         {ours}; restore it with the controller version that made it ({version}) or newer"
    )]
    TooNew {
        backup: i64,
        ours: i64,
        version: String,
    },
    #[error("{0} exists and is not empty; restore only into a new or empty directory")]
    TargetNotEmpty(PathBuf),
    #[error("{0} already exists")]
    Exists(PathBuf),
    #[error("the restored data dir fails its checks: {0}")]
    DataDir(#[from] crate::datadir::DataDirError),
    #[error("background task: {0}")]
    Task(#[source] tokio::task::JoinError),
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// `metadata.json`: what a backup holds, checked before it is restored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub format: u32,
    pub controller_version: String,
    /// The newest database migration applied in the copy.
    pub schema_version: i64,
    /// Creation time, Unix milliseconds, and the same as a UTC name stamp.
    pub created_at_ms: i64,
    pub created_at: String,
    pub devices: i64,
    pub samples: i64,
    /// Every file in the archive besides this one, in archive order.
    pub files: Vec<String>,
}

/// The data dir's files a backup carries, by their names in the archive (which are their
/// names in the data dir); `required` ones must exist.
fn data_files(dd: &DataDir) -> Vec<(PathBuf, bool)> {
    vec![
        (dd.config(), true),
        (dd.ca_cert(), true),
        (dd.ca_key(), true),
        (dd.ca_previous_cert(), false),
        (dd.ca_previous_key(), false),
        (dd.crl(), false),
        (dd.server_cert(), true),
        (dd.server_key(), true),
        (dd.command_key(), true),
        (dd.command_pub(), true),
        (dd.release_key(), false),
        (dd.release_pub(), false),
        (dd.release_previous_pub(), false),
        (dd.command_previous_key(), false),
        (dd.jwt_keys(), true),
        (dd.scrape_token(), true),
        (dd.controllers_ca_cert(), false),
        (dd.controllers_ca_key(), false),
    ]
}

/// The data dir's files a backup carries (names relative to the data dir) and whether each
/// is required: what a restore of the PostgreSQL mode must bring back with the database too.
pub fn data_file_names() -> Vec<(String, bool)> {
    data_files(&DataDir::new(""))
        .into_iter()
        .map(|(p, required)| (p.to_string_lossy().into_owned(), required))
        .collect()
}

/// Whether `name` may appear in an archive: the metadata, the database, a data-dir file of
/// [`data_files`], or a plain file directly under `releases/`. Anything else (an absolute
/// path, `..`, a nested directory) makes the archive malformed.
fn allowed_name(name: &str) -> bool {
    let probe = DataDir::new("");
    if name == METADATA || name == DATABASE {
        return true;
    }
    if data_files(&probe)
        .iter()
        .any(|(p, _)| p.to_str() == Some(name))
    {
        return true;
    }
    match name.strip_prefix("releases/") {
        Some(file) => {
            !file.is_empty()
                && !file.contains('/')
                && file != "."
                && file != ".."
                && !file.starts_with('.')
        }
        None => false,
    }
}

/// A UTC time as used in file names: `20261206T020000Z`.
pub fn stamp(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// The checksum file of a backup file.
pub fn checksum_path(file: &Path) -> PathBuf {
    suffixed(file, ".sha256")
}

/// The file a successful `verify` leaves, holding the SHA-256 it found sound.
pub fn verified_path(file: &Path) -> PathBuf {
    suffixed(file, ".verified")
}

fn suffixed(file: &Path, suffix: &str) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Whether a file name is a backup (not its checksum, not a temporary file).
fn is_backup_name(name: &str) -> bool {
    name.starts_with(PREFIX) && (name.ends_with(".tar") || name.ends_with(".tar.age"))
}

/// The SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String, BackupError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The hex digest a checksum file names (`sha256sum` format: `<hex>  <name>`).
fn read_checksum(file: &Path) -> Result<String, BackupError> {
    let path = checksum_path(file);
    let text = match fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(BackupError::NoChecksum(file.to_owned()));
        }
        Err(e) => return Err(io_err(&path)(e)),
    };
    let digest = text.split_whitespace().next().unwrap_or_default();
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(BackupError::Malformed {
            path,
            reason: "the checksum file holds no SHA-256".into(),
        });
    }
    Ok(digest.to_ascii_lowercase())
}

/// One backup file, as `list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub path: PathBuf,
    /// The UTC stamp from its name.
    pub stamp: String,
    pub size: u64,
    pub encrypted: bool,
    /// A `verify` found this very file (by its checksum) sound.
    pub verified: bool,
}

/// The backups in `dir`, oldest first (names sort by time); none if `dir` does not exist.
pub fn list(dir: &Path) -> Result<Vec<Listed>, BackupError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !is_backup_name(&name) {
            continue;
        }
        let path = entry.path();
        let size = entry.metadata().map_err(io_err(&path))?.len();
        let checksum = read_checksum(&path).ok();
        let stamped = fs::read_to_string(verified_path(&path)).ok();
        let verified = match (checksum, stamped) {
            (Some(c), Some(v)) => c == v.trim(),
            _ => false,
        };
        let stamp = name
            .trim_start_matches(PREFIX)
            .trim_end_matches(".age")
            .trim_end_matches(".tar")
            .to_owned();
        out.push(Listed {
            encrypted: name.ends_with(".age"),
            path,
            stamp,
            size,
            verified,
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

/// Deletes all but the newest `keep` backups in `dir` (with their checksum and verified
/// files); returns the backups deleted.
pub fn prune(dir: &Path, keep: usize) -> Result<Vec<PathBuf>, BackupError> {
    let all = list(dir)?;
    let excess = all.len().saturating_sub(keep);
    let mut removed = Vec::new();
    for b in all.into_iter().take(excess) {
        fs::remove_file(&b.path).map_err(io_err(&b.path))?;
        for extra in [checksum_path(&b.path), verified_path(&b.path)] {
            match fs::remove_file(&extra) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&extra)(e)),
            }
        }
        removed.push(b.path);
    }
    Ok(removed)
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Fsyncs a directory so that entries made in it survive a power loss.
fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

/// Reads a database copy's check for a backup, turning a failed check into an error.
async fn checked_copy(path: &Path) -> Result<snapshot::CopyInfo, BackupError> {
    Ok(snapshot::check_copy(path).await??)
}

/// Snapshots the store for [`create`].
async fn snapshot_db(store: &Store, dest: &Path) -> Result<snapshot::CopyInfo, BackupError> {
    store.snapshot_into(dest).await?;
    checked_copy(dest).await
}

#[cfg(test)]
mod tests;
