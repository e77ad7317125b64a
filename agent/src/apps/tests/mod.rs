//! The deployment engine against real files in temporary directories: archives built here
//! with `tar` + `flate2`, manifests signed with a release key and verified as a device
//! would ([`Release`]), a fake systemd (the OS boundary) whose unit starts, fails to start
//! or crash-loops depending on which release `current` points at ([`FakeSystemd`]), and a
//! device with one app ([`Rig`]).

mod apply;
mod fake_systemd;
mod guard;
mod health;
mod recover;
mod rig;
mod unpack;

pub use fake_systemd::{Behavior, FakeSystemd};
pub use rig::Rig;

use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flate2::Compression;
use flate2::write::GzEncoder;
use pifleet_shared::release::{
    EntryKind, HealthSpec, Manifest, ReleaseSigner, SignedManifest, verify_manifest,
};
use sha2::{Digest, Sha256};

use super::journal::AppState;
use super::layout::{Layout, LayoutError};
use super::*;
use crate::commands::exec::Limits;

pub const APP: &str = "web";
pub const UNIT: &str = "web.service";

/// One entry of a test release.
#[derive(Debug, Clone)]
pub enum Item {
    File(&'static str, Vec<u8>, u32),
    Dir(&'static str, u32),
    Link(&'static str, &'static str),
}

pub fn file(path: &'static str, data: &str) -> Item {
    Item::File(path, data.as_bytes().to_vec(), 0o644)
}

/// A gzip-compressed tar of `items`, as a release builder would make it.
pub fn archive(items: &[Item]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for item in items {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(0);
        match item {
            Item::File(path, data, mode) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                b.append_data(&mut h, path, &data[..]).unwrap();
            }
            Item::Dir(path, mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                b.append_data(&mut h, format!("{path}/"), std::io::empty())
                    .unwrap();
            }
            Item::Link(path, target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, path, target).unwrap();
            }
        }
    }
    gzip(&b.into_inner().unwrap())
}

pub fn gzip(tar: &[u8]) -> Vec<u8> {
    let mut gz = GzEncoder::new(Vec::new(), Compression::fast());
    gz.write_all(tar).unwrap();
    gz.finish().unwrap()
}

/// A tar entry written byte by byte, for archives no honest builder makes.
pub struct Raw {
    pub path: &'static str,
    pub kind: tar::EntryType,
    pub mode: u32,
    pub data: Vec<u8>,
    pub link: &'static str,
}

impl Raw {
    pub fn file(path: &'static str, data: &str) -> Self {
        Self {
            path,
            kind: tar::EntryType::Regular,
            mode: 0o644,
            data: data.as_bytes().to_vec(),
            link: "",
        }
    }

    pub fn header(&self) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        let old = h.as_old_mut();
        old.name[..self.path.len()].copy_from_slice(self.path.as_bytes());
        old.linkname[..self.link.len()].copy_from_slice(self.link.as_bytes());
        h.set_entry_type(self.kind);
        h.set_mode(self.mode);
        h.set_size(self.data.len() as u64);
        h.set_mtime(0);
        h.set_cksum();
        h
    }
}

/// The uncompressed tar of raw entries.
pub fn raw_tar(entries: &[Raw]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        b.append(&e.header(), &e.data[..]).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn signer() -> ReleaseSigner {
    ReleaseSigner::from_seed(&[42; 32]).unwrap()
}

/// The manifest of `items` for `archive`, signed and then verified as a device does.
pub fn manifest(release: u64, items: &[Item], archive: &[u8], health: HealthSpec) -> Manifest {
    let entries = items
        .iter()
        .map(|i| match i {
            Item::File(path, data, mode) => pifleet_shared::release::Entry {
                path: (*path).into(),
                mode: *mode,
                kind: EntryKind::File {
                    size: data.len() as u64,
                    sha256: Sha256::digest(data).into(),
                },
            },
            Item::Dir(path, mode) => pifleet_shared::release::Entry {
                path: (*path).into(),
                mode: *mode,
                kind: EntryKind::Dir,
            },
            Item::Link(path, target) => pifleet_shared::release::Entry {
                path: (*path).into(),
                mode: 0o777,
                kind: EntryKind::Symlink {
                    target: (*target).into(),
                },
            },
        })
        .collect::<Vec<_>>();
    let unpacked_size = items
        .iter()
        .map(|i| match i {
            Item::File(_, d, _) => d.len() as u64,
            _ => 0,
        })
        .sum();
    let m = Manifest {
        app: APP.into(),
        version: format!("1.0.{release}"),
        release,
        arches: vec![],
        archive_sha256: Sha256::digest(archive).into(),
        archive_size: archive.len() as u64,
        unpacked_size,
        entries,
        health,
        hooks: vec![],
        created_at_ms: 1,
    };
    resign(&m)
}

/// Signs an edited manifest again and verifies it.
pub fn resign(m: &Manifest) -> Manifest {
    let s = signer();
    let signed: SignedManifest = s.sign(m).unwrap();
    verify_manifest(&signed, &[s.public().clone()]).unwrap()
}

/// A fast health spec: active within 1 s, no soak, no probe.
pub fn quick() -> HealthSpec {
    HealthSpec {
        start_timeout_s: 1,
        soak_s: 0,
        probe: None,
        probe_passes: 1,
        probe_interval_s: 1,
    }
}

/// A release: its verified manifest and archive bytes.
#[derive(Debug, Clone)]
pub struct Release {
    pub manifest: Manifest,
    pub archive: Vec<u8>,
}

impl Release {
    pub fn new(release: u64, items: &[Item]) -> Self {
        let archive = archive(items);
        Self {
            manifest: manifest(release, items, &archive, quick()),
            archive,
        }
    }

    /// The standard test release `n`: a program, a config folder, a link.
    pub fn numbered(n: u64) -> Self {
        Self::new(n, &standard_items(n))
    }

    /// Edits the manifest (signed again).
    pub fn with(mut self, edit: impl FnOnce(&mut Manifest)) -> Self {
        edit(&mut self.manifest);
        self.manifest = resign(&self.manifest);
        self
    }

    pub fn dir(&self) -> String {
        self.manifest.dir_name()
    }
}

pub fn standard_items(n: u64) -> Vec<Item> {
    vec![
        Item::Dir("bin", 0o755),
        Item::File(
            "bin/app",
            format!("#!/bin/sh\necho release {n}\n").into_bytes(),
            0o755,
        ),
        Item::Dir("etc", 0o755),
        file("etc/app.toml", &format!("release = {n}\n")),
        Item::Link("app", "bin/app"),
    ]
}

/// Counts the bytes a reader hands out (the compressed bytes unpacking consumed).
pub struct Counting<R> {
    pub inner: R,
    pub read: Arc<Mutex<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        *self.read.lock().unwrap() += n as u64;
        Ok(n)
    }
}
