//! The bounded on-disk spool of unacknowledged samples (DESIGN §5).
//!
//! Samples go to append-only segment files `seg-<first seq>.log`: an 8-byte header (magic +
//! format version) then records `[u32 len LE][u32 crc32 LE of body][body = postcard(Sample)]`.
//! Each record is written with write(2) at once, so it survives a process kill; fdatasync runs
//! only from [`Spool::sync`] (timer, shutdown) and on segment rotation, to spare SD cards.
//! Memory holds per-segment metadata only; samples are read back from disk when resent.
//!
//! A small `state` file (temp + fsync + rename) keeps the ack floor, the kernel boot id, the
//! sequence reservation and a clean-shutdown marker, so sequence numbers are never reused:
//! after a process crash (same boot, the page cache survived) numbering continues right after
//! the newest record on disk; after a clean shutdown it continues where it stopped; after a
//! power loss it jumps to the persisted reservation bound.

use std::collections::VecDeque;
use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pifleet_shared::proto::v1::{Sample, SeqRange};
use serde::{Deserialize, Serialize};

/// Segment file magic, followed by a little-endian u32 format version.
const SEG_MAGIC: &[u8; 4] = b"PFSG";
/// Segment format version; bump it (and keep reading the old one) when records change.
const SEG_VERSION: u32 = 1;
/// Bytes of the segment header.
const SEG_HEADER: u64 = 8;
/// Bytes of a record header (length + CRC).
const REC_HEADER: u64 = 8;
/// Largest record body accepted; anything longer on disk is corruption.
const MAX_RECORD: usize = 256 * 1024;
/// One sparse-index entry per this many bytes, so a resend seeks close to where it starts.
const INDEX_STRIDE: u64 = 64 * 1024;
/// State file magic, followed by a CRC32 of the postcard body.
const STATE_MAGIC: &[u8; 4] = b"PFST";
const STATE_FILE: &str = "state";
const STATE_TMP: &str = "state.tmp";
const LOCK_FILE: &str = "lock";
/// Boot id used when the kernel's cannot be read; never considered equal to a recorded one.
const UNKNOWN_BOOT: &str = "unknown";

/// Where the spool lives and how big it may grow.
#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// Spool directory, created 0700.
    pub dir: PathBuf,
    /// Cap on all segment bytes; the oldest segments are dropped beyond it.
    pub max_bytes: u64,
    /// A new segment starts once the active one reaches this size.
    pub segment_bytes: u64,
    /// How often [`Spool::maybe_sync`] makes appended samples durable.
    pub sync_interval: Duration,
    /// Sequence numbers reserved per durable state write in [`Spool::next_seq`].
    pub seq_block: u64,
    /// File holding the kernel boot id; tests point it elsewhere to simulate a reboot.
    pub boot_id_path: PathBuf,
}

impl SpoolConfig {
    /// Defaults: 16 MiB cap, 1 MiB segments, sync every 30 s, seq blocks of 1000.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            max_bytes: 16 * 1024 * 1024,
            segment_bytes: 1024 * 1024,
            sync_interval: Duration::from_secs(30),
            seq_block: 1000,
            boot_id_path: PathBuf::from("/proc/sys/kernel/random/boot_id"),
        }
    }
}

/// Why a spool operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool: cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("spool {path} is in use by another process")]
    Locked { path: PathBuf },
    #[error("spool: cannot encode")]
    Encode(#[from] postcard::Error),
    #[error("sample {seq} encodes to {len} bytes, over the {limit}-byte record limit")]
    TooLarge { seq: u64, len: usize, limit: usize },
    #[error("sample seq {seq} was not reserved in order (last appended {last}, next {next})")]
    BadSeq { seq: u64, last: u64, next: u64 },
}

/// Returns a closure turning an `io::Error` into [`SpoolError::Io`] for `op` on `path`.
fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// A set of sequence numbers as sorted, disjoint, non-adjacent inclusive ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct RangeSet(Vec<(u64, u64)>);

impl RangeSet {
    /// Adds `first..=last`, merging with neighbours.
    fn insert(&mut self, first: u64, last: u64) {
        if first > last {
            return;
        }
        let start = self
            .0
            .partition_point(|&(_, e)| e.saturating_add(1) < first);
        let (mut lo, mut hi, mut end) = (first, last, start);
        while let Some(&(s, e)) = self.0.get(end) {
            if s > hi.saturating_add(1) {
                break;
            }
            lo = lo.min(s);
            hi = hi.max(e);
            end += 1;
        }
        self.0.splice(start..end, std::iter::once((lo, hi)));
    }

    fn contains(&self, x: u64) -> bool {
        let i = self.0.partition_point(|&(_, e)| e < x);
        self.0.get(i).is_some_and(|&(s, _)| s <= x)
    }

    fn count(&self) -> u64 {
        self.0.iter().map(|&(s, e)| e - s + 1).sum()
    }

    fn first(&self) -> Option<u64> {
        self.0.first().map(|&(s, _)| s)
    }

