//! The bounded on-disk spool of unacknowledged samples: what the agent measured but the
//! controller has not yet acknowledged survives outages and restarts, within a size bound.
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
//!
//! This module holds the public API and the bookkeeping across segments; `segment.rs` the
//! segment file format, record encoding and crash recovery; `state.rs` the state file and the
//! resume decision; `ranges.rs` the sequence-number sets kept per segment.

mod ranges;
mod segment;
mod state;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fs::{self, DirBuilder, File, OpenOptions, TryLockError};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pifleet_shared::proto::v1::{Sample, SeqRange};

use segment::{Segment, create_segment, encode_record, leading_seq, list_segments, read_record};
use segment::{remove_segment, scan_segment};
use state::{State, read_boot_id, read_state, remove_tmp, resume_seq, write_state};

/// Held locked for the spool's lifetime: one process per spool directory.
const LOCK_FILE: &str = "lock";

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
        remove_tmp(&dir);

        let boot_id = read_boot_id(&cfg.boot_id_path);
        let state = read_state(&dir);
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
        let next = resume_seq(state.as_ref(), &boot_id, last_found, block);

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
        let buf = encode_record(sample, std::mem::take(&mut self.buf))?;

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
        let (seg, file) = create_segment(&self.cfg.dir, seq)?;
        self.segments.push_back(seg);
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
        write_state(&self.cfg.dir, &state)?;
        self.persisted_floor = state.floor;
        self.dir_dirty = false;
        Ok(())
    }
}
