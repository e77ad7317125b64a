//! Application releases, without HTTP: an upload or a git commit becomes one canonical
//! archive ([`intake`], [`git`]), its manifest is signed with the release key, both are
//! stored under the data dir by digest ([`storage`]) and recorded in the database with the
//! app's next release number — all or nothing. The API and the CLI call these functions.
//!
//! Creating and deleting hold the store's write transaction while the files change, so the
//! number, the row and the files move together even with the CLI and a running controller
//! side by side; a crash in between leaves files that [`sweep`] tidies up.

use std::path::PathBuf;
use std::time::Duration;

use pifleet_shared::release::{
    HealthSpec, InvalidManifest, Manifest, ManifestError, ReleaseSigner, SignedManifest,
};
use pifleet_shared::token::to_hex;

use crate::datadir::DataDir;
use crate::store::{NewReleaseRow, ReleaseRow, ReleaseSource, Store, StoreError, now_ms};

pub mod delivery;
pub mod git;
pub use pifleet_intake as intake;
pub mod storage;
#[cfg(test)]
mod tests;

pub use git::{GitError, GitOptions};
pub use intake::{IntakeError, Limits, Packed};
pub use storage::{StorageError, Swept};

/// Where a release's content comes from.
#[derive(Debug, Clone)]
pub enum Input {
    /// An archive on disk (zip, .tar.gz or .tar), with the file name the operator gave.
    Upload {
        path: PathBuf,
        file_name: Option<String>,
    },
    /// A commit of a git repository, by its full SHA.
    Git { url: String, rev: String },
}

/// What the operator says about a new release.
#[derive(Debug, Clone)]
pub struct NewRelease {
    pub app: String,
    pub version: String,
    pub arches: Vec<String>,
    pub health: HealthSpec,
    pub hooks: Vec<String>,
    /// Who makes it, as the audit log names them.
    pub created_by: String,
}

/// How inputs are taken in.
#[derive(Debug, Clone, Default)]
pub struct IntakeOptions {
    pub limits: Limits,
    pub git: GitOptions,
}

