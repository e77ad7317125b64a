//! The release files under `<data dir>/releases/` (0700): `<sha256>.tar.gz`, the archive
//! named by its digest (shared by apps that release the same content), and
//! `<sha256>.manifest`, the postcard-encoded signed manifest named by the digest of its own
//! bytes. Files appear by rename (temp file, fsync, rename, directory fsync) and disappear by
//! a rename to `.<name>.deleting` that is undone if the deletion does not commit. Only the
//! caller, inside the store's write transaction, decides which files rows still need;
//! [`sweep_files`] tidies up after a crash.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use pifleet_shared::release::{Digest, MAX_MANIFEST_BYTES, SignedManifest};
use sha2::{Digest as _, Sha256};

use crate::datadir::DataDir;

/// Suffix of a file being deleted.
const TRASH_SUFFIX: &str = ".deleting";

/// Why a release file could not be written, read or removed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("encoding the signed manifest: {0}")]
    Encode(#[from] postcard::Error),
    #[error("{0}: its content does not match its name (damaged or replaced)")]
    Mismatch(PathBuf),
    #[error("{0}: not a signed manifest")]
    Malformed(PathBuf),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StorageError + '_ {
    move |source| StorageError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Creates `releases/` (0700) if it is missing; repacking writes its temp files there so
/// that storing is a rename.
pub fn ensure_dir(dd: &DataDir) -> Result<PathBuf, StorageError> {
    let dir = dd.releases_dir();
    pifleet_io::create_private_dir(&dir).map_err(|e| match e {
        pifleet_io::FileError::Io { path, source } => StorageError::Io { path, source },
    })?;
    Ok(dir)
}

/// What [`store`] wrote, to undo it if the database does not record the release.
#[derive(Debug)]
pub struct Stored {
    pub manifest_sha256: Digest,
    manifest: PathBuf,
    /// The archive, when this call put it there (not when another app's release has it).
    archive: Option<PathBuf>,
}

impl Stored {
    /// Removes what [`store`] added.
    pub fn undo(self) {
        let _ = fs::remove_file(&self.manifest);
        if let Some(a) = &self.archive {
            let _ = fs::remove_file(a);
        }
        sync_dir(&self.manifest);
    }
}

/// Puts a release's files in place: the signed manifest (written atomically) and the
/// archive (the repacked temp file, renamed), both durable when this returns.
pub fn store(
    dd: &DataDir,
    archive: tempfile::TempPath,
    archive_sha256: &Digest,
    signed: &SignedManifest,
) -> Result<Stored, StorageError> {
    let bytes = postcard::to_allocvec(signed)?;
    let manifest_sha256: Digest = Sha256::digest(&bytes).into();
    let manifest = dd.release_manifest(&manifest_sha256);
    pifleet_io::write_private(&manifest, &bytes).map_err(|e| match e {
        pifleet_io::FileError::Io { path, source } => StorageError::Io { path, source },
    })?;
    let dest = dd.release_archive(archive_sha256);
    let created = if dest.exists() {
        // Same digest, same content: keep the file another app's release uses.
        drop(archive);
        None
    } else {
        match archive.persist(&dest) {
            Ok(()) => Some(dest),
            Err(e) => {
                let _ = fs::remove_file(&manifest);
                return Err(io(&dest)(e.error));
            }
        }
    };
    sync_dir(&manifest);
    Ok(Stored {
        manifest_sha256,
        manifest,
        archive: created,
    })
}

/// Opens a stored archive for reading; returns it with its size.
pub fn open_archive(dd: &DataDir, archive_sha256: &Digest) -> Result<(File, u64), StorageError> {
    let path = dd.release_archive(archive_sha256);
    let file = File::open(&path).map_err(io(&path))?;
    let len = file.metadata().map_err(io(&path))?.len();
    Ok((file, len))
}

/// Reads a stored signed manifest, checking that its bytes still match its name.
pub fn read_manifest(
    dd: &DataDir,
    manifest_sha256: &Digest,
) -> Result<SignedManifest, StorageError> {
    let path = dd.release_manifest(manifest_sha256);
    let len = fs::metadata(&path).map_err(io(&path))?.len();
    if len > MAX_MANIFEST_BYTES as u64 + 1024 {
        return Err(StorageError::Malformed(path));
    }
    let bytes = fs::read(&path).map_err(io(&path))?;
    let digest: Digest = Sha256::digest(&bytes).into();
    if &digest != manifest_sha256 {
        return Err(StorageError::Mismatch(path));
    }
    postcard::from_bytes(&bytes).map_err(|_| StorageError::Malformed(path))
}

/// Files set aside by [`begin_removal`]: deleted by [`Removal::finish`] once the row's
/// deletion committed, put back by [`Removal::restore`] if it did not.
#[derive(Debug)]
pub struct Removal {
    moved: Vec<(PathBuf, PathBuf)>,
}

/// Renames each existing file to `.<name>.deleting`; a missing one is skipped.
pub fn begin_removal(paths: &[PathBuf]) -> Result<Removal, StorageError> {
    let mut removal = Removal { moved: Vec::new() };
    for p in paths {
        let trash = trash_name(p);
        match fs::rename(p, &trash) {
            Ok(()) => removal.moved.push((p.clone(), trash)),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                removal.restore();
                return Err(io(p)(e));
            }
        }
    }
    if let Some((p, _)) = removal.moved.first() {
        sync_dir(p);
    }
    Ok(removal)
}

