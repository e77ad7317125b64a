//! Every refusal of the intake: each names the entry, and nothing stays in the output dir.

use pifleet_shared::release::PathError;
use tar::{EntryType, Header};

use super::testkit::{T, Z, gz, left_in, run, small, tar, zip};
use super::*;

/// Repacks `bytes`, expects a refusal, checks that nothing was left behind.
fn refuse(bytes: &[u8], limits: &Limits) -> IntakeError {
    let r = run(bytes, limits);
    let err = r.result.expect_err("refused");
    assert!(left_in(r.out.path()).is_empty(), "left behind after: {err}");
    err
}

#[test]
fn paths_that_leave_the_release() {
    for (path, why) in [
        ("../x", PathError::Parent),
        ("a/../../x", PathError::Parent),
        ("/etc/passwd", PathError::Absolute),
    ] {
        let err = refuse(&gz(&tar(&[T::File(path, 0o644, b"x")])), &small());
        assert!(
            matches!(&err, IntakeError::UnsafePath { path: p, error } if p == path && *error == why),
            "{path}: {err}"
        );
        assert!(err.to_string().contains(path), "{err}");
    }
    let err = refuse(&zip(&[Z::File("../evil", 0o644, b"x")]), &small());
    assert!(matches!(err, IntakeError::UnsafePath { .. }), "{err}");
}

#[test]
fn links_that_leave_the_release() {
    for target in ["../../etc", "/etc/shadow", "a/../.."] {
        let err = refuse(&tar(&[T::Link("lib/l", target)]), &small());
        assert!(
            matches!(&err, IntakeError::LinkEscapes { path, target: t, .. } if path == "lib/l" && t == target),
            "{target}: {err}"
        );
    }
    let err = refuse(&zip(&[Z::Link("l", "../../x")]), &small());
    assert!(matches!(err, IntakeError::LinkEscapes { .. }), "{err}");
}

#[test]
fn hard_links() {
    let err = refuse(
        &tar(&[T::File("a", 0o644, b"x"), T::Hard("b", "a")]),
        &small(),
    );
    assert!(
        matches!(&err, IntakeError::HardLink { path, target } if path == "b" && target == "a"),
        "{err}"
    );
    assert!(err.to_string().contains("store a copy"), "{err}");
}

#[test]
fn setuid_setgid_and_sticky_bits() {
    for (entry, mode) in [
        (T::File("bin/su", 0o4755, b"x"), 0o4755),
        (T::Dir("shared", 0o2775), 0o2775),
        (T::Dir("tmp", 0o1777), 0o1777),
    ] {
        let err = refuse(&tar(&[entry]), &small());
        assert!(
            matches!(err, IntakeError::SpecialBits { mode: m, .. } if m == mode),
            "{err}"
        );
    }
    let err = refuse(&zip(&[Z::Raw("su", 0o104_755, b"x")]), &small());
    assert!(
        matches!(&err, IntakeError::SpecialBits { path, mode: 0o4755 } if path == "su"),
        "{err}"
    );
}

