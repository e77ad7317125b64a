//! Turning an upload (zip, gzip-compressed tar or plain tar) into the one canonical release
//! archive devices decode: a gzip-compressed tar whose entries are sorted by path, with
//! mtime 0, uid and gid 0, no owner names and permission bits only — so the same content
//! always gives the same digest. The input is read as a stream (a zip through its central
//! directory), file contents are spooled to an anonymous temp file while hashed and counted,
//! and every entry is checked before anything is written: nothing may leave the release,
//! be a device or a hard link, carry setuid/setgid/sticky bits, lie below a link, or
//! exceed the limits. On any error nothing stays behind in `out_dir`.
//!
//! Its own crate (std I/O only, no async runtime) so the fuzz targets (tests/fuzz) build
//! without the controller; the controller uses it as `releases::intake`.

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use pifleet_shared::release::{Digest, Entry, MAX_ENTRIES, MAX_MANIFEST_BYTES, PathError};

mod canonical;
pub use canonical::{TEMP_PREFIX, TEMP_SUFFIX};
mod collect;
mod tar_in;
#[cfg(any(test, feature = "testkit"))]
// Test helpers (the controller's tests use them too): a failed unwrap is a failed test.
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod testkit;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_refusals;
mod zip_in;

/// How much an upload may hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest upload (the compressed file), in bytes.
    pub max_upload_bytes: u64,
    /// Most bytes the files may add up to once unpacked; counted while decompressing.
    pub max_unpacked_bytes: u64,
    /// Most entries (files, folders, links, implicit folders included).
    pub max_entries: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_upload_bytes: 512 * 1024 * 1024,
            max_unpacked_bytes: 1024 * 1024 * 1024,
            max_entries: MAX_ENTRIES,
        }
    }
}

/// A repacked release archive, not yet stored.
#[derive(Debug)]
pub struct Packed {
    /// The canonical archive, a temp file in `out_dir`; removed when dropped unless
    /// the controller's release storage renames it into place.
    pub archive: tempfile::TempPath,
    /// SHA-256 and size of the archive.
    pub archive_sha256: Digest,
    pub archive_size: u64,
    /// Every entry, sorted by path (the archive's order), implicit folders included.
    pub entries: Vec<Entry>,
    /// What the files add up to.
    pub unpacked_size: u64,
}

/// Why an upload was refused. Entry paths are shown quoted, as the archive names them.
#[derive(Debug, thiserror::Error)]
pub enum IntakeError {
    #[error("not an archive: a release is uploaded as .zip, .tar.gz (gzip-compressed tar) or .tar")]
    NotAnArchive,
    #[error("the upload is {size} bytes, more than the limit of {max} bytes")]
    UploadTooLarge { size: u64, max: u64 },
    #[error("the archive holds more than {max} entries")]
    TooManyEntries { max: usize },
    #[error("the archive unpacks to more than {max} bytes")]
    UnpackedTooLarge { max: u64 },
    #[error(
        "the archive's paths and link targets are too long all together: its manifest would \
         exceed {MAX_MANIFEST_BYTES} bytes"
    )]
    ManifestTooLarge,
    #[error("the archive holds no entries")]
    Empty,
    #[error("{path:?}: {error}; every entry must stay inside the release")]
    UnsafePath { path: String, error: PathError },
    #[error("entry name {0:?} is not valid UTF-8")]
    NotUtf8(String),
    #[error("{path:?} is a {kind}; a release holds only files, folders and symbolic links")]
    UnsupportedType { path: String, kind: &'static str },
    #[error(
        "{path:?} has mode {mode:o}: setuid, setgid and sticky bits are not allowed, only \
         permissions (0777)"
    )]
    SpecialBits { path: String, mode: u32 },
    #[error("symbolic link {path:?} -> {target:?}: {error}")]
    LinkEscapes {
        path: String,
        target: String,
        error: PathError,
    },
    #[error(
        "{path:?} is a hard link to {target:?}; hard links are not supported, store a copy or \
         a symbolic link instead"
    )]
    HardLink { path: String, target: String },
    #[error("{0:?} appears more than once in the archive")]
    Duplicate(String),
    #[error("the zip archive lists an entry name more than once")]
    DuplicateZipName,
    #[error(
        "{path:?} lies below the symbolic link {link:?}; nothing may be unpacked through a link"
    )]
    BelowSymlink { path: String, link: String },
    #[error("{path:?} lies below {parent:?}, which is not a folder")]
    NotADirectory { path: String, parent: String },
    #[error("{0:?} is encrypted; encrypted zip entries are not supported")]
    Encrypted(String),
    #[error("the archive is damaged or uses an unsupported feature: {0}")]
    Corrupt(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl IntakeError {
    /// Wraps an I/O error on `path`.
    pub fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// What the first bytes of an upload say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Zip,
    Gzip,
    Tar,
}

/// Recognises zip (local file header or the end record of an empty zip), gzip, and POSIX or
/// GNU tar (`ustar` at offset 257).
fn sniff(head: &[u8]) -> Option<Format> {
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        Some(Format::Zip)
    } else if head.starts_with(&[0x1f, 0x8b]) {
        Some(Format::Gzip)
    } else if head.get(257..262) == Some(b"ustar") {
        Some(Format::Tar)
    } else {
        None
    }
}

/// Repacks an uploaded archive (zip, gzip-compressed tar or plain tar, told apart by their
/// first bytes) into a canonical release archive: a temp file in `out_dir`, with its digest,
/// size and manifest entries. Blocking: run it off the async executor.
pub fn repack(upload: &Path, limits: &Limits, out_dir: &Path) -> Result<Packed, IntakeError> {
    let file = File::open(upload).map_err(IntakeError::io(upload))?;
    let size = file.metadata().map_err(IntakeError::io(upload))?.len();
    if size > limits.max_upload_bytes {
        return Err(IntakeError::UploadTooLarge {
            size,
            max: limits.max_upload_bytes,
        });
    }
    let mut head = [0u8; 512];
    let n = read_head(&file, &mut head).map_err(IntakeError::io(upload))?;
    let format = sniff(&head[..n]).ok_or(IntakeError::NotAnArchive)?;
    let mut c = collect::Collector::new(limits, out_dir)?;
    match format {
        Format::Zip => zip_in::read(file, &mut c)?,
        Format::Gzip => tar_in::read(
            flate2::read::MultiGzDecoder::new(BufReader::new(file)),
            &mut c,
        )?,
        Format::Tar => tar_in::read(BufReader::new(file), &mut c)?,
    }
    c.finish()
}

/// Repacks a plain (uncompressed) tar stream, e.g. `git archive`'s output. There is no
/// upload to measure; the unpacked limit and the entry count apply as they are read.
pub fn repack_tar(
    stream: impl Read,
    limits: &Limits,
    out_dir: &Path,
) -> Result<Packed, IntakeError> {
    let mut c = collect::Collector::new(limits, out_dir)?;
    tar_in::read(stream, &mut c)?;
    c.finish()
}

/// Reads up to `buf.len()` bytes from the start of `file` without moving its cursor.
fn read_head(file: &File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
