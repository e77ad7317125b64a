//! Private files: directories 0700, files 0600, written atomically and durably.

use std::fs::{self, DirBuilder, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A file operation that failed, with the path it failed on.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> FileError + '_ {
    move |source| FileError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `data` to `path` atomically with mode 0600: a temp file of its own next to `path`
/// (so concurrent writers of the same file never share one), fsync, rename, fsync of the
/// directory so that the rename survives a power loss. The temp file is removed on failure.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), FileError> {
    let (tmp, mut file) = create_temp(path)?;
    let written = file
        .write_all(data)
        .and_then(|()| file.sync_all())
        .map_err(io(&tmp))
        .and_then(|()| fs::rename(&tmp, path).map_err(io(path)));
    drop(file);
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written?;
    sync_parent(path);
    Ok(())
}

/// Creates `dir` (and any missing parents) and makes it 0700. `dir` is created 0700, so it
/// is never open to others, not even briefly; parents get the default mode, as with
/// `mkdir -p`. Each directory entry created is persisted (fsync of its parent), so files
/// later written into `dir` with [`write_private`] survive a power loss with their path.
pub fn create_private_dir(dir: &Path) -> Result<(), FileError> {
    // The missing part of the path, innermost first.
    let mut missing = Vec::new();
    let mut cur = Some(dir);
    while let Some(d) = cur.filter(|d| !d.as_os_str().is_empty()) {
        match fs::metadata(d) {
            Err(e) if e.kind() == ErrorKind::NotFound => missing.push(d),
            _ => break,
        }
        cur = d.parent();
    }
    for d in missing.into_iter().rev() {
        let mode = if d == dir { 0o700 } else { 0o777 };
        match DirBuilder::new().mode(mode).create(d) {
            Ok(()) => sync_parent(d),
            // Made by someone else meanwhile: fine, as with `mkdir -p`.
            Err(e) if e.kind() == ErrorKind::AlreadyExists && d.is_dir() => {}
            Err(e) => return Err(io(d)(e)),
        }
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))
}

/// Creates a temp file next to `path` that no other writer uses: its name holds this
/// process's id, a per-process counter and the clock, and it is opened `create_new`.
fn create_temp(path: &Path) -> Result<(PathBuf, File), FileError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut attempts = 0;
    loop {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tmp = path.with_file_name(format!(
            ".{name}.{}.{}.{nanos:08x}.tmp",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
        ));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
        {
            Ok(file) => return Ok((tmp, file)),
            // Left behind by a crashed process that had the same id: take another name.
            Err(e) if e.kind() == ErrorKind::AlreadyExists && attempts < 8 => attempts += 1,
            Err(e) => return Err(io(&tmp)(e)),
        }
    }
}

/// Persists the directory entry of `path` (fsync of its parent). A failure only weakens
/// durability, and the write itself succeeded, so it is ignored.
fn sync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(d) = File::open(parent) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn writes_replace_the_file_with_mode_0600() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("device.key");
        write_private(&path, b"one").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"one");
        assert_eq!(mode(&path), 0o600);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"two").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"two");
        assert_eq!(mode(&path), 0o600);
        assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_failed_write_leaves_no_temp_file() {
        let tmp = tempfile::tempdir().unwrap();
        // Renaming a file over a non-empty directory fails after the temp file is written.
        let path = tmp.path().join("taken");
        fs::create_dir(&path).unwrap();
        fs::write(path.join("x"), b"").unwrap();
        let err = write_private(&path, b"data").unwrap_err();
        assert!(err.to_string().contains("taken"), "{err}");
        let left: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "{left:?}");
        // A missing directory is reported with the temp file's path.
        let err = write_private(&tmp.path().join("nope/file"), b"").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn concurrent_writers_never_share_a_temp_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("crl.pem");
        std::thread::scope(|s| {
            for i in 0..8u8 {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..20 {
                        write_private(path, &[i; 4096]).unwrap();
                    }
                });
            }
        });
        // Whoever renamed last, the file is one writer's whole content, and no temp file
        // is left behind.
        let data = fs::read(&path).unwrap();
        assert_eq!(data.len(), 4096);
        assert!(data.iter().all(|b| *b == data[0]));
        let left: Vec<_> = fs::read_dir(tmp.path()).unwrap().collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }

    #[test]
    fn another_writers_temp_file_is_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("agent.toml");
        let (stale, _file) = create_temp(&path).unwrap();
        write_private(&path, b"x").unwrap();
        assert_eq!(fs::read(&stale).unwrap(), b"");
        assert_eq!(fs::read(&path).unwrap(), b"x");
    }

    #[test]
    fn private_dirs_are_0700_and_parents_keep_the_default() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b/c");
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&tmp.path().join("a")) & 0o700, 0o700);
        // An existing directory is tightened; creating it again is fine.
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        // A file in the way is an error naming it.
        let file = tmp.path().join("f");
        fs::write(&file, b"").unwrap();
        let err = create_private_dir(&file.join("d")).unwrap_err();
        assert!(err.to_string().contains("f/d"), "{err}");
    }
}
