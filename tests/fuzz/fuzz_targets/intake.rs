//! The upload unpacker (zip, tar, tar.gz → the canonical release archive). The first byte
//! chooses how the rest is used:
//! 0. the upload file itself (zip, gzip or tar, told apart by its first bytes);
//! 1. a plain tar stream, as `git archive` gives it;
//! 2. tar, 3. gzip-compressed tar, 4. zip: built here from entries the input describes
//!    (raw names, types, modes, link targets, data), so headers and checksums are valid and
//!    the unpacker's own checks get exercised rather than the archive parsers' alone.
//!
//! Properties of every repacked archive: within the limits; paths sorted, unique, relative,
//! free of `..`, and never below a symbolic link; links resolve inside the release; every
//! parent folder listed; the archive read back holds exactly the entries listed, with the
//! sizes and digests listed, owned by root with mtime 0. On a refusal, and once the result
//! is dropped, nothing stays in the output folder.
#![no_main]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use pifleet_intake::{IntakeError, Limits, Packed, repack, repack_tar};
use pifleet_shared::release::{EntryKind, check_entry_path, check_link_target};
use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

const LIMITS: Limits = Limits {
    max_upload_bytes: 256 * 1024,
    max_unpacked_bytes: 64 * 1024,
    max_entries: 64,
};

struct Dirs {
    _root: tempfile::TempDir,
    upload: std::path::PathBuf,
    out: std::path::PathBuf,
}

thread_local! {
    static DIRS: Dirs = {
        let root = tempfile::tempdir().expect("a temp dir");
        let upload = root.path().join("upload");
        let out = root.path().join("out");
        std::fs::create_dir(&out).expect("a fresh dir");
        Dirs { _root: root, upload, out }
    };
}

fn left_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .expect("the output dir")
        .map(|e| {
            e.expect("an entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect()
}

/// Lexical resolution of a link target from the link's folder: never above the root.
fn resolves_inside(link_path: &str, target: &str) -> bool {
    let mut depth = link_path.split('/').count() - 1;
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            _ => depth += 1,
        }
    }
    !target.starts_with('/')
}

fn check_packed(p: &Packed, out: &Path) {
    assert!(
        p.entries.len() <= LIMITS.max_entries,
        "{} entries",
        p.entries.len()
    );
    assert!(p.unpacked_size <= LIMITS.max_unpacked_bytes);
    let mut files = 0u64;
    let mut kinds = BTreeMap::new();
    for (i, e) in p.entries.iter().enumerate() {
        if i > 0 {
            assert!(
                p.entries[i - 1].path < e.path,
                "entries not sorted and unique"
            );
        }
        assert_eq!(check_entry_path(&e.path), Ok(()), "{:?}", e.path);
        assert!(!e.path.starts_with('/'));
        assert!(
            e.path
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != "..")
        );
        assert_eq!(e.mode & !0o777, 0, "{:?} mode {:o}", e.path, e.mode);
        // Every parent is a folder listed before it (sorted order), never a link.
        let mut parent = e.path.as_str();
        while let Some((up, _)) = parent.rsplit_once('/') {
            assert_eq!(kinds.get(up), Some(&'d'), "{:?} lies below {up:?}", e.path);
            parent = up;
        }
        match &e.kind {
            EntryKind::File { size, .. } => files += size,
            EntryKind::Dir => {}
            EntryKind::Symlink { target } => {
                assert_eq!(check_link_target(&e.path, target), Ok(()));
                assert!(
                    resolves_inside(&e.path, target),
                    "{:?} -> {target:?}",
                    e.path
                );
            }
        }
        let kind = match e.kind {
            EntryKind::File { .. } => 'f',
            EntryKind::Dir => 'd',
            EntryKind::Symlink { .. } => 'l',
        };
        kinds.insert(e.path.clone(), kind);
    }
    assert_eq!(files, p.unpacked_size);
    let archive: &Path = p.archive.as_ref();
    assert_eq!(archive.parent(), Some(out));
    let bytes = std::fs::read(archive).expect("the archive");
    assert_eq!(bytes.len() as u64, p.archive_size);
    assert_eq!(<[u8; 32]>::from(Sha256::digest(&bytes)), p.archive_sha256);
    // Read back as a device would: exactly the listed entries, in order.
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(&bytes[..]));
    let mut listed = p.entries.iter();
    for entry in a.entries().expect("a tar") {
        let mut entry = entry.expect("a canonical entry");
        let want = listed.next().expect("no more entries than listed");
        let h = entry.header().clone();
        let path = entry.path().expect("a path").to_string_lossy().into_owned();
        assert_eq!(path, want.path);
        assert_eq!(h.mode().expect("a mode"), want.mode);
        assert_eq!(
            (h.mtime().ok(), h.uid().ok(), h.gid().ok()),
            (Some(0), Some(0), Some(0))
        );
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("entry data");
        match &want.kind {
            EntryKind::File { size, sha256 } => {
                assert_eq!(h.entry_type(), EntryType::Regular);
                assert_eq!(data.len() as u64, *size);
                assert_eq!(<[u8; 32]>::from(Sha256::digest(&data)), *sha256);
            }
            EntryKind::Dir => assert_eq!(h.entry_type(), EntryType::Directory),
            EntryKind::Symlink { target } => {
                assert_eq!(h.entry_type(), EntryType::Symlink);
                let link = entry.link_name().expect("a link name").expect("a target");
                assert_eq!(link.to_string_lossy(), *target);
            }
        }
    }
    assert!(listed.next().is_none(), "fewer entries than listed");
}