#[test]
fn devices_fifos_and_other_types() {
    for (ty, kind) in [
        (EntryType::Block, "block device"),
        (EntryType::Char, "character device"),
        (EntryType::Fifo, "FIFO (named pipe)"),
        (EntryType::GNUSparse, "sparse file"),
    ] {
        let err = refuse(&tar(&[T::Special("dev/x", ty)]), &small());
        assert!(
            matches!(&err, IntakeError::UnsupportedType { path, kind: k } if path == "dev/x" && *k == kind),
            "{err}"
        );
    }
    let err = refuse(&zip(&[Z::Raw("null", 0o020_666, b"")]), &small());
    assert!(
        matches!(
            err,
            IntakeError::UnsupportedType {
                kind: "character device",
                ..
            }
        ),
        "{err}"
    );
    let err = refuse(&zip(&[Z::Raw("fifo", 0o010_644, b"")]), &small());
    assert!(
        matches!(
            err,
            IntakeError::UnsupportedType {
                kind: "FIFO (named pipe)",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn duplicate_paths() {
    // The same path twice once `./` is dropped.
    let err = refuse(
        &tar(&[T::File("a", 0o644, b"1"), T::File("./a", 0o644, b"2")]),
        &small(),
    );
    assert!(
        matches!(&err, IntakeError::Duplicate(p) if p == "a"),
        "{err}"
    );
    let err = refuse(&tar(&[T::Dir("d/", 0o755), T::Dir("./d", 0o755)]), &small());
    assert!(
        matches!(&err, IntakeError::Duplicate(p) if p == "d"),
        "{err}"
    );
}

#[test]
fn entries_below_a_link_or_a_file() {
    let err = refuse(
        &tar(&[
            T::Dir("real", 0o755),
            T::Link("lib", "real"),
            T::File("lib/x", 0o644, b"x"),
        ]),
        &small(),
    );
    assert!(
        matches!(&err, IntakeError::BelowSymlink { path, link } if path == "lib/x" && link == "lib"),
        "{err}"
    );
    let err = refuse(
        &tar(&[T::File("a", 0o644, b"x"), T::File("a/b", 0o644, b"y")]),
        &small(),
    );
    assert!(
        matches!(&err, IntakeError::NotADirectory { path, parent } if path == "a/b" && parent == "a"),
        "{err}"
    );
}

#[test]
fn too_many_entries() {
    let limits = Limits {
        max_entries: 3,
        ..small()
    };
    let files: Vec<String> = (0..4).map(|i| format!("f{i}")).collect();
    let entries: Vec<T<'_>> = files.iter().map(|f| T::File(f, 0o644, b"x")).collect();
    let err = refuse(&tar(&entries), &limits);
    assert!(
        matches!(err, IntakeError::TooManyEntries { max: 3 }),
        "{err}"
    );
    // Implicit folders count too: two files under a/b/ make four entries.
    let err = refuse(
        &tar(&[T::File("a/b/x", 0o644, b"x"), T::File("a/b/y", 0o644, b"y")]),
        &limits,
    );
    assert!(
        matches!(err, IntakeError::TooManyEntries { max: 3 }),
        "{err}"
    );
    let zipped: Vec<Z<'_>> = files.iter().map(|f| Z::File(f, 0o644, b"x")).collect();
    let err = refuse(&zip(&zipped), &limits);
    assert!(
        matches!(err, IntakeError::TooManyEntries { max: 3 }),
        "{err}"
    );
}

/// A tar header for a file of `size` bytes (data not included).
fn file_header(path: &str, size: u64) -> Vec<u8> {
    let mut h = Header::new_gnu();
    h.set_path(path).unwrap();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_entry_type(EntryType::Regular);
    h.set_cksum();
    h.as_bytes().to_vec()
}

#[test]
fn a_gzip_bomb_is_stopped_while_inflating() {
    // One file claiming 1 TiB, then 16 MiB of zeros and no end: reading it all would end
    // in "unexpected end of file", so the limit answering proves it stopped early.
    let mut raw = file_header("zeros", 1 << 40);
    raw.resize(raw.len() + (16 << 20), 0);
    let bomb = gz(&raw);
    assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());
    let err = refuse(&bomb, &small());
    assert!(
        matches!(err, IntakeError::UnpackedTooLarge { max } if max == 1 << 20),
        "{err}"
    );
    // Many files each within the limit, together past it.
    let mut raw = Vec::new();
    for i in 0..8 {
        raw.extend(file_header(&format!("f{i}"), 256 * 1024));
        raw.resize(raw.len() + 256 * 1024, 0);
    }
    raw.resize(raw.len() + 1024, 0);
    let err = refuse(&gz(&raw), &small());
    assert!(matches!(err, IntakeError::UnpackedTooLarge { .. }), "{err}");
}

#[test]
fn a_zip_bomb_is_stopped_while_inflating() {
    let zeros = vec![0u8; 16 << 20];
    let bomb = zip(&[Z::File("zeros", 0o644, &zeros)]);
    assert!(bomb.len() < 64 * 1024, "{} bytes", bomb.len());
    let err = refuse(&bomb, &small());
    assert!(matches!(err, IntakeError::UnpackedTooLarge { .. }), "{err}");
}

#[test]
fn oversized_records_and_endless_padding() {
    // A GNU long name claiming 1 GiB is refused before it is read.
    let mut h = Header::new_gnu();
    h.set_path("././@LongLink").unwrap();
    h.set_entry_type(EntryType::GNULongName);
    h.set_size(1 << 30);
    h.set_cksum();
    let mut raw = h.as_bytes().to_vec();
    raw.resize(raw.len() + (1 << 20), b'a');
    let err = refuse(&gz(&raw), &small());
    assert!(
        matches!(&err, IntakeError::Corrupt(m) if m.contains("long name")),
        "{err}"
    );
    // A folder entry carrying data: skipped by the reader, but counted all the same.
    let mut h = Header::new_gnu();
    h.set_path("d/").unwrap();
    h.set_entry_type(EntryType::Directory);
    h.set_size(1 << 40);
    h.set_mode(0o755);
    h.set_cksum();
    let mut raw = h.as_bytes().to_vec();
    raw.resize(raw.len() + (16 << 20), 0);
    let limits = Limits {
        max_entries: 10,
        ..small()
    };
    let err = refuse(&gz(&raw), &limits);
    assert!(matches!(err, IntakeError::UnpackedTooLarge { .. }), "{err}");
}

#[test]
fn uploads_too_big() {
    let limits = Limits {
        max_upload_bytes: 100,
        ..small()
    };
    let err = refuse(&gz(&tar(&[T::File("a", 0o644, &[7; 4096])])), &limits);
    assert!(
        matches!(err, IntakeError::UploadTooLarge { max: 100, .. }),
        "{err}"
    );
}

#[test]
fn not_an_archive() {
    for bytes in [&b""[..], b"hello world", b"PK", &[0x1f]] {
        let err = refuse(bytes, &small());
        assert!(matches!(err, IntakeError::NotAnArchive), "{err}");
    }
    // Looks like gzip, is not.
    let err = refuse(&[0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5, 6, 7], &small());
    assert!(matches!(err, IntakeError::Corrupt(_)), "{err}");
    // A truncated archive.
    let whole = gz(&tar(&[T::File("a", 0o644, &[1; 8192])]));
    let err = refuse(&whole[..whole.len() / 2], &small());
    assert!(matches!(err, IntakeError::Corrupt(_)), "{err}");
    // Nothing in it but the root folder.
    let err = refuse(&tar(&[T::Dir("./", 0o755)]), &small());
    assert!(matches!(err, IntakeError::Empty), "{err}");
}

#[test]
fn names_that_are_not_utf8() {
    let mut raw = file_header("x", 1);
    raw[0] = 0xff;
    let mut h = Header::from_byte_slice(&raw).clone();
    h.set_cksum();
    let mut raw = h.as_bytes().to_vec();
    raw.resize(1024 + 1024, 0);
    let err = refuse(&raw, &small());
    assert!(matches!(err, IntakeError::NotUtf8(_)), "{err}");
}
