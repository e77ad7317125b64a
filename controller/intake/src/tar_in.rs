//! Reading a tar stream (plain, or gzip-decompressed on the way). Entries are taken raw, so
//! GNU long names and pax records are read here with a bound instead of into memory
//! whatever size their header claims; the whole decompressed stream is capped as well, so
//! padding, skipped data or endless empty records cannot inflate without limit.

use std::cell::Cell;
use std::io::{self, Read};
use std::rc::Rc;

use pifleet_shared::release::MAX_PATH_BYTES;
use tar::EntryType;

use super::IntakeError;
use super::collect::Collector;

/// Largest pax record (`x` or `g`) read.
const MAX_PAX_BYTES: u64 = 64 * 1024;
/// Tar framing allowed per entry besides its data: its header, padding, and the long-name
/// or pax records describing it (a few blocks in practice).
const FRAMING_PER_ENTRY: u64 = 3 * 1024;

/// What long-name and pax records said about the next entry.
#[derive(Debug, Default)]
struct Extensions {
    name: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
}

impl Extensions {
    fn pending(&self) -> bool {
        self.name.is_some() || self.link.is_some() || self.size.is_some()
    }

    /// Takes what matters from a pax record: the path, the link target and the size.
    fn apply_pax(&mut self, data: &[u8]) -> Result<(), IntakeError> {
        for field in tar::PaxExtensions::new(data) {
            let field = field.map_err(|e| IntakeError::Corrupt(format!("pax record: {e}")))?;
            let key = field
                .key()
                .map_err(|e| IntakeError::Corrupt(format!("pax record: {e}")))?;
            match key {
                "path" => self.name = Some(field.value_bytes().to_vec()),
                "linkpath" => self.link = Some(field.value_bytes().to_vec()),
                "size" => {
                    let size = field
                        .value()
                        .ok()
                        .and_then(|v| v.parse::<u64>().ok())
                        .ok_or_else(|| IntakeError::Corrupt("pax record: bad size".into()))?;
                    self.size = Some(size);
                }
                k if k.starts_with("GNU.sparse") => {
                    return Err(IntakeError::Corrupt(
                        "sparse files (GNU.sparse pax records) are not supported".into(),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// Passes at most `left` bytes through; past that, reads fail and `exceeded` is set.
struct Capped<R> {
    inner: R,
    left: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.left == 0 {
            let mut probe = [0u8; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => {
                    self.exceeded.set(true);
                    Err(io::Error::other(
                        "the tar stream exceeds the unpacked limit",
                    ))
                }
            };
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        self.left -= n as u64;
        Ok(n)
    }
}

/// Reads every entry of a tar stream into `c`.
pub(super) fn read<R: Read>(stream: R, c: &mut Collector<'_>) -> Result<(), IntakeError> {
    let limits = c.limits();
    let max = limits.max_unpacked_bytes;
    let framing = FRAMING_PER_ENTRY.saturating_mul(limits.max_entries as u64 + 16);
    let exceeded = Rc::new(Cell::new(false));
    let capped = Capped {
        inner: stream,
        left: max.saturating_add(framing),
        exceeded: exceeded.clone(),
    };
    // Any failure once the cap was hit is the cap's doing, whatever the layer reporting it.
    let over = |e: IntakeError| {
        if exceeded.get() {
            IntakeError::UnpackedTooLarge { max }
        } else {
            e
        }
    };
    let corrupt = |e: io::Error| over(IntakeError::Corrupt(e.to_string()));
    let mut archive = tar::Archive::new(capped);
    let entries = archive.entries().map_err(corrupt)?.raw(true);
    let mut ext = Extensions::default();
    for entry in entries {
        let mut entry = entry.map_err(corrupt)?;
        let ty = entry.header().entry_type();
        if ty.is_gnu_longname() {
            ext.name = Some(trim_nul(
                read_record(&mut entry, MAX_PATH_BYTES as u64 + 1, "long name").map_err(over)?,
            ));
            continue;
        }
        if ty.is_gnu_longlink() {
            ext.link = Some(trim_nul(
                read_record(&mut entry, MAX_PATH_BYTES as u64 + 1, "long link").map_err(over)?,
            ));
            continue;
        }
        if ty.is_pax_local_extensions() {
            let data = read_record(&mut entry, MAX_PAX_BYTES, "pax record").map_err(over)?;
            ext.apply_pax(&data)?;
            continue;
        }
        if ty.is_pax_global_extensions() {
            // `git archive` puts the commit id here; nothing in it concerns the entries.
            read_record(&mut entry, MAX_PAX_BYTES, "pax global record").map_err(over)?;
            continue;
        }
        let ext = std::mem::take(&mut ext);
        entry_into(&mut entry, ext, c).map_err(over)?;
    }
    if ext.pending() {
        return Err(IntakeError::Corrupt(
            "the archive ends with a long-name or pax record that describes no entry".into(),
        ));
    }
    Ok(())
}

/// One real entry (not a long-name or pax record), with what records said about it.
fn entry_into<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    ext: Extensions,
    c: &mut Collector<'_>,
) -> Result<(), IntakeError> {
    let header = entry.header();
    let ty = header.entry_type();
    let path = match ext.name {
        Some(name) => utf8(name)?,
        None => utf8(header.path_bytes().into_owned())?,
    };
    let size = entry.size();
    if ext.size.is_some_and(|s| s != size) {
        return Err(IntakeError::Corrupt(format!(
            "{path:?}: its pax size differs from its header's"
        )));
    }
    let mode = header
        .mode()
        .map_err(|e| IntakeError::Corrupt(format!("{path:?}: {e}")))?;
    let link = match (&ext.link, ty) {
        (Some(l), _) => Some(l.clone()),
        (None, EntryType::Symlink | EntryType::Link) => Some(
            header
                .link_name_bytes()
                .map(|l| l.into_owned())
                .unwrap_or_default(),
        ),
        (None, _) => None,
    };
    let link = move || utf8(link.unwrap_or_default());
    match ty {
        // Old archives mark folders with a trailing slash on a regular entry.
        EntryType::Regular if path.ends_with('/') && size == 0 => c.dir(&path, mode),
        EntryType::Regular | EntryType::Continuous => c.file(&path, mode, entry),
        EntryType::Directory => c.dir(&path, mode),
        EntryType::Symlink => {
            let target = link()?;
            c.symlink(&path, mode, &target)
        }
        EntryType::Link => Err(IntakeError::HardLink {
            target: link()?,
            path,
        }),
        other => Err(IntakeError::UnsupportedType {
            path,
            kind: kind_name(other),
        }),
    }
}

fn kind_name(ty: EntryType) -> &'static str {
    match ty {
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Fifo => "FIFO (named pipe)",
        EntryType::GNUSparse => "sparse file",
        _ => "tar entry of an unsupported type",
    }
}

/// Reads a long-name or pax record, refusing one larger than `bound`.
fn read_record<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    bound: u64,
    what: &str,
) -> Result<Vec<u8>, IntakeError> {
    let size = entry.size();
    if size > bound {
        return Err(IntakeError::Corrupt(format!(
            "a {what} of {size} bytes (at most {bound} are read)"
        )));
    }
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    entry
        .take(bound)
        .read_to_end(&mut data)
        .map_err(|e| IntakeError::Corrupt(format!("{what}: {e}")))?;
    Ok(data)
}

fn trim_nul(mut v: Vec<u8>) -> Vec<u8> {
    while v.last() == Some(&0) {
        v.pop();
    }
    v
}

fn utf8(bytes: Vec<u8>) -> Result<String, IntakeError> {
    String::from_utf8(bytes)
        .map_err(|e| IntakeError::NotUtf8(String::from_utf8_lossy(e.as_bytes()).into_owned()))
}
