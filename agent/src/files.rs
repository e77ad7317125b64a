//! Private files: directories 0700, files 0600, written atomically.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// File errors with the path.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct FilesError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> FilesError + '_ {
    move |source| FilesError {
        path: path.to_owned(),
        source,
    }
}

/// Creates `dir` (and parents) and sets it to 0700.
pub fn create_private_dir(dir: &Path) -> Result<(), FilesError> {
    fs::create_dir_all(dir).map_err(err(dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(err(dir))
}

/// Writes `data` to `path` atomically (temp file, fsync, rename), mode 0600.
pub fn write_private(path: &Path, data: &[u8]) -> Result<(), FilesError> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err(&tmp))?;
        f.write_all(data).map_err(err(&tmp))?;
        f.sync_all().map_err(err(&tmp))?;
    }
    fs::rename(&tmp, path).map_err(err(path))
}
