//! Writing the canonical release archive: a gzip-compressed tar (GNU headers, long names as
//! GNU long-name records) whose entries come sorted by path, each with mtime 0, uid and gid
//! 0, no owner names and its permission bits; the gzip header has no name and mtime 0. Its
//! paths and link targets are exactly the manifest's. The output is hashed as it is written.

use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use flate2::{Compression, GzBuilder};
use pifleet_shared::release::{Digest, EntryKind};
use sha2::{Digest as _, Sha256};
use tar::{EntryType, Header};

use super::IntakeError;
use super::collect::Item;

/// Name prefix of archives being written; the controller's release storage sweep removes old
/// ones a crash left behind.
pub const TEMP_PREFIX: &str = ".release-";
/// Name suffix of archives being written.
pub const TEMP_SUFFIX: &str = ".tmp";

/// Passes writes through, hashing and counting them.
struct Hashing<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Writes `items` (sorted) with file contents from `spool` into a new temp file in
/// `out_dir`, fsynced. Returns it with its SHA-256 and size.
pub(super) fn write(
    items: &[Item],
    spool: &mut File,
    out_dir: &Path,
) -> Result<(tempfile::TempPath, Digest, u64), IntakeError> {
    let tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .suffix(TEMP_SUFFIX)
        .tempfile_in(out_dir)
        .map_err(IntakeError::io(out_dir))?;
    let (file, path) = tmp.into_parts();
    let failed = |e: io::Error| IntakeError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let hashing = Hashing {
        inner: BufWriter::with_capacity(256 * 1024, file),
        hasher: Sha256::new(),
        len: 0,
    };
    let gz = GzBuilder::new()
        .mtime(0)
        .write(hashing, Compression::default());
    let mut tar = tar::Builder::new(gz);
    for item in items {
        append(&mut tar, item, spool).map_err(failed)?;
    }
    let hashing = tar
        .into_inner()
        .and_then(flate2::write::GzEncoder::finish)
        .map_err(failed)?;
    let Hashing { inner, hasher, len } = hashing;
    let file = inner.into_inner().map_err(|e| failed(e.into_error()))?;
    file.sync_all().map_err(failed)?;
    Ok((path, hasher.finalize().into(), len))
}

fn append<W: Write>(tar: &mut tar::Builder<W>, item: &Item, spool: &mut File) -> io::Result<()> {
    let e = &item.entry;
    let mut h = Header::new_gnu();
    h.set_mode(e.mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(0);
    match (&e.kind, item.data) {
        (EntryKind::Dir, _) => {
            h.set_entry_type(EntryType::Directory);
            tar.append_data(&mut h, &e.path, io::empty())
        }
        (EntryKind::Symlink { target }, _) => {
            h.set_entry_type(EntryType::Symlink);
            tar.append_link(&mut h, &e.path, target)
        }
        (EntryKind::File { size, .. }, Some((offset, len))) if *size == len => {
            h.set_entry_type(EntryType::Regular);
            h.set_size(len);
            spool.seek(SeekFrom::Start(offset))?;
            let mut data = Exact {
                inner: (&mut *spool).take(len),
                left: len,
            };
            tar.append_data(&mut h, &e.path, &mut data)?;
            if data.left != 0 {
                return Err(io::Error::other("the spool file ended early"));
            }
            Ok(())
        }
        (EntryKind::File { .. }, _) => Err(io::Error::other(format!(
            "{:?}: no spooled data of the recorded size",
            e.path
        ))),
    }
}

/// Counts down what is still to be read, so a short spool is noticed.
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.saturating_sub(n as u64);
        Ok(n)
    }
}
