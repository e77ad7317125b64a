//! Unpacking a release archive (gzip-compressed tar) from a stream, checked against its
//! signed manifest while it is written.
//!
//! The archive is read once, never held in memory: compressed bytes are counted and hashed
//! as they are read (and refused past the manifest's `archive_size`), the decompressed
//! stream is metered against what the manifest allows (so a small archive that inflates
//! without bound is stopped early), and each tar entry must be the manifest's next entry:
//! same path, kind, mode, size or link target. Hard links, device files, fifos, unsafe paths
//! and setuid/setgid/sticky bits are refused from the tar header itself, whatever the
//! manifest says. Each file's SHA-256 is computed while it is written.
//!
//! Everything lands in `releases/.staging-<dir>/`; files are fsynced as they are closed,
//! directories get their modes and are fsynced once every entry checked out, and only then,
//! with the archive's size and digest matching too, is the staging directory renamed to
//! `releases/<dir>`. On any error the staging directory is removed and nothing else changed.
//!
//! Files belong to the agent's user, with the manifest's modes: the app runs as the unit's
//! `User=` and reads its release through the world-readable bits the release gives.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use pifleet_shared::release::{
    Digest as Sha256Digest, Entry, EntryKind, Manifest, PathError, check_entry_path,
    check_link_target,
};
use sha2::{Digest, Sha256};
use tar::EntryType;

use super::layout::{Layout, remove_tree, sync_dir};

/// Tar blocks.
const BLOCK: u64 = 512;
/// Decompressed bytes allowed after the last entry: the end-of-archive blocks and the
/// padding to a full record (tar writes records of 20 blocks).
const TRAILER: u64 = 16 * 1024;

/// Why a release was not unpacked. Nothing is left behind in any case.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} already exists")]
    Exists(PathBuf),
    #[error("archive is not a valid gzip-compressed tar: {0}")]
    Corrupt(#[source] io::Error),
    #[error("archive is larger than the {0} bytes its manifest states (stopped reading)")]
    ArchiveTooLarge(u64),
    #[error("archive is {found} bytes, its manifest states {expected}")]
    ArchiveSize { expected: u64, found: u64 },
    #[error("archive SHA-256 does not match its manifest")]
    ArchiveDigest,
    #[error("archive inflates beyond what its manifest lists (stopped after {0} bytes)")]
    Inflates(u64),
    #[error("entry {index} ({path:?}): {problem}")]
    Refused {
        index: usize,
        path: String,
        problem: Problem,
    },
    #[error("archive ends before {0:?}, which its manifest lists")]
    Missing(String),
}

/// What is wrong with one archive entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("hard links are not allowed")]
    HardLink,
    #[error("device files are not allowed")]
    Device,
    #[error("fifos are not allowed")]
    Fifo,
    #[error("tar entry type {0:?} is not allowed (files, directories and symbolic links only)")]
    OtherType(char),
    #[error("path is not UTF-8")]
    NotUtf8,
    #[error("unsafe path: {0}")]
    Path(PathError),
    #[error("mode {0:o} has setuid, setgid or sticky bits")]
    SpecialBits(u32),
    #[error("not in the manifest")]
    NotInManifest,
    #[error("out of order: the manifest lists {0:?} here")]
    OutOfOrder(String),
    #[error("is a {found}, the manifest says {expected}")]
    Kind {
        expected: &'static str,
        found: &'static str,
    },
    #[error("mode {found:o}, the manifest says {expected:o}")]
    Mode { expected: u32, found: u32 },
    #[error("size {found}, the manifest says {expected}")]
    Size { expected: u64, found: u64 },
    #[error("link target {found:?}, the manifest says {expected:?}")]
    Target { expected: String, found: String },
    #[error("content does not match its SHA-256 in the manifest")]
    Digest,
    #[error("archive ends inside the file")]
    Truncated,
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> UnpackError + '_ {
    move |source| UnpackError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Unpacks `archive` as the release `manifest` describes into `releases/<dir_name>` of
/// `layout` and returns that path. The manifest must have been verified
/// ([`pifleet_shared::release::verify_manifest`]). Blocking: run it off the async executor.
pub fn unpack<R: Read>(
    manifest: &Manifest,
    archive: R,
    layout: &Layout,
) -> Result<PathBuf, UnpackError> {
    let name = manifest.dir_name();
    let dest = layout.release(&name);
    if fs::symlink_metadata(&dest).is_ok() {
        return Err(UnpackError::Exists(dest));
    }
    let staging = layout.staging(&name);
    remove_tree(&staging).map_err(io_at(&staging))?;
    DirBuilder::new()
        .mode(0o700)
        .create(&staging)
        .map_err(io_at(&staging))?;
    let mut guard = Staging(Some(staging.clone()));
    let dirs = write_release(manifest, archive, &staging)?;
    finish_dirs(&staging, dirs)?;
    fs::rename(&staging, &dest).map_err(io_at(&dest))?;
    guard.0 = None;
    let releases = layout.releases();
    sync_dir(&releases).map_err(io_at(&releases))?;
    Ok(dest)
}

