//! The spool's `state` file (ack floor, sequence reservation, boot id, clean-shutdown marker)
//! and the choice of where numbering resumes after a restart.
//!
//! The file is `PFST` magic, a little-endian CRC32 of the body, then the body: [`State`] in
//! postcard. It is replaced atomically (temp + fsync + rename + directory fsync). The
//! end-to-end harness (`tests/src/harness.rs`) reads it directly.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::{SpoolError, io_err};

/// State file magic, followed by a CRC32 of the postcard body.
const STATE_MAGIC: &[u8; 4] = b"PFST";
const STATE_FILE: &str = "state";
const STATE_TMP: &str = "state.tmp";
/// Boot id used when the kernel's cannot be read; never considered equal to a recorded one.
const UNKNOWN_BOOT: &str = "unknown";

/// The durable state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct State {
    /// Every seq at or below it is acknowledged or dropped.
    pub(super) floor: u64,
    /// No seq at or above it was ever handed out.
    pub(super) reserved_until: u64,
    /// This boot's first seq: seqs below it may have been used before a power loss, so a
    /// restart in the same boot never goes back below it.
    pub(super) min_next: u64,
    pub(super) boot_id: String,
    /// Set only by a clean shutdown: the next seq to hand out.
    pub(super) clean_next: Option<u64>,
}

/// The kernel boot id read from `path`, or [`UNKNOWN_BOOT`] if it cannot be read.
pub(super) fn read_boot_id(path: &Path) -> String {
    fs::read_to_string(path)
        .map(|s| s.trim().to_owned())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| UNKNOWN_BOOT.to_owned())
}

/// The first seq to hand out at open, from the state file (if any), this boot's id, the
/// newest seq found on disk and the reservation block size.
pub(super) fn resume_seq(state: Option<&State>, boot_id: &str, last_found: u64, block: u64) -> u64 {
    match state {
        // First start, or the state file was lost: stay clear of anything handed out.
        None if last_found == 0 => 1,
        None => last_found.saturating_add(block).saturating_add(1),
        Some(s) => match s.clean_next {
            Some(n) => n.max(last_found + 1),
            None if boot_id != UNKNOWN_BOOT && s.boot_id == boot_id => {
                (last_found.max(s.floor) + 1).max(s.min_next)
            }
            None => s.reserved_until.max(last_found + 1),
        },
    }
}

/// Removes a temporary state file left behind by an interrupted [`write_state`].
pub(super) fn remove_tmp(dir: &Path) {
    let _ = fs::remove_file(dir.join(STATE_TMP));
}

/// Reads the state file in `dir`; `None` if missing or damaged (then the caller is
/// conservative).
pub(super) fn read_state(dir: &Path) -> Option<State> {
    let path = dir.join(STATE_FILE);
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read spool state");
            return None;
        }
    };
    let state = bytes
        .strip_prefix(STATE_MAGIC.as_slice())
        .filter(|rest| rest.len() >= 4)
        .map(|rest| rest.split_at(4))
        .filter(|(crc, body)| crc32fast::hash(body).to_le_bytes() == **crc)
        .and_then(|(_, body)| postcard::from_bytes::<State>(body).ok());
    if state.is_none() {
        tracing::warn!(path = %path.display(), "damaged spool state ignored");
    }
    state
}

/// Atomically replaces the state file in `dir` (temp + fsync + rename + directory fsync).
pub(super) fn write_state(dir: &Path, state: &State) -> Result<(), SpoolError> {
    let body = postcard::to_allocvec(state)?;
    let mut bytes = Vec::with_capacity(body.len() + 8);
    bytes.extend_from_slice(STATE_MAGIC);
    bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    bytes.extend_from_slice(&body);

    let tmp = dir.join(STATE_TMP);
    let path = dir.join(STATE_FILE);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_err("create", &tmp))?;
    file.write_all(&bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_err("write", &tmp))?;
    fs::rename(&tmp, &path).map_err(io_err("rename", &tmp))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync", dir))?;
    Ok(())
}