impl Removal {
    pub fn finish(self) {
        for (_, trash) in &self.moved {
            let _ = fs::remove_file(trash);
        }
        if let Some((p, _)) = self.moved.first() {
            sync_dir(p);
        }
    }

    pub fn restore(self) {
        for (orig, trash) in &self.moved {
            let _ = fs::rename(trash, orig);
        }
        if let Some((p, _)) = self.moved.first() {
            sync_dir(p);
        }
    }
}

fn trash_name(p: &Path) -> PathBuf {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    p.with_file_name(format!(".{name}{TRASH_SUFFIX}"))
}

/// The digests the database still refers to.
#[derive(Debug, Default)]
pub struct Referenced {
    pub archives: HashSet<String>,
    pub manifests: HashSet<String>,
}

/// What [`sweep_files`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    /// Temp files and work dirs removed.
    pub temp: usize,
    /// Archives and manifests no release refers to, removed.
    pub orphans: usize,
    /// Files set aside for a deletion that never committed, put back.
    pub restored: usize,
}

/// Tidies `releases/` after a crash: removes temp files (`.*.tmp`) and git work dirs
/// (`.git-*`) older than
/// `older_than` (younger ones may belong to a repack running now), archives and manifests
/// that no row refers to, and set-aside files whose deletion committed; puts back those
/// whose deletion did not. Call it while holding the store's write lock, so that no
/// release is being created or deleted meanwhile.
pub fn sweep_files(
    dd: &DataDir,
    referenced: &Referenced,
    older_than: Duration,
) -> Result<Swept, StorageError> {
    let dir = dd.releases_dir();
    let mut swept = Swept::default();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(swept),
        Err(e) => return Err(io(&dir)(e)),
    };
    let now = SystemTime::now();
    for entry in entries {
        let entry = entry.map_err(io(&dir))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        // Only `<64 hex>.tar.gz` and `<64 hex>.manifest` are ours; anything else stays.
        let is_used = |n: &str| match n.split_once('.') {
            Some((hex, "tar.gz")) if parse_digest(hex).is_some() => {
                referenced.archives.contains(hex)
            }
            Some((hex, "manifest")) if parse_digest(hex).is_some() => {
                referenced.manifests.contains(hex)
            }
            _ => true,
        };
        if let Some(orig) = name
            .strip_prefix('.')
            .and_then(|n| n.strip_suffix(TRASH_SUFFIX))
        {
            if is_used(orig) {
                fs::rename(&path, dir.join(orig)).map_err(io(&path))?;
                swept.restored += 1;
            } else {
                fs::remove_file(&path).map_err(io(&path))?;
                swept.orphans += 1;
            }
        } else if name.starts_with(".git-")
            || (name.starts_with('.') && name.ends_with(crate::releases::intake::TEMP_SUFFIX))
        {
            let old = entry
                .metadata()
                .and_then(|m| m.modified())
                .ok()
                .and_then(|m| now.duration_since(m).ok())
                .is_some_and(|age| age >= older_than);
            if old {
                let meta = entry.file_type().map_err(io(&path))?;
                if meta.is_dir() {
                    fs::remove_dir_all(&path).map_err(io(&path))?;
                } else {
                    fs::remove_file(&path).map_err(io(&path))?;
                }
                swept.temp += 1;
            }
        } else if !is_used(&name) {
            fs::remove_file(&path).map_err(io(&path))?;
            swept.orphans += 1;
        }
    }
    sync_dir(&dir.join("."));
    Ok(swept)
}

/// Persists the directory entries next to `path` (fsync of its folder); a failure only
/// weakens durability of a change that was made, so it is ignored.
fn sync_dir(path: &Path) {
    if let Some(parent) = path.parent()
        && let Ok(d) = File::open(parent)
    {
        let _ = d.sync_all();
    }
}

/// Parses a 64-hex digest as stored in a row.
pub fn parse_digest(hex_text: &str) -> Option<Digest> {
    let mut d = [0u8; 32];
    hex::decode_to_slice(hex_text, &mut d).ok()?;
    Some(d)
}
