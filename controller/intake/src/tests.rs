//! Repacking accepted archives: the manifest entries, the canonical form of the output, and
//! its determinism across runs and input formats.

use pifleet_shared::release::{Entry, EntryKind};
use sha2::{Digest as _, Sha256};
use tar::EntryType;

use super::testkit::{T, Z, gz, left_in, read_back, run, small, tar, zip};

const APP: &[u8] = b"#!/bin/sh\necho hello\n";
const README: &[u8] = b"read me\n";
const CONF: &[u8] = b"x=1\n";

fn sha(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

fn file(path: &str, mode: u32, data: &[u8]) -> Entry {
    Entry {
        path: path.into(),
        mode,
        kind: EntryKind::File {
            size: data.len() as u64,
            sha256: sha(data),
        },
    }
}

fn dir(path: &str, mode: u32) -> Entry {
    Entry {
        path: path.into(),
        mode,
        kind: EntryKind::Dir,
    }
}

fn link(path: &str, target: &str) -> Entry {
    Entry {
        path: path.into(),
        mode: 0o777,
        kind: EntryKind::Symlink {
            target: target.into(),
        },
    }
}

/// The tree every format below holds, in an order no sorting gives, with the `./`
/// prefixes and trailing slashes real tools write, and implicit folders.
fn tree_tar() -> Vec<u8> {
    tar(&[
        T::Dir("./", 0o755),
        T::File("./share/doc/readme.txt", 0o644, README),
        T::Link("./current", "bin/app"),
        T::File("./bin/app", 0o755, APP),
        T::Dir("./bin/", 0o750),
        T::File("./a.conf", 0o600, CONF),
    ])
}

fn tree_zip() -> Vec<u8> {
    zip(&[
        Z::File("share/doc/readme.txt", 0o644, README),
        Z::Link("current", "bin/app"),
        Z::Dir("bin/"),
        Z::File("bin/app", 0o755, APP),
        Z::File("a.conf", 0o600, CONF),
    ])
}

fn expected(bin_mode: u32) -> Vec<Entry> {
    vec![
        file("a.conf", 0o600, CONF),
        dir("bin", bin_mode),
        file("bin/app", 0o755, APP),
        link("current", "bin/app"),
        dir("share", 0o755),
        dir("share/doc", 0o755),
        file("share/doc/readme.txt", 0o644, README),
    ]
}

#[test]
fn a_tar_gz_becomes_sorted_entries_with_implicit_folders() {
    let r = run(&gz(&tree_tar()), &small());
    let p = r.result.unwrap();
    assert_eq!(p.entries, expected(0o750));
    assert_eq!(
        p.unpacked_size,
        (APP.len() + README.len() + CONF.len()) as u64
    );
    let bytes = std::fs::read(&p.archive).unwrap();
    assert_eq!(p.archive_size, bytes.len() as u64);
    assert_eq!(p.archive_sha256, sha(&bytes));
    // Only the archive is left in the output dir, and only until it is dropped.
    assert_eq!(left_in(r.out.path()).len(), 1);
    drop(p);
    assert!(left_in(r.out.path()).is_empty());
}

#[test]
fn the_archive_is_canonical() {
    let r = run(&gz(&tree_tar()), &small());
    let p = r.result.unwrap();
    let bytes = std::fs::read(&p.archive).unwrap();
    // gzip header: no name, mtime 0.
    assert_eq!(&bytes[..4], &[0x1f, 0x8b, 8, 0]);
    assert_eq!(&bytes[4..8], &[0, 0, 0, 0]);
    let back = read_back(&p.archive);
    let paths: Vec<&str> = back.iter().map(|e| e.0.as_str()).collect();
    assert_eq!(
        paths,
        p.entries
            .iter()
            .map(|e| e.path.as_str())
            .collect::<Vec<_>>()
    );
    for (path, ty, mode, mtime, uid, gid, user, group, target, data) in &back {
        assert_eq!((*mtime, *uid, *gid), (0, 0, 0), "{path}");
        assert!(user.is_empty() && group.is_empty(), "{path}");
        let entry = p.entries.iter().find(|e| &e.path == path).unwrap();
        assert_eq!(*mode, entry.mode, "{path}");
        match &entry.kind {
            EntryKind::File { sha256, .. } => {
                assert_eq!(*ty, EntryType::Regular);
                assert_eq!(&sha(data), sha256);
            }
            EntryKind::Dir => assert_eq!(*ty, EntryType::Directory),
            EntryKind::Symlink { target: t } => {
                assert_eq!(*ty, EntryType::Symlink);
                assert_eq!(target.as_deref(), Some(t.as_str()));
            }
        }
    }
}

#[test]
fn the_same_content_gives_the_same_digest() {
    let a = run(&gz(&tree_tar()), &small()).result.unwrap();
    let b = run(&gz(&tree_tar()), &small()).result.unwrap();
    assert_eq!(a.archive_sha256, b.archive_sha256);
    // A plain tar of the same tree, too.
    let c = run(&tree_tar(), &small()).result.unwrap();
    assert_eq!(a.archive_sha256, c.archive_sha256);
    assert_eq!(a.entries, c.entries);
}

#[test]
fn a_zip_gives_the_same_entries_and_archive() {
    let z = run(&tree_zip(), &small()).result.unwrap();
    // zip folders carry 0755 here; the tar tree's bin/ is 0750.
    assert_eq!(z.entries, expected(0o755));
    let t = run(
        &gz(&tar(&[
            T::File("share/doc/readme.txt", 0o644, README),
            T::Link("current", "bin/app"),
            T::Dir("bin", 0o755),
            T::File("bin/app", 0o755, APP),
            T::File("a.conf", 0o600, CONF),
        ])),
        &small(),
    )
    .result
    .unwrap();
    assert_eq!(z.archive_sha256, t.archive_sha256);
}

#[test]
fn zip_entries_without_unix_attributes_get_default_modes() {
    // A DOS-made zip: no unix mode; folders by their trailing slash.
    let mut w = ::zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = ::zip::write::SimpleFileOptions::default()
        .system(::zip::System::Dos)
        .compression_method(::zip::CompressionMethod::Stored);
    w.add_directory("d/", opts).unwrap();
    w.start_file("d/f.txt", opts).unwrap();
    std::io::Write::write_all(&mut w, b"x").unwrap();
    let bytes = w.finish().unwrap().into_inner();
    let p = run(&bytes, &small()).result.unwrap();
    assert_eq!(
        p.entries,
        vec![dir("d", 0o755), file("d/f.txt", 0o644, b"x")]
    );
}

#[test]
fn link_targets_are_kept_without_empty_or_dot_parts() {
    let r = run(
        &tar(&[
            T::File("lib/v1/x.so", 0o644, b"so"),
            T::Link("lib/cur", "./v1//"),
            T::Link("top", "."),
        ]),
        &small(),
    );
    let p = r.result.unwrap();
    let targets: Vec<_> = p
        .entries
        .iter()
        .filter_map(|e| match &e.kind {
            EntryKind::Symlink { target } => Some((e.path.as_str(), target.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(targets, vec![("lib/cur", "v1"), ("top", ".")]);
    let back = read_back(&p.archive);
    let cur = back.iter().find(|e| e.0 == "lib/cur").unwrap();
    assert_eq!(cur.8.as_deref(), Some("v1"));
}

#[test]
fn long_paths_survive_the_round_trip() {
    let long = format!("{}/file.txt", "d".repeat(150));
    let mut b = ::tar::Builder::new(Vec::new());
    let mut h = ::tar::Header::new_gnu();
    h.set_size(2);
    h.set_mode(0o644);
    h.set_entry_type(EntryType::Regular);
    b.append_data(&mut h, &long, &b"hi"[..]).unwrap();
    let r = run(&gz(&b.into_inner().unwrap()), &small());
    let p = r.result.unwrap();
    assert_eq!(p.entries[1].path, long);
    let back = read_back(&p.archive);
    assert_eq!(back[1].0, long);
    assert_eq!(back[1].9, b"hi");
}

/// A pax record entry (`x` local, `g` global) with its data, padded to whole blocks.
fn pax(ty: EntryType, records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut data = Vec::new();
    for (k, v) in records {
        let body = k.len() + v.len() + 3;
        // The length counts its own digits.
        let mut len = body + body.to_string().len();
        if len.to_string().len() != body.to_string().len() {
            len += 1;
        }
        data.extend_from_slice(format!("{len} {k}=").as_bytes());
        data.extend_from_slice(v);
        data.push(b'\n');
    }
    let mut h = ::tar::Header::new_ustar();
    h.set_path("pax_header").unwrap();
    h.set_entry_type(ty);
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    let mut out = h.as_bytes().to_vec();
    out.extend_from_slice(&data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

#[test]
fn pax_records_name_entries() {
    // `git archive` style: a global record with the commit id, then a local record giving
    // a long path to the entry after it.
    let long = format!("{}/f", "p".repeat(120));
    let mut bytes = pax(EntryType::XGlobalHeader, &[("comment", b"0123abcd")]);
    bytes.extend(pax(EntryType::XHeader, &[("path", long.as_bytes())]));
    let mut h = ::tar::Header::new_ustar();
    h.set_path("short").unwrap();
    h.set_size(1);
    h.set_mode(0o644);
    h.set_cksum();
    bytes.extend_from_slice(h.as_bytes());
    bytes.extend_from_slice(&[b'z'; 512][..512]);
    bytes.extend_from_slice(&[0; 1024]);
    let p = run(&bytes, &small()).result.unwrap();
    let paths: Vec<_> = p.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(paths, vec![&long[..120], long.as_str()]);
    assert_eq!(p.unpacked_size, 1);
}
