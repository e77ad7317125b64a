//! Unpacking alone: what lands on disk for a good archive, and every way a bad archive is
//! refused with nothing left behind.

use std::fs;
use std::io::Cursor;
use std::os::unix::fs::PermissionsExt;

use pifleet_shared::release::PathError;

use super::*;
use crate::apps::unpack::{Problem, UnpackError, unpack};
use crate::apps::verify::verify_release;

fn layout() -> (tempfile::TempDir, Layout) {
    let tmp = tempfile::tempdir().unwrap();
    let l = Layout::new(&tmp.path().join("app"));
    l.ensure(None).unwrap();
    (tmp, l)
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// Unpacks and expects a refusal, with nothing left in `releases/`.
fn refused(m: &Manifest, archive: Vec<u8>) -> UnpackError {
    let (_tmp, l) = layout();
    let e = unpack(m, Cursor::new(archive), &l).unwrap_err();
    let left: Vec<_> = fs::read_dir(l.releases()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?} after {e}");
    e
}

fn problem(e: &UnpackError) -> (usize, &Problem) {
    match e {
        UnpackError::Refused { index, problem, .. } => (*index, problem),
        other => panic!("not a refused entry: {other}"),
    }
}

#[test]
fn a_good_archive_lands_with_its_modes_links_and_contents() {
    let long = "deep/".repeat(30) + "file.txt";
    let long: &'static str = Box::leak(long.into_boxed_str());
    let mut items = standard_items(1);
    items.extend([
        Item::Dir("ro", 0o555),
        file("ro/inside", "read-only folder"),
        Item::File("secret", b"x".to_vec(), 0o600),
        file(long, "a path longer than a tar header holds"),
        Item::Link("lib/current", "../etc"),
    ]);
    let r = Release::new(1, &items);
    let (_tmp, l) = layout();
    let dest = unpack(&r.manifest, Cursor::new(r.archive.clone()), &l).unwrap();
    assert_eq!(dest, l.release(&r.dir()));
    assert_eq!(
        fs::read_to_string(dest.join("bin/app")).unwrap(),
        "#!/bin/sh\necho release 1\n"
    );
    assert_eq!(mode(&dest.join("bin/app")), 0o755);
    assert_eq!(mode(&dest.join("etc/app.toml")), 0o644);
    assert_eq!(mode(&dest.join("secret")), 0o600);
    assert_eq!(mode(&dest.join("ro")), 0o555);
    assert_eq!(mode(&dest), 0o755);
    // Folders the archive only implies are created 0755.
    assert_eq!(mode(&dest.join("deep")), 0o755);
    assert_eq!(mode(&dest.join("lib")), 0o755);
    assert_eq!(
        fs::read_link(dest.join("app")).unwrap(),
        Path::new("bin/app")
    );
    assert_eq!(
        fs::read_to_string(dest.join("lib/current/app.toml")).unwrap(),
        "release = 1\n"
    );
    assert!(dest.join(long).is_file());
    // Only the release is left: no staging directory.
    assert_eq!(
        fs::read_dir(l.releases()).unwrap().count(),
        1,
        "{:?}",
        fs::read_dir(l.releases()).unwrap().collect::<Vec<_>>()
    );
    verify_release(&r.manifest, &dest).unwrap();
    // Unpacking the same release again is refused rather than mixed in.
    let e = unpack(&r.manifest, Cursor::new(r.archive), &l).unwrap_err();
    assert!(matches!(e, UnpackError::Exists(_)), "{e}");
}

#[test]
fn tampered_content_is_refused_by_its_digest() {
    let good = [file("a.txt", "hello")];
    let evil = [file("a.txt", "jello")];
    let archive = archive(&evil);
    // Even when the archive's own digest is signed (a release builder that was fooled),
    // the file's digest catches it.
    let m = manifest(1, &good, &archive, quick());
    let e = refused(&m, archive);
    assert_eq!(problem(&e), (0, &Problem::Digest));
}

#[test]
fn the_archive_must_be_the_one_the_manifest_names() {
    let items = [file("a.txt", "hello")];
    let r = Release::new(1, &items);
    let wrong_digest = r.clone().with(|m| m.archive_sha256 = [0; 32]);
    assert!(matches!(
        refused(&wrong_digest.manifest, r.archive.clone()),
        UnpackError::ArchiveDigest
    ));
    let bigger = r.clone().with(|m| m.archive_size += 1);
    assert!(matches!(
        refused(&bigger.manifest, r.archive.clone()),
        UnpackError::ArchiveSize { .. }
    ));
    // More bytes than stated: stopped as soon as they arrive.
    let mut longer = r.archive.clone();
    longer.extend_from_slice(&[0; 100]);
    assert!(matches!(
        refused(&r.manifest, longer),
        UnpackError::ArchiveTooLarge(_)
    ));
    let e = refused(&r.manifest, b"not gzip at all".to_vec());
    assert!(matches!(e, UnpackError::Corrupt(_)), "{e}");
    let truncated = r.archive[..r.archive.len() / 2].to_vec();
    let e = refused(&r.manifest, truncated);
    assert!(
        matches!(e, UnpackError::Corrupt(_) | UnpackError::Refused { .. }),
        "{e}"
    );
}

#[test]
fn entries_must_match_the_manifest_one_for_one_in_order() {
    let a = || file("a", "A");
    let b = || file("b", "B");
    let c = || file("c", "C");
    let check = |listed: &[Item], packed: &[Item]| {
        let archive = archive(packed);
        refused(&manifest(1, listed, &archive, quick()), archive)
    };
    let e = check(&[a(), b()], &[a(), b(), c()]);
    assert_eq!(problem(&e), (2, &Problem::NotInManifest));
    let e = check(&[a(), b()], &[b(), a()]);
    assert_eq!(problem(&e), (0, &Problem::OutOfOrder("a".into())));
    let e = check(&[a(), b()], &[a()]);
    assert!(matches!(&e, UnpackError::Missing(p) if p == "b"), "{e}");
    let e = check(&[file("a", "AA")], &[a()]);
    assert_eq!(
        problem(&e),
        (
            0,
            &Problem::Size {
                expected: 2,
                found: 1
            }
        )
    );
    let e = check(&[Item::File("a", b"A".to_vec(), 0o600)], &[a()]);
    assert_eq!(
        problem(&e),
        (
            0,
            &Problem::Mode {
                expected: 0o600,
                found: 0o644
            }
        )
    );
    let e = check(&[Item::Dir("a", 0o755)], &[a()]);
    assert!(matches!(problem(&e).1, Problem::Kind { .. }), "{e}");
    let e = check(&[Item::Link("l", "a")], &[Item::Link("l", "b")]);
    assert!(matches!(problem(&e).1, Problem::Target { .. }), "{e}");
}

#[test]
fn dangerous_tar_entries_are_refused_from_the_header() {
    let listed = [file("evil", "x")];
    let table: Vec<(Raw, Problem)> = vec![
        (Raw::file("../evil", "x"), Problem::Path(PathError::Parent)),
        (
            Raw::file("a/../../evil", "x"),
            Problem::Path(PathError::Parent),
        ),
        (
            Raw::file("/tmp/evil", "x"),
            Problem::Path(PathError::Absolute),
        ),
        (
            Raw {
                kind: tar::EntryType::Symlink,
                link: "../../../etc/passwd",
                data: vec![],
                ..Raw::file("evil", "")
            },
            Problem::Path(PathError::Escapes),
        ),
        (
            Raw {
                kind: tar::EntryType::Symlink,
                link: "/etc/passwd",
                data: vec![],
                ..Raw::file("evil", "")
            },
            Problem::Path(PathError::Absolute),
        ),
        (
            Raw {
                kind: tar::EntryType::Link,
                link: "/etc/shadow",
                data: vec![],
                ..Raw::file("evil", "")
            },
            Problem::HardLink,
        ),
        (
            Raw {
                mode: 0o4755,
                ..Raw::file("evil", "x")
            },
            Problem::SpecialBits(0o4755),
        ),
        (
            Raw {
                mode: 0o2755,
                ..Raw::file("evil", "x")
            },
            Problem::SpecialBits(0o2755),
        ),
        (
            Raw {
                kind: tar::EntryType::Char,
                data: vec![],
                ..Raw::file("evil", "")
            },
            Problem::Device,
        ),
        (
            Raw {
                kind: tar::EntryType::Block,
                data: vec![],
                ..Raw::file("evil", "")
            },
            Problem::Device,
        ),
        (
            Raw {
                kind: tar::EntryType::Fifo,
                data: vec![],
                ..Raw::file("evil", "")
            },
            Problem::Fifo,
        ),
        (
            Raw {
                kind: tar::EntryType::XGlobalHeader,
                ..Raw::file("pax_global_header", "52 comment=0123\n")
            },
            Problem::OtherType('g'),
        ),
    ];
    for (raw, want) in table {
        let archive = gzip(&raw_tar(&[raw]));
        let m = manifest(1, &listed, &archive, quick());
        let tmp = tempfile::tempdir().unwrap();
        let l = Layout::new(&tmp.path().join("a/b/app"));
        l.ensure(None).unwrap();
        let e = unpack(&m, Cursor::new(archive), &l).unwrap_err();
        assert_eq!(problem(&e), (0, &want), "{e}");
        // Nothing was written anywhere: not in the app, not next to it.
        assert_eq!(fs::read_dir(l.releases()).unwrap().count(), 0);
        for p in ["a/b/evil", "a/evil", "evil"] {
            assert!(fs::symlink_metadata(tmp.path().join(p)).is_err(), "{p}");
        }
    }
}

#[test]
fn a_gzip_bomb_is_stopped_early() {
    // A one-file release whose archive inflates to 64 MiB of zeros after its last entry
    // (big enough that its compressed form spans many reads).
    let items = [file("a.txt", "hello")];
    let mut tar = raw_tar(&[Raw::file("a.txt", "hello")]);
    tar.resize(tar.len() + 64 * 1024 * 1024, 0);
    let bomb = gzip(&tar);
    assert!(bomb.len() < 1024 * 1024, "{}", bomb.len());
    let m = manifest(1, &items, &bomb, quick());
    let (_tmp, l) = layout();
    let consumed = Arc::new(Mutex::new(0));
    let src = Counting {
        inner: Cursor::new(bomb.clone()),
        read: consumed.clone(),
    };
    let e = unpack(&m, src, &l).unwrap_err();
    let UnpackError::Inflates(n) = e else {
        panic!("{e}")
    };
    assert!(n < 64 * 1024, "inflated {n} bytes before stopping");
    let consumed = *consumed.lock().unwrap();
    assert!(
        consumed < bomb.len() as u64 / 4,
        "read {consumed} of {} compressed bytes",
        bomb.len()
    );
    assert_eq!(fs::read_dir(l.releases()).unwrap().count(), 0);
}

#[test]
fn oversized_headers_are_stopped_before_they_are_buffered() {
    let items = [file("a.txt", "hello")];
    // A GNU long-name header of 8 MiB: the tar reader would hold it all in memory.
    let long_name = Raw {
        kind: tar::EntryType::GNULongName,
        mode: 0o644,
        data: vec![b'a'; 8 * 1024 * 1024],
        ..Raw::file("././@LongLink", "")
    };
    let archive = gzip(&raw_tar(&[long_name, Raw::file("a.txt", "hello")]));
    let e = refused(&manifest(1, &items, &archive, quick()), archive);
    assert!(
        matches!(e, UnpackError::Inflates(n) if n < 64 * 1024),
        "{e}"
    );

    // A file header claiming far more than the manifest: refused before its data is read.
    let mut huge = Raw::file("a.txt", "").header();
    huge.set_size(1 << 40);
    huge.set_cksum();
    let mut tar = huge.as_bytes().to_vec();
    tar.resize(tar.len() + 4096, 0);
    let archive = gzip(&tar);
    let e = refused(&manifest(1, &items, &archive, quick()), archive);
    assert_eq!(
        problem(&e),
        (
            0,
            &Problem::Size {
                expected: 5,
                found: 1 << 40
            }
        )
    );
}

#[test]
fn a_leftover_staging_directory_is_replaced() {
    let r = Release::new(1, &[file("a", "A")]);
    let (_tmp, l) = layout();
    let staging = l.staging(&r.dir());
    fs::create_dir_all(staging.join("half")).unwrap();
    fs::write(staging.join("half/written"), b"partial").unwrap();
    let dest = unpack(&r.manifest, Cursor::new(r.archive), &l).unwrap();
    assert!(!staging.exists());
    assert_eq!(fs::read_dir(&dest).unwrap().count(), 1);
}

#[test]
fn kept_releases_are_verified_against_their_manifest() {
    let r = Release::numbered(1);
    let (_tmp, l) = layout();
    let dest = unpack(&r.manifest, Cursor::new(r.archive), &l).unwrap();
    verify_release(&r.manifest, &dest).unwrap();
    fs::write(dest.join("etc/app.toml"), b"release = 9\n").unwrap();
    let e = verify_release(&r.manifest, &dest).unwrap_err();
    assert_eq!(problem(&e), (3, &Problem::Digest));
    fs::remove_file(dest.join("etc/app.toml")).unwrap();
    let e = verify_release(&r.manifest, &dest).unwrap_err();
    assert!(matches!(e, UnpackError::Missing(_)), "{e}");
    fs::set_permissions(dest.join("bin/app"), fs::Permissions::from_mode(0o777)).unwrap();
    let e = verify_release(&r.manifest, &dest).unwrap_err();
    assert!(matches!(problem(&e).1, Problem::Mode { .. }), "{e}");
}
