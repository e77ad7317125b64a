//! Checking a kept release against its manifest before a rollback switches back to it:
//! every listed entry must still be there with its kind, mode, size, link target and
//! content. It guards against a damaged SD card or a hand edit, and against a manifest
//! whose `dir_name` merely collides with a kept directory's.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Read};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use pifleet_shared::release::{Digest as Sha256Digest, EntryKind, Manifest};
use sha2::{Digest, Sha256};

use super::unpack::{Problem, UnpackError, kind_name};

/// Checks the release unpacked at `dir` against `manifest`, entry by entry. Blocking.
pub fn verify_release(manifest: &Manifest, dir: &Path) -> Result<(), UnpackError> {
    for (index, want) in manifest.entries.iter().enumerate() {
        let path = dir.join(&want.path);
        let refused = |problem| UnpackError::Refused {
            index,
            path: want.path.clone(),
            problem,
        };
        let io = |source| UnpackError::Io {
            path: path.clone(),
            source,
        };
        let meta = match fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e) if e.kind() == ErrorKind::NotFound => {
                return Err(UnpackError::Missing(want.path.clone()));
            }
            Err(e) => return Err(io(e)),
        };
        let ft = meta.file_type();
        let found = if ft.is_file() {
            "file"
        } else if ft.is_dir() {
            "directory"
        } else if ft.is_symlink() {
            "symbolic link"
        } else {
            "special file"
        };
        let mode = meta.permissions().mode() & 0o7777;
        match &want.kind {
            EntryKind::File { size, sha256 } if ft.is_file() => {
                if meta.len() != *size {
                    return Err(refused(Problem::Size {
                        expected: *size,
                        found: meta.len(),
                    }));
                }
                if file_digest(&path).map_err(io)? != *sha256 {
                    return Err(refused(Problem::Digest));
                }
            }
            EntryKind::Dir if ft.is_dir() => {}
            EntryKind::Symlink { target } if ft.is_symlink() => {
                let found = fs::read_link(&path).map_err(io)?;
                if found.as_os_str() != target.as_str() {
                    return Err(refused(Problem::Target {
                        expected: target.clone(),
                        found: found.display().to_string(),
                    }));
                }
                // A link's own mode means nothing on Linux.
                continue;
            }
            kind => {
                return Err(refused(Problem::Kind {
                    expected: kind_name(kind),
                    found,
                }));
            }
        }
        if mode != want.mode {
            return Err(refused(Problem::Mode {
                expected: want.mode,
                found: mode,
            }));
        }
    }
    Ok(())
}

/// The SHA-256 of a regular file, never read through a link.
fn file_digest(path: &Path) -> std::io::Result<Sha256Digest> {
    let mut f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match f.read(&mut buf) {
            Ok(0) => return Ok(hasher.finalize().into()),
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}
