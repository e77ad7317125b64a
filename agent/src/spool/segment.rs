//! Segment files: the on-disk record format, appending and reading records, and the scan
//! that recovers a spool after a crash or power loss.
//!
//! A segment `seg-<first seq>.log` is an 8-byte header (magic + little-endian u32 format
//! version) followed by records `[u32 len LE][u32 crc32 LE of body][body = postcard(Sample)]`.
//! The end-to-end harness (`tests/src/harness.rs`) reads and writes this format directly.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use pifleet_shared::proto::v1::Sample;

use super::ranges::RangeSet;
use super::{SpoolError, io_err};

/// Segment file magic, followed by a little-endian u32 format version.
const SEG_MAGIC: &[u8; 4] = b"PFSG";
/// Segment format version; bump it (and keep reading the old one) when records change.
const SEG_VERSION: u32 = 1;
/// Bytes of the segment header.
pub(super) const SEG_HEADER: u64 = 8;
/// Bytes of a record header (length + CRC).
pub(super) const REC_HEADER: u64 = 8;
/// Largest record body accepted; anything longer on disk is corruption.
const MAX_RECORD: usize = 256 * 1024;
/// One sparse-index entry per this many bytes, so a resend seeks close to where it starts.
const INDEX_STRIDE: u64 = 64 * 1024;

/// What we keep in memory about one segment file.
#[derive(Debug)]
pub(super) struct Segment {
    pub(super) path: PathBuf,
    pub(super) last_seq: u64,
    /// Valid bytes, header included.
    pub(super) bytes: u64,
    /// Sequence numbers stored in the file.
    pub(super) present: RangeSet,
    /// The stored ones that are acknowledged (a subset of `present`).
    pub(super) acked: RangeSet,
    /// (seq, offset) of a record every `INDEX_STRIDE` bytes, first record included.
    index: Vec<(u64, u64)>,
}

impl Segment {
    fn new(path: PathBuf) -> Self {
        Self {
            path,
            last_seq: 0,
            bytes: SEG_HEADER,
            present: RangeSet::default(),
            acked: RangeSet::default(),
            index: Vec::new(),
        }
    }

    pub(super) fn first_seq(&self) -> u64 {
        self.present.first().unwrap_or(0)
    }

    pub(super) fn unacked(&self) -> u64 {
        self.present.count() - self.acked.count()
    }

    /// Records a record of `len` bytes holding `seq` at `offset`.
    pub(super) fn note(&mut self, seq: u64, offset: u64, len: u64) {
        self.present.insert(seq, seq);
        self.last_seq = seq;
        if self
            .index
            .last()
            .is_none_or(|&(_, o)| offset - o >= INDEX_STRIDE)
        {
            self.index.push((seq, offset));
        }
        self.bytes = offset + len;
    }

    pub(super) fn ack(&mut self, first: u64, last: u64) {
        for (s, e) in self.present.intersect(first, last) {
            self.acked.insert(s, e);
        }
    }

    /// Offset from which every record with seq > `after` follows.
    pub(super) fn start_offset(&self, after: u64) -> u64 {
        let i = self
            .index
            .partition_point(|&(seq, _)| seq <= after.saturating_add(1));
        i.checked_sub(1)
            .and_then(|i| self.index.get(i))
            .map_or(SEG_HEADER, |&(_, o)| o)
    }
}

/// Creates the segment file for records from `seq` on in `dir` (0600, header written).
pub(super) fn create_segment(dir: &Path, seq: u64) -> Result<(Segment, File), SpoolError> {
    let path = dir.join(format!("seg-{seq:020}.log"));
    let mut file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(&path)
        .map_err(io_err("create", &path))?;
    let mut header = [0u8; SEG_HEADER as usize];
    header[..4].copy_from_slice(SEG_MAGIC);
    header[4..].copy_from_slice(&SEG_VERSION.to_le_bytes());
    if let Err(e) = file.set_len(0).and_then(|()| file.write_all(&header)) {
        remove_segment(&path);
        return Err(io_err("write", &path)(e));
    }
    Ok((Segment::new(path), file))
}