    /// The parts of `first..=last` that are in the set.
    fn intersect(&self, first: u64, last: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
        let start = self.0.partition_point(|&(_, e)| e < first);
        self.0[start..]
            .iter()
            .take_while(move |&&(s, _)| s <= last)
            .map(move |&(s, e)| (s.max(first), e.min(last)))
    }

    /// The smallest member not in `other`.
    fn first_not_in(&self, other: &RangeSet) -> Option<u64> {
        for &(s, e) in &self.0 {
            let mut x = s;
            while x <= e {
                let i = other.0.partition_point(|&(_, oe)| oe < x);
                match other.0.get(i) {
                    Some(&(os, oe)) if os <= x => {
                        if oe >= e {
                            break;
                        }
                        x = oe + 1;
                    }
                    _ => return Some(x),
                }
            }
        }
        None
    }
}

/// What we keep in memory about one segment file.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    last_seq: u64,
    /// Valid bytes, header included.
    bytes: u64,
    /// Sequence numbers stored in the file.
    present: RangeSet,
    /// The stored ones that are acknowledged (a subset of `present`).
    acked: RangeSet,
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

    fn first_seq(&self) -> u64 {
        self.present.first().unwrap_or(0)
    }

    fn unacked(&self) -> u64 {
        self.present.count() - self.acked.count()
    }

    /// Records a record of `len` bytes holding `seq` at `offset`.
    fn note(&mut self, seq: u64, offset: u64, len: u64) {
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

    fn ack(&mut self, first: u64, last: u64) {
        for (s, e) in self.present.intersect(first, last) {
            self.acked.insert(s, e);
        }
    }

    /// Offset from which every record with seq > `after` follows.
    fn start_offset(&self, after: u64) -> u64 {
        let i = self
            .index
            .partition_point(|&(seq, _)| seq <= after.saturating_add(1));
        i.checked_sub(1)
            .and_then(|i| self.index.get(i))
            .map_or(SEG_HEADER, |&(_, o)| o)
    }
}

/// The durable state file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct State {
    /// Every seq at or below it is acknowledged or dropped.
    floor: u64,
    /// No seq at or above it was ever handed out.
    reserved_until: u64,
    /// This boot's first seq: seqs below it may have been used before a power loss, so a
    /// restart in the same boot never goes back below it.
    min_next: u64,
    boot_id: String,
    /// Set only by a clean shutdown: the next seq to hand out.
    clean_next: Option<u64>,
}

/// The spool: appends samples, forgets acknowledged ones, drops the oldest when full.
#[derive(Debug)]
pub struct Spool {
    cfg: SpoolConfig,
    /// Oldest first; the back one receives appends.
    segments: VecDeque<Segment>,
    /// Append handle of the back segment, when it still takes records.
    active: Option<File>,
    next: u64,
    reserved_until: u64,
    /// Highest seq appended; at open, the one before the first seq this run hands out.
    last_appended: u64,
    dropped: u64,
    persisted_floor: u64,
    /// The seq numbering started from at open (see `State::min_next`).
    min_next: u64,
    boot_id: String,
    /// A segment file was created or deleted since the directory was last fsynced.
    dir_dirty: bool,
    last_sync: Instant,
    buf: Vec<u8>,
    /// Held for the spool's lifetime: one process per spool directory.
    _lock: File,
}