/// Removes the staging directory when dropped, unless it was renamed into place.
struct Staging(Option<PathBuf>);

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(dir) = self.0.take()
            && let Err(e) = remove_tree(&dir)
        {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a staging directory");
        }
    }
}

/// Reads the whole archive into `root`; returns the directories to finish (path → mode).
fn write_release<R: Read>(
    manifest: &Manifest,
    archive: R,
    root: &Path,
) -> Result<BTreeMap<PathBuf, u32>, UnpackError> {
    let mut source = Metered {
        inner: archive,
        hasher: Sha256::new(),
        read: 0,
        limit: manifest.archive_size,
        exceeded: false,
    };
    let budget = Budget::default();
    let walked = {
        let mut gz = GzDecoder::new(&mut source);
        let mut inflated = Budgeted {
            inner: &mut gz,
            budget: &budget,
        };
        let walked = walk(
            &mut tar::Archive::new(&mut inflated),
            manifest,
            root,
            &budget,
        );
        // Read to the end of the gzip stream: its CRC is checked there.
        walked.and_then(|dirs| {
            budget.grant(TRAILER);
            io::copy(&mut inflated, &mut io::sink()).map_err(UnpackError::Corrupt)?;
            Ok(dirs)
        })
    };
    // Whatever follows the gzip stream still counts towards the archive's size and digest.
    let walked = walked.and_then(|dirs| {
        io::copy(&mut source, &mut io::sink()).map_err(UnpackError::Corrupt)?;
        Ok(dirs)
    });
    // A stream error may be the meters stopping the read: name the real cause.
    if source.exceeded {
        return Err(UnpackError::ArchiveTooLarge(manifest.archive_size));
    }
    if budget.exceeded.get() {
        return Err(UnpackError::Inflates(budget.used.get()));
    }
    let dirs = walked?;
    if source.read != manifest.archive_size {
        return Err(UnpackError::ArchiveSize {
            expected: manifest.archive_size,
            found: source.read,
        });
    }
    if Sha256Digest::from(source.hasher.finalize()) != manifest.archive_sha256 {
        return Err(UnpackError::ArchiveDigest);
    }
    Ok(dirs)
}

/// Checks and writes every tar entry against the manifest's list, in order.
fn walk<R: Read>(
    archive: &mut tar::Archive<R>,
    manifest: &Manifest,
    root: &Path,
    budget: &Budget,
) -> Result<BTreeMap<PathBuf, u32>, UnpackError> {
    let mut dirs = BTreeMap::new();
    let mut listed = manifest.entries.iter();
    budget.grant(header_allowance(manifest.entries.first()));
    let entries = archive.entries().map_err(UnpackError::Corrupt)?;
    for (index, entry) in entries.enumerate() {
        let mut entry = entry.map_err(UnpackError::Corrupt)?;
        let want = check_entry(index, &entry, manifest, listed.next())?;
        let dest = root.join(&want.path);
        make_parents(root, &want.path, &mut dirs)?;
        match &want.kind {
            EntryKind::File { size, sha256 } => {
                budget.grant(*size);
                let digest = write_file(&mut entry, &dest, *size, want.mode)
                    .map_err(|e| e.into_unpack_error(index, &want.path))?;
                if digest != *sha256 {
                    return Err(UnpackError::Refused {
                        index,
                        path: want.path.clone(),
                        problem: Problem::Digest,
                    });
                }
            }
            EntryKind::Dir => {
                match DirBuilder::new().mode(0o700).create(&dest) {
                    // Already made as the parent of an earlier entry.
                    Err(e)
                        if e.kind() == ErrorKind::AlreadyExists
                            && fs::symlink_metadata(&dest).is_ok_and(|m| m.is_dir()) => {}
                    r => r.map_err(io_at(&dest))?,
                }
                dirs.insert(dest, want.mode);
            }
            EntryKind::Symlink { target } => {
                std::os::unix::fs::symlink(target, &dest).map_err(io_at(&dest))?;
            }
        }
        budget.grant(header_allowance(manifest.entries.get(index + 1)));
    }
    match listed.next() {
        Some(missing) => Err(UnpackError::Missing(missing.path.clone())),
        None => Ok(dirs),
    }
}