/// Encodes `sample` as one record, header included, reusing `buf`'s allocation.
pub(super) fn encode_record(sample: &Sample, mut buf: Vec<u8>) -> Result<Vec<u8>, SpoolError> {
    buf.clear();
    buf.extend_from_slice(&[0; REC_HEADER as usize]);
    let mut buf = postcard::to_extend(sample, buf)?;
    let body_len = buf.len() - REC_HEADER as usize;
    if body_len > MAX_RECORD {
        return Err(SpoolError::TooLarge {
            seq: sample.seq,
            len: body_len,
            limit: MAX_RECORD,
        });
    }
    let crc = crc32fast::hash(&buf[REC_HEADER as usize..]);
    // body_len <= MAX_RECORD, so it fits in u32.
    buf[..4].copy_from_slice(&(body_len as u32).to_le_bytes());
    buf[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(buf)
}

/// Deletes a segment file; true if it is gone (a missing file counts as gone).
pub(super) fn remove_segment(path: &Path) -> bool {
    match fs::remove_file(path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete spool segment");
            false
        }
    }
}

/// Segment files in the directory, oldest first.
pub(super) fn list_segments(dir: &Path) -> Result<Vec<PathBuf>, SpoolError> {
    let mut found: Vec<(u64, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name();
        let first = name
            .to_str()
            .and_then(|n| n.strip_prefix("seg-"))
            .and_then(|n| n.strip_suffix(".log"))
            .and_then(|n| n.parse::<u64>().ok());
        if let Some(first) = first {
            found.push((first, entry.path()));
        }
    }
    found.sort();
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Scans one segment, truncating it after the last valid record (a torn or corrupt tail).
/// Records at or below `floor` count as acknowledged. `None` if it holds no valid record.
pub(super) fn scan_segment(
    path: &Path,
    mut prev_last: u64,
    floor: u64,
) -> Result<Option<Segment>, SpoolError> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_err("open", path))?;
    let file_len = file.metadata().map_err(io_err("stat", path))?.len();
    let mut reader = BufReader::new(&file);
    let mut header = [0u8; SEG_HEADER as usize];
    let header_ok = reader.read_exact(&mut header).is_ok()
        && &header[..4] == SEG_MAGIC
        && header[4..] == SEG_VERSION.to_le_bytes();
    if !header_ok {
        tracing::warn!(path = %path.display(), "spool segment without a valid header removed");
        return Ok(None);
    }
    let mut seg = Segment::new(path.to_path_buf());
    let mut body = Vec::new();
    let mut offset = SEG_HEADER;
    let mut reader = reader.take(file_len - SEG_HEADER);
    while let Some(len) = read_record(&mut reader, &mut body, path)? {
        let sample = match postcard::take_from_bytes::<Sample>(&body) {
            Ok((s, rest)) if rest.is_empty() && s.seq > prev_last => s,
            _ => {
                tracing::warn!(path = %path.display(), offset, "invalid spool record");
                break;
            }
        };
        let rec_len = REC_HEADER + len as u64;
        seg.note(sample.seq, offset, rec_len);
        if sample.seq <= floor {
            seg.acked.insert(sample.seq, sample.seq);
        }
        prev_last = sample.seq;
        offset += rec_len;
    }
    if offset < file_len {
        tracing::warn!(
            path = %path.display(), valid = offset, len = file_len,
            "truncating torn or corrupt spool segment tail"
        );
        file.set_len(offset).map_err(io_err("truncate", path))?;
    }
    Ok((seg.present.count() > 0).then_some(seg))
}

/// Reads one record into `body`, checking length and CRC. `Ok(None)` at the end or at a
/// torn or corrupt record (logged); `Err` only for real I/O errors.
pub(super) fn read_record(
    reader: &mut impl Read,
    body: &mut Vec<u8>,
    path: &Path,
) -> Result<Option<usize>, SpoolError> {
    let mut header = [0u8; REC_HEADER as usize];
    match read_full(reader, &mut header).map_err(io_err("read", path))? {
        0 => return Ok(None),
        n if n < header.len() => {
            tracing::warn!(path = %path.display(), "torn spool record header");
            return Ok(None);
        }
        _ => {}
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if len == 0 || len > MAX_RECORD {
        tracing::warn!(path = %path.display(), len, "spool record with an impossible length");
        return Ok(None);
    }
    body.resize(len, 0);
    if read_full(reader, body).map_err(io_err("read", path))? < len {
        tracing::warn!(path = %path.display(), "torn spool record");
        return Ok(None);
    }
    if crc32fast::hash(body) != crc {
        tracing::warn!(path = %path.display(), "spool record with a bad checksum");
        return Ok(None);
    }
    Ok(Some(len))
}

/// Fills `buf` as far as the reader allows; returns how many bytes were read.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The seq of an encoded sample without decoding it all: postcard writes the first field, a
/// u64, as a LEB128 varint.
pub(super) fn leading_seq(body: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for (i, &b) in body.iter().take(10).enumerate() {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}