/// One entry described by the input: type byte, mode (2 bytes), name and data (each a
/// length byte then bytes). For links the data is the target.
struct Described<'a> {
    ty: u8,
    mode: u32,
    name: &'a [u8],
    data: &'a [u8],
}

/// Takes a length byte and that many bytes (fewer at the end of the input).
fn take<'a>(input: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (&n, rest) = input.split_first()?;
    let (v, rest) = rest.split_at(usize::from(n).min(rest.len()));
    *input = rest;
    Some(v)
}

fn describe(mut input: &[u8]) -> Vec<Described<'_>> {
    let mut out = Vec::new();
    while let [ty, m1, m2, rest @ ..] = input {
        input = rest;
        let (Some(name), Some(data)) = (take(&mut input), take(&mut input)) else {
            break;
        };
        out.push(Described {
            ty: *ty,
            mode: u32::from(u16::from_le_bytes([*m1, *m2])),
            name,
            data,
        });
    }
    out
}

/// A tar of the described entries, headers written raw (so any name, type and link target
/// the input holds reaches the unpacker), checksums valid.
fn build_tar(entries: &[Described<'_>]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let ty = match e.ty % 8 {
            0 => EntryType::Regular,
            1 => EntryType::Directory,
            2 => EntryType::Symlink,
            3 => EntryType::Link,
            4 => EntryType::GNULongName,
            5 => EntryType::XHeader,
            6 => EntryType::GNULongLink,
            _ => EntryType::new(e.ty),
        };
        let mut h = Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(e.mode);
        let name = &mut h.as_old_mut().name;
        let n = e.name.len().min(name.len());
        name[..n].copy_from_slice(&e.name[..n]);
        let data: &[u8] = if matches!(ty, EntryType::Symlink | EntryType::Link) {
            let link = &mut h.as_old_mut().linkname;
            let n = e.data.len().min(link.len());
            link[..n].copy_from_slice(&e.data[..n]);
            &[]
        } else {
            e.data
        };
        h.set_size(data.len() as u64);
        h.set_cksum();
        out.extend_from_slice(h.as_bytes());
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.resize(out.len() + 1024, 0);
    out
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).expect("writing to memory");
    e.finish().expect("writing to memory")
}

/// A zip of the described entries; entries the zip writer refuses are left out.
fn build_zip(entries: &[Described<'_>]) -> Vec<u8> {
    use zip::write::SimpleFileOptions;
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for e in entries {
        let name = String::from_utf8_lossy(e.name).into_owned();
        let _ = match e.ty % 4 {
            0 => w
                .start_file(name, opts.unix_permissions(e.mode))
                .and_then(|()| w.write_all(e.data).map_err(Into::into)),
            1 => w.add_directory(name, opts.unix_permissions(e.mode)),
            2 => w.add_symlink(name, String::from_utf8_lossy(e.data), opts),
            _ => w
                .start_file(name, opts.external_attributes(e.mode << 16))
                .and_then(|()| w.write_all(e.data).map_err(Into::into)),
        };
    }
    w.finish().map(|c| c.into_inner()).unwrap_or_default()
}

fn outcome(result: Result<Packed, IntakeError>, out: &Path) {
    match result {
        Ok(p) => {
            check_packed(&p, out);
            drop(p);
            assert_eq!(
                left_in(out),
                Vec::<String>::new(),
                "a dropped archive stays"
            );
        }
        Err(IntakeError::Io { path, source }) => {
            panic!("I/O error on {path:?}: {source}")
        }
        Err(_) => assert_eq!(left_in(out), Vec::<String>::new(), "a refusal left files"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    DIRS.with(|d| {
        let upload = match mode % 5 {
            0 => rest.to_vec(),
            1 => return outcome(repack_tar(rest, &LIMITS, &d.out), &d.out),
            2 => build_tar(&describe(rest)),
            3 => gzip(&build_tar(&describe(rest))),
            _ => build_zip(&describe(rest)),
        };
        std::fs::write(&d.upload, &upload).expect("writing the upload");
        outcome(repack(&d.upload, &LIMITS, &d.out), &d.out);
    });
});