/// Checks one tar header against the manifest's entry for its position, and returns that
/// entry (now known to match the header).
fn check_entry<'m, R: Read>(
    index: usize,
    entry: &tar::Entry<'_, R>,
    manifest: &'m Manifest,
    want: Option<&'m Entry>,
) -> Result<&'m Entry, UnpackError> {
    let header = entry.header();
    let raw = entry.path_bytes();
    let refused = |problem| UnpackError::Refused {
        index,
        path: String::from_utf8_lossy(&raw).into_owned(),
        problem,
    };
    let found = match header.entry_type() {
        EntryType::Regular | EntryType::Continuous => "file",
        EntryType::Directory => "directory",
        EntryType::Symlink => "symbolic link",
        EntryType::Link => return Err(refused(Problem::HardLink)),
        EntryType::Char | EntryType::Block => return Err(refused(Problem::Device)),
        EntryType::Fifo => return Err(refused(Problem::Fifo)),
        other => return Err(refused(Problem::OtherType(char::from(other.as_byte())))),
    };
    let text = std::str::from_utf8(&raw).map_err(|_| refused(Problem::NotUtf8))?;
    // Directories are often stored as `name/`.
    let path = match text.strip_suffix('/') {
        Some(p) if found == "directory" => p,
        _ => text,
    };
    check_entry_path(path).map_err(|e| refused(Problem::Path(e)))?;
    let mode = header.mode().map_err(UnpackError::Corrupt)?;
    if mode & 0o7000 != 0 {
        return Err(refused(Problem::SpecialBits(mode)));
    }
    let target = match entry.link_name_bytes() {
        Some(t) if found == "symbolic link" => {
            let t = String::from_utf8(t.into_owned()).map_err(|_| refused(Problem::NotUtf8))?;
            check_link_target(path, &t).map_err(|e| refused(Problem::Path(e)))?;
            Some(t)
        }
        _ => None,
    };
    let want = match want {
        Some(w) if w.path == path => w,
        Some(w) if manifest.entries.iter().any(|e| e.path == path) => {
            return Err(refused(Problem::OutOfOrder(w.path.clone())));
        }
        _ => return Err(refused(Problem::NotInManifest)),
    };
    let size = entry.size();
    let problem = match (&want.kind, found) {
        (EntryKind::File { size: expected, .. }, "file") if *expected != size => {
            Some(Problem::Size {
                expected: *expected,
                found: size,
            })
        }
        (EntryKind::File { .. }, "file") => None,
        (EntryKind::Dir, "directory") | (EntryKind::Symlink { .. }, "symbolic link")
            if size != 0 =>
        {
            Some(Problem::Size {
                expected: 0,
                found: size,
            })
        }
        (EntryKind::Dir, "directory") => None,
        (EntryKind::Symlink { target: expected }, "symbolic link") => {
            let found = target.unwrap_or_default();
            (*expected != found).then(|| Problem::Target {
                expected: expected.clone(),
                found,
            })
        }
        (kind, found) => Some(Problem::Kind {
            expected: kind_name(kind),
            found,
        }),
    };
    if let Some(p) = problem {
        return Err(refused(p));
    }
    if mode & 0o777 != want.mode {
        return Err(refused(Problem::Mode {
            expected: want.mode,
            found: mode & 0o777,
        }));
    }
    Ok(want)
}

pub(super) fn kind_name(kind: &EntryKind) -> &'static str {
    match kind {
        EntryKind::File { .. } => "file",
        EntryKind::Dir => "directory",
        EntryKind::Symlink { .. } => "symbolic link",
    }
}

/// Decompressed bytes the next tar header may take: the padding of the entry before it,
/// the header, and GNU long-name, long-link and PAX extension headers sized by its path and
/// link target. `None`: the end-of-archive block.
fn header_allowance(next: Option<&Entry>) -> u64 {
    let padded = |n: usize| (n as u64 + 1).div_ceil(BLOCK) * BLOCK;
    let (path, target) = match next {
        None => return 2 * BLOCK,
        Some(e) => match &e.kind {
            EntryKind::Symlink { target } => (e.path.len(), target.len()),
            _ => (e.path.len(), 0),
        },
    };
    (BLOCK - 1) + 4 * BLOCK + 3 * padded(path) + 3 * padded(target) + 4 * BLOCK
}