impl Spool {
    /// Opens or creates the spool in cfg.dir (0700), recovering after a crash or power loss.
    pub fn open(cfg: SpoolConfig) -> Result<Self, SpoolError> {
        let dir = cfg.dir.clone();
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(io_err("create", &dir))?;
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))
            .map_err(io_err("chmod", &dir))?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(SpoolError::Locked { path: dir }),
            Err(TryLockError::Error(e)) => return Err(io_err("lock", &lock_path)(e)),
        }
        let _ = fs::remove_file(dir.join(STATE_TMP));

        let boot_id = fs::read_to_string(&cfg.boot_id_path)
            .map(|s| s.trim().to_owned())
            .ok()
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| UNKNOWN_BOOT.to_owned());
        let state = read_state(&dir.join(STATE_FILE));
        let floor = state.as_ref().map_or(0, |s| s.floor);

        let mut segments = VecDeque::new();
        let mut empty = Vec::new();
        let mut prev_last = 0;
        for path in list_segments(&dir)? {
            match scan_segment(&path, prev_last, floor)? {
                Some(seg) => {
                    prev_last = seg.last_seq;
                    segments.push_back(seg);
                }
                None => empty.push(path),
            }
        }
        let last_found = prev_last;
        let block = cfg.seq_block.max(1);
        let next = match &state {
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
        };

        let mut spool = Self {
            reserved_until: next.saturating_add(block),
            next,
            // Seqs below `next` are on disk, acknowledged, lost with a power loss, or were
            // never appended (so never published): none will ever be sent again.
            last_appended: next - 1,
            segments,
            active: None,
            dropped: 0,
            persisted_floor: 0,
            min_next: next,
            boot_id,
            dir_dirty: true,
            last_sync: Instant::now(),
            buf: Vec::new(),
            cfg,
            _lock: lock,
        };
        // Persist the new boot id, reservation and "not clean" before handing out any seq.
        spool.write_state(spool.reserved_until, None)?;

        spool.dir_dirty = !empty.is_empty();
        for path in empty {
            remove_segment(&path);
        }
        let mut removed = false;
        spool.segments.retain(|s| {
            // Everything in it is at or below the floor just persisted.
            let keep = s.unacked() > 0 || !remove_segment(&s.path);
            removed |= !keep;
            keep
        });
        spool.dir_dirty |= removed;
        if let Some(seg) = spool.segments.back()
            && seg.bytes < spool.segment_threshold()
        {
            let file = OpenOptions::new()
                .append(true)
                .open(&seg.path)
                .map_err(io_err("open", &seg.path))?;
            spool.active = Some(file);
        }
        Ok(spool)
    }

    /// Reserves and returns the next sequence number (strictly increasing, never reused,
    /// starts at 1).
    pub fn next_seq(&mut self) -> Result<u64, SpoolError> {
        if self.next >= self.reserved_until {
            let until = self.next.saturating_add(self.cfg.seq_block.max(1));
            self.write_state(until, None)?;
            self.reserved_until = until;
        }
        let seq = self.next;
        self.next = self.next.saturating_add(1);
        Ok(seq)
    }

    /// Appends a sample (its seq came from next_seq). Written with write(2) at once (survives
    /// a process kill); synced later.
    pub fn append(&mut self, sample: &Sample) -> Result<(), SpoolError> {
        let seq = sample.seq;
        if seq <= self.last_appended || seq >= self.next {
            return Err(SpoolError::BadSeq {
                seq,
                last: self.last_appended,
                next: self.next,
            });
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        buf.extend_from_slice(&[0; REC_HEADER as usize]);
        let mut buf = postcard::to_extend(sample, buf)?;
        let body_len = buf.len() - REC_HEADER as usize;
        if body_len > MAX_RECORD {
            return Err(SpoolError::TooLarge {
                seq,
                len: body_len,
                limit: MAX_RECORD,
            });
        }
        let crc = crc32fast::hash(&buf[REC_HEADER as usize..]);
        // body_len <= MAX_RECORD, so it fits in u32.
        buf[..4].copy_from_slice(&(body_len as u32).to_le_bytes());
        buf[4..8].copy_from_slice(&crc.to_le_bytes());

        let rotated = self.ensure_active(seq)?;
        let (Some(file), Some(seg)) = (self.active.as_mut(), self.segments.back_mut()) else {
            // ensure_active leaves both set on success.
            return Err(io_err("append to", &self.cfg.dir)(
                io::ErrorKind::NotFound.into(),
            ));
        };
        if let Err(e) = file.write_all(&buf) {
            // Cut a partial record so the file stays well-formed.
            let _ = file.set_len(seg.bytes);
            return Err(io_err("write", &seg.path)(e));
        }
        let offset = seg.bytes;
        seg.note(seq, offset, buf.len() as u64);
        self.last_appended = seq;
        self.buf = buf;
        if rotated {
            // Only now, with a newer record on disk, may the previous segment go.
            self.purge_acked();
        }
        self.enforce_cap();
        Ok(())
    }

    /// Marks these sequence numbers as committed by the controller; deletes segments whose
    /// samples are all acknowledged.
    pub fn ack(&mut self, ranges: &[SeqRange]) {
        for r in ranges {
            let (first, last) = (r.first.min(r.last), r.first.max(r.last));
            for seg in &mut self.segments {
                if seg.first_seq() <= last && seg.last_seq >= first {
                    seg.ack(first, last);
                }
            }
        }
        self.purge_acked();
    }

    /// Up to max_count unacknowledged samples with seq > after, oldest first, whose encoded
    /// sizes add up to at most max_bytes (always at least one if any exists).
    pub fn unacked_after(
        &self,
        after: u64,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<Sample>, SpoolError> {
        let mut out = Vec::new();
        let mut used = 0usize;
        let mut body = Vec::new();
        for seg in &self.segments {
            if out.len() >= max_count {
                break;
            }
            if seg.last_seq <= after || seg.unacked() == 0 {
                continue;
            }
            let start = seg.start_offset(after);
            let mut file = File::open(&seg.path).map_err(io_err("open", &seg.path))?;
            file.seek(SeekFrom::Start(start))
                .map_err(io_err("seek", &seg.path))?;
            let mut reader = BufReader::new(file.take(seg.bytes.saturating_sub(start)));
            while let Some(len) = read_record(&mut reader, &mut body, &seg.path)? {
                let Some(seq) = leading_seq(&body) else {
                    break;
                };
                if seq <= after || seg.acked.contains(seq) {
                    continue;
                }
                if !out.is_empty() && used.saturating_add(len) > max_bytes {
                    return Ok(out);
                }
                match postcard::from_bytes::<Sample>(&body) {
                    Ok(sample) => out.push(sample),
                    Err(e) => {
                        tracing::warn!(
                            path = %seg.path.display(), seq, error = %e,
                            "undecodable spool record skipped"
                        );
                        continue;
                    }
                }
                used = used.saturating_add(len);
                if out.len() >= max_count {
                    return Ok(out);
                }
            }
        }
        Ok(out)
    }

    /// Unacknowledged samples currently held.
    pub fn backlog(&self) -> u64 {
        self.segments.iter().map(Segment::unacked).sum()
    }

    /// Samples dropped because the spool was full since the last call; resets the counter.
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// Highest seq such that every seq at or below it is acknowledged or dropped.
    pub fn acked_floor(&self) -> u64 {
        self.segments
            .iter()
            .find_map(|s| s.present.first_not_in(&s.acked))
            .map_or(self.last_appended, |first_unacked| first_unacked - 1)
    }

    /// fdatasync the active segment and persist the ack floor and seq state; call on the sync
    /// timer and at clean shutdown.
    pub fn sync(&mut self) -> Result<(), SpoolError> {
        if let (Some(file), Some(seg)) = (&self.active, self.segments.back()) {
            file.sync_data().map_err(io_err("sync", &seg.path))?;
        }
        if self.dir_dirty || self.acked_floor() != self.persisted_floor {
            self.write_state(self.reserved_until, None)?;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// sync() if sync_interval has passed since the last one.
    pub fn maybe_sync(&mut self) -> Result<(), SpoolError> {
        if self.last_sync.elapsed() >= self.cfg.sync_interval {
            self.sync()?;
        }
        Ok(())
    }

    /// Syncs and records a clean shutdown, so the next start continues numbering without a
    /// gap even after a reboot.
    pub fn close(mut self) -> Result<(), SpoolError> {
        if let (Some(file), Some(seg)) = (&self.active, self.segments.back()) {
            file.sync_data().map_err(io_err("sync", &seg.path))?;
        }
        self.write_state(self.reserved_until, Some(self.next))
    }

    /// Size at which the active segment is closed: never more than half the cap, so dropping
    /// whole old segments can keep the total under it.
    fn segment_threshold(&self) -> u64 {
        self.cfg.segment_bytes.min(self.cfg.max_bytes / 2).max(1)
    }

    /// Makes sure an open segment takes the record `seq`, rotating a full one; true if a
    /// new segment was started.
    fn ensure_active(&mut self, seq: u64) -> Result<bool, SpoolError> {
        if let (Some(file), Some(seg)) = (&self.active, self.segments.back())
            && seg.bytes >= self.segment_threshold()
        {
            // A finished segment becomes durable now; the directory entry at the next sync.
            file.sync_data().map_err(io_err("sync", &seg.path))?;
            self.active = None;
        }
        if self.active.is_some() {
            return Ok(false);
        }
        let path = self.cfg.dir.join(format!("seg-{seq:020}.log"));
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
        self.segments.push_back(Segment::new(path));
        self.active = Some(file);
        self.dir_dirty = true;
        Ok(true)
    }

    /// Drops the oldest segments while over the cap, counting their unacknowledged samples.
    fn enforce_cap(&mut self) {
        let mut total: u64 = self.segments.iter().map(|s| s.bytes).sum();
        while total > self.cfg.max_bytes && self.segments.len() > 1 {
            let Some(seg) = self.segments.pop_front() else {
                break;
            };
            let lost = seg.unacked();
            if lost > 0 {
                tracing::warn!(
                    path = %seg.path.display(), lost,
                    "spool full: dropped the oldest samples"
                );
            }
            self.dropped += lost;
            total -= seg.bytes;
            remove_segment(&seg.path);
            self.dir_dirty = true;
        }
    }

    /// Deletes fully acknowledged segments, except the newest one: it holds the highest
    /// appended seq, which a restart in the same boot continues from.
    fn purge_acked(&mut self) {
        let newest = self.segments.len().saturating_sub(1);
        let mut i = 0;
        let mut removed = false;
        self.segments.retain(|s| {
            let keep = i == newest || s.unacked() > 0 || !remove_segment(&s.path);
            removed |= !keep;
            i += 1;
            keep
        });
        self.dir_dirty |= removed;
    }

    /// Atomically replaces the state file (temp + fsync + rename + directory fsync).
    fn write_state(
        &mut self,
        reserved_until: u64,
        clean_next: Option<u64>,
    ) -> Result<(), SpoolError> {
        let state = State {
            floor: self.acked_floor(),
            reserved_until,
            min_next: self.min_next,
            boot_id: self.boot_id.clone(),
            clean_next,
        };
        let body = postcard::to_allocvec(&state)?;
        let mut bytes = Vec::with_capacity(body.len() + 8);
        bytes.extend_from_slice(STATE_MAGIC);
        bytes.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        bytes.extend_from_slice(&body);

        let tmp = self.cfg.dir.join(STATE_TMP);
        let path = self.cfg.dir.join(STATE_FILE);
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
        File::open(&self.cfg.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err("sync", &self.cfg.dir))?;
        self.persisted_floor = state.floor;
        self.dir_dirty = false;
        Ok(())
    }
}

/// Deletes a segment file; true if it is gone (a missing file counts as gone).
fn remove_segment(path: &Path) -> bool {
    match fs::remove_file(path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::NotFound => true,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot delete spool segment");
            false
        }
    }
}

/// Reads the state file; `None` if missing or damaged (then the caller is conservative).
fn read_state(path: &Path) -> Option<State> {
    let bytes = match fs::read(path) {
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

/// Segment files in the directory, oldest first.
fn list_segments(dir: &Path) -> Result<Vec<PathBuf>, SpoolError> {
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
fn scan_segment(
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
fn read_record(
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
fn leading_seq(body: &[u8]) -> Option<u64> {
    let mut v: u64 = 0;
    for (i, &b) in body.iter().take(10).enumerate() {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use pifleet_shared::proto::v1::{Disk, Net};
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    struct Fixture {
        tmp: tempfile::TempDir,
    }

    impl Fixture {
        fn new() -> io::Result<Self> {
            let tmp = tempfile::tempdir()?;
            fs::write(tmp.path().join("boot_id"), "boot-1\n")?;
            Ok(Self { tmp })
        }
        fn dir(&self) -> PathBuf {
            self.tmp.path().join("spool")
        }
        fn cfg(&self) -> SpoolConfig {
            let mut cfg = SpoolConfig::new(self.dir());
            cfg.boot_id_path = self.tmp.path().join("boot_id");
            cfg
        }
        fn small(&self) -> SpoolConfig {
            SpoolConfig {
                segment_bytes: 600,
                seq_block: 7,
                ..self.cfg()
            }
        }
        fn reboot(&self, id: &str) -> io::Result<()> {
            fs::write(self.tmp.path().join("boot_id"), id)
        }
        fn segments(&self) -> Result<Vec<PathBuf>, SpoolError> {
            list_segments(&self.dir())
        }
    }

    fn sample(seq: u64) -> Sample {
        Sample {
            seq,
            ts_ms: 1_700_000_000_000 + seq as i64,
            cpu_pct: 12.5,
            load1: 0.5,
            load5: 0.25,
            load15: 0.125,
            mem_total_bytes: 1 << 30,
            mem_used_bytes: 1 << 29,
            swap_total_bytes: 0,
            swap_used_bytes: 0,
            disks: vec![Disk {
                mount: "/".into(),
                fs: "ext4".into(),
                total_bytes: 32 << 30,
                used_bytes: 8 << 30,
            }],
            nets: vec![Net {
                iface: "eth0".into(),
                rx_bytes: seq,
                tx_bytes: 2,
            }],
            temp_c: Some(48.3),
            throttled: Some(0x50005),
            uptime_s: 3600,
            spool_dropped: 0,
            spool_backlog: 0,
        }
    }

    fn push(sp: &mut Spool, n: usize) -> Result<Vec<u64>, SpoolError> {
        (0..n)
            .map(|_| {
                let seq = sp.next_seq()?;
                sp.append(&sample(seq))?;
                Ok(seq)
            })
            .collect()
    }

    fn unacked(sp: &Spool) -> Result<Vec<u64>, SpoolError> {
        let all = sp.unacked_after(0, usize::MAX, usize::MAX)?;
        Ok(all.iter().map(|s| s.seq).collect())
    }

    fn ack(sp: &mut Spool, first: u64, last: u64) {
        sp.ack(&[SeqRange { first, last }]);
    }

    #[test]
    fn range_set_merges_and_finds_gaps() {
        let mut r = RangeSet::default();
        r.insert(5, 7);
        r.insert(1, 2);
        r.insert(9, 9);
        r.insert(8, 8);
        assert_eq!(r.0, vec![(1, 2), (5, 9)]);
        r.insert(3, 4);
        assert_eq!(r.0, vec![(1, 9)]);
        assert_eq!(r.count(), 9);
        assert!(r.contains(9) && !r.contains(10) && !r.contains(0));
        let present = RangeSet(vec![(1, 10), (20, 30)]);
        assert_eq!(
            present.intersect(8, 22).collect::<Vec<_>>(),
            vec![(8, 10), (20, 22)]
        );
        assert_eq!(present.first_not_in(&RangeSet(vec![(1, 10)])), Some(20));
        assert_eq!(
            present.first_not_in(&RangeSet(vec![(1, 3), (5, 5)])),
            Some(4)
        );
        assert_eq!(present.first_not_in(&present), None);
        let top = RangeSet(vec![(u64::MAX - 1, u64::MAX)]);
        assert_eq!(top.first_not_in(&top), None);
    }

    #[test]
    fn append_ack_reopen_round_trip() -> TestResult {
        let fx = Fixture::new()?;
        let mut sp = Spool::open(fx.cfg())?;
        assert_eq!(push(&mut sp, 10)?, (1..=10).collect::<Vec<_>>());
        ack(&mut sp, 1, 5);
        assert_eq!(unacked(&sp)?, (6..=10).collect::<Vec<_>>());
        assert_eq!((sp.backlog(), sp.acked_floor()), (5, 5));
        assert_eq!(sp.unacked_after(0, 1, usize::MAX)?, vec![sample(6)]);
        sp.close()?;

        let mut sp = Spool::open(fx.cfg())?;
        assert_eq!(unacked(&sp)?, (6..=10).collect::<Vec<_>>());
        assert_eq!((sp.backlog(), sp.acked_floor()), (5, 5));
        assert_eq!(sp.next_seq()?, 11);

        let mode = |p: &Path| fs::metadata(p).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode(&fx.dir())?, 0o700);
        for entry in fs::read_dir(fx.dir())? {
            assert_eq!(mode(&entry?.path())?, 0o600);
        }
        Ok(())
    }

    #[test]
    fn crash_keeps_unacked_and_continues_without_gap() -> TestResult {
        let fx = Fixture::new()?;
        let mut sp = Spool::open(fx.small())?;
        push(&mut sp, 25)?;
        assert!(fx.segments()?.len() > 2);
        ack(&mut sp, 3, 4);
        sp.sync()?;
        ack(&mut sp, 1, 2);
        drop(sp); // kill -9: no close, no sync

        let mut sp = Spool::open(fx.small())?;
        let left = unacked(&sp)?;
        assert!((5..=25).all(|s| left.contains(&s)), "{left:?}");
        assert_eq!(sp.next_seq()?, 26);
        sp.append(&sample(26))?;
        push(&mut sp, 19)?;
        drop(sp);
        let mut sp = Spool::open(fx.small())?;
        assert_eq!(sp.next_seq()?, 46);
        Ok(())
    }

    #[test]
    fn power_loss_never_reuses_a_seq() -> TestResult {
        let fx = Fixture::new()?;
        let mut sp = Spool::open(fx.small())?;
        push(&mut sp, 16)?;
        sp.sync()?;
        push(&mut sp, 4)?; // 17..=20, never synced
        drop(sp);
        // The unsynced tail is lost and the machine boots again.
        let last = fx.segments()?.pop().ok_or("no segment")?;
        let len = fs::metadata(&last)?.len();
        fs::OpenOptions::new()
            .write(true)
            .open(&last)?
            .set_len(len / 2)?;
        fx.reboot("boot-2")?;
        drop(Spool::open(fx.small())?); // then the agent crashes before taking a sample
        let mut sp = Spool::open(fx.small())?;
        let seq = sp.next_seq()?;
        assert!(seq > 20, "seq {seq} reused");
        assert_eq!(seq, 22, "the persisted reservation bound");
        sp.append(&sample(seq))?;
        drop(sp);

        // An unreadable boot id never counts as the same boot.
        let cfg = SpoolConfig {
            boot_id_path: fx.tmp.path().join("missing"),
            ..fx.small()
        };
        let mut sp = Spool::open(cfg.clone())?;
        let seq = sp.next_seq()?;
        assert!(seq > 22, "seq {seq} reused");
        sp.append(&sample(seq))?;
        drop(sp);
        let mut sp = Spool::open(cfg)?;
        assert!(sp.next_seq()? > seq + 1);

        // A clean shutdown followed by a reboot continues without a gap.
        let n = sp.next_seq()?;
        sp.close()?;
        fx.reboot("boot-3")?;
        let mut sp = Spool::open(fx.small())?;
        assert_eq!(sp.next_seq()?, n + 1);
        Ok(())
    }

    #[test]
    fn torn_and_corrupt_records_are_cut() -> TestResult {
        let fx = Fixture::new()?;
        let mut sp = Spool::open(fx.cfg())?;
        push(&mut sp, 5)?;
        drop(sp);
        let seg = fx.segments()?.pop().ok_or("no segment")?;
        let mut f = fs::OpenOptions::new().append(true).open(&seg)?;
        f.write_all(&[0x10, 0, 0, 0, 1, 2, 3, 4, 5])?;
        drop(f);
        let mut sp = Spool::open(fx.cfg())?;
        assert_eq!(unacked(&sp)?, vec![1, 2, 3, 4, 5]);
        assert_eq!(push(&mut sp, 1)?, vec![6]);
        drop(sp);

        // A record cut in the middle (killed during write): the rest survives.
        let len = fs::metadata(&seg)?.len();
        fs::OpenOptions::new()
            .write(true)
            .open(&seg)?
            .set_len(len - 3)?;
        let mut sp = Spool::open(fx.cfg())?;
        assert_eq!(unacked(&sp)?, vec![1, 2, 3, 4, 5]);
        assert_eq!(fs::metadata(&seg)?.len(), len - rec_len_of(6)?);
        assert_eq!(push(&mut sp, 1)?, vec![6]);
        drop(sp);

        // A bad checksum in an older segment ends that segment; later segments survive.
        let fx = Fixture::new()?;
        let mut sp = Spool::open(fx.small())?;
        push(&mut sp, 12)?;
        drop(sp);
        let segs = fx.segments()?;
        assert!(segs.len() >= 2);
        let mut bytes = fs::read(&segs[0])?;
        let second = (SEG_HEADER + rec_len_of(1)?) as usize;
        bytes[second + REC_HEADER as usize + 2] ^= 0xff;
        fs::write(&segs[0], &bytes)?;
        let sp = Spool::open(fx.small())?;
        let left = unacked(&sp)?;
        let in_second: Vec<u64> = left.iter().copied().filter(|&s| s > 1).collect();
        assert_eq!(left[0], 1);
        assert_eq!(in_second.last(), Some(&12));
        assert!(!left.contains(&2));
        Ok(())
    }

    fn rec_len_of(seq: u64) -> Result<u64, postcard::Error> {
        Ok(REC_HEADER + postcard::to_allocvec(&sample(seq))?.len() as u64)
    }

    #[test]
    fn full_spool_drops_oldest_and_counts_them() -> TestResult {
        let fx = Fixture::new()?;
        let cfg = SpoolConfig {
            max_bytes: 2000,
            segment_bytes: 500,
            ..fx.cfg()
        };
        let mut sp = Spool::open(cfg.clone())?;
        push(&mut sp, 3)?;
        ack(&mut sp, 2, 2);
        push(&mut sp, 97)?;
        let left = unacked(&sp)?;
        assert_eq!(left.last(), Some(&100));
        let first = left[0];
        assert_eq!(
            left,
            (first..=100).collect::<Vec<_>>(),
            "newest survive, oldest go"
        );
        let dropped = sp.take_dropped();
        assert_eq!(
            dropped,
            100 - 1 - left.len() as u64,
            "acked sample 2 is not a drop"
        );
        assert_eq!(sp.take_dropped(), 0);
        assert_eq!(sp.acked_floor(), first - 1);
        let on_disk: u64 = fx
            .segments()?
            .iter()
            .map(|p| fs::metadata(p).map(|m| m.len()))
            .sum::<io::Result<u64>>()?;
        assert!(on_disk <= cfg.max_bytes, "{on_disk} bytes on disk");
        Ok(())
    }

    #[test]
    fn out_of_order_acks_delete_only_full_segments() -> TestResult {
        let fx = Fixture::new()?;
        let mut sp = Spool::open(fx.small())?;
        push(&mut sp, 30)?;
        let before = fx.segments()?.len();
        assert!(before >= 4, "{before} segments");
        // Live samples overtake the backlog.
        ack(&mut sp, 21, 30);
        assert_eq!((sp.acked_floor(), sp.backlog()), (0, 20));
        ack(&mut sp, 1, 10);
        assert_eq!((sp.acked_floor(), sp.backlog()), (10, 10));
        assert!(fx.segments()?.len() < before);
        assert_eq!(unacked(&sp)?, (11..=20).collect::<Vec<_>>());
        ack(&mut sp, 12, 12);
        assert_eq!(sp.acked_floor(), 10);
        ack(&mut sp, 11, 11);
        assert_eq!(sp.acked_floor(), 12);
        sp.ack(&[SeqRange {
            first: 20,
            last: 13,
        }]);
        assert_eq!((sp.acked_floor(), sp.backlog()), (30, 0));
        assert_eq!(fx.segments()?.len(), 1, "only the newest segment stays");
        sp.sync()?;
        drop(sp);
        let mut sp = Spool::open(fx.small())?;
        assert!(unacked(&sp)?.is_empty());
        assert!(fx.segments()?.is_empty());
        assert_eq!(sp.next_seq()?, 31);
        Ok(())
    }

    #[test]
    fn unacked_after_respects_limits() -> TestResult {
        let fx = Fixture::new()?;
        let mut sp = Spool::open(fx.small())?;
        push(&mut sp, 20)?;
        ack(&mut sp, 5, 7);
        let seqs = |v: Vec<Sample>| v.iter().map(|s| s.seq).collect::<Vec<_>>();
        assert_eq!(
            seqs(sp.unacked_after(3, 5, usize::MAX)?),
            vec![4, 8, 9, 10, 11]
        );
        let one = (rec_len_of(8)? - REC_HEADER) as usize;
        assert_eq!(seqs(sp.unacked_after(3, 100, 2 * one + 1)?), vec![4, 8]);
        assert_eq!(seqs(sp.unacked_after(3, 100, 1)?), vec![4]);
        assert!(sp.unacked_after(20, 100, usize::MAX)?.is_empty());
        assert!(sp.unacked_after(0, 0, usize::MAX)?.is_empty());
        assert_eq!(
            seqs(sp.unacked_after(17, 100, usize::MAX)?),
            vec![18, 19, 20]
        );
        Ok(())
    }

    #[test]
    fn refuses_misuse() -> TestResult {
        let fx = Fixture::new()?;
        let mut sp = Spool::open(fx.cfg())?;
        assert!(matches!(
            Spool::open(fx.cfg()),
            Err(SpoolError::Locked { .. })
        ));
        assert!(matches!(
            sp.append(&sample(1)),
            Err(SpoolError::BadSeq { .. })
        ));
        push(&mut sp, 2)?;
        assert!(matches!(
            sp.append(&sample(2)),
            Err(SpoolError::BadSeq { .. })
        ));
        let mut huge = sample(sp.next_seq()?);
        huge.nets = (0..40_000)
            .map(|i| Net {
                iface: format!("veth{i}"),
                rx_bytes: 1,
                tx_bytes: 1,
            })
            .collect();
        assert!(matches!(sp.append(&huge), Err(SpoolError::TooLarge { .. })));
        Ok(())
    }

    #[derive(Debug, Clone)]
    enum Op {
        Append(usize),
        Ack(u64, u64),
        Sync,
        Crash,
        Close,
        Reboot,
        /// Reboot after losing this share (percent) of the newest segment's records.
        PowerLoss(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (1usize..6).prop_map(Op::Append),
            4 => (0u64..64, 0u64..8).prop_map(|(a, n)| Op::Ack(a, n)),
            1 => Just(Op::Sync),
            1 => Just(Op::Crash),
            1 => Just(Op::Close),
            1 => Just(Op::Reboot),
            1 => (0u64..100).prop_map(Op::PowerLoss),
        ]
    }

    fn fail(e: impl std::fmt::Display) -> TestCaseError {
        TestCaseError::fail(e.to_string())
    }

    fn run_model(ops: Vec<Op>) -> Result<(), TestCaseError> {
        let fx = Fixture::new().map_err(fail)?;
        let cfg = SpoolConfig {
            segment_bytes: 400,
            seq_block: 16,
            ..fx.cfg()
        };
        let mut sp = Some(Spool::open(cfg.clone()).map_err(fail)?);
        let mut model: BTreeSet<u64> = BTreeSet::new();
        let mut appended: BTreeSet<u64> = BTreeSet::new();
        let (mut last_seq, mut contiguous, mut boots) = (0u64, true, 1);
        for op in ops {
            let s = sp.as_mut().ok_or_else(|| fail("no spool"))?;
            match op {
                Op::Append(n) => {
                    for _ in 0..n {
                        let floor = s.acked_floor();
                        let seq = s.next_seq().map_err(fail)?;
                        prop_assert!(seq > last_seq, "seq {} reused (last {})", seq, last_seq);
                        prop_assert!(seq > floor, "seq {} at or below the floor {}", seq, floor);
                        if contiguous {
                            prop_assert_eq!(seq, last_seq + 1);
                        }
                        contiguous = true;
                        last_seq = seq;
                        s.append(&sample(seq)).map_err(fail)?;
                        model.insert(seq);
                        appended.insert(seq);
                    }
                }
                Op::Ack(a, n) => {
                    let first = 1 + a % last_seq.max(1);
                    s.ack(&[SeqRange {
                        first,
                        last: first + n,
                    }]);
                    model.retain(|&x| x < first || x > first + n);
                }
                Op::Sync => s.sync().map_err(fail)?,
                Op::Crash | Op::Close | Op::Reboot | Op::PowerLoss(_) => {
                    let old = sp.take().ok_or_else(|| fail("no spool"))?;
                    if matches!(op, Op::Close) {
                        old.close().map_err(fail)?;
                    } else {
                        drop(old);
                    }
                    if let Op::PowerLoss(pct) = op
                        && let Some(last) = fx.segments().map_err(fail)?.pop()
                    {
                        let len = fs::metadata(&last).map_err(fail)?.len();
                        let keep = SEG_HEADER + (len - SEG_HEADER) * (100 - pct) / 100;
                        let f = fs::OpenOptions::new().write(true).open(&last);
                        f.and_then(|f| f.set_len(keep)).map_err(fail)?;
                    }
                    if matches!(op, Op::Reboot | Op::PowerLoss(_)) {
                        boots += 1;
                        fx.reboot(&format!("boot-{boots}")).map_err(fail)?;
                        contiguous = false;
                    }
                    let s = Spool::open(cfg.clone()).map_err(fail)?;
                    let now: BTreeSet<u64> = unacked(&s).map_err(fail)?.into_iter().collect();
                    prop_assert!(
                        matches!(op, Op::PowerLoss(_)) || now.is_superset(&model),
                        "lost samples: {:?} vs {:?}",
                        now,
                        model
                    );
                    prop_assert!(now.is_subset(&appended));
                    model = now;
                    sp = Some(s);
                    continue;
                }
            }
            let s = sp.as_ref().ok_or_else(|| fail("no spool"))?;
            let now: Vec<u64> = unacked(s).map_err(fail)?;
            prop_assert_eq!(&now, &model.iter().copied().collect::<Vec<_>>());
            prop_assert_eq!(s.backlog(), model.len() as u64);
            match model.first() {
                Some(first) => prop_assert_eq!(s.acked_floor(), first - 1),
                None => prop_assert!(s.acked_floor() >= appended.last().copied().unwrap_or(0)),
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        #[test]
        fn behaves_like_the_model(ops in prop::collection::vec(op(), 1..40)) {
            run_model(ops)?;
        }
    }
}