/// Why a release could not be made, found or deleted.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("invalid release: {0}")]
    Invalid(#[from] InvalidManifest),
    #[error(transparent)]
    Intake(#[from] IntakeError),
    #[error(transparent)]
    Git(#[from] GitError),
    #[error("app {app} already has this archive as release {release} (id {id})")]
    AlreadyExists { app: String, release: u64, id: i64 },
    #[error("no release with id {0}")]
    NotFound(i64),
    #[error("release {release} of {app} (id {id}) is used by a rollout; finish or cancel it first")]
    InUse { id: i64, app: String, release: u64 },
    #[error("signing the manifest: {0}")]
    Sign(#[from] ManifestError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("release {0}: its stored digests are malformed")]
    Corrupt(i64),
    #[error("background task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Makes a release: takes the input in (blocking work off the executor), numbers it, signs
/// its manifest with `signer`, stores the files and records the row. If the app already has
/// a release with the same archive, answers [`ReleaseError::AlreadyExists`]; on any failure
/// nothing is left behind.
pub async fn create_release(
    dd: &DataDir,
    store: &Store,
    signer: &ReleaseSigner,
    opts: &IntakeOptions,
    new: NewRelease,
    input: Input,
) -> Result<ReleaseRow, ReleaseError> {
    // What the operator said is checked before the (long) repack.
    let mut manifest = Manifest {
        app: new.app,
        version: new.version,
        release: 1,
        arches: new.arches,
        archive_sha256: [0; 32],
        archive_size: 0,
        unpacked_size: 0,
        entries: Vec::new(),
        health: new.health,
        hooks: new.hooks,
        created_at_ms: 0,
    };
    manifest.validate()?;

    let (dd2, opts2) = (dd.clone(), opts.clone());
    let (packed, source) =
        tokio::task::spawn_blocking(move || take_in(&dd2, &opts2, input)).await??;
    let Packed {
        archive,
        archive_sha256,
        archive_size,
        entries,
        unpacked_size,
    } = packed;
    let digest_hex = to_hex(&archive_sha256);
    manifest.archive_sha256 = archive_sha256;
    manifest.archive_size = archive_size;
    manifest.unpacked_size = unpacked_size;
    manifest.entries = entries;

    let mut tx = store.release_tx().await?;
    if let Some(existing) = tx.by_digest(&manifest.app, &digest_hex).await? {
        return Err(ReleaseError::AlreadyExists {
            app: existing.app,
            release: existing.release,
            id: existing.id,
        });
    }
    manifest.release = tx.take_number(&manifest.app).await?;
    manifest.created_at_ms = now_ms();
    let signed = signer.sign(&manifest)?;
    let dd2 = dd.clone();
    let stored = tokio::task::spawn_blocking(move || {
        storage::store(&dd2, archive, &archive_sha256, &signed).map(Undo::new)
    })
    .await??;
    let row = NewReleaseRow {
        app: manifest.app,
        release: manifest.release,
        version: manifest.version,
        archive_sha256: digest_hex,
        archive_size,
        unpacked_size,
        entries: manifest.entries.len() as u64,
        arches: manifest.arches,
        health: manifest.health,
        hooks: manifest.hooks,
        key_id: signer.id().to_string(),
        manifest_sha256: to_hex(&stored.manifest_sha256()),
        source,
        created_at: manifest.created_at_ms,
        created_by: new.created_by,
    };
    let id = tx.insert(&row).await?;
    tx.commit().await?;
    stored.keep();
    Ok(row.into_row(id))
}

/// Repacks an upload or fetches and repacks a commit, into `releases/`.
fn take_in(
    dd: &DataDir,
    opts: &IntakeOptions,
    input: Input,
) -> Result<(Packed, ReleaseSource), ReleaseError> {
    let dir = storage::ensure_dir(dd)?;
    Ok(match input {
        Input::Upload { path, file_name } => (
            intake::repack(&path, &opts.limits, &dir)?,
            ReleaseSource::Upload {
                // Recorded for people to read: printable, at most 255 characters.
                file_name: file_name
                    .map(|n| n.chars().filter(|c| !c.is_control()).take(255).collect()),
            },
        ),
        Input::Git { url, rev } => {
            let rev = git::check_revision(&rev)?;
            let packed = git::fetch_revision(&url, &rev, &opts.limits, &opts.git, &dir)?;
            (
                packed,
                ReleaseSource::Git {
                    url: git::redact_url(&url),
                    rev,
                },
            )
        }
    })
}

/// Stored files that are removed again unless [`Undo::keep`] is called — also when the
/// future making the release is dropped halfway.
#[derive(Debug)]
struct Undo(Option<storage::Stored>);

impl Undo {
    fn new(s: storage::Stored) -> Self {
        Self(Some(s))
    }
    fn manifest_sha256(&self) -> [u8; 32] {
        self.0
            .as_ref()
            .map(|s| s.manifest_sha256)
            .unwrap_or_default()
    }
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            s.undo();
        }
    }
}

/// Releases, newest first; one app's when `app` is given.
pub async fn list(store: &Store, app: Option<&str>) -> Result<Vec<ReleaseRow>, ReleaseError> {
    Ok(store.list_releases(app).await?)
}

/// One release by id.
pub async fn show(store: &Store, id: i64) -> Result<ReleaseRow, ReleaseError> {
    store.release(id).await?.ok_or(ReleaseError::NotFound(id))
}

/// The signed manifest of a release, as devices download it.
pub async fn signed_manifest(
    dd: &DataDir,
    row: &ReleaseRow,
) -> Result<SignedManifest, ReleaseError> {
    let digest =
        storage::parse_digest(&row.manifest_sha256).ok_or(ReleaseError::Corrupt(row.id))?;
    let dd = dd.clone();
    Ok(tokio::task::spawn_blocking(move || storage::read_manifest(&dd, &digest)).await??)
}

/// Deletes a release: its row, its manifest, and its archive unless another app's release
/// has the same one. Refused while a rollout uses it.
pub async fn delete_release(
    dd: &DataDir,
    store: &Store,
    id: i64,
) -> Result<ReleaseRow, ReleaseError> {
    let mut tx = store.release_tx().await?;
    let row = tx.get(id).await?.ok_or(ReleaseError::NotFound(id))?;
    if tx.rollout_uses(id).await? {
        return Err(ReleaseError::InUse {
            id,
            app: row.app,
            release: row.release,
        });
    }
    let manifest = storage::parse_digest(&row.manifest_sha256).ok_or(ReleaseError::Corrupt(id))?;
    let archive = storage::parse_digest(&row.archive_sha256).ok_or(ReleaseError::Corrupt(id))?;
    tx.delete(id).await?;
    let mut paths = vec![dd.release_manifest(&manifest)];
    if tx.archive_users(&row.archive_sha256).await? == 0 {
        paths.push(dd.release_archive(&archive));
    }
    let removal = tokio::task::spawn_blocking(move || storage::begin_removal(&paths)).await??;
    match tx.commit().await {
        Ok(()) => {
            tokio::task::spawn_blocking(move || removal.finish()).await?;
            Ok(row)
        }
        Err(e) => {
            tokio::task::spawn_blocking(move || removal.restore()).await?;
            Err(e.into())
        }
    }
}

/// Tidies `releases/` after a crash ([`storage::sweep_files`]), holding the store's write
/// lock so no release is created or deleted meanwhile. Temp files younger than
/// `older_than` are left alone: a repack may be writing them.
pub async fn sweep(
    dd: &DataDir,
    store: &Store,
    older_than: Duration,
) -> Result<Swept, ReleaseError> {
    let mut tx = store.release_tx().await?;
    let (archives, manifests) = tx.digests().await?;
    let referenced = storage::Referenced {
        archives,
        manifests,
    };
    let dd = dd.clone();
    let swept =
        tokio::task::spawn_blocking(move || storage::sweep_files(&dd, &referenced, older_than))
            .await??;
    tx.commit().await?;
    Ok(swept)
}

impl From<&crate::config::ReleasesConfig> for IntakeOptions {
    fn from(c: &crate::config::ReleasesConfig) -> Self {
        const MIB: u64 = 1024 * 1024;
        Self {
            limits: Limits {
                max_upload_bytes: c.max_upload_mib.saturating_mul(MIB),
                max_unpacked_bytes: c.max_unpacked_mib.saturating_mul(MIB),
                max_entries: c.max_entries,
            },
            git: GitOptions {
                timeout: std::time::Duration::from_secs(c.git_timeout_s),
                allow_file_urls: c.git_allow_file_urls,
                ..GitOptions::default()
            },
        }
    }
}