/// Creates the missing folders above `rel` (mode 0755 once finished, like `mkdir -p`).
fn make_parents(
    root: &Path,
    rel: &str,
    dirs: &mut BTreeMap<PathBuf, u32>,
) -> Result<(), UnpackError> {
    let mut at = root.to_owned();
    let mut parts: Vec<&str> = rel.split('/').collect();
    parts.pop();
    for part in parts {
        at.push(part);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => return Err(io_at(&at)(io::Error::from(ErrorKind::NotADirectory))),
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(io_at(&at)(e)),
        }
        DirBuilder::new()
            .mode(0o700)
            .create(&at)
            .map_err(io_at(&at))?;
        dirs.insert(at.clone(), 0o755);
    }
    Ok(())
}

/// Why writing one file stopped.
enum WriteError {
    /// Writing the file failed.
    Io(PathBuf, io::Error),
    /// Reading the archive failed.
    Read(io::Error),
    Truncated,
}

impl WriteError {
    fn into_unpack_error(self, index: usize, entry: &str) -> UnpackError {
        match self {
            Self::Io(path, source) => UnpackError::Io { path, source },
            Self::Read(e) => UnpackError::Corrupt(e),
            Self::Truncated => UnpackError::Refused {
                index,
                path: entry.to_owned(),
                problem: Problem::Truncated,
            },
        }
    }
}

/// Writes exactly `size` bytes from `src` to a new file at `dest` (never through a link),
/// gives it `mode`, fsyncs it, and returns the SHA-256 of what was written.
fn write_file(
    src: &mut impl Read,
    dest: &Path,
    size: u64,
    mode: u32,
) -> Result<Sha256Digest, WriteError> {
    let err = |e| WriteError::Io(dest.to_owned(), e);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dest)
        .map_err(err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = size;
    while left > 0 {
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let n = match src.read(&mut buf[..want]) {
            Ok(0) => return Err(WriteError::Truncated),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(WriteError::Read(e)),
        };
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(err)?;
        left -= n as u64;
    }
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(err)?;
    file.sync_all().map_err(err)?;
    Ok(hasher.finalize().into())
}

/// Gives every directory its mode, deepest first (a read-only folder is finished after what
/// is inside it), fsyncs each, then the release's root (0755).
fn finish_dirs(root: &Path, dirs: BTreeMap<PathBuf, u32>) -> Result<(), UnpackError> {
    let mut dirs: Vec<(PathBuf, u32)> = dirs.into_iter().collect();
    dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
    dirs.push((root.to_owned(), 0o755));
    for (dir, mode) in dirs {
        let f = File::open(&dir).map_err(io_at(&dir))?;
        f.set_permissions(fs::Permissions::from_mode(mode))
            .and_then(|()| f.sync_all())
            .map_err(io_at(&dir))?;
    }
    Ok(())
}

/// The compressed stream: counted, hashed, and stopped past `limit` bytes.
struct Metered<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
    limit: u64,
    exceeded: bool,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let room = self.limit.saturating_sub(self.read);
        let n = if room == 0 && !buf.is_empty() {
            // At the limit: only the end of the stream is acceptable.
            let n = self.inner.read(&mut buf[..1])?;
            if n > 0 {
                self.exceeded = true;
                return Err(io::Error::other("archive larger than its manifest states"));
            }
            0
        } else {
            let cap = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
            self.inner.read(&mut buf[..cap])?
        };
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// How many decompressed bytes the tar reader may still take: granted step by step as
/// the manifest says what comes next, so nothing larger than the next header or file is
/// ever decompressed (or buffered by the tar reader, which reads extension headers whole).
#[derive(Default)]
struct Budget {
    used: Cell<u64>,
    allowed: Cell<u64>,
    exceeded: Cell<bool>,
}

impl Budget {
    /// From here on, `n` more bytes may be read.
    fn grant(&self, n: u64) {
        self.allowed.set(self.used.get().saturating_add(n));
    }
}

/// The decompressed stream, held to its [`Budget`].
struct Budgeted<'b, R> {
    inner: R,
    budget: &'b Budget,
}

impl<R: Read> Read for Budgeted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let b = self.budget;
        let room = b.allowed.get().saturating_sub(b.used.get());
        if room == 0 && !buf.is_empty() {
            let n = self.inner.read(&mut buf[..1])?;
            if n > 0 {
                b.exceeded.set(true);
                return Err(io::Error::other("archive inflates beyond its manifest"));
            }
            return Ok(0);
        }
        let cap = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..cap])?;
        b.used.set(b.used.get() + n as u64);
        Ok(n)
    }
}
