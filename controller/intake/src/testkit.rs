//! Archives built in memory for the tests: tar entries written through the tar crate's
//! header API (so names and types a careful builder would refuse can be written), gzip,
//! and zip with chosen unix attributes.

use std::io::Write;

use tar::{EntryType, Header};
use zip::write::SimpleFileOptions;

/// One tar entry to write.
#[derive(Debug, Clone, Copy)]
pub enum T<'a> {
    File(&'a str, u32, &'a [u8]),
    Dir(&'a str, u32),
    Link(&'a str, &'a str),
    Hard(&'a str, &'a str),
    Special(&'a str, EntryType),
}

fn header(path: &str, ty: EntryType, mode: u32, size: u64) -> Header {
    let mut h = Header::new_gnu();
    // What a real tool writes: times and owners the canonical archive must drop.
    h.set_mtime(1_700_000_000);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_username("pi").unwrap();
    h.set_groupname("pi").unwrap();
    h.set_entry_type(ty);
    h.set_mode(mode);
    h.set_size(size);
    let name = &mut h.as_old_mut().name;
    assert!(path.len() <= name.len(), "test paths fit the header");
    name.fill(0);
    name[..path.len()].copy_from_slice(path.as_bytes());
    h
}

/// A plain tar of `entries`, in the given order.
pub fn tar(entries: &[T<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let (mut h, data): (Header, &[u8]) = match *e {
            T::File(p, mode, data) => {
                (header(p, EntryType::Regular, mode, data.len() as u64), data)
            }
            T::Dir(p, mode) => (header(p, EntryType::Directory, mode, 0), &[]),
            T::Link(p, target) => {
                let mut h = header(p, EntryType::Symlink, 0o777, 0);
                h.set_link_name_literal(target).unwrap();
                (h, &[])
            }
            T::Hard(p, target) => {
                let mut h = header(p, EntryType::Link, 0o644, 0);
                h.set_link_name_literal(target).unwrap();
                (h, &[])
            }
            T::Special(p, ty) => (header(p, ty, 0o644, 0), &[]),
        };
        h.set_cksum();
        b.append(&h, data).unwrap();
    }
    b.into_inner().unwrap()
}

/// gzip of `data`.
pub fn gz(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// One zip entry to write.
#[derive(Debug, Clone, Copy)]
pub enum Z<'a> {
    File(&'a str, u32, &'a [u8]),
    Dir(&'a str),
    Link(&'a str, &'a str),
    /// A file with raw unix mode bits (type and special bits included).
    Raw(&'a str, u32, &'a [u8]),
}

/// A zip of `entries`, deflated.
pub fn zip(entries: &[Z<'_>]) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for e in entries {
        match *e {
            Z::File(p, mode, data) => {
                w.start_file(p, opts.unix_permissions(mode)).unwrap();
                w.write_all(data).unwrap();
            }
            Z::Dir(p) => w.add_directory(p, opts.unix_permissions(0o755)).unwrap(),
            Z::Link(p, target) => w.add_symlink(p, target, opts).unwrap(),
            Z::Raw(p, mode, data) => {
                w.start_file(p, opts.external_attributes(mode << 16))
                    .unwrap();
                w.write_all(data).unwrap();
            }
        }
    }
    w.finish().unwrap().into_inner()
}

/// Repacks `bytes` as an uploaded file into a fresh output dir.
pub fn run(bytes: &[u8], limits: &super::Limits) -> Run {
    let upload = tempfile::tempdir().unwrap();
    let path = upload.path().join("upload");
    std::fs::write(&path, bytes).unwrap();
    let out = tempfile::tempdir().unwrap();
    let result = super::repack(&path, limits, out.path());
    Run {
        result,
        out,
        _upload: upload,
    }
}

/// A repack's outcome and the dir it wrote to.
#[derive(Debug)]
pub struct Run {
    pub result: Result<super::Packed, super::IntakeError>,
    pub out: tempfile::TempDir,
    _upload: tempfile::TempDir,
}

/// Names of what is in `dir`.
pub fn left_in(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Small limits for the tests.
pub fn small() -> super::Limits {
    super::Limits {
        max_upload_bytes: 1 << 20,
        max_unpacked_bytes: 1 << 20,
        max_entries: 100,
    }
}

/// One entry of a canonical archive as read back: path, type, mode, mtime, uid, gid,
/// owner names, link target, data.
pub type ReadBack = (
    String,
    EntryType,
    u32,
    u64,
    u64,
    u64,
    String,
    String,
    Option<String>,
    Vec<u8>,
);

/// Reads a canonical archive back with the tar crate (what a device would do).
pub fn read_back(path: &std::path::Path) -> Vec<ReadBack> {
    use std::io::Read;
    let f = std::fs::File::open(path).unwrap();
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut out = Vec::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let h = e.header().clone();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.push((
            e.path().unwrap().to_string_lossy().into_owned(),
            h.entry_type(),
            h.mode().unwrap(),
            h.mtime().unwrap(),
            h.uid().unwrap(),
            h.gid().unwrap(),
            h.username().unwrap().unwrap_or_default().to_owned(),
            h.groupname().unwrap().unwrap_or_default().to_owned(),
            e.link_name()
                .unwrap()
                .map(|l| l.to_string_lossy().into_owned()),
            data,
        ));
    }
    out
}
