//! Atomic writes of the broker's files with the mode and owner the broker needs: Mosquitto
//! reads them as root at start-up but as its own user (`user` in its configuration) when
//! it reloads on SIGHUP, so what it re-reads must be readable by that user.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use super::{BrokerError, io};

/// Who owns a file, when the writer can give it away (it runs as root).
pub type Owner = Option<(u32, u32)>;

/// Writes `data` to `path` through a temp file in the same directory (mode `mode`, owner
/// `owner` when given), synced and renamed over `path`: a reader sees the old file or the
/// new one, never a part.
pub fn write_atomic(path: &Path, data: &[u8], mode: u32, owner: Owner) -> Result<(), BrokerError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let written = (|| -> std::io::Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut f: File = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::fchown(&f, Some(uid), Some(gid))?;
        }
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written.map_err(io(path))
}

/// Replaces `path` atomically keeping its current mode and owner (those it was generated
/// with), or with `mode` when it does not exist yet.
pub fn replace_keeping_owner(path: &Path, data: &[u8], mode: u32) -> Result<(), BrokerError> {
    match fs::metadata(path) {
        Ok(m) => {
            // Only root may give a file away; anyone else writes it as their own.
            let owner = nix::unistd::Uid::effective()
                .is_root()
                .then_some((m.uid(), m.gid()));
            write_atomic(path, data, m.permissions().mode() & 0o7777, owner)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => write_atomic(path, data, mode, None),
        Err(e) => Err(io(path)(e)),
    }
}
