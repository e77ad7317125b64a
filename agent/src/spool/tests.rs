//! Unit tests of the spool, and a property test against a model of what must survive.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use pifleet_shared::proto::v1::{Disk, Net, Sample, SeqRange};
use proptest::prelude::*;

use super::ranges::RangeSet;
use super::segment::{REC_HEADER, SEG_HEADER, list_segments};
use super::{Spool, SpoolConfig, SpoolError};

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
                let s = reopen(&cfg).map_err(fail)?;
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

/// Opens the spool again after dropping it. A program another test thread is starting at
/// that moment holds a copy of the lock file's descriptor between its fork and exec (the
/// lock belongs to the open file, not to the descriptor), so the lock can outlive the drop
/// for an instant: retry briefly rather than fail on that.
fn reopen(cfg: &SpoolConfig) -> Result<Spool, SpoolError> {
    let mut tries = 0;
    loop {
        match Spool::open(cfg.clone()) {
            Err(SpoolError::Locked { .. }) if tries < 100 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            r => return r,
        }
    }
}
